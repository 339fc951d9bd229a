"""docs/benchmarks.md's generator (lensray.bench.docs): the tables hold the benches' figures.

Runs `bench curves` in-process on the packaged curves (three methods, a few seconds, no Ray) and
its suite on two synthetic pools (two methods), and feeds hand-made `bench select` / `scale` / `probe` results of the shape those benches return, and
hand-made `lensray verify --json` results of the shape lensray/verify.py writes.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from pathlib import Path

import pytest

import lensray.bench.curves as bench_curves_module
from lensray.bench import docs
from lensray.bench.curves import (
    GAMMAS,
    bench_curves,
    bench_json,
    budgets,
    fmt,
    round2,
    run_bench_curves,
)
from lensray.core.curves import packaged_curves, read_curves
from lensray.predict.methods import DEFAULT_PREDICTOR, predict
from lensray.predict.metrics import pearcorr, relacc

METHODS = ["AtS", "ZeroShot", "local"]
ONE_FIT_MS = {"local": 0.123, "LensLLM": 1.5, "RectifiedFit": 1.75}


def select_cell(relacc_, pearcorr_, frac, full):
    return {"relacc": relacc_, "pearcorr": pearcorr_, "fraction_of_all_probes": frac, "fraction_of_full": full}


# `bench_select`'s shape: {dataset: {gamma: cell}}, every gamma of GAMMAS; `mine` is not packaged.
SELECT = {
    "flan": {f"1/{g}": select_cell(100.0, 80.12, 0.2101, 0.012345) for g in GAMMAS}
    | {"1/16": select_cell(85.0, 70.0, 0.55, 0.00612), "1/32": dict.fromkeys(select_cell(0, 0, 0, 0))},
    "mine": {"1/8": select_cell(99.0, 50.0, 0.3, 0.001)},
}
SCALE = {"candidates": 1000, "wall_s": 27.03, "scheduler_share": 0.02612, "synchronous": False,
         "fraction_of_all_probes": 0.2511}
# `run_verify`'s shape (lensray/verify.py), as `lensray verify --json` writes it.
VERIFY_DEMO = {"relacc": 100.0, "pearcorr": 62.9137, "fraction_of_full": 0.09041, "selected": "llama-copy-96",
               "best": "llama-copy-96", "loss_at_target": {"llama-copy-96": 0.00023, "neox-copy-48": 0.00027}}
VERIFY_SDE = {"relacc": 77.6012, "pearcorr": 26.44, "fraction_of_full": 0.2214,
              "selected": "mistral-text-96+inst-first.loss-off.json.omit.text.direct", "best": "llama-text-32+es-sde",
              "loss_at_target": {"mistral-text-96+inst-first.loss-off.json.omit.text.direct": 0.214,
                                 "llama-text-32+es-sde": 0.147}}
PROBE = {"model": "llama-copy-96", "sizes": [256, 1024], "num_workers": 1, "zero_stage": 2, "lora": False,
         "tokens": 123456, "train_s": 13.5, "tokens_per_s": 9087.3, "wall_s": 40.2,
         "worker_peak_rss_gb": 0.62, "driver_peak_rss_gb": 0.4, "loss": 1.2345, "fixed_share": 0.5771,
         "phase_s": {"ray_train_start": 12.06, "train": 13.5, "eval": 3.5, "other": 11.14}}

PHYLO = {"model": "llama-text-32", "genes": 128, "samples": 32, "max_new_tokens": 5,
         "fingerprint": {"tokens": 20000, "cold_s": 20.5, "warm_s": 3.25},
         "probe": {"sizes": [32, 64, 128, 256], "tokens": 14400, "wall_s": 70.0},
         "share_of_probe": {"seconds_cold": 0.2929, "seconds_warm": 0.0464, "tokens": 1.3889},
         "many": {"models": 100, "failed": 0, "wall_s": 250.4, "cpus": 2, "cpus_per_model": 1.0}}

def route_score(accuracy, std, calls, flops, latency):
    return {"accuracy": accuracy, "accuracy_std": std, "calls": calls, "flops": flops, "latency": latency}


# `bench_route`'s shape (lensray/bench/route.py).
ROUTE = {"config": "route-demo", "encoder": "hashed", "policy": "max_conf", "queries": 256,
         "finalists": ["neox-copy-48", "mistral-text-96"], "best_single": "neox-copy-48",
         "evaluation": {"max_conf": route_score(0.4, 0.03, 1.0, 7.4e6, 0.0015),
                        "single:neox-copy-48": route_score(0.25, 0.05, 1.0, 2.8e6, 0.00178),
                        "best_single": route_score(0.25, 0.05, 1.0, 2.8e6, 0.00178),
                        "oracle": route_score(0.45, 0.04, 1.0, 6.2e6, 0.00129)},
         "train_s": 0.1234, "score_ms_per_query": 0.0421, "requests": 64, "latency_ms_median": 35.25,
         "latency_ms_p95": 61.04, "batch_ms_per_query": 3.5, "finalists_called_mean": 1.0,
         "served_fine_tuned": True, "served_matches_offline": 0.984375}


def aggregate_row(name, design, greedy, drafts, r1, r2):
    cost = {"generations": 1.0, "flops": 1.5e7, "seconds": 0.002}
    return {"candidate": name, "design": design, "queries": 128, "k": 2,
            "greedy": {"accuracy": greedy, "exact": 0.1, **cost}, "drafts": {"accuracy": drafts, "exact": 0.1},
            "rounds": {"1": {"accuracy": r1, "exact": 0.1, "generations": 3.0, "flops": 5.8e7, "seconds": 0.004,
                             "flops_ratio": 3.86},
                       "2": {"accuracy": r2, "exact": 0.1, "generations": 5.0, "flops": 1.1e8, "seconds": 0.007,
                             "flops_ratio": 7.58}}}


# `bench_aggregate`'s shape, one run per config (lensray/bench/aggregate.py).
AGGREGATE = {"runs": [{"config": "aft-aspects", "k": 2, "temperature": 0.7, "rounds_measured": [1, 2], "candidates": [
    aggregate_row("m+aggregate", "aggregate", 0.557, 0.529, 0.531, 0.5312),
    aggregate_row("m+es-sde", "es-sde", 0.432, 0.389, 0.0, 0.0)]}]}


@pytest.fixture(scope="module")
def curves_result():
    return bench_curves(packaged_curves(), METHODS)


@pytest.fixture(scope="module")
def curves_doc(curves_result):
    data = [read_curves(p) for p in packaged_curves()]
    return bench_json(curves_result, ONE_FIT_MS, data, packaged_curves(), packaged=True)


@pytest.fixture()
def page(tmp_path, curves_doc):
    """The generated page from the benches' JSON files, and their paths."""
    paths = {}
    for kind, doc in (("curves", curves_doc), ("select", SELECT), ("scale", SCALE), ("probe", PROBE), ("phylo", PHYLO),
                      ("route", ROUTE), ("aggregate", AGGREGATE)):
        paths[kind] = tmp_path / f"bench-{kind}.json"
        paths[kind].write_text(json.dumps(doc))
    return docs.generate(list(paths.values())), paths


