"""The default predictor (`blend`): a robust local log-log slope at the budget and AtS's line
through the power phase, averaged in log space, with intervals calibrated on the predictor
suite::

    m_seg = log L(D_last) + g * Delta                 g: median slope of the last `fit.window`
                                                      segments between adjacent sizes
    m = (m_seg + m_AtS) / 2                           predicted log-loss at T
    s = s_local * (1 + kappa * Delta)                 s.d. of the candidate's own error
    s_shared = lambda * Delta^2                       s.d. of the error the pool shares
    interval = exp(m -+ z * sqrt(s^2 + s_shared^2)),  Delta = log(T / D_last)

m_AtS: predict/ats.py; s_local: the noise-and-backtest s.d. of `fit_local` (predict/local.py),
which also says whether a fit is reliable (enough sizes, not rising, not flat). The local slope
follows curves that are still steepening; the median of segment slopes is not moved by one
abrupt step between two adjacent sizes (a least-squares slope through three points is, and
extrapolates the step over the whole distance to T), and anchoring at the last loss keeps the
level the step reached; AtS's line, through every point of the power phase, damps noise. On the
suite's dev pools the average reaches AtS's RelAcc with a better tail and a slightly higher
PearCorr (docs/predictor.md).

The error of a prediction has a part the pool shares (the curves of one task bend alike after the
budget) and a part of the candidate's own. `sd_log` = s is the latter: the stopping rule compares
candidates by the s.d. of a difference, sqrt(s_i^2 + s_j^2), in which a shared miss cancels. The
interval, a statement about one candidate's loss at T, carries both. kappa
(`fit.extrapolation_growth`) and lambda (`fit.shared_sd`) are calibrated so that 90% intervals
of differences and of losses hold 90% of the truths over the suite's dev pools (`python -m
lensray.bench.calibrate`). The candidate's own part grows from the local fit's s.d., so it
follows each pool's measured noise and backtest error: quiet pools get narrow comparisons.

Flat curves (no fall beyond noise yet: the pre-power phase) keep their own prediction (on the
suite's dev pools and on FLAN and WMT19 it ranks them better than the pool's median fall from
their level does) but borrow their uncertainty from the pool: an s.d. widened by `fit.flat_sd`
times the fall the median slope of the pool's reliable fits at the same sizes predicts over
Delta (calibrated the same way). Such a fit is reliable, so the sweep can stop a flat candidate
that even the optimistic end of that interval cannot bring into the top k, and keeps one that
could. With fewer than `MIN_PEERS` reliable peers a flat fit stays unreliable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from statistics import NormalDist

import numpy as np

from lensray.core.types import CurveFit
from lensray.predict.ats import ats_lines
from lensray.predict.fit import FLAT_REASON, FitConfig, prepare_curves
from lensray.predict.local import LOCAL_MIN_POINTS, local_fits, local_noise

MIN_PEERS = 3
"""Fewest reliable, non-flat fits at the same sizes a flat candidate borrows its uncertainty from."""


@dataclass(frozen=True)
class BlendPool:
    """What the blend borrows from every candidate observed at the same sizes."""

    noise: tuple[float, float]
    """(sigma^2, eps^2) of the local fit (`local_noise`)."""
    slopes: np.ndarray
    """Blended log-log slopes of the pool's reliable, non-flat fits (empty when none)."""

    @cached_property
    def borrowed(self) -> float | None:
        """The median of `slopes`, which a flat fit borrows its uncertainty from (None with
        fewer than MIN_PEERS); once per pool, not once per fit."""
        return float(np.median(self.slopes)) if self.slopes.size >= MIN_PEERS else None


def blend_pool(sizes, losses, config: FitConfig | None = None) -> BlendPool:
    """The pool estimates of the rows of `losses` (what the stopping rule keeps per rung)."""
    cfg = config or FitConfig()
    x, y, _ = prepare_curves(sizes, losses, None)
    noise = local_noise(x, y, cfg)
    if x.size < LOCAL_MIN_POINTS:
        return BlendPool(noise, np.empty(0))
    local = local_fits(x, y, int(x[-1]), [""] * y.shape[0], cfg, noise)  # slopes and flags do not depend on T
    log_x, log_y = np.log(x), np.log(y)
    slopes = 0.5 * (segment_slopes(log_x, log_y, cfg.window) + ats_lines(log_x, log_y)[0])
    return BlendPool(noise, slopes[np.array([f.ok for f in local])])


def segment_slopes(log_x: np.ndarray, log_y: np.ndarray, window: int) -> np.ndarray:
    """Median of the log-log slopes of the last `window` segments between adjacent sizes (of
    those there are), per row of `log_y` (m, n): one abrupt step moves one segment only."""
    seg = np.sort((np.diff(log_y, axis=1) / np.diff(log_x))[:, -window:], axis=1)
    mid = seg.shape[1] // 2  # the middle one, or the mean of the middle two (np.median, without its overhead)
    return seg[:, mid] if seg.shape[1] % 2 else 0.5 * (seg[:, mid - 1] + seg[:, mid])


def fit_blend(sizes, losses, target: int, names: list[str] | None = None, config: FitConfig | None = None,
              context: BlendPool | None = None) -> list[CurveFit]:
    """The default predictor's fits of the rows of `losses` at `target` (see the module).

    `context`: `blend_pool` over a larger pool (the scheduler keeps one per rung); by default it
    is estimated from the rows given."""
    cfg = config or FitConfig()
    x, y, names = prepare_curves(sizes, losses, names)
    pool = context if context is not None else blend_pool(x, y, cfg)
    local = local_fits(x, y, target, names, cfg, pool.noise)
    if x.size < LOCAL_MIN_POINTS:
        return [replace(f, law="blend") for f in local]
    log_x, log_y, log_t = np.log(x), np.log(y), float(np.log(target))
    ats_slopes, ats_icepts = ats_lines(log_x, log_y)
    slopes = segment_slopes(log_x, log_y, cfg.window)
    delta = log_t - float(log_x[-1])
    shared = cfg.shared_sd * delta**2
    z = NormalDist().inv_cdf(0.5 + cfg.level / 2.0)
    borrowed = pool.borrowed
    fits = []
    for i, f in enumerate(local):
        mean = 0.5 * (log_y[i, -1] + slopes[i] * delta + ats_slopes[i] * log_t + ats_icepts[i])
        sd = float(f.sd_log * (1.0 + cfg.extrapolation_growth * delta))
        ok, reason, flat = f.ok, f.reason, f.reason == FLAT_REASON
        if flat and borrowed is not None:
            sd = float(np.hypot(sd, cfg.flat_sd * borrowed * delta))
            ok, reason = True, ""
        half = z * float(np.hypot(sd, shared))
        fits.append(CurveFit(
            f.candidate, "blend", f.target, float(np.exp(mean)),
            (float(np.exp(mean - half)), float(np.exp(mean + half))), ok, reason,
            {**f.params, "segment_slope": float(slopes[i]), "ats_slope": float(ats_slopes[i]), "flat": float(flat)},
            f.n_points, sd, shared,
        ))
    return fits
