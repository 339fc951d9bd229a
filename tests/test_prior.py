"""A candidate's prior (its relatives' loss at T) in the predictor and the stopping rule: used
where its own curve is flat, ignored where the curve speaks. Pure numpy."""

import math

import numpy as np
import pytest
from conftest import TARGET, feed

from lensray.config.schema import SchedulerConfig
from lensray.core.types import Status
from lensray.predict.blend import fit_blend
from lensray.predict.prior import with_prior
from lensray.stages.phylo.prior import Prior
from lensray.sweep.rule import StoppingRule

SIZES = [200, 400, 800, 1600, 3200]


def _prior(value: float, sd: float) -> dict[str, float]:
    return Prior(value, (value - 1.645 * sd, value + 1.645 * sd), sd, {}, 1.0).to_dict()


def _fits(losses) -> list:
    return fit_blend(SIZES, np.asarray(losses, float), TARGET)


def _leaders() -> list[list[float]]:
    return [list(5.0 * np.array(SIZES, float) ** s) for s in (-0.30, -0.28, -0.32)]


def test_a_curve_that_falls_ignores_the_prior():
    fit = _fits(_leaders())[0]
    assert with_prior(fit, _prior(0.01, 0.001), 0.9) is fit


def test_a_flat_fit_and_the_prior_combine_by_their_precisions():
    flat = _fits([*_leaders(), [2.0] * 5])[-1]
    assert flat.ok and flat.params["flat"] == 1.0
    prior = _prior(0.5, 0.05)
    both = with_prior(flat, prior, 0.9)
    s_p = 0.05 / 0.5
    expect_var = 1 / (1 / flat.sd_log**2 + 1 / s_p**2)
    assert both.sd_log == pytest.approx(math.sqrt(expect_var))
    expect_mean = expect_var * (math.log(flat.predicted_loss) / flat.sd_log**2 + math.log(0.5) / s_p**2)
    assert both.predicted_loss == pytest.approx(math.exp(expect_mean))
    assert 0.5 < both.predicted_loss < flat.predicted_loss  # between the two, nearer the sharper
    assert both.interval[0] < both.predicted_loss < both.interval[1]
    assert both.params["prior_loss"] == pytest.approx(0.5)


def test_a_flat_fit_with_no_peers_is_decided_on_the_prior():
    alone = _fits([[2.0] * 5])[0]
    assert not alone.ok
    got = with_prior(alone, _prior(1.5, 0.15), 0.9)
    assert got.ok and got.predicted_loss == pytest.approx(1.5) and got.sd_log == pytest.approx(0.1)
    assert with_prior(alone, _prior(-0.2, 0.1), 0.9) is alone  # no log-normal for a value <= 0
    assert with_prior(alone, None, 0.9) is alone


def _sweep(priors=None) -> StoppingRule:
    """One candidate flat at 2.0 (a candidate whose pre-power phase may still end) and two
    leaders; top 1."""
    rule = StoppingRule(TARGET, SchedulerConfig(synchronous=False, top_k=1), sizes=SIZES, priors=priors)
    for i, curve in enumerate(_leaders()[:2]):
        feed(rule, f"leader-{i}", curve, upto=4)
    feed(rule, "flat", [2.0] * 4, upto=4)
    return rule


def test_relatives_that_stayed_poor_let_the_rule_stop_a_flat_candidate():
    without = _sweep()
    assert without.curves["flat"].status == Status.RUNNING  # two peers: too few to borrow from
    poor = _sweep({"flat": _prior(1.9, 0.1)})
    assert poor.curves["flat"].status == Status.STOPPED
    assert "cannot reach the top 1" in poor.curves["flat"].reason
    promising = _sweep({"flat": _prior(0.08, 0.04)})  # relatives that reached the leaders' level (0.07 at T)
    assert promising.curves["flat"].status == Status.RUNNING
