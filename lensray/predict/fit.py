"""Robust fits of partial scaling curves, with an interval for the predicted loss at the target.

Two fitters, both vectorised over candidates so one call fits a whole pool (the scheduler calls
them after every report; one candidate takes about a millisecond):


The fitters (`lensray.predict.grid`, `lensray.predict.local`) share the configuration, the
shape checks and the robust pooled variance defined here.

Both return `CurveFit` values; a fit that cannot be trusted has ok=False and a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from scipy.stats import chi2

from lensray.core.types import CurveFit

Law = Literal["vanilla", "rectified", "lensllm"]


LAWS: tuple[str, ...] = ("vanilla", "rectified", "lensllm")


# Parameters of each law: a fit needs at least one more point than this to estimate its noise.
LAW_PARAMS = {"vanilla": 3, "rectified": 4, "lensllm": 4}


@dataclass(frozen=True)
class FitConfig:
    """How curves are fitted. The defaults are used everywhere unless a config overrides them."""

    method: str = "blend"
    """The predictor the sweep's stopping rule, the ranking and `lensray verify` use: `blend` (the
    local log-log slope at the budget averaged with AtS's power-phase line, calibrated intervals),
    `local` (the local slope alone), `VanillaFit`, `RectifiedFit`, `LensLLM`, or one registered
    with `lensray.predict.methods.register_predictor`."""
    level: float = 0.9
    """Coverage of the predicted-loss interval (0.9 = 5%..95% quantiles)."""
    noise_floor: float = 0.005
    """Smallest log-space noise per point assumed (0.005 = 0.5% of the loss)."""
    window: int = 3
    """Number of largest sizes the local fit uses for its slope."""
    extrapolation_growth: float = 0.3525
    """`blend`: growth of a candidate's own log-loss s.d. per unit of log-distance to T, as a
    multiple of the local fit's s.d. (calibrated on the predictor suite's dev pools: python -m
    lensray.bench.calibrate)."""
    shared_sd: float = 0.01
    """`blend`: s.d. of the log-loss error the pool shares, per squared unit of log-distance to T
    (in the intervals, not in the stopping rule's comparisons; calibrated likewise)."""
    flat_sd: float = 1.0375
    """`blend`: s.d. of a flat candidate's borrowed fall, as a multiple of the fall the pool's median
    slope predicts (calibrated likewise)."""
    beta_min: float = 0.05
    """Smallest beta on the grid."""
    beta_max: float = 1.5
    """Largest beta on the grid."""
    beta_points: int = 96
    """Grid points for beta (the vanilla law, with one nonlinear parameter, uses 8x as many)."""
    d_star_points: int = 96
    """Grid points for log D* (between 1 and the target size)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"fit.level must be in (0, 1), got {self.level}; e.g. 0.9")
        if self.noise_floor <= 0:
            raise ValueError(f"fit.noise_floor must be > 0, got {self.noise_floor}; e.g. 0.005")
        for name in ("extrapolation_growth", "shared_sd", "flat_sd"):
            if getattr(self, name) < 0:
                raise ValueError(f"fit.{name} must be >= 0, got {getattr(self, name)}; e.g. {getattr(FitConfig, name)}")
        if self.window < 2:
            raise ValueError(f"fit.window must be >= 2 points, got {self.window}; e.g. 3")
        if not 0 < self.beta_min < self.beta_max:
            raise ValueError(
                f"fit.beta_min/beta_max must satisfy 0 < beta_min < beta_max, got "
                f"{self.beta_min}/{self.beta_max}; e.g. 0.05/1.5"
            )
        if self.beta_points < 2 or self.d_star_points < 2:
            raise ValueError("fit.beta_points and fit.d_star_points must be >= 2; e.g. 48 and 64")


def failed_fits(names: list[str], law: str, target: int, n: int, reason: str) -> list[CurveFit]:
    nan = float("nan")
    return [CurveFit(c, law, target, nan, (nan, nan), False, reason, {}, n) for c in names]


def prepare_curves(sizes, losses, names) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Shape-check: sizes (n,) increasing and > 0, losses (m, n) finite and > 0."""
    x = np.asarray(sizes, dtype=float)
    y = np.atleast_2d(np.asarray(losses, dtype=float))
    if x.ndim != 1 or y.shape[1] != x.size:
        raise ValueError(f"losses must have one column per size: sizes {x.shape}, losses {y.shape}")
    if np.any(x <= 0) or np.any(np.diff(x) <= 0):
        raise ValueError(f"sizes must be positive and strictly increasing, got {x.tolist()}")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("losses must be finite and > 0 (take the log of a loss)")
    names = list(names) if names is not None else [f"candidate-{i}" for i in range(y.shape[0])]
    if len(names) != y.shape[0]:
        raise ValueError(f"{len(names)} names for {y.shape[0]} curves")
    return x, y, names


FLAT_REASON = "loss has not fallen beyond noise over the observed sizes: the power phase is not visible yet"


def flat_curves(y: np.ndarray, sigma2: float) -> np.ndarray:
    """Curves whose first-to-last drop in log loss is within 3 noise s.d. of a difference."""
    return np.log(y[:, 0] / y[:, -1]) < 3.0 * np.sqrt(2.0 * sigma2)


def median_variance(mean_squares: np.ndarray, dof: int) -> float:
    """A variance from per-candidate mean squares of `dof` degrees of freedom, pooled by the
    median (robust to a few curves in an abrupt transition) and divided by the median of a
    chi-square over its dof, so that it is unbiased for Gaussian residuals. The plain median
    of squares is not: for one residual per candidate it is 0.45 times the variance."""
    return float(np.median(mean_squares)) / _chi2_median_per_dof(dof)


@lru_cache(maxsize=None)
def _chi2_median_per_dof(dof: int) -> float:
    """median(chi2(dof)) / dof, cached: scipy's quantile costs more than the fit it scales."""
    return float(chi2.median(dof)) / dof
