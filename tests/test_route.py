"""The route stage's logic: SelectLLM's policies on hand-made confidences (ties to the cheaper
finalist), the router on synthetic labels, cross-validation that never scores a query the
router trained on, the upper-left hull and AIQ, route.json and the plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lensray.core.errors import ConfigError, DataError
from lensray.stages.route.config import RouteConfig
from lensray.stages.route.evaluate import (
    RouteData,
    aiq,
    cross_validate,
    fold_ids,
    plot_accuracy_cost,
    upper_hull,
    write_route_json,
)
from lensray.stages.route.policies import POLICIES, decide, rank, vote
from lensray.stages.route.router import Router

CHEAP_LAST = np.array([3.0, 2.0, 1.0])  # finalist 2 is the cheapest


# Policies

def test_max_conf_answers_with_the_most_confident_finalist():
    d = decide("max_conf", [0.2, 0.9, 0.5], ["a", "b", "c"], CHEAP_LAST, k=3)
    assert d.called == (1,) and d.source == 1 and d.answer == "b"


def test_equal_confidences_rank_the_cheaper_finalist_first():
    assert list(rank([0.7, 0.7, 0.7], CHEAP_LAST)) == [2, 1, 0]
    assert list(rank([0.7, 0.7, 0.1], [1.0, 1.0, 0.0])) == [0, 1, 2]  # equal cost too: by index
    assert decide("max_conf", [0.8, 0.8, 0.1], ["a", "b", "c"], CHEAP_LAST).answer == "b"


def test_top_k_calls_the_k_most_confident_and_takes_the_majority():
    conf, answers = [0.9, 0.8, 0.7, 0.1], ["4", "5", "5", "4"]
    d = decide("top_k", conf, answers, np.ones(4), k=3)
    assert d.called == (0, 1, 2) and d.answer == "5" and d.source == 1
    assert decide("top_k", conf, answers, np.ones(4), k=9).called == (0, 1, 2, 3)  # k > m: all


def test_a_tied_vote_goes_to_the_cheaper_finalist():
    # top-2 of finalists 0 (cost 3) and 1 (cost 2): one vote each, finalist 1 is cheaper
    d = decide("top_k", [0.9, 0.8, 0.1], ["a", "b", "c"], CHEAP_LAST, k=2)
    assert d.called == (0, 1) and d.answer == "b"
    # two groups of two: the group holding the cheapest finalist (3) wins, from finalist 3
    assert vote(["x", "y", "x", "y"], [1, 1, 1, 1], [1.0, 5.0, 4.0, 0.5]) == 3
    # the answer comes from the cheapest member of the winning group
    assert vote(["x", "x", "y"], [1, 1, 1], [2.0, 1.0, 0.1]) == 1


def test_weighted_max_conf_weighs_each_vote_by_its_confidence():
    conf, answers = [0.9, 0.3, 0.3], ["a", "b", "b"]
    assert decide("top_k", conf, answers, np.ones(3), k=3).answer == "b"             # 2 votes to 1
    assert decide("weighted_max_conf", conf, answers, np.ones(3), k=3).answer == "a"  # 0.9 to 0.6
    # equal weights tie: to the cheaper
    assert decide("weighted_max_conf", [0.5, 0.5], ["a", "b"], [2.0, 1.0], k=2).answer == "b"


def test_labelled_max_conf_calls_the_finalists_labelled_right():
    conf, answers = [0.9, 0.6, 0.4, 0.55], ["a", "b", "b", "c"]
    assert decide("labelled_max_conf", conf, answers, np.ones(4), k=3).called == (0, 1, 3)
    assert decide("labelled_max_conf", conf, answers, np.ones(4), k=2).called == (0, 1)
    # none labelled right: the most confident alone
    assert decide("labelled_max_conf", [0.2, 0.4, 0.1], answers[:3], np.ones(3), k=3).called == (1,)


def test_threshold_calls_every_finalist_above_it_or_the_most_confident():
    conf = [0.9, 0.75, 0.6, 0.2]
    d = decide("threshold", conf, ["a", "b", "b", "b"], [1.0, 2.0, 3.0, 4.0], k=1, threshold=0.55)
    assert d.called == (0, 1, 2) and d.answer == "b" and d.source == 1  # k does not cap it
    assert decide("threshold", conf, ["a"] * 4, np.ones(4), threshold=0.95).called == (0,)
    assert decide("threshold", conf, ["a"] * 4, np.ones(4), threshold=0.75).called == (0,)  # above, not at


def test_config_names_the_field_and_the_closest_policy():
    with pytest.raises(ConfigError, match="weighted_max_conf"):
        RouteConfig(policy="weighted_maxconf")
    for bad in ({"folds": 1}, {"k": 0}, {"threshold": 1.5}, {"l2": 0.0}, {"tie_cost": "money"}):
        with pytest.raises(ConfigError, match=f"route.{next(iter(bad))}"):
            RouteConfig(**bad)
    assert set(POLICIES) == {"max_conf", "top_k", "labelled_max_conf", "weighted_max_conf", "threshold"}


# Synthetic routing data: each query names one fruit; finalist A is right on the queries that
# name "apple", B on "banana", C (ten times the cost) on "cherry", D on none.

FILLER = [f"w{i}" for i in range(60)]
FRUITS = ["apple", "banana", "cherry"]


def synthetic(n: int, seed: int = 0) -> RouteData:
    rng = np.random.default_rng(seed)
    queries, correct, answers = [], [], []
    for i in range(n):
        words = list(rng.choice(FILLER, 6))
        fruit = int(rng.integers(3))
        words.insert(int(rng.integers(len(words) + 1)), FRUITS[fruit])
        queries.append(f"q{i} " + " ".join(words))
        row = [j == fruit for j in range(4)]
        correct.append(row)
        answers.append([str(i) if r else f"wrong{j}" for j, r in enumerate(row)])
    return RouteData(queries, ["A", "B", "C", "D"], np.array(correct), answers,
                     flops=np.array([1.0, 1.0, 10.0, 1.0]) * 1e9, latency=np.array([0.1, 0.1, 1.0, 0.1]))


def test_the_router_recovers_which_finalist_is_right():
    train, test = synthetic(150, seed=0), synthetic(90, seed=1)
    router = Router().fit(train.queries, train.correct)
    assert router.converged_
    right = router.predict(test.queries) == test.correct
    assert right.mean(0).min() >= 0.9, right.mean(0)
    conf = router.predict_proba(test.queries)
    assert conf.shape == (90, 4) and (conf.argmax(1) == test.correct.argmax(1)).mean() >= 0.95
    assert conf[:, 3].max() < 0.5  # D, never right


def test_cross_validation_never_scores_a_query_the_router_trained_on():
    data = synthetic(23)
    trained, scored = [], []

    class Spy:
        def fit(self, texts, correct):
            trained.append(set(texts))
            self.seen = set(texts)
            return self

        def predict_proba(self, texts):
            assert not self.seen & set(texts)
            scored.append(list(texts))
            return np.full((len(texts), data.m), 0.5)

    result = cross_validate(data, RouteConfig(folds=4), make_router=Spy)
    assert len(trained) == 4 and sorted(q for s in scored for q in s) == sorted(data.queries)  # each once
    assert all(seen | set(s) == set(data.queries) for seen, s in zip(trained, scored))  # trained on the rest
    assert result.queries == 23 and result.folds == 4
    folds = fold_ids(23, 4, seed=0)
    assert sorted(np.bincount(folds)) == [5, 6, 6, 6] and (folds == fold_ids(23, 4, seed=0)).all()


def test_routing_reaches_the_oracle_at_a_fraction_of_the_majority_cost(tmp_path):
    data = synthetic(150)
    result = cross_validate(data, RouteConfig(folds=3, k=2))
    s = result.scores
    assert s["oracle"].accuracy == 1.0 and result.best_single in ("A", "B", "C")
    assert s["best_single"] == s[f"single:{result.best_single}"]
    assert s["majority"].calls == 4 and s["majority"].flops == pytest.approx(13e9)
    assert s["single:A"].accuracy == pytest.approx(data.correct[:, 0].mean()) and s["single:A"].latency == pytest.approx(0.1)
    # MaxConf sends each query to its fruit's finalist: the oracle's accuracy at its cost
    assert s["max_conf"].accuracy >= 0.95 and s["max_conf"].calls == 1
    assert s["max_conf"].latency == pytest.approx(s["oracle"].latency, rel=0.1)
    # top-2's plain vote splits 1 to 1 and goes to the cheaper (wrong) finalist on "cherry"
    # queries; weighing the votes by confidence fixes that
    assert s["weighted_max_conf"].calls == 2 and s["weighted_max_conf"].accuracy >= 0.95
    assert s["top_k"].accuracy < 0.8
    assert result.router_f1 >= 0.9 and 0 <= result.router_f1_std < 0.1 and s["top_k"].accuracy_std > 0
    for axis in ("flops", "latency"):
        assert result.hull[axis][0] in ("single:A", "single:B") and result.hull[axis][-1] == "max_conf"
        assert 0.9 < result.aiq[axis] <= 1

    path = write_route_json(result, tmp_path / "out" / "route.json")
    doc = json.loads(path.read_text())
    assert doc["policy"] == "weighted_max_conf" and doc["scores"]["oracle"]["accuracy"] == 1.0
    assert doc["hull"] == result.hull and set(doc["scores"]) == set(s)
    png = plot_accuracy_cost(result, tmp_path / "out" / "route.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_route_data_checks_its_shapes():
    with pytest.raises(DataError, match="correct"):
        RouteData(["q"], ["A", "B"], np.array([[1, 2]]), [["a", "b"]], [1, 1], [1, 1])
    with pytest.raises(DataError, match="answers"):
        RouteData(["q"], ["A", "B"], np.array([[1, 0]]), [["a"]], [1, 1], [1, 1])
    with pytest.raises(DataError, match="latency"):
        RouteData(["q"], ["A", "B"], np.array([[1, 0]]), [["a", "b"]], [1, 1], [1, 1, 1])
    d = RouteData(["q", "r"], ["A", "B"], np.array([[1, 0], [0, 1]]), [["a", "b"]] * 2, [1, 2], [[1, 2], [3, 4]])
    assert d.flops.shape == (2, 2) and d.correct.dtype == bool
    with pytest.raises(DataError, match="folds"):
        fold_ids(3, 5, seed=0)


# The cost-accuracy plane

def test_the_upper_left_hull_of_a_hand_example():
    #            0     1     2     3     4     5     6
    costs = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 1.0]
    accs = [0.5, 0.7, 0.6, 0.75, 0.9, 0.8, 0.4]
    # 6 is as cheap as 0 but worse; 2 is as costly as 1 but worse; 3 lies below the chord 1 -> 4
    # (0.8 at cost 3); 5 costs more than 4 and is worse
    assert upper_hull(costs, accs) == [0, 1, 4]
    # area: 1 -> 2 trapezoid 0.6, 2 -> 4 trapezoid 1.6, 4 -> 5 flat at 0.9; over the range 4
    assert aiq(costs, accs) == pytest.approx((0.6 + 1.6 + 0.9) / 4)
    assert upper_hull([1.0, 2.0, 3.0], [0.5, 0.6, 0.7]) == [0, 2]  # the middle point is on the chord
    assert upper_hull([1.0, 2.0], [0.9, 0.5]) == [0]  # the cheapest is the most accurate
    assert aiq([2.0, 2.0], [0.3, 0.6]) == 0.6


@pytest.mark.slow
def test_a_hub_encoder_mean_pools_a_local_transformers_model(tmp_path):
    """A tiny random BERT saved to a folder stands in for roberta-base (nothing is downloaded)."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from lensray.stages.route.router import HubEncoder, make_encoder

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "apple", "banana", *FILLER])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(tmp_path)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(tmp_path)
    cfg = RouteConfig(encoder=str(tmp_path), batch_size=2)
    enc = make_encoder(cfg)
    assert isinstance(enc, HubEncoder)
    texts = ["apple w1", "banana w2 w3 w4 w5", "w6"]
    x = enc(texts)
    assert x.shape == (3, 16) and len(enc._cache) == 3
    alone = HubEncoder(str(tmp_path))(["apple w1"])  # no padding: pooling ignores the pad tokens
    np.testing.assert_allclose(alone[0], x[0], rtol=1e-4, atol=1e-5)
    data = synthetic(12)
    router = Router(cfg, enc).fit(data.queries, data.correct)
    assert router.predict_proba(data.queries[:3]).shape == (3, 4)
