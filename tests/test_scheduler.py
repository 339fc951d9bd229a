"""The Tune adapter of the stopping rule driven directly with fake trials and results: the hooks,
synchronous rungs, pending trials, and save/restore."""

import json
from dataclasses import dataclass
from types import SimpleNamespace

from conftest import SIZES, TARGET, curve, feed
from ray.tune.schedulers import TrialScheduler

from lensray.config.schema import SchedulerConfig
from lensray.core.types import Observation, Status
from lensray.sweep.record import SweepRecord, read_state
from lensray.sweep.rule import StoppingRule
from lensray.sweep.scheduler import CurveFitScheduler
from lensray.sweep.trial import HOLD_KEY


def scheduler(config: SchedulerConfig | None = None, sizes: list[int] | None = None, path=None) -> CurveFitScheduler:
    return CurveFitScheduler(StoppingRule(TARGET, config, sizes=sizes, record=SweepRecord(path)))


def trial(name: str) -> SimpleNamespace:
    return SimpleNamespace(config={"candidate": name})


def test_tune_hooks_and_missing_metrics():
    s = scheduler()
    assert s.on_trial_result(None, trial("x"), {"size": 200}) == TrialScheduler.CONTINUE  # no loss
    assert s.on_trial_result(None, trial("x"), {"size": 200, "loss": float("nan")}) == TrialScheduler.CONTINUE
    for d, l in zip(SIZES, curve(2.0, -0.08)):
        assert s.on_trial_result(None, trial("x"), {"candidate": "x", "size": d, "loss": l}) == TrialScheduler.CONTINUE
    s.on_trial_complete(None, trial("x"), {})
    assert s.rule.curves["x"].status == Status.FINISHED
    assert "1 finished" in s.debug_string()


def test_a_restored_scheduler_decides_exactly_as_the_original(tmp_path):
    s = scheduler(SchedulerConfig(synchronous=False), sizes=SIZES)
    feed(s.rule, "good", curve(2.0, -0.08), upto=3)
    feed(s.rule, "bad", curve(4.0, -0.02), upto=3)
    feed(s.rule, "late", curve(4.2, -0.02), upto=2)
    s.save(str(tmp_path / "ckpt"))
    fresh = scheduler(SchedulerConfig(synchronous=False), sizes=SIZES)
    fresh.restore(str(tmp_path / "ckpt"))
    assert fresh.rule.curves["bad"].status == Status.STOPPED and fresh.rule.decisions == s.rule.decisions
    # the next report of a clear loser: stopped against the leader's fit by both
    third = Observation("late", SIZES[2], curve(4.2, -0.02)[2])
    original, restored = s.rule.observe(third), fresh.rule.observe(third)
    assert original == restored == TrialScheduler.STOP
    assert fresh.rule.decisions[-1] == s.rule.decisions[-1] and "good" in s.rule.decisions[-1].reason


@dataclass(eq=False)  # hashed by identity, as Tune's trials
class FakeTrial:
    config: dict
    status: str
    trial_id: str


class FakeController:
    """Just enough of Tune's controller for choose_trial_to_run: trials added to the scheduler in
    order, the live ones as an unordered set (as Tune keeps them), and stop_trial."""

    def __init__(self, names, scheduler):
        self.trials = [FakeTrial({"candidate": n}, "PAUSED", n) for n in names]
        for trial in self.trials:
            scheduler.on_trial_add(self, trial)

    def get_trials(self):
        return self.trials

    def get_live_trials(self):
        return {t for t in self.trials if t.status != "TERMINATED"}

    def stop_trial(self, trial):
        trial.status = "TERMINATED"


def test_synchronous_rungs_pause_then_decide_with_the_whole_rung(tmp_path):
    s = scheduler(path=tmp_path / "s.jsonl", sizes=SIZES)
    ctl = FakeController(["bad", "good"], s)
    bad, good = curve(4.0, -0.02), curve(2.0, -0.08)
    # "bad" reaches 800 first: no rival has a fit yet, so it continues, paused at the rung; it
    # pauses only at a size it can be decided at (the 3rd), not at the two before it
    assert feed(s.rule, "bad", bad, upto=3) == [TrialScheduler.CONTINUE] * 2 + [TrialScheduler.PAUSE]
    assert s.rule.decision_sizes == {800, 1600}
    ctl.trials[1].status = "Status.RUNNING"
    feed(s.rule, "good", good, upto=2)
    assert s.choose_trial_to_run(ctl) is None, "bad waits: good has not reached 800 yet"
    assert s.rule.observe(Observation("good", 800, good[2])) == TrialScheduler.PAUSE
    ctl.trials[1].status = "PAUSED"
    # the rung is complete: bad is re-judged against good's fit and stopped instead of resumed
    chosen = s.choose_trial_to_run(ctl)
    assert chosen is ctl.trials[1] and ctl.trials[0].status == "TERMINATED"
    assert s.rule.curves["bad"].status == Status.STOPPED
    # the last planned size is never a decision point
    for d, l in zip(SIZES[3:], good[3:]):
        assert s.rule.observe(Observation("good", d, l)) in (TrialScheduler.PAUSE, TrialScheduler.CONTINUE)
    assert s.rule.decisions[-1].reason == "reached the budget"
    assert read_state(tmp_path / "s.jsonl").status["bad"][0] == Status.STOPPED


