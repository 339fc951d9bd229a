"""Predictors, stages and probe backends are looked up by name from the config: a toy predictor
and toy stages registered here run in a real replay sweep on a local Ray, end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lensray.config.load import config_from_dict
from lensray.core.curves import packaged_curves, read_curves
from lensray.core.errors import ConfigError
from lensray.core.types import CurveFit, Pool, Selection
from lensray.pipeline import run_select
from lensray.predict import methods
from lensray.predict.methods import Predictor, register_predictor
from lensray.stages.base import STAGES, register_stage

FLAN = str(packaged_curves()[0])
POOL = ["facebook/opt-1.3b", "t5-base", "gpt2", "cerebras/Cerebras-GPT-111M", "facebook/opt-6.7b", "t5-small"]


def last_loss(sizes, losses, target, names, config, context=None) -> list[CurveFit]:
    """The toy predictor: the loss at T is the last observed loss, with a fixed s.d. of 0.01."""
    return [CurveFit(n, "toy", int(target), float(row[-1]), (float(row[-1]) * 0.98, float(row[-1]) * 1.02),
                     True, "", {}, len(sizes), 0.01) for n, row in zip(names, np.atleast_2d(losses))]


class DropOne:
    """A toy pre-sweep stage: drops t5-small as a near-duplicate of t5-base, gives every
    candidate a prior."""

    name = "toy-drop"

    def run(self, cfg, pool: Pool, folder) -> Pool:
        pool = pool.drop({"t5-small": "a near-duplicate of t5-base"})
        return Pool(pool.candidates, pool.dropped, {c: {"loss": 1.0} for c in pool.names})


class Note:
    """A toy post-sweep stage: writes the selection into its own file and marks the doc."""

    name = "toy-note"

    def run(self, cfg, selection: Selection, folder):
        path = folder / "toy-note.txt"
        path.write_text(f"finalist: {selection.selected}\n")
        return Selection({**selection.doc, "toy_note": path.name}, selection.observations, selection.fits), [path]


@pytest.fixture
def toys():
    register_predictor(Predictor("toy-last", last_loss, min_points=1))
    register_stage("pre", DropOne())
    register_stage("post", Note())
    yield
    methods.PREDICTORS.pop("toy-last")
    methods.METHODS.pop("toy-last")
    STAGES["pre"].pop("toy-drop")
    STAGES["post"].pop("toy-note")


def raw(tmp_path, **over) -> dict:
    cfg = {
        "name": "t", "backend": "replay", "replay": {"curves": FLAN}, "pool": {"models": POOL},
        "plan": {"start": 200, "budget": 6400, "target": 1638400}, "resources": {"cpus_per_worker": 0.5},
        "output": str(tmp_path),
    }
    return cfg | over


@pytest.mark.slow
def test_a_registered_predictor_and_stages_run_through_a_replay_sweep(tmp_path, toys):
    cfg = config_from_dict(raw(tmp_path, fit={"method": "toy-last"}, stages={"pre": ["toy-drop"], "post": ["toy-note"]}))
    sel = run_select(cfg, quiet=True)
    doc = json.loads((tmp_path / "t" / "selection.json").read_text())
    curves = read_curves(FLAN)
    # the pre-sweep stage: t5-small was never probed, and says why
    assert doc["dropped"] == [{"candidate": "t5-small", "reason": "a near-duplicate of t5-base"}]
    assert "t5-small" not in {e["candidate"] for e in doc["ranking"]} and "t5-small" not in sel.observations
    assert all(e["prior"] == {"loss": 1.0} for e in doc["ranking"])
    assert "t5-small" in (tmp_path / "t" / "report.md").read_text()
    # the predictor: every fit of the ranking is the toy's, and the rule stopped on its predictions
    assert {f.law for f in sel.fits.values()} == {"toy"}
    for e in doc["ranking"]:
        assert e["predicted_loss"] == pytest.approx(e["losses"][-1])
    stopped = [e for e in doc["ranking"] if e["status"] == "stopped early"]
    assert stopped, "the toy's s.d. of 0.01 separates these curves at the first decision"
    for e in stopped:
        assert f"predicted {e['losses'][-1]:.4g} at T" in e["reason"]
    at_budget = {c: curves.loss_at(6400)[curves.candidates.index(c)] for c in POOL if c != "t5-small"}
    finished = [e["candidate"] for e in doc["ranking"] if e["status"] == "finished"]
    assert doc["selected"] == min(finished, key=at_budget.get)
    # the post-sweep stage: its file, its mark in selection.json
    assert (tmp_path / "t" / "toy-note.txt").read_text() == f"finalist: {doc['selected']}\n"
    assert doc["toy_note"] == "toy-note.txt"
    assert math.isfinite(doc["cost"]["flops_spent"])


@pytest.mark.parametrize("over, message", [
    ({"fit": {"method": "locl"}}, r"unknown fit.method 'locl'.*Did you mean 'local'"),
    ({"fit": {"method": "ZeroShot"}}, r"unknown fit.method 'ZeroShot'; choose one of .*local"),
    ({"backend": "replai"}, r"backend must be one of hf, replay.*Did you mean 'replay'"),
    ({"stages": {"pre": ["phyllo"]}}, r"stages.pre: unknown stage 'phyllo'.*Did you mean 'phylo'"),
    ({"stages": {"post": ["toy-drop"]}}, r"stages.post: unknown stage 'toy-drop'.*toy-note"),
])
def test_unknown_names_list_the_options(tmp_path, toys, over, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw(tmp_path, **over))


@pytest.mark.slow
def test_a_sweep_with_no_report_for_a_while_says_what_its_probes_wait_for(monkeypatch, capsys):
    """A started probe whose workers hold nothing is waiting: said once the sweep has been
    quiet for WAIT_NOTE_S; probes that hold what they need are only long, and nothing is said."""
    from types import SimpleNamespace

    import ray

    from lensray.probe.base import Footprint
    from lensray.sweep import run
    from lensray.sweep.rule import StoppingRule

    if ray.is_initialized():  # an earlier test's Ray, of another size
        ray.shutdown()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        monkeypatch.setattr(run, "WAIT_NOTE_S", 0.0)
        trials = [SimpleNamespace(status="RUNNING"), SimpleNamespace(status="PENDING")]
        waiting = run._Progress(StoppingRule(1000), 3, "loss", Footprint({"CPU": 0.1}, 4.1, 1.0, True))
        waiting.on_step_end(0, trials)
        holding = run._Progress(StoppingRule(1000), 3, "loss", Footprint({"CPU": 0.0}, 0.0, 0.0, True))
        holding.on_step_end(0, trials)
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert err.count("no probe has reported") == 1
    assert "each probe needs 4.1 CPU and 1 GPU, the cluster has 1 CPU and 0 GPU free" in err


def test_a_registered_backend_is_found_by_the_config(tmp_path):
    from lensray.probe import base

    class Fake:
        name = "fake"

    fake = base.register_backend(Fake())
    try:
        assert base.get_backend("fake") is fake
        assert config_from_dict(raw(tmp_path, backend="fake")).backend == "fake"
    finally:
        base._LOADED.pop("fake")
        base.BACKENDS.pop("fake")
