"""The stopping rule driven directly with observations: stop, keep, refuse to decide, rebuild
from the side file. Pure numpy: nothing here needs Ray."""

import numpy as np
import pytest
from conftest import SIZES, TARGET, curve, feed

from lensray.config.schema import SchedulerConfig
from lensray.core.types import Action, Observation, Status
from lensray.sweep.record import SweepRecord, read_state
from lensray.sweep.rule import StoppingRule


def test_stops_a_clearly_losing_candidate_with_a_reason():
    s = StoppingRule(TARGET)
    feed(s, "good", curve(2.0, -0.08))
    decisions = feed(s, "bad", curve(4.0, -0.02))
    assert decisions[:2] == [Action.CONTINUE] * 2  # too few sizes to decide
    assert decisions[2] == Action.STOP
    assert s.curves["bad"].status == Status.STOPPED
    assert "cannot reach the top 1" in s.curves["bad"].reason and "good" in s.curves["bad"].reason


def test_keeps_a_close_candidate():
    s = StoppingRule(TARGET)
    feed(s, "a", curve(2.0, -0.08))
    assert feed(s, "b", curve(2.02, -0.079)) == [Action.CONTINUE] * 5
    assert "in contention" in s.decisions[-1].reason


def _pair_apart(sizes: list[int], sds: float) -> tuple[StoppingRule, str, str]:
    """Two clean curves of one slope, the second `sds` s.d. of a prediction above the first, fed
    up to 800 (the first decision) to a scheduler planning `sizes`; its decision on the second."""
    s = StoppingRule(TARGET, SchedulerConfig(synchronous=False), sizes=sizes)
    feed(s, "a", curve(2.0, -0.08), upto=3)
    factor = np.exp(sds * s.curves["a"].fit.sd_log)
    return s, feed(s, "b", curve(2.0 * factor, -0.08), upto=3)[2], s.decisions[-1].reason


def test_a_difference_beyond_its_noise_stops_a_candidate_whose_interval_overlaps_the_leaders():
    s, decision, reason = _pair_apart(SIZES[:4], 2.8)  # one decision in the plan, at 800
    a, b = s.curves["a"].fit, s.curves["b"].fit
    assert b.interval[0] < a.interval[1], "the 90% intervals overlap"
    # ... but the difference is 2.8 / sqrt(2) = 1.98 s.d. of a difference, beyond 1.645 (95%)
    assert decision == Action.STOP and "1.98 s.d." in reason and "over 1 decision)" in reason


def test_more_planned_decisions_ask_for_more_confidence_at_each():
    # the same pair, in a plan of 11 sizes: 8 decisions share the 5% error, 0.625% each (z 2.50)
    s, decision, reason = _pair_apart([200 * 2**i for i in range(11)], 2.8)
    assert s.looks == 8
    assert decision == Action.CONTINUE and reason.startswith("in contention") and "<= 2.50" in reason


def test_never_decides_on_an_unreliable_fit():
    s = StoppingRule(TARGET)
    feed(s, "good", curve(2.0, -0.08))
    rising = [4.0, 4.1, 4.3, 4.6, 5.0]  # diverging: clearly worse, but its fit is not ok
    assert feed(s, "diverging", rising) == [Action.CONTINUE] * 5
    assert "fit not reliable" in s.decisions[-1].reason


def test_top_k_needs_k_better_rivals():
    s = StoppingRule(TARGET, SchedulerConfig(top_k=2))
    feed(s, "good", curve(2.0, -0.08))
    feed(s, "also-good", curve(2.1, -0.08))
    assert feed(s, "bad", curve(4.0, -0.02))[2] == Action.STOP
    assert "also-good" in s.curves["bad"].reason  # the 2nd strongest rival is the bar


def test_disabled_never_stops():
    s = StoppingRule(TARGET, SchedulerConfig(enabled=False))
    feed(s, "good", curve(2.0, -0.08))
    assert feed(s, "bad", curve(4.0, -0.02)) == [Action.CONTINUE] * 5


