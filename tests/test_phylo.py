"""The phylo stage's library (lensray.stages.phylo): genes, alleles, Nei distance, NJ tree,
near-duplicates, priors, score prediction; and one slow test fingerprinting zoo models on a
local Ray."""

from __future__ import annotations

import math
import time
from io import StringIO

import numpy as np
import pytest

from lensray.core.errors import ConfigError, CurveError, DataError
from lensray.core.types import Candidate, ModelSpec, Pool
from lensray.stages.phylo.alleles import allele, allele_frequencies
from lensray.stages.phylo.duplicates import drop_reasons, near_duplicates
from lensray.stages.phylo.fingerprint import PhyloConfig, cache_key, model_identity
from lensray.stages.phylo.genes import draw_genes, texts_from_file
from lensray.stages.phylo.prior import priors
from lensray.stages.phylo.similarity import EPS, distance, read_matrix, similarity, write_matrix

# Wikipedia's neighbour-joining example (en.wikipedia.org/wiki/Neighbor_joining): an additive
# matrix whose tree is a-u 2, b-u 3, u-v 3, c-v 4, v-w 2, d-w 2, e-w 1.
WIKI_NAMES = list("abcde")
WIKI_D = np.array([[0, 5, 9, 9, 8], [5, 0, 10, 10, 9], [9, 10, 0, 8, 7], [9, 10, 8, 0, 3], [8, 9, 7, 3, 0]], float)


def test_allele_strips_leading_whitespace_and_keeps_four_characters():
    assert allele("  \n\tHello world") == "Hell"
    assert allele(" ab") == "ab"
    assert allele("abc  ") == "abc "
    assert allele("") == ""
    assert allele(" \n ") == ""
    assert allele_frequencies(["a", " a", "bcdef", "\n"]) == {"": 0.25, "a": 0.5, "bcde": 0.25}
    with pytest.raises(ValueError):
        allele_frequencies([])


def test_genes_are_seeded_text_starts_of_20_to_100_characters(tmp_path):
    texts = ["x" * 300, "", "   ", "short text", "y" * 150] + [f"{i} " * 60 for i in range(20)]
    genes = draw_genes(texts, n=64, seed=3)
    assert len(genes) == 64
    usable = [t for t in texts if t.strip()]
    for g in genes:
        source = [t for t in usable if t.startswith(g)]
        assert source, g
        assert 20 <= len(g) <= 100 or g in usable  # a shorter text is used whole
    assert "short text" in genes  # 64 genes from 23 texts use each, so the short one whole
    assert draw_genes(texts, n=64, seed=3) == genes
    assert draw_genes(texts, n=64, seed=4) != genes
    lengths = {len(g) for g in draw_genes(["z" * 500], n=200, seed=0)}
    assert min(lengths) == 20 and max(lengths) == 100
    lengths = {len(g) for g in draw_genes(["w" * 30], n=50, seed=0)}  # cut within a 30-character text
    assert min(lengths) == 20 and max(lengths) == 30
    with pytest.raises(DataError, match="empty"):
        draw_genes(["", " \n"], n=4)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("first line of text here, long enough\n\nsecond line\n")
    assert draw_genes(texts_from_file(corpus), n=2, seed=0)[0]
    with pytest.raises(DataError, match="genes_path"):
        texts_from_file(tmp_path / "missing.txt")


def test_nei_similarity_sums_over_genes_before_normalising():
    a = [{"x": 0.5, "y": 0.5}, {"z": 1.0}]
    b = [{"x": 1.0}, {"z": 0.5, "w": 0.5}]
    c = [{"q": 1.0}, {"r": 1.0}]
    e = [{"z": 1.0}, {"x": 1.0}]  # a's alleles under the other gene: no allele in common
    # sum P_a P_b = 0.5 * 1 + 1 * 0.5 = 1; sum P_a^2 = sum P_b^2 = 0.25 + 0.25 + 1 = 1.5
    s = similarity([a, b, c, e])
    assert s[0, 1] == pytest.approx(1 / 1.5)
    assert s[0, 1] != pytest.approx(0.5 / math.sqrt(0.5))  # the per-gene mean, which PhyloLM does not use
    assert s[0, 0] == pytest.approx(1.0) and s[0, 2] == 0 and s[0, 3] == 0
    d = distance([a, b, c, e])
    assert d[0, 1] == pytest.approx(math.log(1.5))
    assert d[0, 2] == pytest.approx(-math.log(EPS))
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    with pytest.raises(DataError, match="same genes"):
        similarity([a, a[:1]])


