"""Robust fits of partial scaling curves, with an interval for the predicted loss at the target.

Two fitters, both vectorised over candidates so one call fits a whole pool (the scheduler calls
them after every report; one candidate takes about a millisecond):

`fit_law` - the vanilla, rectified and LensLLM laws of `laws.py` by a grid posterior. The laws are
linear in (A, E) once the nonlinear parameters (beta, D*) are fixed, so for every point of a grid
over (beta, log D*) the weighted least-squares (A, E) is solved in closed form (bounds
A >= 0, 0 <= E <= min loss enforced by clipping) and the residual sum of squares in log space::

    SSR(beta, D*) = sum_n ( log L(D_n; A^, E^, beta, D*) - log y_n )^2

gives a likelihood exp(-SSR / 2 sigma^2) (sigma: log-space noise per point, pooled over the
candidates fitted together as in `fit_local` below, never below `noise_floor`). With a flat
prior on beta and on log D* (between 1 and the target T, "the power phase starts somewhere
before the target"), the posterior over the grid yields the predicted log-loss at T (posterior
mean) and its interval (posterior quantiles). The grid is global, so there are no local minima
and no starting points to tune; nothing is delegated to an iterative optimiser that could fail
to converge. For the LensLLM law beta is shared by all candidates: its posterior is the product
of the candidates' marginal likelihoods. When a measured NTK term F is given for a candidate,
D_l = F pins log D* = log F/beta.

`fit_local` - lensray's default: a power law through the last `window` sizes (the local slope of
log L against log D at the budget), extrapolated to T::

    log L(T) = a + s * (log T - mean(log D_w)),   s, a: least squares on the last `window` points

Recorded fine-tuning curves steepen in log-log until late (see README, "Predictor"), so the
most recent slope is the least biased. Its variance at T::

    Var = sigma^2 * (1/w + Delta^2 / S_xx) + (eps * Delta)^2,   Delta = log T - mean(log D_w)

(its root is the fit's `params["sd_log"]`, which the scheduler compares candidates with)

sigma^2: log-space noise (residuals of a quadratic in log D); eps: slope error per unit of
log-distance, measured by a backtest inside the observed range (each curve's last point
predicted from the window before it), so the interval also carries the extrapolation error.
Both are pooled over the candidates fitted together by the median, so that a few curves in an
abrupt transition do not set every candidate's interval, and scaled to be unbiased for Gaussian
residuals (`_median_variance`), so that the interval has its stated level when the noise is
what the pool says it is. With fewer sizes than `window` (but at least 2) the slope is taken
through the sizes there are, as AtS does with few points, and the fit says it is not reliable:
there is no backtest to measure its extrapolation error.

Both return `CurveFit` values; a fit that cannot be trusted has ok=False and a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from statistics import NormalDist
from typing import Literal

import numpy as np
from scipy.special import logsumexp
from scipy.stats import chi2

from lensray.laws import rectified_params, rectified_shape, vanilla_shape

Law = Literal["vanilla", "rectified", "lensllm"]
LAWS: tuple[str, ...] = ("vanilla", "rectified", "lensllm")
# Parameters of each law: a fit needs at least one more point than this to estimate its noise.
LAW_PARAMS = {"vanilla": 3, "rectified": 4, "lensllm": 4}
LOCAL_MIN_POINTS = 2
"""Fewest sizes the local fit extrapolates from (a slope); below `FitConfig.window` it is not ok."""


@dataclass(frozen=True)
class FitConfig:
    """How curves are fitted. The defaults are used everywhere unless a config overrides them."""

    level: float = 0.9
    """Coverage of the predicted-loss interval (0.9 = 5%..95% quantiles)."""
    noise_floor: float = 0.005
    """Smallest log-space noise per point assumed (0.005 = 0.5% of the loss)."""
    window: int = 3
    """Number of largest sizes the local fit (lensray's default) uses for its slope."""
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
        if self.window < 2:
            raise ValueError(f"fit.window must be >= 2 points, got {self.window}; e.g. 3")
        if not 0 < self.beta_min < self.beta_max:
            raise ValueError(
                f"fit.beta_min/beta_max must satisfy 0 < beta_min < beta_max, got "
                f"{self.beta_min}/{self.beta_max}; e.g. 0.05/1.5"
            )
        if self.beta_points < 2 or self.d_star_points < 2:
            raise ValueError("fit.beta_points and fit.d_star_points must be >= 2; e.g. 48 and 64")


@dataclass(frozen=True)
class CurveFit:
    """One candidate's fitted curve and its prediction at the target size."""

    candidate: str
    """Candidate name."""
    law: str
    """'vanilla', 'rectified', 'lensllm' or 'local'."""
    target: int
    """Target size T the prediction is for."""
    predicted_loss: float
    """Predicted loss at T (posterior mean in log space); NaN when there was nothing to fit."""
    interval: tuple[float, float]
    """(lo, hi) of the predicted loss at T with coverage FitConfig.level."""
    ok: bool
    """False when the fit should not be trusted for decisions; `reason` says why."""
    reason: str = ""
    """Why the fit is not ok (empty when ok)."""
    params: dict[str, float] = field(default_factory=dict)
    """Best-fit parameters in the paper's terms (B, D_l, beta, E) or (slope, intercept)."""
    n_points: int = 0
    """Number of observed sizes the fit used."""

    def to_dict(self) -> dict:
        return {
            "candidate": self.candidate,
            "law": self.law,
            "target": self.target,
            "predicted_loss": self.predicted_loss,
            "interval": list(self.interval),
            "ok": self.ok,
            "reason": self.reason,
            "params": dict(self.params),
            "n_points": self.n_points,
        }


def _failed(names: list[str], law: str, target: int, n: int, reason: str) -> list[CurveFit]:
    nan = float("nan")
    return [CurveFit(c, law, target, nan, (nan, nan), False, reason, {}, n) for c in names]


def _prepare(sizes, losses, names) -> tuple[np.ndarray, np.ndarray, list[str]]:
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


_FLAT_REASON = "loss has not fallen beyond noise over the observed sizes: the power phase is not visible yet"


def _flat(y: np.ndarray, sigma2: float) -> np.ndarray:
    """Curves whose first-to-last drop in log loss is within 3 noise s.d. of a difference."""
    return np.log(y[:, 0] / y[:, -1]) < 3.0 * np.sqrt(2.0 * sigma2)


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: tuple[float, float]):
    """Quantiles of each row of `values` (m, G) under the row's `weights` (m, G)."""
    order = np.argsort(values, axis=1)
    v = np.take_along_axis(values, order, axis=1)
    cw = np.cumsum(np.take_along_axis(weights, order, axis=1), axis=1)
    cw /= cw[:, -1:]
    return [v[np.arange(v.shape[0]), np.minimum((cw < q).sum(1), v.shape[1] - 1)] for q in qs]


