"""The `route` post-sweep stage: per-query records judged from generations, the held-out queries
the same for every candidate, RouteData built from the records a sweep kept, the stage's files
and report section, `lensray route` on a finished selection's folder, its config checks, and a
live probe keeping the records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lensray.config.load import config_from_dict
from lensray.core.errors import ConfigError, DataError
from lensray.core.types import Observation, Pool, Status
from lensray.zoo.build import ASPECT_SCHEMA

MODELS = ["llama-text-32", "mistral-text-96", "gpt2-mix-128"]
SIZES = [16, 32, 64]
N = 40


def route_config(zoo_dir, tmp_path, **over) -> dict:
    raw = {
        "name": "routed",
        "backend": "hf",
        "zoo": str(zoo_dir),
        "pool": {"models": MODELS},
        "data": {"path": "zoo:aspects", "max_length": 64, "eval_size": N, "design": "es-sde"},
        "probe": {"metric": "task", "ntk_examples": 0},
        "plan": {"sizes": SIZES, "budget": 64, "target": 512},
        "scheduler": {"enabled": False},
        "stages": {"post": ["route"]},
        "route": {"finalists": 3, "folds": 4},
        "output": str(tmp_path),
    }
    for key, value in over.items():
        raw[key] = value if not isinstance(value, dict) else {**raw.get(key, {}), **value}
    return raw


def records(strength: str, size: int, ids=range(N), cost: float = 1.0) -> list[dict]:
    """Per-query records of a finalist right on the queries about `strength` (food or service),
    at `size` (its answer to a query it gets wrong names the size, so sizes can be told apart)."""
    out = []
    for i in ids:
        topic = "food" if i % 2 == 0 else "service"
        right = topic == strength
        out.append({"id": i, "query": f"the {topic} was fine , visit {i}", "correct": int(right),
                    "answer": f"gold-{i}" if right else f"wrong-{i}-{size}", "output": "...", "tokens": 10,
                    "flops": 20.0 * cost, "latency_s": 0.01 * cost})
    return out


def observations(name: str, strength: str | None, cost: float = 1.0, offset: float = 0.0) -> list[Observation]:
    """A candidate's probe at every size; per-query records at the last two (none: strength None)."""
    obs = []
    for k, size in enumerate(SIZES):
        extra = {"metric": "task"}
        if strength is not None and k > 0:
            extra["queries"] = records(strength, size, cost=cost)[::-1]  # any order: read by id
        obs.append(Observation(name, size, 0.5 - 0.1 * k + offset, flops=size * 1e6, extra=extra))
    return obs


def sweep_state(strengths: dict[str, tuple[str, float]]):
    from lensray.sweep.record import SweepState

    obs = {name: observations(name, strength, cost, 0.05 * i) for i, (name, (strength, cost)) in enumerate(strengths.items())}
    return SweepState(obs, [], {})


def selection_of(cfg, state):
    from lensray.report.rank import build_selection

    return build_selection(cfg, Pool(cfg.candidates()), state, {}, wall_s=1.0)


STRENGTHS = {"llama-text-32": ("food", 1.0), "mistral-text-96": ("service", 2.0), "gpt2-mix-128": ("food", 3.0)}


# Per-query records, judged from generations


def test_each_output_is_judged_right_or_wrong_with_one_answer_whatever_the_design():
    from lensray.data.dataset import canonical_answer, judge_outputs, score_outputs
    from lensray.data.design import SampleDesign, design_from_config

    lines, js = design_from_config("es-sde"), SampleDesign(output_format="json", unmentioned="omit")
    refs = [json.dumps({"food": "positive", "service": "negative"}), json.dumps({"price": "neutral"})]
    as_lines = ["food : positive \n service : negative \n price : none", "food : none \n service : none \n price : none"]
    as_json = ['{ "food" : "positive" , "service" : "negative" }', "{ oops"]
    assert judge_outputs(as_lines, refs, lines, ASPECT_SCHEMA)[0][0] is True
    assert judge_outputs(as_lines, refs, lines, ASPECT_SCHEMA)[1][0] is False  # price left unmentioned
    assert [r for r, _ in judge_outputs(as_json, refs, js, ASPECT_SCHEMA)] == [True, False]  # malformed: wrong
    # one answer in two designs' formats is one vote; a malformed output is its own text
    assert canonical_answer(as_lines[0], lines, ASPECT_SCHEMA) == canonical_answer(as_json[0], js, ASPECT_SCHEMA)
    assert canonical_answer(as_json[1], js, ASPECT_SCHEMA) == "{ oops"
    # all targets right is a query right: never more queries right than targets
    judged = judge_outputs(as_lines, refs, lines, ASPECT_SCHEMA)
    assert np.mean([r for r, _ in judged]) <= score_outputs(as_lines, refs, lines, ASPECT_SCHEMA).accuracy
    # plain data: exact match after whitespace normalisation, as score_plain
    assert judge_outputs(["a  b ", "a"], [json.dumps("a b"), json.dumps("b")], None, None) == [(True, "a b"), (False, "a")]
    with pytest.raises(ValueError, match="2 outputs for 1 references"):
        judge_outputs(["a", "b"], [json.dumps("a")], None, None)