def test_matrix_parquet_round_trip(tmp_path):
    names = ["org/model-a", "b", "model"]
    m = np.array([[0, 1.5, 2], [1.5, 0, 3], [2, 3, 0]])
    got_names, got = read_matrix(write_matrix(tmp_path / "d.parquet", names, m))
    assert got_names == names and np.array_equal(got, m)


def test_neighbour_joining_recovers_the_wikipedia_tree(tmp_path):
    from Bio import Phylo

    from lensray.stages.phylo.tree import is_clade, nearest_neighbours, nj_tree, plot_tree, write_newick

    tree = nj_tree(WIKI_NAMES, WIKI_D)
    lengths = {c.name: c.branch_length for c in tree.get_terminals()}
    assert lengths == pytest.approx({"a": 2, "b": 3, "c": 4, "d": 2, "e": 1})
    for i, x in enumerate(WIKI_NAMES):
        for j, y in enumerate(WIKI_NAMES):
            assert tree.distance(x, y) == pytest.approx(WIKI_D[i, j])  # additive: NJ is exact
    assert is_clade(tree, {"a", "b"}) and is_clade(tree, {"d", "e"}) and is_clade(tree, {"c", "d", "e"})
    assert not is_clade(tree, {"a", "c"}) and not is_clade(tree, {"b", "e"})
    with pytest.raises(DataError, match="no leaves"):
        is_clade(tree, {"a", "zz"})
    newick = write_newick(tree, tmp_path / "tree.nwk")
    back = Phylo.read(StringIO(newick.read_text()), "newick")
    assert sorted(c.name for c in back.get_terminals()) == WIKI_NAMES
    assert back.distance("a", "e") == pytest.approx(8)
    near = nearest_neighbours(WIKI_NAMES, WIKI_D)
    assert near["a"] == ("b", 5) and near["d"] == ("e", 3) and near["c"] == ("e", 7)
    png = plot_tree(tree, tmp_path / "tree.png", {"a": "left", "b": "left", "c": "right", "d": "right", "e": "right"})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_near_duplicates_group_by_chains_and_keep_the_cheapest():
    names = ["big", "small", "mid", "alone", "twin-b", "twin-a"]
    d = np.full((6, 6), 2.0)
    np.fill_diagonal(d, 0)
    for i, j, v in [(0, 1, 0.01), (1, 2, 0.04), (0, 2, 0.09), (4, 5, 0.0)]:  # big~small~mid chain; twins
        d[i, j] = d[j, i] = v
    params = {"big": 900, "small": 10, "mid": 50, "alone": 1, "twin-a": 5, "twin-b": 5}
    groups = near_duplicates(names, d, params, threshold=0.05)
    assert [(g.representative, set(g.members)) for g in groups] == [
        ("small", {"big", "small", "mid"}), ("twin-a", {"twin-a", "twin-b"}),  # a tie goes to the name
    ]
    assert groups[0].reasons() == {"big": "near-duplicate of small (d = 0.01)", "mid": "near-duplicate of small (d = 0.04)"}
    assert near_duplicates(names, d, params, threshold=0.005) == [near_duplicates(names, d, params, 0.0)[0]]
    pool = Pool([Candidate(f"{m}+{s}", ModelSpec(m), s) for m in names for s in ("json", "plain")])
    reasons = drop_reasons(pool, groups)
    assert set(reasons) == {f"{m}+{s}" for m in ("big", "mid", "twin-b") for s in ("json", "plain")}
    kept = pool.drop(reasons)
    assert {c.model.name for c in kept.candidates} == {"small", "alone", "twin-a"}
    assert kept.dropped["mid+json"] == "near-duplicate of small (d = 0.04)"