def _profile(log_x, y, h, h_t):
    """Closed-form (A, E) for every grid point; returns (ssr, log-prediction at T, A, E).

    h: (m|1, J, K, n) law shape at the observed sizes; h_t: (m|1, J, K) at the target.
    Weights 1/y make the linear least squares approximate least squares in log space.
    """
    yb = y[:, None, None, :]
    w = 1.0 / yb**2
    s_hh, s_h, s_1 = (w * h * h).sum(-1), (w * h).sum(-1), w.sum(-1)
    s_hy, s_y = (w * h * yb).sum(-1), (w * yb).sum(-1)
    det = s_hh * s_1 - s_h**2
    safe = np.where(np.abs(det) > 1e-300, det, np.inf)
    a = (s_hy * s_1 - s_h * s_y) / safe
    e = (s_hh * s_y - s_h * s_hy) / safe
    e_max = y.min(1)[:, None, None]
    clip = (e < 0) | (e > e_max) | ~np.isfinite(safe)
    e_c = np.clip(np.nan_to_num(e), 0.0, e_max)
    a = np.where(clip, (s_hy - e_c * s_h) / np.maximum(s_hh, 1e-300), a)
    e = np.where(clip, e_c, e)
    a = np.maximum(a, 0.0)
    model = a[..., None] * h + e[..., None]
    ssr = ((np.log(np.maximum(model, 1e-300)) - np.log(yb)) ** 2).sum(-1)
    pred = np.log(np.maximum(a * h_t + e, 1e-300))
    return ssr, pred, a, e


