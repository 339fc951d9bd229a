"""`lensray select` and `lensray verify` on a real local Ray with zoo models, DeepSpeed and Ray
Train: the live path, CI-sized (3 candidates, 3 sizes)."""

import json

import pytest

from lensray.config.load import config_from_dict
from lensray.core.errors import ConfigError
from lensray.pipeline import run_select
from lensray.verify import run_verify

POOL = ["neox-copy-48", "gpt2-format-48", "llama-text-32"]
SIZES = [16, 32, 64, 128]


@pytest.fixture(scope="module")
def live(zoo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("live")
    empty = out / "empty-model"  # a model folder without weights: its probe fails, the others go on
    empty.mkdir()
    cfg = config_from_dict({
        "name": "live",
        "backend": "hf",
        "zoo": str(zoo_dir),
        "pool": {"models": POOL + [{"name": "missing", "path": str(empty)}]},
        "plan": {"sizes": SIZES, "budget": 128, "target": 512},
        "data": {"max_length": 32, "eval_size": 64},
        "probe": {"zero_stage": 2, "micro_batch": 8, "lr": 0.001, "epochs": 2, "ntk_examples": 4},
        "resources": {"workers": 1, "cpus_per_worker": 0.9},
        "output": str(out),  # rungs synchronous (the default): each probe waits at 64 for the others
    })
    return cfg, run_select(cfg, quiet=True), out / "live"


@pytest.mark.slow
def test_live_select_probes_every_candidate_and_picks_the_copy_model(live):
    cfg, sel, folder = live
    doc = json.loads((folder / "selection.json").read_text())
    by_name = {e["candidate"]: e for e in doc["ranking"]}
    assert set(by_name) == set(POOL) | {"missing"}
    missing = by_name.pop("missing")  # a probe that fails is recorded; nothing else is affected
    assert missing["status"] == "failed" and "has no .safetensors weights" in missing["reason"]
    assert doc["ranking"][-1]["candidate"] == "missing"
    for e in by_name.values():
        assert e["status"] in ("finished", "stopped early"), e
        assert e["sizes"] == SIZES[: len(e["sizes"])]  # one Observation per size, in order
        assert e["status"] != "finished" or len(e["sizes"]) == 4
        assert e["status"] != "stopped early" or len(e["sizes"]) == 3  # stopped at the one decision size
    # the zoo's task is learnt fast only by the model pretrained on its structure (zoo.py)
    assert doc["selected"] == "neox-copy-48"
    copy = by_name["neox-copy-48"]
    assert copy["losses"][-1] < copy["losses"][0]
    assert 0 < doc["cost"]["flops_spent"] <= doc["cost"]["flops_all_probes"] < doc["cost"]["flops_full"]
    extra = sel.observations["neox-copy-48"][0].extra
    assert extra["ntk_F"] >= 0 and "zero_shot_loss" in extra
    # one CPU worker per probe: each fine-tunes in its trial's own process, with no Ray Train
    # worker group to start, and still reports every size to Tune as it is done
    for observations in (sel.observations[name] for name in POOL):
        assert all(o.extra["in_process"] and o.extra["dist_backend"] == "gloo" for o in observations)
        assert observations[0].extra["phase_s"]["ray_train_start"] < 1.0
    # synchronous rungs: each probe paused at 64, the one size it can be decided at (the 3rd of
    # 4), and was judged only once all three had reported it, with the whole rung's fits;
    # the probes that went on resumed after their last size
    events = [json.loads(line) for line in (folder / "sweep.jsonl").read_text().splitlines()]
    at_64 = [(i, e) for i, e in enumerate(events) if e.get("size") == 64 and e["event"] in ("observation", "decision")]
    pauses = [e["candidate"] for _, e in at_64 if e.get("decision") == "PAUSE"]
    judged = [(i, e) for i, e in at_64 if e["event"] == "decision" and e["decision"] != "PAUSE"]
    assert sorted(pauses) == sorted(POOL) and sorted(e["candidate"] for _, e in judged) == sorted(POOL)
    last_report = max(i for i, e in at_64 if e["event"] == "observation")
    assert all(i > last_report for i, _ in judged)
    assert not any(e.get("decision") == "PAUSE" and e["size"] != 64 for e in events)
    for name in POOL:
        reported = [e["size"] for e in events if e["event"] == "observation" and e["candidate"] == name]
        assert reported == by_name[name]["sizes"]


@pytest.mark.slow
def test_live_verify_scores_the_selection(live):
    cfg, sel, folder = live
    result = run_verify(cfg)
    assert set(result["loss_at_target"]) == set(POOL)  # the failing candidate fails again
    assert result["best"] == "neox-copy-48" and result["relacc"] == 100.0
    assert 0 < result["fraction_of_full"] < 1
    # the verification's own report ranks by the losses measured at T, best first
    truth = json.loads((folder.parent / "live-verify" / "selection.json").read_text())
    assert truth["selected"] == result["best"]
    finished = [e for e in truth["ranking"] if e["status"] == "finished"]
    assert {e["candidate"] for e in finished} == set(POOL)
    for e in finished:
        assert e["predicted_loss"] == e["losses"][0] == result["loss_at_target"][e["candidate"]]
        assert e["reliable"] and e["interval"] == [e["predicted_loss"]] * 2
    assert "**Selected: neox-copy-48** - lowest measured loss at T" in (folder.parent / "live-verify" / "report.md").read_text()


def test_hf_config_refuses_what_it_cannot_do(zoo_dir):
    base = {"backend": "hf", "zoo": str(zoo_dir), "plan": {"sizes": [32, 64, 128], "budget": 128, "target": 512}}
    assert config_from_dict(base).scheduler.synchronous  # one CPU worker: paused in its own process
    for resources in ({"workers": 2}, {"gpus_per_worker": 1}):
        with pytest.raises(ConfigError, match="scheduler.synchronous is supported with backend hf only for probes of one CPU worker"):
            config_from_dict(base | {"resources": resources})
    with pytest.raises(ConfigError, match="probe.num_workers is set by lensray; use resources"):
        config_from_dict(base | {"scheduler": {"synchronous": False}, "probe": {"num_workers": 2}})
    with pytest.raises(ConfigError, match="probe.in_process is set by lensray; use resources"):
        config_from_dict(base | {"scheduler": {"synchronous": False}, "probe": {"in_process": True}})
    with pytest.raises(ConfigError, match="data.sizes is set by lensray"):
        config_from_dict(base | {"scheduler": {"synchronous": False}, "data": {"sizes": [1, 2]}})


@pytest.mark.parametrize(
    "resources, trial_cpus, reused",
    [({"workers": 1, "cpus_per_worker": 0.9}, 1.0, True),
     ({"workers": 1, "cpus_per_worker": 0.9, "reuse_processes": False}, 1.0, False),
     ({"workers": 2, "cpus_per_worker": 0.9}, 0.1, False)],
)
def test_what_an_hf_trial_reserves_and_whether_tune_reuses_its_process(zoo_dir, resources, trial_cpus, reused):
    """A one-CPU-worker probe runs in its trial, which reserves the whole probe and whose process
    Tune reuses unless told not to; Ray bounds such trials, so Tune needs no cap on live ones (a
    paused probe holds nothing, and a rung spans the pool). A worker group reserves its own CPUs,
    so Tune must cap the trials that drive one."""
    from lensray.probe.hf.backend import BACKEND

    cfg = config_from_dict({"backend": "hf", "zoo": str(zoo_dir), "scheduler": {"synchronous": False},
                            "plan": {"sizes": [32, 64, 128], "budget": 128, "target": 512}, "resources": resources})
    footprint = BACKEND.footprint(cfg)
    assert footprint.trial["CPU"] == pytest.approx(trial_cpus) and footprint.reuse_actors == reused
    assert footprint.cap_live_trials == (resources["workers"] > 1)
    assert footprint.cpus == pytest.approx(resources["workers"] * 0.9 + 0.1)


@pytest.mark.slow
def test_in_process_probes_hand_their_trial_process_on_and_resume_after_it_dies(zoo_dir, tmp_path):
    """One probe at a time, each fine-tuning in its trial's process: the first candidate is
    stopped after its first size and its process goes on to the second, which is killed when it
    reports its second size; Tune retries it in a new process, which resumes from its last
    checkpoint (never before its first size) and goes on to the third."""
    import os
    import signal

    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class StopThenKill(FIFOScheduler):
        def __init__(self) -> None:
            super().__init__()
            self.reports: list[tuple[str, int, int]] = []  # candidate, size, trial process

        def on_trial_result(self, tune_controller, trial, result):
            name = result["candidate"]
            self.reports.append((name, result["size"], result["pid"]))
            if (name, result["size"]) == (POOL[1], 64) and len(self.reports) == 3:
                os.kill(result["pid"], signal.SIGKILL)
            return TrialScheduler.STOP if name == POOL[0] else TrialScheduler.CONTINUE

    cfg = config_from_dict({
        "name": "reuse", "backend": "hf", "zoo": str(zoo_dir), "pool": {"models": POOL},
        "plan": {"sizes": [32, 64, 128], "budget": 128, "target": 512},
        "data": {"max_length": 32, "eval_size": 32},
        "probe": {"micro_batch": 8, "epochs": 1, "ntk_examples": 0},
        "resources": {"workers": 1, "cpus_per_worker": 0.9, "max_concurrent": 1, "max_failures": 1},
        "scheduler": {"synchronous": False}, "output": str(tmp_path),
    })
    scheduler = StopThenKill()
    sel = run_select(cfg, quiet=True, scheduler=scheduler)
    by_name = {e["candidate"]: e for e in sel.doc["ranking"]}
    assert by_name[POOL[0]]["status"] == "stopped early" and by_name[POOL[0]]["sizes"] == [32]
    for name in POOL[1:]:
        assert by_name[name]["status"] == "finished" and sorted(set(by_name[name]["sizes"])) == [32, 64, 128], by_name[name]
    second = [(s, p) for n, s, p in scheduler.reports if n == POOL[1]]
    third = [(s, p) for n, s, p in scheduler.reports if n == POOL[2]]
    # the stopped trial's process probed the next candidate, up to its kill
    assert [p for _, p in second[:2]] == [scheduler.reports[0][2]] * 2
    # a new process resumed after the last checkpoint Tune had (the kill came as it reported 64)
    assert [s for s, _ in second] in ([32, 64, 128], [32, 64, 64, 128])
    assert second[-1][1] != second[0][1]
    assert [s for s, _ in third] == [32, 64, 128] and {p for _, p in third} == {second[-1][1]}  # and probed the third