def section(text: str, title: str) -> str:
    """The part of `text` from the heading `title` to the next heading of its level or above."""
    level = title.split(" ")[0]
    start = text.index(title + "\n")
    rest = text[start + len(title) + 1:]
    ends = [i for i in (rest.find("\n" + h + " ") for h in ("#" * n for n in range(1, len(level) + 1))) if i >= 0]
    return text[start:start + len(title) + 1 + (min(ends) if ends else len(rest))]


def test_bench_curves_json_holds_every_figure_the_tables_need(curves_result, curves_doc):
    assert list(curves_doc) == ["scores", "regret", "level", "coverage", "pair_coverage", "budgets", "wall_s",
                                "fit_ms_median", "one_fit_ms", "notes", "data", "packaged", "machine"]
    assert curves_doc["scores"] == curves_result.scores and curves_doc["regret"] == curves_result.regret
    assert curves_doc["coverage"] == curves_result.coverage
    assert curves_doc["pair_coverage"] == curves_result.pair_coverage
    assert curves_doc["budgets"]["flan"]["1/8"] == 204800 and curves_doc["one_fit_ms"] == ONE_FIT_MS
    assert set(curves_doc["fit_ms_median"]) == set(METHODS)
    assert curves_doc["machine"]["cpus"] == os.cpu_count() and curves_doc["machine"]["processor"]
    assert curves_doc["data"] == [str(p) for p in packaged_curves()]
    json.dumps(curves_doc)  # plain JSON all the way down


