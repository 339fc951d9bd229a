"""Metrics of a selection method on a pool with known losses at T: PearCorr, RelAcc, and the coverage
of the intervals of differences (what the stopping rule's confidence rests on)::

    PearCorr = 100 * Pearson(score, true loss at T)
    RelAcc   = 100 * (L_worst - L_selected) / (L_worst - L_best),  L = true loss at T
    pair coverage = share of pairs of reliable fits (i, j) with
        | (m_i - m_j) - (t_i - t_j) | <= z * sqrt(s_i^2 + s_j^2),   z = Phi^-1(1/2 + level/2)

m: predicted log-loss at T, s: its s.d., t: the true log-loss at T.
"""

from __future__ import annotations

import statistics

import numpy as np

from lensray.core.types import CurveFit


def pearcorr(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """100 x Pearson correlation; None when either side is constant."""
    s, t = scores - scores.mean(), truth - truth.mean()
    den = float(np.sqrt((s**2).sum() * (t**2).sum()))
    return None if den == 0 else 100.0 * float((s * t).sum()) / den


def relacc(selected: int, truth: np.ndarray) -> float | None:
    """100 x (worst - selected) / (worst - best) of the true losses; None when all are equal."""
    span = float(truth.max() - truth.min())
    return None if span == 0 else 100.0 * float(truth.max() - truth[selected]) / span


def pair_coverage(fits: list[CurveFit], truth: np.ndarray, level: float) -> float | None:
    """Share of pairs of reliable `fits` whose true log-loss difference at T (`truth`: true
    losses) lies within z s.d. of their predicted difference (see the module docstring); None
    with fewer than two reliable fits."""
    ok = np.array([f.ok for f in fits])
    if ok.sum() < 2:
        return None
    m = np.log([f.predicted_loss for f in fits])[ok]
    s = np.array([f.sd_log for f in fits])[ok]
    err = m - np.log(truth)[ok]
    i, j = np.triu_indices(m.size, 1)
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2.0)
    return float(np.mean(np.abs(err[i] - err[j]) <= z * np.sqrt(s[i] ** 2 + s[j] ** 2)))
