"""Aggregation Fine-Tuning's parts (lensray.stages.aggregate): the samples (numbering, the loss on
the target only, K and on/off-policy drafts), sampling proposals and their cache, the rounds of
propose-and-aggregate with a zoo model, and drafts that do not parse counted as wrong."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import pytest

from lensray.core.errors import ConfigError, DataError
from lensray.data.dataset import IGNORE_INDEX, DataConfig, encode_prompt, prepare_data, rendered_prompt
from lensray.data.design import PRESETS, render
from lensray.stages.aggregate.config import AggregateConfig
from lensray.stages.aggregate.samples import aggregation_prompt, aggregation_sample, pick_drafts
from lensray.zoo.build import ASPECT_SCHEMA, aspect_examples


def test_the_prompt_numbers_each_draft_on_its_own_line():
    prompt = aggregation_prompt("translate : a b ->", ["b c", "c \n d", "d e"])
    assert prompt == "translate : a b -> \n 1 . b c \n 2 . c d \n 3 . d e \n "
    with pytest.raises(ValueError, match="at least one draft"):
        aggregation_prompt("q", [])


def test_an_aggregation_sample_learns_the_target_only(tokenizer, tmp_path):
    design = replace(PRESETS["es-sde"], input_loss="on")
    rendered = render(aspect_examples(1, seed=0)[0], design, ASPECT_SCHEMA)
    assert rendered.loss_on_input
    sample = aggregation_sample(rendered, ["food : good", "food : bad"])
    assert sample.response == rendered.response and not sample.loss_on_input
    assert sample.prompt.startswith(rendered.prompt) and " 2 . food : bad " in sample.prompt
    # Written as data and tokenised the way a probe reads it: labels cover the response tokens only.
    path = tmp_path / "agg.jsonl"
    path.write_text("".join(json.dumps({"prompt": sample.prompt, "response": sample.response}) + "\n" for _ in range(8)))
    data = prepare_data(DataConfig(path=str(path), sizes=(4,), eval_size=2, max_length=128, cache_dir=str(tmp_path / "c")), tokenizer)
    row = data.train[0]
    n_prompt = len(encode_prompt(data_cfg := DataConfig(path=str(path), sizes=(4,), eval_size=2), tokenizer, sample.prompt))
    assert rendered_prompt(data_cfg, sample.prompt) == sample.prompt
    assert row["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:] and len(row["input_ids"]) > n_prompt


PROPOSALS = {"a": [["a1", "a2", "a3"]], "b": [["b1", "b2"]], "c": [["c1"]]}


def test_on_policy_drafts_are_the_candidates_own_first_k():
    assert pick_drafts(PROPOSALS, "a", 0, AggregateConfig(k=2)) == ["a1", "a2"]
    with pytest.raises(DataError, match="'b' has 2 proposals for query 0, aggregate.k=3 needs 3"):
        pick_drafts(PROPOSALS, "b", 0, AggregateConfig(k=3))


def test_off_policy_drafts_take_the_other_finalists_in_turn_never_the_candidates_own():
    cfg = AggregateConfig(k=3, proposers="finalists")
    assert pick_drafts(PROPOSALS, "a", 0, cfg) == ["b1", "c1", "b2"]
    assert pick_drafts(PROPOSALS, "c", 0, cfg) == ["a1", "b1", "a2"]
    with pytest.raises(DataError, match="the other finalists have 3 proposals"):
        pick_drafts(PROPOSALS, "a", 0, AggregateConfig(k=4, proposers="finalists"))
    with pytest.raises(DataError, match="no finalist but 'a'"):
        pick_drafts({"a": PROPOSALS["a"]}, "a", 0, cfg)


@pytest.mark.parametrize("field, value, match", [
    ("k", 0, "aggregate.k=0: must be at least 1"),
    ("rounds", 0, "aggregate.rounds=0"),
    ("temperature", 0.0, "aggregate.temperature=0.0: must be a positive number"),
    ("top_p", 1.5, "aggregate.top_p=1.5"),
    ("proposers", "others", "aggregate.proposers='others': must be one of self, finalists"),
])
def test_a_bad_setting_names_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        AggregateConfig(**{field: value})


def test_a_draft_that_does_not_parse_is_a_wrong_draft_not_an_error():
    from lensray.stages.aggregate.propose import draft_accuracy

    record = aspect_examples(1, seed=3)[0]
    right = render(record, PRESETS["es-sde"], ASPECT_SCHEMA).response
    data = DataConfig(path="unused.jsonl", design="es-sde", schema=ASPECT_SCHEMA)
    reference = json.dumps(record["targets"])
    assert draft_accuracy([[right, "{ { : ,", ""], [right]], [reference, reference], data) == [pytest.approx(1 / 3), 1.0]


def zoo_model(zoo_manifest, name: str):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    path = zoo_manifest["by_name"][name]["path"]
    return path, AutoModelForCausalLM.from_pretrained(path), PreTrainedTokenizerFast.from_pretrained(path)


@pytest.fixture(scope="module")
def copy_model(zoo_manifest):
    return zoo_model(zoo_manifest, "llama-copy-96")


def _cipher(zoo_manifest, tmp_path):
    return DataConfig(path=zoo_manifest["task"], sizes=(8,), eval_size=6, max_length=16, cache_dir=str(tmp_path / "c"))


def test_proposals_are_k_seeded_samples_cached_per_model_prompts_and_settings(zoo_manifest, tmp_path):
    from lensray.stages.aggregate.propose import Cost, ProposalCache, proposals, sample_texts

    path, model, tok = zoo_model(zoo_manifest, "gpt2-format-48")  # unsure of every symbol: its draws differ
    data = _cipher(zoo_manifest, tmp_path)
    prompts = [encode_prompt(data, tok, rendered_prompt(data, q)) for q in ("translate : a b c d e ->", "reverse : p o n m l ->")]
    cfg = AggregateConfig(k=4, max_new_tokens=6)
    cache = ProposalCache(tmp_path / "proposals")
    sampled, read = Cost(), Cost()
    drawn = proposals(model, tok, path, prompts, cfg, cache, sampled)
    assert sampled.generations == 8 and sampled.tokens > 8 * 9 and sampled.flops > 0 and sampled.seconds > 0
    assert [len(d) for d in drawn] == [4, 4] and len(set(drawn[0])) > 1  # sampled, not one greedy answer
    assert sample_texts(model, tok, prompts, cfg, 4) == drawn  # seeded
    assert proposals(None, tok, path, prompts, cfg, cache, read) == drawn  # a hit never touches the model
    assert read == sampled  # ... and costs what sampling them did
    assert len(list(cache.folder.glob("*.json"))) == 1
    # Another setting, other prompts or a changed model folder sample afresh, each into its own file.
    proposals(model, tok, path, prompts, AggregateConfig(k=4, max_new_tokens=6, temperature=1.0), cache)
    proposals(model, tok, path, prompts[:1], cfg, cache)
    assert len(list(cache.folder.glob("*.json"))) == 3
    weights = next(p for p in os.scandir(path) if p.name.endswith(".safetensors"))
    stat = os.stat(weights.path)
    os.utime(weights.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    try:
        proposals(model, tok, path, prompts, cfg, cache)
    finally:
        os.utime(weights.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(list(cache.folder.glob("*.json"))) == 4 and not list(cache.folder.glob(".*"))


def test_each_round_aggregates_the_previous_rounds_drafts(zoo_manifest, copy_model, tmp_path):
    from lensray.stages.aggregate.propose import aggregate, sample_texts

    _, model, tok = copy_model
    data = _cipher(zoo_manifest, tmp_path)
    queries = ["translate : a b c d e ->", "reverse : a b c d e ->"]
    drafts = [["b c d e f", "c d e f g"], ["e d c b a", "f e d c b"]]
    cfg = AggregateConfig(k=2, max_new_tokens=6)

    def listing(q, d):
        return encode_prompt(data, tok, aggregation_prompt(rendered_prompt(data, q), d))

    one = aggregate(model, tok, data, queries, drafts, cfg)
    assert one == [a[0] for a in sample_texts(model, tok, [listing(q, d) for q, d in zip(queries, drafts)], cfg, 1, greedy=True)]
    # Two rounds: K sampled aggregations of the drafts, then one greedy aggregation of those.
    middle = sample_texts(model, tok, [listing(q, d) for q, d in zip(queries, drafts)], cfg, 2)
    final = [a[0] for a in sample_texts(model, tok, [listing(q, d) for q, d in zip(queries, middle)], cfg, 1, greedy=True)]
    assert aggregate(model, tok, data, queries, drafts, AggregateConfig(k=2, max_new_tokens=6, rounds=2)) == final
    assert all(isinstance(a, str) for a in one + final)


def test_greedy_generation_gives_one_response_a_prompt(copy_model):
    import torch

    from lensray.probe.hf.recipe import ProbeConfig
    from lensray.probe.hf.worker import generate

    _, model, tok = copy_model
    with pytest.raises(ValueError, match="need a temperature > 0"):
        generate(model, [[1, 2]], tok.pad_token_id, tok.eos_token_id, ProbeConfig(), 0, 1, torch, torch.device("cpu"), samples=2)


# The `aggregate` post-sweep stage

STAGE_MODELS = ["llama-copy-96", "neox-copy-48", "gpt2-format-48"]


def stage_config(zoo_dir, tmp_path, **over) -> dict:
    raw = {
        "name": "aggregated", "backend": "hf", "zoo": str(zoo_dir), "pool": {"models": STAGE_MODELS},
        "data": {"path": "zoo:task", "max_length": 16, "eval_size": 12},
        "probe": {"metric": "task", "ntk_examples": 0},
        "plan": {"sizes": [16, 32, 64], "budget": 64, "target": 512},
        "scheduler": {"enabled": False}, "stages": {"post": ["aggregate"]},
        "aggregate": {"finalists": 3, "k": 3, "max_new_tokens": 8, "train_size": 0}, "output": str(tmp_path),
    }
    return raw | over


def finished_sweep(cfg, tmp_path):
    """A Selection of the pool as a sweep would leave it: each candidate's records of the real
    held-out queries (pretrained models: no weights kept), the first right on every other query."""
    from lensray.core.types import Observation, Pool
    from lensray.probe.hf.loading import load_tokenizer
    from lensray.probe.hf.recipe import ProbeSpec
    from lensray.report.rank import build_selection
    from lensray.sweep.record import SweepState

    c = cfg.candidates()[0]
    ev = prepare_data(cfg.candidate_data(c), load_tokenizer(ProbeSpec(c.name, c.model.path, cfg.candidate_data(c)))).eval
    obs = {}
    for k, cand in enumerate(cfg.candidates()):
        records = [{"id": int(row), "query": q, "correct": int(k == 0 and i % 2 == 0), "answer": "", "output": "",
                    "tokens": 15, "flops": 100.0 * (k + 1), "latency_s": 0.01} for i, (row, q) in enumerate(zip(ev["row"], ev["query"]))]
        obs[cand.name] = [Observation(cand.name, s, 1.0 + k - 0.1 * j, flops=s * 1e6,
                                      extra={"metric": "task", "queries": records}) for j, s in enumerate((16, 32, 64))]
    return build_selection(cfg, Pool(cfg.candidates()), SweepState(obs, [], {}), {}, wall_s=1.0), ev


def test_the_stage_aggregates_the_finalists_proposals_and_reports_both_accuracies_and_costs(zoo_dir, tmp_path):
    from lensray.config.load import config_from_dict
    from lensray.data.dataset import judge_outputs
    from lensray.report.files import write_report
    from lensray.stages.base import get_stage

    cfg = config_from_dict(stage_config(zoo_dir, tmp_path))
    selection, ev = finished_sweep(cfg, tmp_path)
    folder = tmp_path / "aggregated"
    selection, files = get_stage("post", "aggregate").run(cfg, selection, folder)
    a = selection.doc["aggregate"]
    written = json.loads(files[0].read_text())
    assert files == [folder / "aggregate.json"] and {k: v for k, v in written.items() if k != "per_query"} == a
    assert a["selected"] == "llama-copy-96" and a["finalists"] == STAGE_MODELS and a["queries"] == 12
    assert a["proposals_each"] == 1 and a["fine_tuned"] == dict.fromkeys(STAGE_MODELS, False)
    assert a["accuracy"]["single"] == 0.5 and a["accuracy"]["finalists"]["gpt2-format-48"] == 0.0
    assert 0 <= a["accuracy"]["aggregated"] <= 1 and all(0 <= v <= 1 for v in a["accuracy"]["drafts"].values())
    # 3 proposals (one from each finalist) and one greedy aggregation a query
    cost = a["cost_per_query"]
    assert cost["aggregated"]["generations"] == 4 and cost["single"] == pytest.approx({"generations": 1, "flops": 100.0, "seconds": 0.01})
    assert cost["aggregated"]["flops"] > 0 and cost["aggregated"]["seconds"] > 0
    # A second run reads the proposals from the cache, costs them the same and answers the same.
    proposal_files = sorted((folder / "aggregate_proposals").glob("*.json"))
    assert len(proposal_files) == 3
    again, _ = get_stage("post", "aggregate").run(cfg, finished_sweep(cfg, tmp_path)[0], folder)
    assert again.doc["aggregate"]["accuracy"] == a["accuracy"]
    assert again.doc["aggregate"]["cost_per_query"]["aggregated"]["flops"] == cost["aggregated"]["flops"]
    assert sorted((folder / "aggregate_proposals").glob("*.json")) == proposal_files
    # Two rounds: 3 sampled aggregations, then the final one.
    two = config_from_dict(stage_config(zoo_dir, tmp_path, aggregate={"finalists": 3, "k": 3, "max_new_tokens": 8, "rounds": 2, "train_size": 0}))
    r2, _ = get_stage("post", "aggregate").run(two, finished_sweep(two, tmp_path)[0], tmp_path / "two")
    assert r2.doc["aggregate"]["cost_per_query"]["aggregated"]["generations"] == 7
    text = (write_report(selection, folder)[2]).read_text()
    assert "## Aggregation (propose, then aggregate)" in text and "| llama-copy-96 alone (greedy) | 0.500 | 1 |" in text
    # Per query: its drafts, one from each finalist in order, and the answer judged against its reference.
    per_query = written["per_query"]
    assert [q["id"] for q in per_query] == sorted(int(r) for r in ev["row"]) and all(len(q["drafts"]) == 3 for q in per_query)
    refs = dict(zip(ev["row"], ev["reference"]))
    judged = judge_outputs([q["answer"] for q in per_query], [refs[q["id"]] for q in per_query], None, None)
    assert [q["correct"] for q in per_query] == [int(r) for r, _ in judged]
    assert a["accuracy"]["aggregated"] == pytest.approx(sum(q["correct"] for q in per_query) / 12)


def test_a_training_size_the_data_cannot_give_names_the_setting(zoo_dir, tmp_path):
    from lensray.config.load import config_from_dict
    from lensray.stages.base import get_stage

    cfg = config_from_dict(stage_config(zoo_dir, tmp_path, aggregate={"finalists": 3, "k": 3, "max_new_tokens": 8,
                                                                      "train_size": 5000}))
    with pytest.raises(DataError, match=r"aggregate.train_size=5000: the fine-tune takes that many training queries and 16 more"):
        get_stage("post", "aggregate").run(cfg, finished_sweep(cfg, tmp_path)[0], tmp_path / "aggregated")


@pytest.mark.parametrize("over, match", [
    ({"probe": {"metric": "loss", "ntk_examples": 0}}, "the aggregate stage judges each held-out query's answer, but probe.metric is 'loss'"),
    ({"aggregate": {"finalists": 1}}, "aggregate.finalists=1: aggregating needs at least 2 finalists"),
])
def test_the_stage_checks_its_config_before_anything_runs(zoo_dir, tmp_path, over, match):
    from lensray.config.load import config_from_dict

    with pytest.raises(ConfigError, match=match):
        config_from_dict(stage_config(zoo_dir, tmp_path, **over))


def test_with_the_stage_every_probe_keeps_its_fine_tuned_weights(zoo_dir, tmp_path):
    from lensray.config.load import config_from_dict
    from lensray.probe.hf.backend import BACKEND

    for post, kept in ((["aggregate"], True), (["route", "aggregate"], True), ([], False)):
        cfg = config_from_dict(stage_config(zoo_dir, tmp_path, stages={"post": post}))
        spec = BACKEND.spec(cfg, cfg.candidates()[0], [16], "t0")
        assert bool(spec.probe.weights_path) is kept
        assert not kept or spec.probe.weights_path.endswith("/weights/llama-copy-96")


def test_the_demo_config_loads_with_the_stage():
    from pathlib import Path

    from lensray.config.load import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "aggregate-demo.yaml")
    assert cfg.stages.post == ["aggregate"] and cfg.aggregate.k == 5 and cfg.aggregate.finalists == 3
    assert cfg.probe.metric == "task" and len(cfg.candidates()) == 3


@pytest.mark.slow
def test_the_stage_tunes_the_selected_model_to_aggregate_and_scores_it_on_the_same_drafts(zoo_dir, ray_local, tmp_path):
    from lensray.config.load import config_from_dict
    from lensray.stages.aggregate.tune import EVAL_ROWS
    from lensray.stages.base import get_stage

    aggregate = {"finalists": 3, "k": 3, "max_new_tokens": 8, "train_size": 32}
    cfg = config_from_dict(stage_config(zoo_dir, tmp_path, aggregate=aggregate, probe={"metric": "task", "ntk_examples": 0, "epochs": 1}))
    folder = tmp_path / "aggregated"
    selection, _ = get_stage("post", "aggregate").run(cfg, finished_sweep(cfg, tmp_path)[0], folder)
    a = selection.doc["aggregate"]
    t = a["tune"]
    assert t["examples"] == 32 and t["proposers"] == "self" and t["flops"] > 0 and t["proposal_flops"] > 0
    assert (tmp_path / "aggregated" / "weights" / "llama-copy-96.aggregator").is_dir() and t["weights"].endswith("llama-copy-96.aggregator")
    assert 0 <= a["accuracy"]["aggregated_tuned"] <= 1
    assert a["cost_per_query"]["aggregated_tuned"]["generations"] == a["cost_per_query"]["aggregated"]["generations"] == 4
    # the training samples: training-pool queries (never held out), each listing K of the model's own drafts
    samples = [json.loads(line) for line in open(folder / "aggregate_train.jsonl")]
    held = {q["query"] for q in json.loads((folder / "aggregate.json").read_text())["per_query"]}
    assert len(samples) == 32 + EVAL_ROWS and all(" 3 . " in s["prompt"] and " 4 . " not in s["prompt"] for s in samples)
    assert not held & {s["prompt"].split(" \n ")[0] for s in samples}
    per_query = json.loads((folder / "aggregate.json").read_text())["per_query"]
    assert all(set(q) >= {"answer_tuned", "correct_tuned"} for q in per_query)
    # another training size is a fine-tune of its own (not a resumed run of the first)
    bigger = config_from_dict(stage_config(zoo_dir, tmp_path, aggregate=aggregate | {"train_size": 48},
                                           probe={"metric": "task", "ntk_examples": 0, "epochs": 1}))
    again, _ = get_stage("post", "aggregate").run(bigger, finished_sweep(bigger, tmp_path)[0], folder)
    assert again.doc["aggregate"]["tune"]["examples"] == 48


# The `aggregate` design: Aggregation Fine-Tuning probed and ranked in the sweep

def design_config(zoo_dir, tmp_path, **over) -> dict:
    raw = {
        "name": "aft", "backend": "hf", "zoo": str(zoo_dir),
        "pool": {"models": ["llama-copy-96"], "designs": ["plain", "aggregate"]},
        "data": {"path": "zoo:task", "max_length": 16, "eval_size": 24},
        "probe": {"metric": "task", "ntk_examples": 0, "max_new_tokens": 8, "epochs": 2, "lr": 0.002},
        "plan": {"sizes": [64, 128], "budget": 128, "target": 256},
        "scheduler": {"enabled": False}, "resources": {"workers": 1, "cpus_per_worker": 0.9},
        "aggregate": {"k": 3, "max_new_tokens": 8}, "output": str(tmp_path),
    }
    return raw | over


def test_the_aggregate_design_fine_tunes_on_the_first_designs_samples(zoo_dir, tmp_path):
    from lensray.config.load import config_from_dict
    from lensray.probe.hf.backend import BACKEND
    from lensray.probe.hf.recipe import ProbeSpec

    cfg = config_from_dict(design_config(zoo_dir, tmp_path))
    plain, aft = cfg.candidates()
    assert (plain.name, aft.name) == ("llama-copy-96+plain", "llama-copy-96+aggregate")
    assert cfg.candidate_data(aft) == cfg.candidate_data(plain) and cfg.candidate_data(aft).design == "plain"
    spec = BACKEND.spec(cfg, aft, [64, 128], "t0")
    assert spec.aggregate == cfg.aggregate and BACKEND.spec(cfg, plain, [64, 128], "t1").aggregate is None
    assert ProbeSpec.from_dict(spec.to_dict()) == spec  # what a Tune config carries to the workers


@pytest.mark.parametrize("over, match", [
    ({"pool": {"models": ["llama-copy-96"], "designs": ["aggregate", "plain"]}}, r"pool.designs\[0\]='aggregate'.*list that design first"),
    ({"probe": {"metric": "loss"}}, "probe.metric"),
])
def test_the_aggregate_design_is_checked_before_anything_runs(zoo_dir, tmp_path, over, match):
    from lensray.config.load import config_from_dict

    with pytest.raises(ConfigError, match=match):
        config_from_dict(design_config(zoo_dir, tmp_path, **over))


def test_a_probe_spec_under_the_aggregate_design_needs_the_task_metric(zoo_manifest, tmp_path):
    from lensray.probe.hf.recipe import ProbeConfig, ProbeSpec

    with pytest.raises(ValueError, match="ProbeSpec.aggregate.*metric='task'"):
        ProbeSpec("m+aggregate", "m", _cipher(zoo_manifest, tmp_path), ProbeConfig(metric="loss"), aggregate=AggregateConfig())


def test_aggregation_rows_list_the_models_own_k_drafts_and_learn_the_whole_target_only(zoo_manifest, copy_model, tmp_path):
    from lensray.stages.aggregate.probe import aggregation_rows
    from lensray.stages.aggregate.propose import Cost, sample_texts

    _, model, tok = copy_model
    data = _cipher(zoo_manifest, tmp_path)
    samples = [("translate : a b c d e ->", "b c d e f"), ("reverse : p o n m l ->", "l m n o p")]
    cfg = AggregateConfig(k=3, max_new_tokens=6)
    cost = Cost()
    rows, dropped = aggregation_rows(model, tok, data, samples, cfg, 64, cost)
    assert dropped == 0 and len(rows) == 2 and cost.generations == 6
    drafts = sample_texts(model, tok, [encode_prompt(data, tok, p) for p, _ in samples], cfg, 3)  # seeded: the same draws
    for (ids, labels), (prompt, response), own in zip(rows, samples, drafts):
        learned = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
        assert tok.decode(learned, skip_special_tokens=True).split() == response.split()
        assert learned[-1] == tok.eos_token_id and labels == [IGNORE_INDEX] * (len(ids) - len(learned)) + learned
        assert ids[: len(ids) - len(learned)] == encode_prompt(data, tok, aggregation_prompt(prompt, own))
    # a listing and target that do not fit are left out whole, never cut
    short, dropped = aggregation_rows(model, tok, data, samples, cfg, 12, Cost())
    assert short == [] and dropped == 2


@pytest.mark.slow
def test_with_two_workers_rank_0_proposes_and_every_rank_trains_on_its_aggregation_samples(zoo_manifest, ray_local, tmp_path):
    from lensray.probe.hf.driver import run_probe
    from lensray.probe.hf.recipe import ProbeConfig, ProbeSpec

    data = replace(_cipher(zoo_manifest, tmp_path), sizes=(32,), eval_size=8)
    spec = ProbeSpec("llama-copy-96+aggregate", zoo_manifest["by_name"]["llama-copy-96"]["path"], data,
                     ProbeConfig(metric="task", num_workers=2, cpus_per_worker=0.9, micro_batch=4, epochs=1,
                                 max_new_tokens=8, ntk_examples=0, storage_path=str(tmp_path / "runs")),
                     aggregate=AggregateConfig(k=2, max_new_tokens=8))
    [obs] = run_probe(spec)
    x = obs.extra
    assert x["num_workers"] == 2 and x["aggregate_samples"] + x["aggregate_dropped"] == 32 and x["aggregate_samples"] > 0
    # one epoch at a global batch of 8: the plain pass, then the plain and aggregation samples together
    assert x["steps"] == 32 // 8 + math.ceil((32 + x["aggregate_samples"]) / 8)
    assert x["generations_per_query"] == 3 and len(x["queries"]) == 8 and 0 <= x["greedy_accuracy"] <= 1


@pytest.mark.slow
def test_a_sweep_ranks_the_aggregate_design_with_a_plain_one_the_bench_answers_alike_and_verify_scores_it(zoo_dir, ray_local, tmp_path):
    from lensray.config.load import config_from_dict
    from lensray.bench.aggregate import bench_aggregate
    from lensray.pipeline import run_select
    from lensray.verify import run_verify

    # the stage keeps every probe's weights (it aggregates the two finalists' drafts)
    cfg = config_from_dict(design_config(zoo_dir, tmp_path, stages={"post": ["aggregate"]},
                                         aggregate={"k": 3, "max_new_tokens": 8, "finalists": 2, "train_size": 0}))
    sel = run_select(cfg, quiet=True)
    doc = json.loads((tmp_path / "aft" / "selection.json").read_text())
    assert doc["ranked_by"] == "error" and {e["candidate"] for e in doc["ranking"]} == {c.name for c in cfg.candidates()}
    assert all(e["status"] == "finished" and all(0 < x < 1 for x in e["losses"]) for e in doc["ranking"])
    plain, aft = (sel.observations[c.name] for c in cfg.candidates())
    for p, a in zip(plain, aft):
        x = a.extra
        assert a.loss == x["error_smoothed"] and 0 <= x["greedy_accuracy"] <= 1 and 0 <= x["draft_accuracy"] <= 1
        assert x["generations_per_query"] == 3 * 1 + 1 and x["aggregate_samples"] + x["aggregate_dropped"] == a.size
        assert x["aggregate_samples"] > 0 and x["steps"] > p.extra["steps"] and "greedy_accuracy" not in p.extra
        assert a.flops > p.flops + x["aggregate_draft_flops"] * 0.99  # both passes and the drafts are spent
        assert len(x["queries"]) == 24 and all(q["tokens"] > 0 for q in x["queries"])
    # `lensray bench aggregate` answers again from the weights the probes kept: as they scored
    bench = bench_aggregate(cfg, [1, 2])
    rows = {row["candidate"]: row for row in bench["candidates"]}
    plain_name, aft_name = (c.name for c in cfg.candidates())
    assert set(rows) == {plain_name, aft_name} and rows[aft_name]["design"] == "aggregate"
    assert rows[aft_name]["greedy"]["accuracy"] == aft[-1].extra["greedy_accuracy"]
    assert rows[aft_name]["rounds"]["1"]["accuracy"] == aft[-1].extra["accuracy"]
    assert rows[plain_name]["greedy"]["accuracy"] == plain[-1].extra["accuracy"]
    for row in rows.values():
        assert row["rounds"]["1"]["generations"] == 4 and row["rounds"]["2"]["generations"] == 7
        assert row["rounds"]["2"]["flops_ratio"] > row["rounds"]["1"]["flops_ratio"] > 1
    result = run_verify(cfg)
    assert set(result["loss_at_target"]) == {c.name for c in cfg.candidates()}
    truth = result["loss_at_target"]
    assert all(0 < e < 1 for e in truth.values()) and 0 < result["fraction_of_full"] < 1
    # relacc is defined where the candidates' errors at T differ (else every pick is as good)
    assert result["relacc"] is None if len(set(truth.values())) == 1 else 0 <= result["relacc"] <= 100
