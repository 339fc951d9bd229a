"""`lensray record`: every candidate fine-tuned at every planned size up to T, written as a curves
table that `read_curves` and `lensray bench curves --data` read; --out is never overwritten."""

from __future__ import annotations

import json

import pytest

from lensray.bench.record import record_config, record_sizes
from lensray.cli import main
from lensray.config.load import DEMO_CONFIG, load_config
from lensray.config.schema import PlanConfig
from lensray.core.curves import read_curves, recorded_curves

POOL = ["neox-copy-48", "llama-text-32"]


def test_record_sizes_stretch_the_plan_to_the_target():
    assert record_sizes(PlanConfig(sizes=[32, 64, 128, 256], budget=256, target=3840)) == [
        32, 64, 128, 256, 512, 1024, 2048, 3840
    ]
    assert record_sizes(PlanConfig(start=100, budget=400, target=800)) == [100, 200, 400, 800]
    assert record_sizes(PlanConfig(sizes=[8, 16], budget=16, target=16)) == [8, 16]
    cfg = record_config(load_config(DEMO_CONFIG))
    assert cfg.name == "demo-record" and not cfg.scheduler.enabled
    assert list(cfg.data.sizes) == cfg.plan.resolved_sizes() == [32, 64, 128, 256, 512, 1024, 2048, 3840]


def test_record_refuses_an_existing_out_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "curves.csv"
    out.write_text("mine")
    assert main(["record", "--out", str(out), "--set", f"output={json.dumps(str(tmp_path / 'runs'))}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lensray: error: --out ") and "exists" in err and err.count("\n") == 1
    assert out.read_text() == "mine" and not (tmp_path / "runs").exists()
    assert main(["record", "--out", str(tmp_path / "curves.json")]) == 2
    assert "--out" in capsys.readouterr().err


def test_recorded_curves_are_packaged_and_read():
    paths = recorded_curves()
    assert len(paths) >= 2
    for path in paths:
        curves = read_curves(path)
        assert len(curves.candidates) >= 8 and curves.n_params is not None and curves.family is not None
        assert (curves.losses > 0).all() and len(curves.sizes) >= 5


@pytest.mark.slow
def test_record_writes_curves_that_bench_curves_scores(zoo_dir, tmp_path, capsys):
    config = tmp_path / "record.yaml"
    config.write_text(json.dumps({
        "name": "rec",
        "backend": "hf",
        "zoo": str(zoo_dir),
        "pool": {"models": POOL},
        "plan": {"sizes": [4, 8, 16], "budget": 16, "target": 128},
        "data": {"max_length": 32, "eval_size": 32},
        "probe": {"micro_batch": 8, "lr": 0.001, "epochs": 1, "ntk_examples": 2},
        "resources": {"workers": 1, "cpus_per_worker": 0.9},
        "scheduler": {"synchronous": False},
        "output": str(tmp_path / "runs"),
    }))
    out = tmp_path / "curves.csv"
    assert main(["record", str(config), "--out", str(out), "--quiet"]) == 0
    curves = read_curves(out)
    assert curves.candidates == POOL and curves.sizes.tolist() == [4, 8, 16, 32, 64, 128]
    assert curves.family == ["copy", "text"] and (curves.n_params > 1e4).all()
    assert (curves.zero_shot > curves.losses[:, -1]).all()  # fine-tuning helps both
    state = [json.loads(line) for line in (tmp_path / "runs" / "rec-record" / "sweep.jsonl").read_text().splitlines()]
    assert not [e for e in state if e["event"] == "decision" and e["decision"] == "STOP"]  # nothing stopped early
    header = out.read_text().splitlines()[0].split(",")
    assert {"ntk_theta_mean", "ntk_residual_mean", "ntk_log_F_4", "ntk_log_F_128"} <= set(header)
    capsys.readouterr()
    assert main(["bench", "curves", "--data", str(out), "--methods", "local"]) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("local "))
    pearcorr, relacc = row[1].split("/")  # the 1/8 budget: sizes 4, 8 and 16
    assert relacc in ("0.0", "100.0") and pearcorr != "n"  # two candidates: the pick is the best or the worst
    # a finished recording is not redone, and the file it wrote is not overwritten
    assert main(["record", str(config), "--out", str(out), "--resume", "--quiet"]) == 2