def test_a_rung_is_judged_with_the_fit_of_a_probe_still_pausing():
    """The last probe to reach the rung has reported (its PAUSE is on its way) but Tune has not
    paused its trial yet when the others are judged: its fit must be among their rivals."""
    s = scheduler(sizes=SIZES)
    ctl = FakeController(["bad", "good"], s)
    bad, good = curve(4.0, -0.02), curve(2.0, -0.08)
    feed(s.rule, "bad", bad, upto=3)
    ctl.trials[1].status = "RUNNING"
    assert feed(s.rule, "good", good, upto=3)[-1] == TrialScheduler.PAUSE
    assert s.choose_trial_to_run(ctl) is None and ctl.trials[0].status == "TERMINATED"
    assert s.rule.curves["bad"].status == Status.STOPPED and "good" in s.rule.curves["bad"].reason
    assert s.rule.curves["good"].rung_decided < 800  # judged once its trial is paused
    ctl.trials[1].status = "PAUSED"
    assert s.choose_trial_to_run(ctl) is ctl.trials[1] and s.rule.curves["good"].rung_decided == 800


def test_pending_probes_start_before_paused_ones_resume():
    s = scheduler(sizes=SIZES)
    ctl = FakeController(["a", "b"], s)
    ctl.trials[1].status = "PENDING"
    assert s.choose_trial_to_run(ctl) is ctl.trials[1]


def test_a_resumed_synchronous_sweep_keeps_the_record_and_decides_pending_rungs_afresh(tmp_path):
    """The side file of a synchronous sweep interrupted with "good" paused at 1600 and "bad"
    paused at 800, its rung undecided. Replaying must not decide "bad" on the spot (it would be
    stopped in memory, unrecorded, and never resumed while its trial waits): it stays running
    until the rung is decided, on the record, and the sweep goes on with "good"."""
    path = tmp_path / "sweep.jsonl"
    good, bad = curve(2.0, -0.08), curve(4.0, -0.02)
    lines = []
    for name, losses, upto in (("good", good, 4), ("bad", bad, 3)):
        for i, (d, l) in enumerate(list(zip(SIZES, losses))[:upto]):
            lines.append({"event": "observation", "candidate": name, "size": d, "loss": l})
            lines.append({"event": "decision", "candidate": name, "size": d, "decision": "PAUSE", "reason": "waiting"})
            if i < upto - 1:  # the rung was decided; the last one of each is still open
                lines.append({"event": "decision", "candidate": name, "size": d, "decision": "CONTINUE", "reason": "rung"})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    s = scheduler(path=path, sizes=SIZES)
    assert s.rule.curves["bad"].status == Status.RUNNING and s.rule.curves["good"].status == Status.RUNNING
    assert [d.to_record() for d in s.rule.decisions] == [r for r in lines if r["event"] == "decision"]
    assert s.rule.curves["good"].rung_decided == 800 and s.rule.curves["bad"].rung_decided == 400
    # `--resume` starts new trials, which Tune runs at once: each first reports that it stands
    # at its open rung (HOLD_KEY) and is paused there, not fine-tuned past it
    hold = {"candidate": "bad", HOLD_KEY: True}
    assert s.rule.open_rung("bad") and s.on_trial_result(None, trial("bad"), hold) == TrialScheduler.PAUSE
    ctl = FakeController(["good", "bad"], s)
    assert s.choose_trial_to_run(ctl) is None  # bad's rung (800) is decided first: it is stopped
    assert ctl.trials[1].status == "TERMINATED" and read_state(path).status["bad"][0] == Status.STOPPED
    assert s.choose_trial_to_run(ctl) is ctl.trials[0]  # then good's rung: it goes on
    assert s.rule.decisions[-1].candidate == "good" and s.rule.decisions[-1].size == 1600
    # decided, neither is held again (a trial resumed from its pause reports no hold)
    assert not s.rule.open_rung("good") and not s.rule.open_rung("bad")
    assert s.on_trial_result(None, trial("good"), {"candidate": "good", HOLD_KEY: True}) == TrialScheduler.CONTINUE


def test_nested_extras_that_tune_flattened_are_nested_again():
    from lensray.sweep.scheduler import _unflatten

    result = {"loss": 1.0, "extra/steps": 4, "extra/phase_s/train": 1.5, "extra/phase_s/eval": 0.5,
              "extra/queries": [{"id": 0}], "extras/other": 1}
    assert _unflatten(result, "extra/") == {"steps": 4, "phase_s": {"train": 1.5, "eval": 0.5}, "queries": [{"id": 0}]}