def test_held_out_queries_are_the_same_for_every_design_and_their_prompts_rebuild(zoo_manifest, tmp_path):
    from lensray.data.dataset import DataConfig, prepare_data, prompt_ids
    from lensray.probe.hf.loading import load_tokenizer
    from lensray.probe.hf.recipe import ProbeSpec

    evals = {}
    for design in ("es-sde", {"output_format": "json", "labels": "numeric"}):
        cfg = DataConfig(path=zoo_manifest["aspects"], sizes=(32,), eval_size=24, max_length=64, design=design,
                         schema=ASPECT_SCHEMA, cache_dir=str(tmp_path))
        tok = load_tokenizer(ProbeSpec("m", zoo_manifest["by_name"]["llama-text-32"]["path"], cfg))
        ev = prepare_data(cfg, tok).eval
        assert [prompt_ids(cfg, tok, q) for q in ev["query"]] == list(ev["prompt_ids"])  # what serving generates from
        evals[cfg.design] = (list(ev["row"]), list(ev["query"]))
    a, b = evals.values()
    assert a == b and len(set(a[0])) == 24
    raw = [json.loads(line) for line in open(zoo_manifest["aspects"])]
    assert all(raw[i]["text"] == q for i, q in zip(*a))  # the record's text, before any design


# RouteData from the records


def test_route_data_stacks_the_finalists_records_of_their_last_size_by_query_id():
    from lensray.stages.route.queries import query_results, route_data

    state = sweep_state(STRENGTHS)
    results = query_results(state.observations)
    assert {n: r.size for n, r in results.items()} == dict.fromkeys(MODELS, 64)
    data = route_data(results, ["mistral-text-96", "llama-text-32"])
    assert data.finalists == ["mistral-text-96", "llama-text-32"] and data.n == N
    assert list(data.queries[:2]) == ["the food was fine , visit 0", "the service was fine , visit 1"]
    assert data.correct[:2].tolist() == [[False, True], [True, False]]
    assert data.answers[0] == ["wrong-0-64", "gold-0"]  # the last size's answers, not size 32's
    assert data.flops[0].tolist() == [40.0, 20.0] and data.latency[0].tolist() == pytest.approx([0.02, 0.01])
    # a candidate without records (probe.metric: loss) has no results
    assert query_results({"x": observations("x", None)}) == {}


def test_finalists_scored_on_other_queries_are_refused_naming_them():
    from lensray.stages.route.queries import QueryResults, route_data

    a = QueryResults("a", 64, records("food", 64))
    fewer = QueryResults("b", 64, records("food", 64, ids=range(1, N)))
    with pytest.raises(DataError, match=r"finalists 'a' and 'b' were scored on different held-out queries \(40 and 39"):
        route_data({"a": a, "b": fewer}, ["a", "b"])
    reworded = QueryResults("b", 64, [dict(r, query=r["query"].upper()) for r in records("food", 64)])
    with pytest.raises(DataError, match="query id 0 reads differently for 'a' and 'b'"):
        route_data({"a": a, "b": reworded}, ["a", "b"])


def test_finalists_are_the_best_ranked_with_records_that_did_not_fail():
    from lensray.stages.route.queries import QueryResults, pick_finalists

    res = {n: QueryResults(n, 64, []) for n in ("a", "b", "c", "d")}
    doc = {"ranking": [{"candidate": "a", "status": Status.FINISHED}, {"candidate": "x", "status": Status.FINISHED},
                       {"candidate": "b", "status": Status.STOPPED}, {"candidate": "c", "status": Status.FAILED},
                       {"candidate": "d", "status": Status.STOPPED}]}
    assert pick_finalists(doc, res, 2) == ["a", "b"] and pick_finalists(doc, res, 5) == ["a", "b", "d"]
    with pytest.raises(DataError, match="1 candidate of the selection has per-query results: a; routing needs at least 2"):
        pick_finalists({"ranking": doc["ranking"][:2]}, res, 3)


# The stage and `lensray route`