def test_prior_leans_on_near_relatives_and_widens_when_they_are_far():
    names = ["a", "b", "c", "near-a", "far"]
    d = np.array([
        [0.0, 4.0, 4.0, 0.01, 9.0],
        [4.0, 0.0, 0.5, 4.0, 9.0],
        [4.0, 0.5, 0.0, 4.0, 9.0],
        [0.01, 4.0, 4.0, 0.0, 9.0],
        [9.0, 9.0, 9.0, 9.0, 0.0],
    ])
    measured = {"a": 1.0, "b": 3.0, "c": 3.2}
    got = priors(names, d, measured, k=3, bandwidth=1.0, level=0.9)
    mean = np.mean(list(measured.values()))
    near, far = got["near-a"], got["far"]
    assert abs(near.value - 1.0) < abs(near.value - mean)
    assert near.interval[0] < 1.0 < near.interval[1]
    assert far.value == pytest.approx(mean, abs=0.01)  # no close relative: the pool's mean
    width = lambda p: p.interval[1] - p.interval[0]  # noqa: E731
    assert width(far) > width(near)
    assert "a" not in got["a"].relatives and list(got["b"].relatives)[0] == "c"  # itself left out, nearest first
    assert list(near.relatives) == ["a", "b", "c"] and near.weight == pytest.approx(math.exp(-0.01) + 2 * math.exp(-4))
    # two identical relatives on either side of the pool's mean: the prior is that mean
    sym = priors(["x", "lo", "hi"], np.array([[0, 1, 1], [1, 0, 2], [1, 2, 0.0]]), {"lo": 1.0, "hi": 3.0}, bandwidth=1.0)
    assert sym["x"].value == pytest.approx(2.0) and sym["x"].interval[0] < 1.0 < 3.0 < sym["x"].interval[1]
    assert set(near.to_dict()) == {"phylo_loss", "phylo_lo", "phylo_hi", "phylo_sd", "phylo_weight"}
    with pytest.raises(CurveError, match="at least 2"):
        priors(names, d, {"a": 1.0})
    with pytest.raises(CurveError, match="no fingerprint"):
        priors(names, d, {"a": 1.0, "zz": 2.0, "b": 3.0})