def test_the_cli_writes_bench_json(tmp_path, monkeypatch, curves_result, capsys):
    monkeypatch.setattr(bench_curves_module, "bench_curves", lambda data, methods=None: curves_result)
    monkeypatch.setattr(bench_curves_module, "time_one_fit", lambda m: ONE_FIT_MS[m])
    out = tmp_path / "c.json"
    assert run_bench_curves(None, str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["scores"] == json.loads(json.dumps(curves_result.scores)) and doc["packaged"] is True
    assert doc["one_fit_ms"] == ONE_FIT_MS
    assert "one candidate's fit, local" in capsys.readouterr().out  # the printout is unchanged


def test_the_first_line_says_the_page_is_generated(page):
    text, _ = page
    first = text.splitlines()[0]
    assert first == docs.FIRST_LINE
    assert "make docs" in first and "make bench" in first and "do not edit it by hand" in first
    assert f"Measured on a {os.cpu_count()}-core machine" in text


def test_curves_tables_hold_the_bench_figures(page, curves_doc):
    text, paths = page
    curves = section(text, "## Predictor on recorded curves")
    assert f"Command: `lensray bench curves --json {paths['curves']}`" in curves
    flan = section(curves, "### flan")
    cell = curves_doc["scores"]["flan"]["local"]["1/8"]
    row = next(line for line in flan.splitlines() if line.startswith("| `local` |"))
    assert row.split(" | ")[1] == f"{fmt(cell['pearcorr'])} / {fmt(cell['relacc'])}"
    assert row.count("|") == len(GAMMAS) + 2
    assert "| method | " + " | ".join(f"1/{g}" for g in GAMMAS) + " |" in flan
    # the coverage tables, in whole percent
    cov = f"{100 * curves_doc['coverage']['flan']['local']['1/8']:.0f}"
    pairs = f"{100 * curves_doc['pair_coverage']['flan']['local']['1/8']:.0f}"
    cov_rows = [line for line in flan.splitlines() if line.startswith("| `local` |")]
    assert len(cov_rows) == 3 and cov_rows[1].split(" | ")[1] == cov and cov_rows[2].split(" | ")[1] == pairs
    assert "`ZeroShot`" not in flan.split("Coverage of the 90% intervals at T")[1]  # it fits no curve
    # the summary over both data sets
    cells = [c for ds in ("flan", "wmt19") for c in curves_doc["scores"][ds]["local"].values()]
    mean = statistics.mean(c["pearcorr"] for c in cells)
    worst = min(c["relacc"] for c in cells)
    assert f"| `local` | {fmt(mean)} | {fmt(worst)} | 14 of 14 |" in section(curves, "### Summary over all data sets")
    speed = section(curves, "### Speed")
    assert f"- whole bench, 2 data set(s): {curves_doc['wall_s']:.2f} s" in speed
    assert "- one candidate's fit, `local`: 0.12 ms median (alone, budget T/64)" in speed


def test_select_table_sits_beside_ats_at_the_same_budget(page):
    text, paths = page
    # no cell ran the baselines: the command says so and no baselines are described
    assert f"Command: `lensray bench select --no-baselines --json {paths['select']}`" in text
    assert "Baselines:" not in section(text, "## Replay sweeps through Tune")
    flan_md = section(section(text, "## Replay sweeps through Tune"), "### flan")
    flan = read_curves(next(p for p in packaged_curves() if p.stem == "flan"))
    truth, target = flan.losses[:, -1], int(flan.sizes[-1])
    b = dict(budgets(flan))
    for label, budget in (("1/8", b["1/8"]), ("1/16", b["1/16"])):
        ats = predict("AtS", flan.upto(budget), target)
        ra, pc = fmt(round2(relacc(ats.selected, truth))), fmt(round2(pearcorr(ats.scores, truth)))
        row = next(line for line in flan_md.splitlines() if line.startswith(f"| {label} |"))
        cols = row.strip("| ").split(" | ")
        assert cols[:6] == [label, str(budget), fmt(SELECT["flan"][label]["relacc"]), ra,
                            fmt(SELECT["flan"][label]["pearcorr"]), pc]
    assert "| 1/8 | 204800 | 100.0 |" in flan_md and "| 0.210 | 0.0123 | met |" in flan_md
    row16 = next(line for line in flan_md.splitlines() if line.startswith("| 1/16 |"))
    assert "RelAcc below AtS by" in row16 and "cost over 0.5 by 0.050" in row16
    assert "| 1/32 | 51200 | n/a |" in flan_md
    mine = section(section(text, "## Replay sweeps through Tune"), "### mine")
    assert "not a data set shipped with lensray: no AtS columns" in mine and "AtS RelAcc" not in mine
    assert "| 1/8 | ? | 99.0 | 50.0 | 0.300 | 0.001 |" in mine


def test_scale_and_probe_tables(page):
    text, paths = page
    scale = section(text, "## Scale")
    assert f"`lensray bench scale --candidates 1000 --json {paths['scale']}`" in scale
    assert "| 1000 | asynchronous | 27.0 | 0.0261 | 0.251 |" in scale
    probe = section(text, "## Probe throughput")
    assert "| `tokens_per_s` | 9087 |" in probe and "| `lora` | false |" in probe
    assert all(f"| `{k}` |" in probe for k in PROBE if k != "phase_s")
    assert "`lensray bench probe --model llama-copy-96 --size 256 1024 --workers 1 --zero-stage 2 --json" in probe
    assert "| ray_train_start | 12.06 | 30.0% |" in probe and "| other | 11.14 | 27.7% |" in probe
    phylo = section(text, "## Fingerprint cost (PhyloLM)")
    assert f"`lensray bench phylo --models 100 --json {paths['phylo']}`" in phylo
    assert "| share of the probe | 4.6% of its seconds (29.3% in a fresh worker), 138.9% of its tokens |" in phylo
    assert "| 100 fingerprints | 250 s wall on 2 CPUs, 0 failed |" in phylo
    route = section(text, "## Routing (SelectLLM) on the mixed task")
    assert f"--requests 64 --json {paths['route']}`" in route and "Best single finalist: `neox-copy-48`" in route
    assert "| **max_conf** (served) | 0.400 ± 0.030 | 1.00 | 7.4e+06 | 1.50 |" in route
    assert "| oracle | 0.450 ± 0.040 | 1.00 | 6.2e+06 | 1.29 |" in route
    assert "| best_single |" not in route  # the same row as its single:<name>
    assert "| served, 64 single requests | median 35.2 ms, p95 61.0 ms a query |" in route
    assert "| router training | 0.123 s (hashed encoder, 256 queries x 2 finalists) |" in route
    assert "| served answers equal to the evaluation's | 98.4% of 64 (fine-tuned finalists) |" in route


def test_the_aggregate_table_puts_each_candidates_greedy_answer_beside_its_aggregations(page):
    text, paths = page
    agg = section(text, "## Propose and aggregate (AFT)")
    assert (f"`lensray bench aggregate configs/aft-aspects.yaml --rounds 1 2 --json {paths['aggregate']}`" in agg)
    assert "### aft-aspects" in agg and "128 held-out queries, temperature 0.7." in agg
    assert "| candidate | greedy | drafts (K=2) | R=1 | R=2 | generations / FLOPs x, R=1 | generations / FLOPs x, R=2 |" in agg
    assert "| `m+aggregate` | 0.557 | 0.529 | 0.531 | 0.531 | 3 / 3.9 | 5 / 7.6 |" in agg
    assert "| `m+es-sde` | 0.432 | 0.389 | 0.000 | 0.000 | 3 / 3.9 | 5 / 7.6 |" in agg


def test_select_baselines_sit_beside_lensray_with_a_summary_per_scheduler(tmp_path):
    from lensray.bench.select import BASELINES

    def base(observed, ats, frac):
        return {b.key: {"relacc_observed": observed, "relacc_ats": ats, "fraction_of_all_probes": frac,
                        "reached_budget": 4} for b in BASELINES}

    doc = {"flan": {"1/8": select_cell(100.0, 80.0, 0.21, 0.01) | {"baselines": base(60.0, 90.0, 0.3)},
                    "1/16": select_cell(80.0, 70.0, 0.25, 0.005) | {"baselines": base(40.0, 70.0, 0.5)}}}
    path = tmp_path / "bench-select.json"
    path.write_text(json.dumps(doc))
    text = section(docs.generate([path]), "## Replay sweeps through Tune")
    assert "Baselines: the same pool and budget swept through Tune with `ASHA rf=2`" in text
    header = "| gamma | B | lensray RelAcc | lensray cost | " + " | ".join(b.label for b in BASELINES) + " |"
    assert header in text
    assert "| 1/8 | 204800 | 100.0 | 0.210 | " + " | ".join(["60.0 / 90.0 / 0.300"] * len(BASELINES)) + " |" in text
    summary = section(text, "### Summary over every cell")
    assert "Over the 2 cells a sweep filled" in summary
    assert "| lensray | its selection | 90.0 | 80.0 | 0.210 to 0.250 |" in summary
    for b in BASELINES:
        assert f"| {b.label} | lowest loss at B | 50.0 | 40.0 | 0.300 to 0.500 |" in summary
        assert f"| {b.label} | AtS on the trials that reached B | 80.0 | 70.0 | 0.300 to 0.500 |" in summary
    flan = read_curves(next(p for p in packaged_curves() if p.stem == "flan"))
    ats = [round2(relacc(predict("AtS", flan.upto(b), int(flan.sizes[-1])).selected, flan.losses[:, -1]))
           for g, b in budgets(flan) if g in doc["flan"]]
    assert (f"| AtS | every candidate, at every size | {fmt(round2(statistics.mean(ats)))} | {fmt(min(ats))} | 1.000 |"
            in summary)


def test_a_missing_file_says_which_command_makes_it(tmp_path, curves_doc, capsys):
    (tmp_path / "bench-curves.json").write_text(json.dumps(curves_doc))
    missing = tmp_path / "bench-select.json"
    text = docs.generate([tmp_path / "bench-curves.json", missing])
    line = f"`{missing}` is missing: run `lensray bench select --json {missing}` (or `make bench`) to make it."
    assert line in section(text, "## Replay sweeps through Tune")
    assert line in capsys.readouterr().err
    assert "## Scale" not in text  # not asked for


def test_main_writes_the_page_and_refuses_what_no_bench_wrote(tmp_path, curves_doc, capsys):
    (tmp_path / "c.json").write_text(json.dumps(curves_doc))
    out = tmp_path / "docs" / "benchmarks.md"
    assert docs.main(["--out", str(out), str(tmp_path / "c.json")]) == 0
    assert out.read_text().startswith(docs.FIRST_LINE + "\n")
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    assert docs.main(["--out", str(out), str(tmp_path / "x.json")]) == 2
    assert "not the JSON of a bench" in capsys.readouterr().err


def test_verify_runs_are_one_table_each_titled_by_its_stem(tmp_path, curves_doc, capsys):
    paths = {"curves": tmp_path / "bench-curves.json", "demo": tmp_path / "verify-demo.json",
             "sde": tmp_path / "verify-sde-demo.json", "mine": tmp_path / "verify-mine.json"}
    paths["curves"].write_text(json.dumps(curves_doc))
    paths["demo"].write_text(json.dumps(VERIFY_DEMO))
    paths["sde"].write_text(json.dumps(VERIFY_SDE))
    missing = tmp_path / "verify-other.json"
    text = docs.generate([paths["curves"], paths["demo"], paths["sde"], missing])
    demos = section(text, "## Demos: the selection against the truth at T")
    assert "| run | command | selected | best | RelAcc | PearCorr | fraction_of_full |" in demos
    assert (f"| `verify-demo` | `lensray select`, then `lensray verify --json {paths['demo']}` | "
            "`llama-copy-96` | `llama-copy-96` | 100.0 | 62.9 | 0.090 |") in demos
    assert (f"| `verify-sde-demo` | `lensray select configs/sde-demo.yaml`, then `lensray verify "
            f"configs/sde-demo.yaml --json {paths['sde']}` | "
            "`mistral-text-96+inst-first.loss-off.json.omit.text.direct` | `llama-text-32+es-sde` | "
            "77.6 | 26.4 | 0.221 |") in demos
    assert demos.index("`verify-demo`") < demos.index("`verify-sde-demo`")  # in the order given
    # a missing one says which commands make it; a stem make bench does not run names CONFIG
    line = (f"`{missing}` is missing: run `lensray select CONFIG`, then `lensray verify CONFIG --json "
            f"{missing}` (or `make bench`) to make it.")
    assert line in demos and line in capsys.readouterr().err
    assert "## Probe throughput" not in text  # not asked for
    # a None figure (constant losses) is n/a; the file's stem is all that names the run
    paths["mine"].write_text(json.dumps(VERIFY_DEMO | {"pearcorr": None, "fraction_of_full": None}))
    mine = section(docs.generate([paths["mine"]]), "## Demos: the selection against the truth at T")
    assert "| `verify-mine` | `lensray select CONFIG`, then `lensray verify CONFIG --json" in mine
    assert "| 100.0 | n/a | n/a |" in mine


def test_two_verify_runs_of_one_name_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "verify-demo.json").write_text(json.dumps(VERIFY_DEMO))
    with pytest.raises(docs.DocsError, match="two verify runs named verify-demo"):
        docs.generate([tmp_path / "a" / "verify-demo.json", tmp_path / "b" / "verify-demo.json"])