def test_the_stage_writes_its_evaluation_router_and_report_section(zoo_dir, tmp_path):
    import pyarrow.parquet as pq

    from lensray.report.files import write_report
    from lensray.stages.base import get_stage
    from lensray.stages.route.saved import load_router

    cfg = config_from_dict(route_config(zoo_dir, tmp_path))
    selection = selection_of(cfg, sweep_state(STRENGTHS))
    folder = tmp_path / "routed"
    selection, files = get_stage("post", "route").run(cfg, selection, folder)
    assert sorted(p.name for p in files) == ["route.json", "route.png", "route_router.json", "route_router.npz"]
    r = selection.doc["route"]
    assert r == {**json.loads((folder / "route.json").read_text()), "sizes": dict.fromkeys(r["finalists"], 64)}
    assert set(r["finalists"]) == set(MODELS) and r["queries"] == N and r["folds"] == 4
    # the food and service specialists complement each other: routing beats every single finalist
    assert r["scores"]["oracle"]["accuracy"] == 1.0
    assert r["scores"]["max_conf"]["accuracy"] > max(r["scores"][f"single:{m}"]["accuracy"] for m in MODELS)
    saved = load_router(folder)
    assert [f.name for f in saved.finalists] == r["finalists"] and saved.queries == N
    by_name = {f.name: f for f in saved.finalists}
    assert by_name["mistral-text-96"].model.endswith("models/mistral-text-96")
    assert by_name["mistral-text-96"].data["design"] == "es-sde" and by_name["gpt2-mix-128"].latency_s == pytest.approx(0.03)
    conf = saved.router.predict_proba(["the food was fine , visit 99", "the service was fine , visit 98"])
    food, service = r["finalists"].index("llama-text-32"), r["finalists"].index("mistral-text-96")
    assert conf[0, food] > 0.5 > conf[0, service] and conf[1, service] > 0.5 > conf[1, food]

    report = write_report(selection, folder)
    text = (folder / "report.md").read_text()
    assert "## Routing (SelectLLM)" in text and "| **weighted_max_conf** (served) |" in text and "![routing](route.png)" in text
    assert json.loads((folder / "selection.json").read_text())["route"]["policy"] == "weighted_max_conf"
    extras = [json.loads(e) for e in pq.read_table(folder / "observations.parquet").column("extra").to_pylist()]
    assert extras and all("queries" not in e for e in extras)  # observations.parquet stays small
    queries = pq.read_table(folder / "queries.parquet").to_pylist()
    assert folder / "queries.parquet" in report and len(queries) == 3 * N
    assert {q["size"] for q in queries} == {64} and set(queries[0]) >= {"candidate", "id", "query", "correct", "latency_s"}


def test_lensray_route_routes_a_finished_selection_without_sweeping_again(zoo_dir, tmp_path, capsys):
    import yaml

    from lensray.cli import main
    from lensray.report.files import write_report
    from lensray.sweep.record import STATE_FILE, SweepRecord

    raw = route_config(zoo_dir, tmp_path, stages={"post": []})  # a sweep that did not route
    cfg = config_from_dict(raw)
    state = sweep_state(STRENGTHS)
    folder = tmp_path / "routed"
    folder.mkdir()
    record = SweepRecord(folder / STATE_FILE)
    for obs in state.observations.values():
        for o in obs:
            record.observation(o)
    write_report(selection_of(cfg, state), folder)
    assert "Routing" not in (folder / "report.md").read_text()
    config = tmp_path / "routed.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["route", str(config), "--set", "route.finalists=2", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "routed 40 held-out queries between 2 finalists" in out and "<- served" in out
    doc = json.loads((folder / "selection.json").read_text())
    assert len(doc["route"]["finalists"]) == 2 and doc["selected"] == doc["ranking"][0]["candidate"]
    assert json.loads((tmp_path / "r.json").read_text())["finalists"] == doc["route"]["finalists"]
    assert "## Routing (SelectLLM)" in (folder / "report.md").read_text() and (folder / "route_router.npz").is_file()
    # a folder with no selection says what to run
    assert main(["route", str(config), "--set", "name=elsewhere"]) == 2
    assert "holds no finished selection (no selection.json): run `lensray select CONFIG` first" in capsys.readouterr().err


def test_bench_route_times_the_router_and_refuses_a_selection_that_did_not_route(zoo_dir, tmp_path, capsys):
    import yaml

    from lensray.bench.route import time_router
    from lensray.cli import main
    from lensray.report.files import write_report
    from lensray.sweep.record import STATE_FILE, SweepRecord

    raw = route_config(zoo_dir, tmp_path, stages={"post": []})
    cfg = config_from_dict(raw)
    folder = tmp_path / "routed"
    folder.mkdir()
    record = SweepRecord(folder / STATE_FILE)
    for obs in sweep_state(STRENGTHS).observations.values():
        for o in obs:
            record.observation(o)
    write_report(selection_of(cfg, sweep_state(STRENGTHS)), folder)
    config = tmp_path / "routed.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["bench", "route", str(config)]) == 2  # no router yet: refused before Ray starts
    assert "holds no trained router" in capsys.readouterr().err
    assert main(["bench", "route", str(config), "--requests", "0"]) == 2
    assert "--requests 0 / --repeats 5: both must be at least 1" in capsys.readouterr().err

    queries = [r["query"] for r in records("food", 64)]
    correct = np.array([[r["correct"] for r in records(s, 64)] for s in ("food", "service")]).T
    timed = time_router(cfg, queries, correct, repeats=2)
    assert set(timed) == {"train_s", "score_ms_per_query"} and all(v > 0 for v in timed.values())