def fit_law(
    law: Law,
    sizes,
    losses,
    target: int,
    names: list[str] | None = None,
    config: FitConfig | None = None,
    ntk_f: np.ndarray | None = None,
) -> list[CurveFit]:
    """Fit `law` to each row of `losses` (observed at `sizes`) and predict the loss at `target`.

    `ntk_f`: optional measured LensLLM term F per candidate (NaN where not measured); used by the
    'lensllm' law in place of a fitted D_l.
    """
    if law not in LAWS:
        raise ValueError(f"unknown law {law!r}; choose one of {', '.join(LAWS)}")
    cfg = config or FitConfig()
    x, y, names = _prepare(sizes, losses, names)
    m, n = y.shape
    p = LAW_PARAMS[law]
    if n <= p:
        return _failed(names, law, target, n, f"{n} sizes observed; the {law} law needs at least {p + 1}")
    log_x, log_t = np.log(x), np.log(float(target))
    if law == "vanilla":
        betas = np.linspace(cfg.beta_min, cfg.beta_max, 8 * cfg.beta_points)
        log_ref = float(log_x.mean())
        h = vanilla_shape(log_x, betas[:, None, None], log_ref)[None]  # (1, J, 1, n)
        h_t = vanilla_shape(log_t, betas[:, None], log_ref)[None]
        lds = np.zeros((1, betas.size, 1))
    else:
        betas = np.linspace(cfg.beta_min, cfg.beta_max, cfg.beta_points)
        lds = np.broadcast_to(np.linspace(0.0, log_t, cfg.d_star_points), (1, betas.size, cfg.d_star_points))
        if law == "lensllm" and ntk_f is not None:
            f = np.asarray(ntk_f, dtype=float).reshape(m, 1, 1)
            measured = np.isfinite(f) & (f > 0)
            lds = np.where(measured, np.log(np.where(measured, f, 1.0)) / betas[None, :, None], lds)
        h = rectified_shape(log_x, betas[None, :, None, None], lds[..., None])
        h_t = rectified_shape(log_t, betas[None, :, None], lds)
    ssr, pred, a, e = _profile(log_x, y, h, h_t)
    dof = max(n - p, 1)
    best = ssr.reshape(m, -1).min(1)
    sigma2 = max(_median_variance(best / dof, dof), cfg.noise_floor**2)
    ll = -ssr / (2.0 * sigma2)
    if law == "lensllm":
        # beta shared by the task: p(beta) = prod_i sum_k L_i(beta, k); then D* per candidate.
        marg = logsumexp(ll, axis=2)  # (m, J)
        log_pb = marg.sum(0)
        log_post = (log_pb - logsumexp(log_pb))[None, :, None] + ll - marg[:, :, None]
    else:
        log_post = ll - logsumexp(ll.reshape(m, -1), axis=1)[:, None, None]
    post = np.exp(log_post).reshape(m, -1)
    flat_pred = np.broadcast_to(pred, log_post.shape).reshape(m, -1)
    mean = (post * flat_pred).sum(1)
    q = (1.0 - cfg.level) / 2.0
    lo, hi = _weighted_quantiles(flat_pred, post, (q, 1.0 - q))
    # Reliability: the power phase must be visible, i.e. D* not piled up at the target.
    if law == "vanilla":
        top_mass = np.zeros(m)
    else:
        full_lds = np.broadcast_to(lds, log_post.shape).reshape(m, -1)
        top_mass = (post * (full_lds > np.log(x[-1]) + 0.9 * (log_t - np.log(x[-1])))).sum(1)
    flat = _flat(y, sigma2)
    fits = []
    flat_ssr = ssr.reshape(m, -1)
    for i in range(m):
        if law == "lensllm":  # report the task's beta, and each candidate's D* given it
            j = int(np.argmax(log_pb))
            k = int(np.argmax(ll[i, j]))
        else:
            j, k = np.unravel_index(int(np.argmax(log_post[i])), log_post.shape[1:])
        g = j * log_post.shape[2] + k
        a_ij = float(np.broadcast_to(a, log_post.shape)[i, j, k])
        e_ij = float(np.broadcast_to(e, log_post.shape)[i, j, k])
        beta = float(betas[j])
        if law == "vanilla":
            params = {"B": a_ij * float(np.exp(beta * log_ref)), "beta": beta, "E": e_ij}
        else:
            params = rectified_params(a_ij, float(lds[min(i, lds.shape[0] - 1), j, k]), beta, e_ij)
            if law == "lensllm":
                params["F"] = params.pop("D_l")
        params["rmse_log"] = float(np.sqrt(flat_ssr[i, g] / n))
        ok, reason = True, ""
        if flat[i]:
            ok, reason = False, _FLAT_REASON
        elif top_mass[i] > 0.5:
            ok, reason = False, (
                f"power phase not visible yet: the curve is still flat at D={int(x[-1])} "
                f"({top_mass[i]:.0%} of the posterior puts its onset near the target)"
            )
        fits.append(
            CurveFit(names[i], law, int(target), float(np.exp(mean[i])),
                     (float(np.exp(lo[i])), float(np.exp(hi[i]))), ok, reason, params, n)
        )
    return fits


