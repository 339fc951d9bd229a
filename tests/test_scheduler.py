"""The scheduler driven directly with fake results: stop, keep, refuse to decide, restore."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler

from lensray.config import SchedulerConfig
from lensray.observation import Observation
from lensray.scheduler import FINISHED, RUNNING, STOPPED, CurveFitScheduler, read_state

SIZES = [200, 400, 800, 1600, 3200]
TARGET = 1638400


def curve(start: float, slope: float) -> list[float]:
    """A clean power law L = start * (D/200)^slope."""
    return [start * (d / 200) ** slope for d in SIZES]


def feed(s: CurveFitScheduler, name: str, losses: list[float], upto: int | None = None) -> list[str]:
    return [s.observe(Observation(name, d, l, flops=6e9 * d)) for d, l in list(zip(SIZES, losses))[:upto]]


def trial(name: str) -> SimpleNamespace:
    return SimpleNamespace(config={"candidate": name})


def test_stops_a_clearly_losing_candidate_with_a_reason():
    s = CurveFitScheduler(TARGET)
    feed(s, "good", curve(2.0, -0.08))
    decisions = feed(s, "bad", curve(4.0, -0.02))
    assert decisions[:2] == [TrialScheduler.CONTINUE] * 2  # too few sizes to decide
    assert decisions[2] == TrialScheduler.STOP
    assert s.curves["bad"].status == STOPPED
    assert "cannot reach the top 1" in s.curves["bad"].reason and "good" in s.curves["bad"].reason


def test_keeps_a_close_candidate():
    s = CurveFitScheduler(TARGET)
    feed(s, "a", curve(2.0, -0.08))
    assert feed(s, "b", curve(2.02, -0.079)) == [TrialScheduler.CONTINUE] * 5
    assert "in contention" in s.decisions[-1]["reason"]


def _pair_apart(sizes: list[int], sds: float) -> tuple[CurveFitScheduler, str, str]:
    """Two clean curves of one slope, the second `sds` s.d. of a prediction above the first, fed
    up to 800 (the first decision) to a scheduler planning `sizes`; its decision on the second."""
    s = CurveFitScheduler(TARGET, SchedulerConfig(synchronous=False), sizes=sizes)
    feed(s, "a", curve(2.0, -0.08), upto=3)
    factor = np.exp(sds * s.curves["a"].fit.params["sd_log"])
    return s, feed(s, "b", curve(2.0 * factor, -0.08), upto=3)[2], s.decisions[-1]["reason"]


def test_a_difference_beyond_its_noise_stops_a_candidate_whose_interval_overlaps_the_leaders():
    s, decision, reason = _pair_apart(SIZES[:4], 2.8)  # one decision in the plan, at 800
    a, b = s.curves["a"].fit, s.curves["b"].fit
    assert b.interval[0] < a.interval[1], "the 90% intervals overlap"
    # ... but the difference is 2.8 / sqrt(2) = 1.98 s.d. of a difference, beyond 1.645 (95%)
    assert decision == TrialScheduler.STOP and "1.98 s.d." in reason and "over 1 decision)" in reason


def test_more_planned_decisions_ask_for_more_confidence_at_each():
    # the same pair, in a plan of 11 sizes: 8 decisions share the 5% error, 0.625% each (z 2.50)
    s, decision, reason = _pair_apart([200 * 2**i for i in range(11)], 2.8)
    assert s.looks == 8
    assert decision == TrialScheduler.CONTINUE and reason.startswith("in contention") and "<= 2.50" in reason


def test_never_decides_on_an_unreliable_fit():
    s = CurveFitScheduler(TARGET)
    feed(s, "good", curve(2.0, -0.08))
    rising = [4.0, 4.1, 4.3, 4.6, 5.0]  # diverging: clearly worse, but its fit is not ok
    assert feed(s, "diverging", rising) == [TrialScheduler.CONTINUE] * 5
    assert "fit not reliable" in s.decisions[-1]["reason"]


def test_keeps_top_k_running_to_the_budget():
    s = CurveFitScheduler(TARGET, SchedulerConfig(top_k=2))
    feed(s, "good", curve(2.0, -0.08))
    assert TrialScheduler.STOP not in feed(s, "bad", curve(4.0, -0.02))
    assert "keeping the top 2" in s.decisions[-1]["reason"]


def test_top_k_needs_k_better_rivals():
    s = CurveFitScheduler(TARGET, SchedulerConfig(top_k=2))
    feed(s, "good", curve(2.0, -0.08))
    feed(s, "also-good", curve(2.1, -0.08))
    assert feed(s, "bad", curve(4.0, -0.02))[2] == TrialScheduler.STOP
    assert "also-good" in s.curves["bad"].reason  # the 2nd strongest rival is the bar


def test_disabled_never_stops():
    s = CurveFitScheduler(TARGET, SchedulerConfig(enabled=False))
    feed(s, "good", curve(2.0, -0.08))
    assert feed(s, "bad", curve(4.0, -0.02)) == [TrialScheduler.CONTINUE] * 5


def test_tune_hooks_and_missing_metrics():
    s = CurveFitScheduler(TARGET)
    assert s.on_trial_result(None, trial("x"), {"size": 200}) == TrialScheduler.CONTINUE  # no loss
    assert s.on_trial_result(None, trial("x"), {"size": 200, "loss": float("nan")}) == TrialScheduler.CONTINUE
    for d, l in zip(SIZES, curve(2.0, -0.08)):
        assert s.on_trial_result(None, trial("x"), {"candidate": "x", "size": d, "loss": l}) == TrialScheduler.CONTINUE
    s.on_trial_complete(None, trial("x"), {})
    assert s.curves["x"].status == FINISHED
    assert "1 finished" in s.debug_string()


def test_state_is_rebuilt_from_the_side_file(tmp_path):
    path = tmp_path / "sweep.jsonl"
    s = CurveFitScheduler(TARGET, state_path=path)
    feed(s, "good", curve(2.0, -0.08))
    s.on_trial_complete(None, trial("good"), {})
    feed(s, "bad", curve(4.0, -0.02), upto=3)
    feed(s, "half", curve(2.1, -0.08), upto=2)  # interrupted mid-probe
    with open(path, "a") as fh:
        fh.write('{"event": "observ')  # a line cut by a crash is ignored
    again = CurveFitScheduler(TARGET, state_path=path)
    assert again.curves["good"].status == FINISHED
    assert again.curves["bad"].status == STOPPED
    assert again.curves["half"].sizes == [200, 400]
    np.testing.assert_allclose(again.curves["good"].losses, curve(2.0, -0.08))
    assert [d["decision"] for d in again.decisions] == [d["decision"] for d in s.decisions]
    # the resumed probe reports its next size and the scheduler carries on from there
    assert again.observe(Observation("half", 800, curve(2.1, -0.08)[2])) == TrialScheduler.CONTINUE
    state = read_state(path)
    assert [o.size for o in state.observations["half"]] == [200, 400, 800]
    assert state.status["bad"][0] == STOPPED and state.observations["good"][0].flops == 6e9 * 200


def test_save_and_restore_round_trip(tmp_path):
    s = CurveFitScheduler(TARGET)
    feed(s, "good", curve(2.0, -0.08))
    feed(s, "bad", curve(4.0, -0.02), upto=3)
    s.save(str(tmp_path / "ckpt"))
    fresh = CurveFitScheduler(TARGET)
    fresh.restore(str(tmp_path / "ckpt"))
    assert fresh.curves["bad"].status == STOPPED and len(fresh.decisions) == len(s.decisions)


@pytest.mark.parametrize("field, value", [("top_k", 0), ("level", 1.0), ("min_points", 1)])
def test_bad_scheduler_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"scheduler.{field}"):
        SchedulerConfig(**{field: value})


class FakeController:
    """Just enough of Tune's controller for choose_trial_to_run: trials and stop_trial."""

    def __init__(self, names):
        self.trials = [SimpleNamespace(config={"candidate": n}, status="PAUSED", trial_id=n) for n in names]

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        trial.status = "TERMINATED"


