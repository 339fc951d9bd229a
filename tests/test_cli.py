"""The command line: JSON shape of `bench curves`, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from lensray.bench.curves import GAMMAS
from lensray.core.curves import packaged_curves, read_curves
from lensray.predict.methods import METHODS


def lensray(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lensray", *args], capture_output=True, text=True, cwd=cwd)


def power_law_file(path, sizes, slopes, d0, extra=None):
    """A curves CSV with one candidate m<i> per slope, loss 4 (D/d0)^-slope at each size (the
    steepest is the best everywhere); `extra` adds constant columns, e.g. {"0": 5, "size": 1000}."""
    extra = extra or {}
    rows = [",".join(["config name", *extra, *map(str, sizes)])]
    for i, slope in enumerate(slopes):
        rows.append(",".join([f"m{i}", *map(str, extra.values()), *(f"{4 * (s / d0) ** -slope:.4f}" for s in sizes)]))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_bench_curves_json_has_exactly_the_documented_shape(tmp_path):
    out = tmp_path / "b.json"
    data = [str(p) for p in packaged_curves()]
    run = lensray("bench", "curves", "--data", data[0], "--data", data[1], "--json", str(out))
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())["scores"]
    assert set(doc) == {"flan", "wmt19"}
    for by_method in doc.values():
        assert list(by_method) == list(METHODS)
        for cells in by_method.values():
            assert list(cells) == [f"1/{g}" for g in GAMMAS]
            for cell in cells.values():
                assert set(cell) == {"pearcorr", "relacc"}
                assert all(isinstance(v, float) for v in cell.values())
    assert "PearCorr / RelAcc" in run.stdout and "coverage of the 90% intervals at T" in run.stdout
    assert "coverage of the 90% intervals of differences at T" in run.stdout
    assert "one candidate's fit" in run.stdout and "whole bench" in run.stdout


def test_bench_curves_runs_on_a_users_own_file(tmp_path):
    sizes = [200 * 2**i for i in range(14)]  # 200 ... 1638400, as in the schema
    path = power_law_file(tmp_path / "mine.csv", sizes, (0.05, 0.08, 0.11), 200, {"0": 5, "size": 1000})
    out = tmp_path / "o.json"
    run = lensray("bench", "curves", "--data", str(path), "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["scores"]["mine"]["local"]["1/8"]["relacc"] == 100.0


def test_bench_curves_marks_what_a_users_file_cannot_give_as_n_a(tmp_path):
    # No '0' or 'size' column, and sizes that triple from 1000: each budget is the largest size
    # <= T/gamma, and a cell a method cannot fill is null with its reason, not a failed bench.
    sizes = [1000 * 3**i for i in range(6)]  # T = 243000
    path = power_law_file(tmp_path / "tripled.csv", sizes, (0.05, 0.08, 0.11), 500)
    out = tmp_path / "o.json"
    run = lensray("bench", "curves", "--data", str(path), "--json", str(out))
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())["scores"]["tripled"]
    assert list(doc) == list(METHODS)
    assert all(list(cells) == [f"1/{g}" for g in GAMMAS] for cells in doc.values())
    for method in ("ZeroShot", "ModelSize"):
        assert all(c == {"pearcorr": None, "relacc": None} for c in doc[method].values())
    # budgets: 27000 (1/8), 9000 (1/16), 3000 (1/32, 1/64), 1000 (1/128), none (1/256, 1/512)
    assert doc["local"]["1/8"]["relacc"] == 100.0 and doc["local"]["1/16"]["relacc"] == 100.0
    assert doc["local"]["1/32"] == doc["AtS"]["1/32"]  # 2 sizes: both take the line through them
    assert doc["local"]["1/128"]["relacc"] is None  # 1 size: no slope
    assert doc["SubTuning"]["1/128"]["relacc"] == 100.0
    assert all(doc[m]["1/256"] == {"pearcorr": None, "relacc": None} for m in METHODS)
    assert "column '0'" in run.stdout and "column 'size'" in run.stdout
    assert "local needs at least 2 sizes" in run.stdout
    assert "no size column is <= T/256" in run.stdout


def test_bench_curves_says_why_a_single_candidate_scores_nothing(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("config name,200,400,800,1600\nm,3,2.9,2.8,2.7\n")
    out = tmp_path / "o.json"
    run = lensray("bench", "curves", "--data", str(path), "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["scores"]["one"]["local"]["1/8"] == {"pearcorr": None, "relacc": None}
    assert "every candidate (1) has the same loss at T" in run.stdout


def test_bench_sweeps_probe_the_files_own_sizes(tmp_path):
    from lensray.bench.select import replay_config

    sizes = [400 * 2**i for i in range(5)]
    path = tmp_path / "from400.csv"
    path.write_text("config name," + ",".join(map(str, sizes)) + "\na," + ",".join(["3", "2.9", "2.8", "2.7", "2.6"]) + "\n")
    cfg = replay_config(path, read_curves(path), 3200, tmp_path)
    assert cfg.plan.resolved_sizes() == [400, 800, 1600, 3200]
    assert cfg.plan.target == 6400


@pytest.mark.slow
def test_bench_select_runs_on_a_file_whose_budgets_repeat_or_lack_sizes(tmp_path):
    # Sizes that quadruple from 100 (T = 102400): 1/8 and 1/16 share B = 6400, 1/32 and 1/64
    # share B = 1600, and 1/128 ... 1/512 leave 2 sizes or fewer, too few for a sweep to decide.
    # Each budget is swept once, through Tune, and the cells no sweep can fill are null.
    from lensray.bench.select import bench_select, format_select

    sizes = [100 * 4**i for i in range(6)]
    path = power_law_file(tmp_path / "quad.csv", sizes, (0.03, 0.06, 0.09), 50)
    doc = bench_select([path], tmp_path / "out", sleep_s_per_pflop=0.0, baselines=False)["quad"]
    assert list(doc) == [f"1/{g}" for g in GAMMAS]
    assert doc["1/8"] == doc["1/16"] and doc["1/32"] == doc["1/64"]
    assert doc["1/8"]["relacc"] == 100.0 and doc["1/32"]["relacc"] == 100.0
    assert 0 < doc["1/8"]["fraction_of_all_probes"] <= 1 and 0 < doc["1/32"]["fraction_of_all_probes"] <= 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["quad-B1600", "quad-B6400"]
    for g in (128, 256, 512):
        assert set(doc[f"1/{g}"].values()) == {None}
    rows = [r for r in format_select({"quad": doc}, [path]).splitlines() if r.startswith("1/")]
    assert "100.0 (100.0)" in rows[0] and rows[-1].split() == ["1/512", "n/a"]


def test_bench_files_must_have_distinct_names(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "data.csv").write_text("config name,200,400,800\nm,3,2.9,2.8\n")
    run = lensray("bench", "curves", "--data", str(tmp_path / "a" / "data.csv"), "--data", str(tmp_path / "b" / "data.csv"))
    assert run.returncode == 2 and "two data sets are named 'data'" in run.stderr


def test_bench_select_table_names_each_missed_target():
    from lensray.bench.select import format_select

    flan = packaged_curves()[0]
    cells = {f"1/{g}": {"relacc": 93.6, "pearcorr": 50.0, "fraction_of_all_probes": 0.2, "fraction_of_full": 1e-3} for g in GAMMAS}
    cells["1/8"]["relacc"] = 90.0  # AtS: 93.6 at 1/8
    cells["1/512"].update(relacc=93.2, fraction_of_all_probes=0.55)  # AtS: 93.2 at 1/512
    rows = {r.split()[0]: r for r in format_select({"flan": cells}, [flan]).splitlines() if r.startswith("1/")}
    assert rows["1/8"].endswith("RelAcc below AtS by 3.60") and "90.0 ( 93.6)" in rows["1/8"]
    assert rows["1/16"].endswith("met")  # 93.6 against AtS's 93.2
    assert rows["1/512"].endswith("cost over 0.5 by 0.050")


def test_bad_input_is_one_line_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("config name,200,400\na,3,x\n")
    run = lensray("bench", "curves", "--data", str(bad))
    assert run.returncode == 2
    assert run.stderr.startswith("lensray: error:") and "not a number" in run.stderr
    assert "Traceback" not in run.stderr
    missing = lensray("bench", "curves", "--data", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


# Help, `lensray config`, --set, and what the CLI refuses before it starts any work.

def one_line_error(run, *needles):
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert run.stderr.startswith("lensray: error: ") and run.stderr.count("\n") == 1, run.stderr
    assert "Traceback" not in run.stderr
    for needle in needles:
        assert needle in run.stderr, run.stderr


def test_help_lists_every_command_with_an_example():
    from lensray.cli import build_parser

    run = lensray("--help")
    assert run.returncode == 0
    commands = build_parser()._subparsers._group_actions[0].choices
    examples = run.stdout.split("commands, one example each:")[1]
    for name in commands:
        assert f"lensray {name} " in examples, name


def test_config_prints_every_field_resolved_and_loads_back(tmp_path):
    import dataclasses

    import yaml

    from lensray.config.load import load_config
    from lensray.config.schema import SelectConfig

    config = tmp_path / "c.yaml"
    config.write_text(f"backend: replay\nreplay: {{curves: {packaged_curves()[0]}}}\n")
    run = lensray("config", str(config), "--set", "fit.window=4", "--set", "probe.lr=1e-4", "--set", f"output={tmp_path / 'o'}")
    assert run.returncode == 0, run.stderr
    doc = yaml.safe_load(run.stdout)
    assert list(doc) == [f.name for f in dataclasses.fields(SelectConfig)]
    assert doc["fit"]["window"] == 4 and doc["probe"]["lr"] == 1e-4 and doc["scheduler"]["level"] == 0.9
    (tmp_path / "resolved.yaml").write_text(run.stdout)
    assert load_config(tmp_path / "resolved.yaml") == load_config(config, ["fit.window=4", "probe.lr=1e-4", f"output={tmp_path / 'o'}"])


def test_config_without_a_config_prints_the_demo_and_reference_prints_the_docs():
    import yaml

    from lensray.config.load import DEMO_CONFIG
    from lensray.config.reference import config_reference

    demo = lensray("config")
    assert demo.returncode == 0, demo.stderr
    assert str(DEMO_CONFIG) in demo.stdout.splitlines()[0] and yaml.safe_load(demo.stdout)["name"] == "demo"
    ref = lensray("config", "--reference")
    assert ref.returncode == 0 and ref.stdout == config_reference()


def test_select_without_a_config_says_first_that_it_runs_the_demo():
    from lensray.config.load import DEMO_CONFIG

    run = lensray("select", "--set", "fit.windw=4")  # refused on loading: no sweep starts
    assert run.stdout.splitlines()[0] == f"no CONFIG given: running the demo config {DEMO_CONFIG} (copy it to start your own)"
    one_line_error(run, "unknown key fit.windw. Did you mean 'window'?")


@pytest.mark.parametrize(
    "args",
    [("bench", "curves"), ("bench", "select"), ("bench", "scale"), ("bench", "probe", "--zoo", "ZOO"), ("verify",)],
)
def test_a_json_out_that_is_a_folder_is_refused_before_any_work(tmp_path, args):
    args = [str(tmp_path / "zoo") if a == "ZOO" else a for a in args]
    run = lensray(*args, "--json", str(tmp_path), "--out", str(tmp_path / "out")) if args[-1] in ("select", "scale") else lensray(*args, "--json", str(tmp_path))
    one_line_error(run, f"--json '{tmp_path}' is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no zoo built, no --out made


@pytest.mark.parametrize("bench", ["select", "scale"])
def test_bench_sweeps_refuse_a_folder_with_a_users_files(tmp_path, bench):
    (tmp_path / "paper.pdf").write_text("mine")
    run = lensray("bench", bench, "--out", str(tmp_path))
    one_line_error(run, str(tmp_path), "choose another --out, or empty the folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper.pdf"]


def test_bench_sweeps_check_their_inputs_before_touching_out(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("config name,200,400\na,3,x\n")
    run = lensray("bench", "select", "--data", str(bad), "--out", str(tmp_path / "out"))
    one_line_error(run, "not a number")
    run = lensray("bench", "scale", "--candidates", "0", "--out", str(tmp_path / "out"))
    one_line_error(run, "--candidates must be at least 1")
    assert not (tmp_path / "out").exists()


def test_bench_sweeps_rerun_in_their_own_folder_removes_only_what_they_wrote(tmp_path, monkeypatch):
    import lensray.bench.select
    from lensray.cli import main
    from lensray.cluster.storage import MARKER

    sizes = [200 * 2**i for i in range(6)]
    path = power_law_file(tmp_path / "mine.csv", sizes, (0.05, 0.08, 0.11), 200)
    out = tmp_path / "out"
    calls = []

    def fake_bench(paths, out_dir, sleep_s_per_pflop=1e-3, baselines=True):  # the sweeps themselves: test_select's business
        calls.append(sorted(p.name for p in out_dir.iterdir()))
        (out_dir / "mine-B800").mkdir()  # T/8: the first budget
        return {"mine": {}}
    monkeypatch.setattr(lensray.bench.select, "bench_select", fake_bench)
    monkeypatch.setattr(lensray.bench.select, "format_select", lambda result, paths: "")
    assert main(["bench", "select", "--data", str(path), "--out", str(out)]) == 0
    (out / "keep.txt").write_text("a file put there since")
    assert main(["bench", "select", "--data", str(path), "--out", str(out)]) == 0
    assert calls == [[MARKER], [MARKER, "keep.txt"]]  # the last run's sweep is gone, the rest stays


def test_bad_config_is_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("backend: replay\npool: [gpt2]\n")
    one_line_error(lensray("config", str(config)), "write `pool: {models: [...]}`")


def test_submit_passes_the_overrides_to_the_job(tmp_path, monkeypatch, capsys):
    import lensray.cluster.jobs as jobs
    from lensray.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(f"backend: replay\nreplay: {{curves: {packaged_curves()[0]}}}\n")
    sent = []
    monkeypatch.setattr(jobs, "submit", lambda sub, address: sent.append(sub) or "raysubmit_1")
    assert main(["submit", str(config), "--out", str(tmp_path / "o"), "--set", "fit.window=4", "--set", "probe.lr=1e-4"]) == 0
    assert sent[0].entrypoint.endswith("--set fit.window=4 --set probe.lr=1e-4")
    assert main(["submit", str(config), "--out", str(tmp_path / "o"), "--set", "fit.windw=4"]) == 2
    assert len(sent) == 1 and "Did you mean 'window'" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_scale_sweeps_a_synthetic_pool_through_tune_and_reports_its_figures(tmp_path):
    out, figures = tmp_path / "out", tmp_path / "scale.json"
    run = lensray("bench", "scale", "--candidates", "40", "--out", str(out), "--json", str(figures))
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads(figures.read_text())
    assert doc["candidates"] == 40 and doc["synchronous"] is False
    assert 0 < doc["scheduler_share"] < 1 and doc["wall_s"] > 0
    assert 0 < doc["fraction_of_all_probes"] < 1  # some candidates stopped early, none probed twice
    selection = json.loads(next(out.glob("synthetic-40-B*/selection.json")).read_text())
    assert len(selection["ranking"]) == 40
    assert sum(e["status"] == "stopped early" for e in selection["ranking"]) > 0