def _synthetic(families: int, per: int, seed: int = 0):
    """Models as points in 2-D, in families around random centres; distances between points,
    scores a smooth function of the position."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-2, 2, size=(families, 2))
    x = np.concatenate([c + 0.3 * rng.normal(size=(per, 2)) for c in centres])
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return d, 0.5 + 0.3 * np.tanh(x[:, 0]), np.repeat([f"f{i}" for i in range(families)], per)


def test_score_prediction_recovers_a_smooth_function_of_distances():
    from lensray.stages.phylo.score import PhyloRegressor, leave_one_family_out

    d, y, fam = _synthetic(families=8, per=5)
    assert leave_one_family_out(d, y, fam) > 0.9  # PhyloLM's settings: the order of the scores
    train, test = np.arange(0, 40, 2), np.arange(1, 40, 2)
    reg = PhyloRegressor(lr=1e-2, weight_decay=0.0).fit(d[train][:, train], y[train])
    predicted = reg.predict(d[test][:, train])
    assert np.abs(predicted - y[test]).mean() < 0.2 * np.abs(y[train].mean() - y[test]).mean()  # and their values
    assert reg.ica_.components_.shape[0] == 15
    small = PhyloRegressor().fit(d[:6][:, :6], y[:6])
    assert small.ica_.components_.shape[0] == 5  # min(15, what 6 centred samples span)
    with pytest.raises(DataError, match="2 families"):
        leave_one_family_out(d, y, ["one"] * len(y))


def test_the_stage_predicts_unknown_scores_and_orders_the_pool_most_promising_first():
    from lensray.stages.phylo.stage import by_prior, score_prediction

    d, y, fam = _synthetic(families=4, per=4)
    names = [f"m{i}" for i in range(len(y))]
    known = {n: float(v) for n, v in zip(names[:12], y[:12])}
    got = score_prediction(names, d, known, dict(zip(names, fam)))
    assert got["known"] == 12 and got["families"] == 3 and got["lofo_pearson_r"] > 0.5
    assert set(got["predicted"]) == set(names[12:])
    lo, hi = min(known.values()), max(known.values())
    assert all(lo - (hi - lo) / 18 - 1e-9 <= v <= hi + (hi - lo) / 18 + 1e-9 for v in got["predicted"].values())
    one_family = score_prediction(names, d, {n: known[n] for n in names[:4]}, dict(zip(names, fam)))
    assert one_family["lofo_pearson_r"] is None and len(one_family["predicted"]) == 12

    pool = Pool([Candidate(n, ModelSpec(n, n)) for n in "abcd"], {},
                {"a": {"phylo_loss": 2.0}, "b": {"phylo_loss": 0.5}, "d": {"phylo_loss": 1.0}})
    assert by_prior(pool).names == ["b", "d", "a", "c"]  # no prior: last


def test_bench_phylo_refuses_what_it_cannot_measure_before_any_work(tmp_path):
    from lensray.bench.phylo import bench_phylo
    from lensray.config.load import DEMO_CONFIG, config_from_dict, load_config
    from lensray.core.curves import packaged_curves

    with pytest.raises(ConfigError, match="backend: hf"):
        bench_phylo(config_from_dict({"backend": "replay", "replay": {"curves": str(packaged_curves()[0])},
                                      "output": str(tmp_path)}))
    with pytest.raises(ConfigError, match="--models 0"):
        bench_phylo(load_config(DEMO_CONFIG, [f"output={tmp_path}"]), n_models=0)
    assert not any(tmp_path.iterdir())


def test_known_scores_come_from_a_model_score_csv_or_a_recorded_curves_file(tmp_path):
    from lensray.core.curves import recorded_curves, read_curves
    from lensray.stages.phylo.stage import read_scores

    plain = tmp_path / "known.csv"
    plain.write_text("model,score\na,0.5\nb,1.25\n")
    assert read_scores(plain) == {"a": 0.5, "b": 1.25}
    cipher = next(p for p in recorded_curves() if p.name == "zoo-cipher.csv")
    curves = read_curves(cipher)
    assert read_scores(cipher) == dict(zip(curves.candidates, curves.losses[:, -1]))
    bad = tmp_path / "bad.csv"
    bad.write_text("name,loss\na,1\n")
    with pytest.raises(ConfigError, match="needs the columns model and score"):
        read_scores(bad)


def test_phylo_config_names_the_field_and_the_fix(tmp_path):
    for bad, field in [({"samples": 0}, "phylo.samples"), ({"top_p": 1.5}, "phylo.top_p"),
                       ({"temperature": 0}, "phylo.temperature"), ({"max_chars": 10}, "phylo.max_chars"),
                       ({"genes_path": str(tmp_path / "nope.txt")}, "phylo.genes_path")]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            PhyloConfig(**bad)


def test_cache_key_follows_the_model_files_and_the_settings(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    spec = ModelSpec("m", str(folder))
    first = model_identity(spec)
    assert first == model_identity(ModelSpec("other-name", str(folder)))
    (folder / "config.json").write_text('{"n": 1}')
    assert model_identity(spec) != first
    assert model_identity(ModelSpec("gone", str(tmp_path / "missing"))) is None
    cfg = PhyloConfig()
    key = cache_key(first, ["g1", "g2"], cfg)
    assert key != cache_key(first, ["g1", "g3"], cfg)
    assert key != cache_key(first, ["g1", "g2"], PhyloConfig(samples=16))
    assert key == cache_key(first, ["g1", "g2"], PhyloConfig(duplicate_threshold=0.5))  # not a sampling setting


@pytest.mark.slow
def test_fingerprints_on_ray_are_cached_and_a_bad_model_fails_alone(zoo_manifest, ray_local, tmp_path):
    from lensray.data.dataset import DataConfig
    from lensray.stages.phylo.fingerprint import fingerprint_models
    from lensray.stages.phylo.genes import texts_from_data

    by_name = zoo_manifest["by_name"]
    genes = draw_genes(texts_from_data(DataConfig(path=zoo_manifest["task"])), n=6, seed=0)
    cfg = PhyloConfig(genes=6, samples=4, genes_per_call=3, cache_dir=str(tmp_path / "cache"))
    models = [
        ModelSpec("llama-text-32", by_name["llama-text-32"]["path"]),
        ModelSpec("neox-copy-48", by_name["neox-copy-48"]["path"]),
        ModelSpec("llama-text-32-again", by_name["llama-text-32"]["path"]),
        ModelSpec("broken", str(tmp_path / "no-such-model")),
    ]
    first = fingerprint_models(models, genes, cfg)
    assert "does not exist" in first["broken"].error
    good = [first[m.name] for m in models[:3]]
    for fp in good:
        assert fp.ok and not fp.cached, fp.error
        assert len(fp.alleles) == 6 and all(sum(f.values()) == pytest.approx(1) for f in fp.alleles)
        assert 0 < fp.tokens <= 6 * 4 * cfg.max_new_tokens and fp.seconds > 0
    assert good[0].n_params == by_name["llama-text-32"]["n_params"]
    d = distance([fp.alleles for fp in good])
    assert d[0, 2] == 0 and d[0, 1] > 0  # the same weights, seed and genes: the same alleles
    assert [g.representative for g in near_duplicates(["a", "b", "c"], d, {}, cfg.duplicate_threshold)] == ["a"]

    t0 = time.perf_counter()
    second = fingerprint_models(models[:3], genes, cfg)
    second_s = time.perf_counter() - t0
    assert all(second[n].cached and second[n].alleles == first[n].alleles for n in second)
    assert second_s < 2.0, f"a cached run took {second_s:.1f} s"

    # the stage, on the cached fingerprints: files, the copy dropped as a near-duplicate, priors
    from lensray.config.load import config_from_dict
    from lensray.stages.base import get_stage

    scores = tmp_path / "scores.csv"
    scores.write_text("model,score\nllama-text-32,0.5\nneox-copy-48,0.2\n")
    cfg_dict = {
        "backend": "hf", "output": str(tmp_path / "out"),
        "pool": {"models": [{"name": m.name, "path": m.path} for m in models[:3]]},
        "plan": {"sizes": [32, 64, 128], "budget": 128, "target": 256},
        "data": {"path": zoo_manifest["task"]}, "stages": {"pre": ["phylo"]}, "scheduler": {"synchronous": False},
        "phylo": {"genes": 6, "samples": 4, "genes_per_call": 3, "cache_dir": str(tmp_path / "cache"),
                  "scores": str(scores)},
    }
    cfg = config_from_dict(cfg_dict)
    pool = Pool([Candidate(m.name, m) for m in models[:3]])
    folder = tmp_path / "experiment"
    out = get_stage("pre", "phylo").run(cfg, pool, folder)
    assert out.names == ["llama-text-32", "neox-copy-48"]
    assert out.dropped == {"llama-text-32-again": "near-duplicate of llama-text-32 (d = 0)"}
    assert set(out.priors) == set(out.names) and out.priors["neox-copy-48"]["phylo_loss"] > 0
    for name in ("phylo_distances.parquet", "phylo_tree.nwk", "phylo_tree.png", "phylo.json"):
        assert (folder / name).is_file(), name
    assert read_matrix(folder / "phylo_distances.parquet")[0] == [m.name for m in models[:3]]

    # `lensray phylo`: the same stage on its own, from the cache, with the scores on the command line
    import json

    import yaml

    from lensray.cli import main

    config = tmp_path / "phylo.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in cfg_dict.items() if k != "phylo"} | {
        "phylo": {k: v for k, v in cfg_dict["phylo"].items() if k != "scores"}}))
    assert main(["phylo", str(config), "--scores", str(scores), "--json", str(tmp_path / "phylo.json")]) == 0
    summary = json.loads((tmp_path / "phylo.json").read_text())
    assert all(m["cached"] for m in summary["models"].values())
    assert summary["groups"] == [{"kept": "llama-text-32", "dropped": {"llama-text-32-again": 0.0}}]
    assert summary["score_prediction"]["known"] == 2 and set(summary["priors"]) == {m.name for m in models[:3]}
    assert (tmp_path / "out" / "lensray-phylo" / "phylo_tree.png").is_file()
