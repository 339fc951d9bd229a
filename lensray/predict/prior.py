"""A candidate's prior combined with the fit of its own curve, where that curve says little.

A pre-sweep stage may attach a prior to a Candidate (`Pool.priors`; the phylo stage's is its
relatives' measured loss at T, lensray.stages.phylo.prior): an expected value v with a standard
deviation s (`phylo_loss`, `phylo_sd`). In log space, where the predictors work, it is a normal
with

    m_p = log v,   s_p = s / v                                (the delta method)

It is used only where the candidate's own curve says little, a flat curve (still in its
pre-power phase, FLAT_REASON): a flat fit with a reliable, borrowed s.d. (m_f, s_f) and the prior
are combined by their precisions, as two independent measurements of the same log-loss,

    1 / s^2 = 1 / s_f^2 + 1 / s_p^2,    m = s^2 (m_f / s_f^2 + m_p / s_p^2)

and a flat fit with no s.d. to trust (too few reliable peers) takes the prior's (m_p, s_p) and
becomes reliable. The shared part of the error (`CurveFit.sd_shared`) is kept for the interval.
A fit that is not flat, or a prior with v <= 0 or no width, is returned unchanged. The stopping
rule and the final ranking call the same function, so both see the same prediction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from statistics import NormalDist

from lensray.core.types import CurveFit
from lensray.predict.fit import FLAT_REASON


def is_flat(fit: CurveFit) -> bool:
    """Whether the fit is of a curve that has not started to fall (blend's `flat` parameter, or
    the local fit's FLAT_REASON)."""
    return fit.params.get("flat", 0.0) == 1.0 or fit.reason == FLAT_REASON


def prior_log_normal(prior: Mapping[str, float]) -> tuple[float, float] | None:
    """(m_p, s_p) of a `Pool.priors` entry (phylo_loss, phylo_sd), or None when it cannot be one
    (a value <= 0, or no spread)."""
    value, sd = prior.get("phylo_loss", math.nan), prior.get("phylo_sd", math.nan)
    if not (value > 0 and sd > 0):
        return None
    return math.log(value), sd / value


def with_prior(fit: CurveFit, prior: Mapping[str, float] | None, level: float) -> CurveFit:
    """`fit` combined with the candidate's prior (see the module); `level`: the coverage of the
    interval it is given."""
    if prior is None or not is_flat(fit):
        return fit
    normal = prior_log_normal(prior)
    if normal is None:
        return fit
    m_p, s_p = normal
    if fit.ok and fit.sd_log > 0 and math.isfinite(fit.predicted_loss):
        m_f, s_f = math.log(fit.predicted_loss), fit.sd_log
        var = 1.0 / (1.0 / s_f**2 + 1.0 / s_p**2)
        mean, sd = var * (m_f / s_f**2 + m_p / s_p**2), math.sqrt(var)
    else:
        mean, sd = m_p, s_p
    half = NormalDist().inv_cdf(0.5 + level / 2.0) * math.hypot(sd, fit.sd_shared)
    return replace(
        fit, predicted_loss=math.exp(mean), interval=(math.exp(mean - half), math.exp(mean + half)),
        ok=True, reason="", sd_log=sd, params={**fit.params, "prior_loss": math.exp(m_p), "prior_sd_log": s_p},
    )