def test_route_settings_are_checked_before_ray_naming_the_field(zoo_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"route stage routes on each held-out query's result, but probe.metric is 'loss'"):
        config_from_dict(route_config(zoo_dir, tmp_path, probe={"metric": "loss"}))
    with pytest.raises(ConfigError, match=r"route.folds=50 exceeds data.eval_size=40"):
        config_from_dict(route_config(zoo_dir, tmp_path, route={"folds": 50}))
    with pytest.raises(ConfigError, match=r"route.finalists=1: routing needs at least 2"):
        config_from_dict(route_config(zoo_dir, tmp_path, route={"finalists": 1}))
    with pytest.raises(ConfigError, match=r"route.policy='max_confidence': unknown.*Did you mean 'max_conf'"):
        config_from_dict(route_config(zoo_dir, tmp_path, route={"policy": "max_confidence"}))
    with pytest.raises(ConfigError, match=r"unknown key route.fold\. Did you mean 'folds'"):
        config_from_dict(route_config(zoo_dir, tmp_path, route={"fold": 3}))
    # without the stage in stages.post, route settings are only the section's own checks
    assert config_from_dict(route_config(zoo_dir, tmp_path, stages={"post": []}, probe={"metric": "loss"})).route.folds == 4


# A live probe keeps the records


@pytest.mark.slow
def test_a_task_probe_keeps_each_held_out_querys_result_and_cost(zoo_manifest, ray_local, tmp_path):
    from lensray.data.dataset import DataConfig, judge_outputs
    from lensray.probe.hf.driver import run_probe
    from lensray.probe.hf.recipe import ProbeConfig, ProbeSpec
    from lensray.probe.hf.worker import QUERIES_KEY, QUERY_FIELDS

    data = DataConfig(path=zoo_manifest["aspects"], sizes=(16, 32), eval_size=12, max_length=64, design="es-sde",
                      schema=ASPECT_SCHEMA, cache_dir=str(tmp_path / "cache"))
    spec = ProbeSpec(candidate="llama-text-32+es-sde", model=zoo_manifest["by_name"]["llama-text-32"]["path"], data=data,
                     probe=ProbeConfig(metric="task", num_workers=2, cpus_per_worker=0.9, micro_batch=8, epochs=1,
                                       max_new_tokens=24, ntk_examples=0, storage_path=str(tmp_path / "runs"),
                                       weights_path=str(tmp_path / "weights" / "llama-text-32+es-sde")))
    observations = run_probe(spec)
    first, last = (o.extra[QUERIES_KEY] for o in observations)
    assert [(q["id"], q["query"]) for q in first] == [(q["id"], q["query"]) for q in last]  # both ranks' shares, in order
    assert len(last) == 12 and all(set(q) == set(QUERY_FIELDS) for q in last)
    n_params = observations[-1].extra["n_params"]
    for q in last:
        assert q["tokens"] > 0 and q["flops"] == 2.0 * n_params * q["tokens"] and q["latency_s"] > 0
    refs = [json.dumps({k: v for k, v in r["targets"].items() if v}) for r in
            (json.loads(line) for i, line in enumerate(open(zoo_manifest["aspects"])) if i in {q["id"] for q in last})]
    ids = sorted(q["id"] for q in last)
    by_id = {q["id"]: q for q in last}
    judged = judge_outputs([by_id[i]["output"] for i in ids], refs, data.sample_design, ASPECT_SCHEMA)
    assert [(bool(by_id[i]["correct"]), by_id[i]["answer"]) for i in ids] == judged

    # rank 0 kept the last size's fine-tuned weights: loaded as serving loads them, they answer
    # the held-out queries exactly as the probe recorded
    from lensray.stages.route.saved import Finalist
    from lensray.stages.route.serve import FinalistModel

    weights = spec.probe.weights_path
    assert all(o.extra["weights"] == weights for o in observations)
    assert not (tmp_path / "weights" / "llama-text-32+es-sde.partial").exists()
    served = FinalistModel(Finalist(spec.candidate, weights, data.to_dict(), fine_tuned=True), spec.probe)
    answers = served.answer([by_id[i]["query"] for i in ids])
    assert [a["output"] for a in answers] == [by_id[i]["output"] for i in ids]
    assert [a["answer"] for a in answers] == [by_id[i]["answer"] for i in ids]