def test_the_defaults_with_nothing_there_name_every_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = docs.generate()
    for kind in docs.KINDS:
        assert f"`out/bench-{kind}.json` is missing: run `{docs.MAKES[kind].format(path=f'out/bench-{kind}.json')}`" in text
    assert ("`out/verify-demo.json` is missing: run `lensray select`, then `lensray verify --json "
            "out/verify-demo.json` (or `make bench`) to make it.") in text
    assert ("`out/verify-sde-demo.json` is missing: run `lensray select configs/sde-demo.yaml`, then "
            "`lensray verify configs/sde-demo.yaml --json out/verify-sde-demo.json` (or `make bench`)") in text


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of `markdown` (outside code blocks)."""
    out, code = set(), False
    for line in markdown.splitlines():
        code ^= line.startswith("```")
        if not code and (m := re.match(r"#+ (.*)", line)):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_the_pages_links_land_on_headings_of_the_design_notes(page, tmp_path):
    text, _ = page
    (tmp_path / "verify-demo.json").write_text(json.dumps(VERIFY_DEMO))
    text += docs.generate([tmp_path / "verify-demo.json"])
    root = Path(__file__).resolve().parents[1] / "docs"
    links = re.findall(r"\]\(([\w.-]+\.md)(?:#([\w-]+))?\)", text)
    assert {"predictor.md", "sweep.md"} <= {f for f, _ in links}
    for file, anchor in links:
        assert (root / file).is_file(), file
        assert not anchor or anchor in anchors((root / file).read_text()), f"{file}#{anchor}"


# --- bench curves --suite -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def suite_doc():
    from lensray.bench.suite import run_suite, suite_json

    return json.loads(json.dumps(suite_json(run_suite("dev", ["AtS", DEFAULT_PREDICTOR], pools=2, quiet=True))))


def test_the_suite_section_holds_each_groups_figures_and_the_targets(tmp_path, suite_doc):
    path = tmp_path / "bench-suite.json"
    path.write_text(json.dumps(suite_doc))
    assert docs.kind_of(suite_doc, path) == "suite"
    text = docs.generate([path])
    suite = section(text, "## Predictor suite")
    assert f"Command: `lensray bench curves --suite --part dev --json {path}` (dev: 2 pools, seeds 0..1;" in suite
    synth = section(suite, "### synthetic dev (2 data set(s))")
    o = suite_doc["summary"]["synthetic dev"][DEFAULT_PREDICTOR]["overall"]
    row = next(line for line in synth.splitlines() if line.startswith(f"| `{DEFAULT_PREDICTOR}` |")).strip("| ").split(" | ")
    assert row[1:7] == [fmt(o[k][q]) for k in ("pearcorr", "relacc") for q in ("mean", "p10", "worst")]
    assert row[7] == f"{100 * o['log_regret']:.2f}" and row[8] == f"{100 * o['coverage']:.0f}"
    by = suite_doc["summary"]["synthetic dev"][DEFAULT_PREDICTOR]["by_budget"]["1/8"]
    assert f"| `{DEFAULT_PREDICTOR}` | {fmt(by['pearcorr']['mean'])} / {fmt(by['relacc']['mean'])} |" in synth
    cov_rows = [line for line in synth.splitlines() if line.startswith("| `AtS` |")]
    assert len(cov_rows) == 2  # AtS fits no interval: no coverage row
    assert "### real (2 data set(s))" in suite
    targets = section(suite, "### Targets of the default predictor against AtS")
    first = suite_doc["targets"][0]
    verdict = "met" if first["met"] else f"missed by {first['miss']:.2f}"
    assert f"| {first['group']} | {first['what']} | {verdict} | {first['figure']} |" in targets
    assert f"{sum(t['met'] for t in suite_doc['targets'])} of {len(suite_doc['targets'])} met." in targets
    if not suite_doc["groups"]["recorded"]:  # no recorded zoo curves in this checkout
        assert "- recorded: no data sets" in suite
    root = Path(__file__).resolve().parents[1] / "docs"
    for file, anchor in re.findall(r"\]\(([\w.-]+\.md)(?:#([\w-]+))?\)", suite):
        assert not anchor or anchor in anchors((root / file).read_text()), f"{file}#{anchor}"


def test_a_missing_suite_file_says_which_command_makes_it(tmp_path):
    missing = tmp_path / "bench-suite.json"
    text = docs.generate([missing])
    assert (f"`{missing}` is missing: run `lensray bench curves --suite --json {missing}` (or `make bench`)"
            in section(text, "## Predictor suite"))