def local_noise(sizes, losses, config: FitConfig | None = None) -> tuple[float, float]:
    """(sigma^2, eps^2) of the local fit, pooled over the rows of `losses` (see the module
    docstring); what `fit_local` estimates when it is not given them."""
    cfg = config or FitConfig()
    x, y, _ = _prepare(sizes, losses, None)
    n, k = x.size, cfg.window
    log_x, ly = np.log(x), np.log(y)
    # Noise per point: residuals of a quadratic in log D (curvature is signal, not noise).
    if n >= 4:
        coef = np.polynomial.polynomial.polyfit(log_x, ly.T, 2)  # (3, m)
        resid = ly - np.polynomial.polynomial.polyval(log_x, coef)
        sigma2 = _median_variance((resid**2).sum(1) / (n - 3), n - 3)
    else:
        sigma2 = 0.0
    sigma2 = max(sigma2, cfg.noise_floor**2)
    # Extrapolation error per unit log-distance, from predicting each last point from the
    # window before it (of `window` points, or fewer while fewer are observed: a shorter
    # window's slope is noisier, so the estimate errs on the wide side).
    eps2 = 0.0
    b = min(k, n - 1)
    if b >= 2:
        ub = log_x[-b - 1 : -1] - log_x[-b - 1 : -1].mean()
        sb = (ly[:, -b - 1 : -1] * ub).sum(1) / float((ub**2).sum())
        d1 = float(log_x[-1] - log_x[-b - 1 : -1].mean())
        r = ly[:, -1] - (ly[:, -b - 1 : -1].mean(1) + sb * d1)
        stat = sigma2 * (1.0 + 1.0 / b + d1**2 / float((ub**2).sum()))
        eps2 = max(_median_variance(r**2, 1) - stat, 0.0) / d1**2
    return sigma2, eps2


def _median_variance(mean_squares: np.ndarray, dof: int) -> float:
    """A variance from per-candidate mean squares of `dof` degrees of freedom, pooled by the
    median (robust to a few curves in an abrupt transition) and divided by the median of a
    chi-square over its dof, so that it is unbiased for Gaussian residuals. The plain median
    of squares is not: for one residual per candidate it is 0.45 times the variance."""
    return float(np.median(mean_squares)) / _chi2_median_per_dof(dof)


@lru_cache(maxsize=None)
def _chi2_median_per_dof(dof: int) -> float:
    """median(chi2(dof)) / dof, cached: scipy's quantile costs more than the fit it scales."""
    return float(chi2.median(dof)) / dof


def fit_local(
    sizes,
    losses,
    target: int,
    names: list[str] | None = None,
    config: FitConfig | None = None,
    noise: tuple[float, float] | None = None,
) -> list[CurveFit]:
    """lensray's default: extrapolate the local log-log slope at the largest sizes to `target`.

    `noise`: (sigma^2, eps^2) from `local_noise` over a larger pool (the scheduler keeps one per
    rung); by default they are estimated from the rows given.
    """
    cfg = config or FitConfig()
    x, y, names = _prepare(sizes, losses, names)
    m, n = y.shape
    if n < LOCAL_MIN_POINTS:
        return _failed(names, "local", target, n, f"{n} size observed; the local fit needs {LOCAL_MIN_POINTS}")
    k = min(cfg.window, n)
    sigma2, eps2 = noise if noise is not None else local_noise(x, y, cfg)
    log_x, ly = np.log(x), np.log(y)
    u = log_x[-k:] - log_x[-k:].mean()
    s_xx = float((u**2).sum())
    slope = (ly[:, -k:] * u).sum(1) / s_xx
    icept = ly[:, -k:].mean(1)
    delta = float(np.log(target) - log_x[-k:].mean())
    pred = icept + slope * delta
    sd = np.sqrt(sigma2 * (1.0 / k + delta**2 / s_xx) + eps2 * delta**2)
    z = NormalDist().inv_cdf(0.5 + cfg.level / 2.0)
    flat = _flat(y, sigma2)
    fits = []
    for i in range(m):
        ok, reason = True, ""
        if n < cfg.window:
            ok, reason = False, (
                f"only {n} sizes: a slope through them, with no backtest of its extrapolation error "
                f"(fit.window={cfg.window} sizes are needed to trust it)"
            )
        elif slope[i] > 2.0 * np.sqrt(sigma2 / s_xx):  # rising by more than its noise
            ok, reason = False, (
                f"loss rises with data over the last {k} sizes (slope {slope[i]:+.3f} in log-log): "
                "diverging or over-fitting"
            )
        elif flat[i]:
            ok, reason = False, _FLAT_REASON
        fits.append(
            CurveFit(
                names[i], "local", int(target), float(np.exp(pred[i])),
                (float(np.exp(pred[i] - z * sd)), float(np.exp(pred[i] + z * sd))), ok, reason,
                {"slope": float(slope[i]), "loss_at_window": float(np.exp(icept[i])),
                 "sigma_log": float(np.sqrt(sigma2)), "eps_slope": float(np.sqrt(eps2)), "sd_log": float(sd)},
                n,
            )
        )
    return fits
