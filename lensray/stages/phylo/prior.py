"""A prior on each candidate's loss at T (or task error) from its relatives' measured values.

For a model c, its relatives are the k models nearest to it (genetic distance d) among those
with a measured value y at T, c itself left out. Each has the weight w = exp(-d / h), 1 for an
identical fingerprint and falling with distance (h: the bandwidth, by default the median
distance between the models). The pool itself counts as one more relative of weight
w_0 = exp(-1) (a model at distance h) whose value is the mean mu and whose spread is the
variance sigma^2 of all measured values::

    W      = sum_r w_r
    prior  = (sum_r w_r y_r + w_0 mu) / (W + w_0)
    s^2    = (sum_r w_r (y_r - prior)^2 + w_0 sigma^2) / (W + w_0)
    interval = prior -/+ z s,     z the standard normal quantile of (1 + level) / 2

So the prior is the relatives' weighted mean when they are many and close (W large), and drifts
to the pool's mean, its interval to the pool's spread, when they are few or far (W small); the
interval also widens when the relatives disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from lensray.core.errors import CurveError

POOL_WEIGHT = math.exp(-1.0)
"""w_0: the pool's mean and spread weigh as much as one relative at distance h."""


@dataclass(frozen=True)
class Prior:
    """A candidate's expected loss (or error) at T from its relatives, with an interval."""

    value: float
    """The expected loss at T."""
    interval: tuple[float, float]
    """(lo, hi) with the configured coverage."""
    sd: float
    """s, the prior's standard deviation (the interval is value -/+ z s)."""
    relatives: dict[str, float]
    """The relatives it is drawn from -> their distance, nearest first."""
    weight: float
    """W, the relatives' total weight (0 to k): how much the prior rests on them."""

    def to_dict(self) -> dict[str, float]:
        """The entry of `Pool.priors` for a Candidate of this model."""
        return {"phylo_loss": self.value, "phylo_lo": self.interval[0], "phylo_hi": self.interval[1],
                "phylo_sd": self.sd, "phylo_weight": self.weight}


def default_bandwidth(distances: np.ndarray) -> float:
    """The median distance between two different models (1 when all are 0)."""
    d = np.asarray(distances, dtype=float)
    off = d[~np.eye(len(d), dtype=bool)]
    positive = off[off > 0]
    return float(np.median(positive)) if positive.size else 1.0


def priors(
    names: Sequence[str], distances: np.ndarray, measured: Mapping[str, float],
    k: int = 3, bandwidth: float = 0.0, level: float = 0.9,
) -> dict[str, Prior]:
    """The Prior of every model in `names` (see the module), from the (M, M) `distances` and the
    `measured` values at T of some of them; `bandwidth` 0 = `default_bandwidth`.

    Raises CurveError when fewer than two of `names` have a finite measured value, or when a
    measured name is not one of `names`.
    """
    unknown = sorted(set(measured) - set(names))
    if unknown:
        raise CurveError(f"measured values for {unknown}, which have no fingerprint: fingerprint them or leave them out")
    known = [i for i, n in enumerate(names) if n in measured and math.isfinite(measured[n])]
    if len(known) < 2:
        raise CurveError(f"a prior needs measured values at T of at least 2 models; {len(known)} given")
    d = np.asarray(distances, dtype=float)
    h = bandwidth or default_bandwidth(d)
    y = np.array([measured[names[i]] for i in known])
    mu, var = float(y.mean()), float(y.var(ddof=1))
    z = NormalDist().inv_cdf(0.5 + level / 2)
    out = {}
    for c, name in enumerate(names):
        rel = [j for j in sorted(range(len(known)), key=lambda j: (d[c, known[j]], names[known[j]])) if known[j] != c][:k]
        w = np.exp(-d[c, [known[j] for j in rel]] / h)
        total = float(w.sum()) + POOL_WEIGHT
        value = (float(w @ y[rel]) + POOL_WEIGHT * mu) / total
        spread = math.sqrt((float(w @ (y[rel] - value) ** 2) + POOL_WEIGHT * var) / total)
        out[name] = Prior(value, (value - z * spread, value + z * spread), spread,
                          {names[known[j]]: float(d[c, known[j]]) for j in rel}, float(w.sum()))
    return out