def test_state_is_rebuilt_from_the_side_file(tmp_path):
    path = tmp_path / "sweep.jsonl"
    s = StoppingRule(TARGET, record=SweepRecord(path))
    feed(s, "good", curve(2.0, -0.08))
    s.set_status("good", Status.FINISHED, "")
    feed(s, "bad", curve(4.0, -0.02), upto=3)
    feed(s, "half", curve(2.1, -0.08), upto=2)  # interrupted mid-probe
    with open(path, "a") as fh:
        fh.write('{"event": "observ')  # a line cut by a crash is ignored
    again = StoppingRule(TARGET, record=SweepRecord(path))
    assert again.curves["good"].status == Status.FINISHED
    assert again.curves["bad"].status == Status.STOPPED
    assert again.curves["half"].sizes == [200, 400]
    np.testing.assert_allclose(again.curves["good"].losses, curve(2.0, -0.08))
    assert [d.action for d in again.decisions] == [d.action for d in s.decisions]
    # the resumed probe reports its next size and the scheduler carries on from there
    assert again.observe(Observation("half", 800, curve(2.1, -0.08)[2])) == Action.CONTINUE
    state = read_state(path)
    assert [o.size for o in state.observations["half"]] == [200, 400, 800]
    assert state.status["bad"][0] == Status.STOPPED and state.observations["good"][0].flops == 6e9 * 200


@pytest.mark.parametrize("field, value", [("top_k", 0), ("level", 1.0), ("min_points", 1)])
def test_bad_scheduler_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"scheduler.{field}"):
        SchedulerConfig(**{field: value})


def test_keeps_top_k_running_to_the_budget():
    s = StoppingRule(TARGET, SchedulerConfig(top_k=2))
    feed(s, "good", curve(2.0, -0.08))
    assert Action.STOP not in feed(s, "bad", curve(4.0, -0.02))
    assert "keeping the top 2" in s.decisions[-1].reason


def test_a_candidate_whose_trial_died_and_reports_again_is_running_again(tmp_path):
    """Tune can retry a trial after the scheduler heard it died; its next report revives it, or
    a synchronous sweep would wait for it forever."""
    s = StoppingRule(TARGET, record=SweepRecord(tmp_path / "s.jsonl"))
    s.set_status("a", Status.FAILED, "the probe's trial died; see its error")
    feed(s, "a", curve(2.0, -0.08), upto=1)
    assert s.curves["a"].status == Status.RUNNING
    again = StoppingRule(TARGET, record=SweepRecord(tmp_path / "s.jsonl"))
    assert again.curves["a"].status == Status.RUNNING and again.curves["a"].sizes == [200]


def _fit_after_peers(peers: list[list[float]]) -> float:
    """The s.d. of candidate "x"'s fit after `peers` (fed first, in order) reached its sizes."""
    s = StoppingRule(TARGET, SchedulerConfig(synchronous=False))
    for i, losses in enumerate(peers):
        feed(s, f"p{i}", losses, upto=4)
    feed(s, "x", curve(2.0, -0.08), upto=4)
    return s.curves["x"].fit.sd_log


def test_a_rungs_pooled_estimates_come_from_its_first_pool_peers(monkeypatch):
    import lensray.sweep.rule as rule

    rng = np.random.default_rng(0)
    quiet = [list(np.array(curve(2.0 + i / 10, -0.08)) * np.exp(rng.normal(0, 0.002, 5))) for i in range(3)]
    noisy = [list(np.array(curve(3.0, -0.05)) * np.exp(rng.normal(0, 0.2, 5))) for _ in range(8)]
    # the noise is pooled by the median, so the noisy peers, once a majority, widen x's fit
    assert _fit_after_peers(quiet + noisy) > 2 * _fit_after_peers(quiet)
    monkeypatch.setattr(rule, "POOL_PEERS", 3)
    assert _fit_after_peers(quiet + noisy) == _fit_after_peers(quiet)  # beyond the first 3 they do not


def test_the_side_file_holds_each_event_once_it_is_decided_and_a_pickled_rule_appends_on(tmp_path):
    import pickle

    path = tmp_path / "sweep.jsonl"
    s = StoppingRule(TARGET, record=SweepRecord(path))
    feed(s, "a", curve(2.0, -0.08), upto=3)
    assert [o.size for o in read_state(path).observations["a"]] == [200, 400, 800]  # read while the sweep runs
    restored = pickle.loads(pickle.dumps(s))  # what CurveFitScheduler.save / restore do
    restored.observe(Observation("a", 1600, curve(2.0, -0.08)[3]))
    s.record.close()
    state = read_state(path)
    assert [o.size for o in state.observations["a"]] == [200, 400, 800, 1600]
    assert [d.size for d in state.decisions] == [200, 400, 800, 1600]
