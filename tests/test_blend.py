"""The default predictor (`blend`): robust to one abrupt step, calibrated intervals on pools drawn
from the suite's prior, and flat curves with an honest, wide interval the stopping rule can use.
Pure numpy: nothing here needs Ray."""

from statistics import NormalDist

import numpy as np
import pytest
from conftest import TARGET, feed

from lensray.bench.synth import SUITE_PARTS, suite_pool
from lensray.config.schema import SchedulerConfig
from lensray.core.types import Action, Status
from lensray.predict.blend import fit_blend
from lensray.predict.local import fit_local
from lensray.predict.metrics import pair_coverage
from lensray.sweep.rule import StoppingRule

SIZES = 200.0 * 2 ** np.arange(8)
FAR = int(200 * 2**14)  # T/B = 128


def _pool(seed: int = 0, n: int = 12) -> np.ndarray:
    """n noisy power laws at SIZES (slopes 0.2 to 0.5)."""
    rng = np.random.default_rng(seed)
    b, a = rng.uniform(0.2, 0.5, n), rng.uniform(3.0, 8.0, n)
    return a[:, None] * SIZES[None, :] ** -b[:, None] * np.exp(rng.normal(0.0, 0.005, (n, SIZES.size)))


def _half_width(fit) -> float:
    return float(np.log(fit.interval[1] / fit.predicted_loss))


@pytest.mark.parametrize("after", [5, 6, 7])  # the step inside the last three segments
def test_one_abrupt_step_moves_the_prediction_by_less_than_its_interval(after):
    losses = _pool()
    stepped = losses.copy()
    stepped[0, after:] *= np.exp(-0.3)  # a 26% drop between two adjacent sizes, then the old slope
    # the step lowers the true loss at T by 0.3 in log (the old slope, from a lower level): the
    # prediction may follow that, and must not move by more than its interval beyond it
    plain, step = fit_blend(SIZES, losses, FAR)[0], fit_blend(SIZES, stepped, FAR)[0]
    assert step.ok
    assert abs(np.log(plain.predicted_loss / step.predicted_loss) - 0.3) <= _half_width(step)
    if after > 5:  # the least-squares slope through the last three sizes extrapolates the step
        local_plain, local_step = fit_local(SIZES, losses, FAR)[0], fit_local(SIZES, stepped, FAR)[0]
        assert abs(np.log(local_plain.predicted_loss / local_step.predicted_loss) - 0.3) > 2 * _half_width(local_step)


def test_intervals_hold_about_their_level_on_pools_drawn_from_the_prior():
    # held-out pools: the intervals were calibrated on the dev pools only
    inside, pairs = [], []
    for seed in SUITE_PARTS["held-out"][:20]:
        curves = suite_pool(seed)
        truth = curves.losses[:, -1]
        for budget in (3200, 25600):  # T/512 and T/64
            seen = curves.upto(budget)
            fits = fit_blend(seen.sizes, seen.losses, int(curves.sizes[-1]), seen.candidates)
            inside += [f.interval[0] <= t <= f.interval[1] for f, t in zip(fits, truth) if f.ok]
            pairs.append(pair_coverage(fits, truth, 0.9))
    assert 0.8 <= np.mean(inside) <= 0.95
    assert 0.8 <= np.mean(pairs) <= 0.95


def test_the_interval_carries_the_shared_error_and_the_comparison_does_not():
    fit = fit_blend(SIZES, _pool(), FAR)[0]
    z = NormalDist().inv_cdf(0.95)
    assert fit.sd_shared > 0
    assert _half_width(fit) == pytest.approx(z * np.hypot(fit.sd_log, fit.sd_shared))


def test_a_flat_curve_borrows_a_wide_interval_from_its_pool():
    losses = np.vstack([_pool(), np.full(SIZES.size, 2.0)])
    fits = fit_blend(SIZES, losses, FAR)
    flat, peers = fits[-1], fits[:-1]
    assert flat.ok and flat.params["flat"] == 1.0
    assert flat.interval[0] < 2.0 * 0.5  # its optimistic end allows a large fall
    assert flat.sd_log > 2 * max(f.sd_log for f in peers)
    alone = fit_blend(SIZES, losses[-1:], FAR)[0]  # no peers to borrow from
    assert not alone.ok and "power phase is not visible" in alone.reason


def _flat_against_leaders(level: float) -> StoppingRule:
    rule = StoppingRule(TARGET, SchedulerConfig(synchronous=False, top_k=1), sizes=[200, 400, 800, 1600, 3200])
    for i, slope in enumerate((-0.30, -0.28, -0.32)):
        feed(rule, f"leader-{i}", list(5.0 * np.array([200, 400, 800, 1600, 3200], float) ** slope), upto=4)
    feed(rule, "flat", [level] * 4, upto=4)
    return rule


def test_the_rule_stops_a_flat_candidate_that_even_its_optimistic_end_cannot_bring_into_the_top():
    far_behind = _flat_against_leaders(20.0)
    assert far_behind.curves["flat"].status == Status.STOPPED
    close = _flat_against_leaders(0.5)  # at the leaders' level: a fall would put it on top
    assert close.curves["flat"].status == Status.RUNNING
    assert close.decisions[-1].action == Action.CONTINUE and "in contention" in close.decisions[-1].reason