def test_synchronous_rungs_pause_then_decide_with_the_whole_rung(tmp_path):
    s = CurveFitScheduler(TARGET, state_path=tmp_path / "s.jsonl", sizes=SIZES)
    ctl = FakeController(["bad", "good"])
    bad, good = curve(4.0, -0.02), curve(2.0, -0.08)
    # "bad" reaches 800 first: no rival has a fit yet, so it continues, paused at the rung
    assert feed(s, "bad", bad, upto=3) == [TrialScheduler.PAUSE] * 3
    ctl.trials[1].status = "RUNNING"
    feed(s, "good", good, upto=2)
    assert s.choose_trial_to_run(ctl) is None, "bad waits: good has not reached 800 yet"
    assert s.observe(Observation("good", 800, good[2])) == TrialScheduler.PAUSE
    ctl.trials[1].status = "PAUSED"
    # the rung is complete: bad is re-judged against good's fit and stopped instead of resumed
    chosen = s.choose_trial_to_run(ctl)
    assert chosen is ctl.trials[1] and ctl.trials[0].status == "TERMINATED"
    assert s.curves["bad"].status == STOPPED
    # the last planned size is never a decision point
    for d, l in zip(SIZES[3:], good[3:]):
        assert s.observe(Observation("good", d, l)) in (TrialScheduler.PAUSE, TrialScheduler.CONTINUE)
    assert s.decisions[-1]["reason"] == "reached the budget"
    assert read_state(tmp_path / "s.jsonl").status["bad"][0] == STOPPED


def test_pending_probes_start_before_paused_ones_resume():
    s = CurveFitScheduler(TARGET, sizes=SIZES)
    ctl = FakeController(["a", "b"])
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
    s = CurveFitScheduler(TARGET, state_path=path, sizes=SIZES)
    assert s.curves["bad"].status == RUNNING and s.curves["good"].status == RUNNING
    assert s.decisions == [r for r in lines if r["event"] == "decision"]
    assert s.curves["good"].rung_decided == 800 and s.curves["bad"].rung_decided == 400
    ctl = FakeController(["good", "bad"])
    assert s.choose_trial_to_run(ctl) is None  # bad's rung (800) is decided first: it is stopped
    assert ctl.trials[1].status == "TERMINATED" and read_state(path).status["bad"][0] == STOPPED
    assert s.choose_trial_to_run(ctl) is ctl.trials[0]  # then good's rung: it goes on
    assert s.decisions[-1]["candidate"] == "good" and s.decisions[-1]["size"] == 1600
