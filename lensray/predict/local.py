"""The local-slope predictor (`local`; the default, `blend`, takes its s.d. and its reliability
flags, predict/blend.py): a power law through the last `window` sizes (the local slope of
log L against log D at the budget), extrapolated to T::

    log L(T) = a + s * (log T - mean(log D_w)),   s, a: least squares on the last `window` points

Recorded fine-tuning curves steepen in log-log until late (docs/predictor.md), so the
most recent slope is the least biased. Its variance at T::

    Var = sigma^2 * (1/w + Delta^2 / S_xx) + (eps * Delta)^2,   Delta = log T - mean(log D_w)

(its root is the fit's `sd_log`, which the scheduler compares candidates with)

sigma^2: log-space noise (residuals of a quadratic in log D); eps: slope error per unit of
log-distance, measured by a backtest inside the observed range (each curve's last point
predicted from the window before it), so the interval also carries the extrapolation error.
Both are pooled over the candidates fitted together by the median, so that a few curves in an
abrupt transition do not set every candidate's interval, and scaled to be unbiased for Gaussian
residuals (`median_variance`), so that the interval has its stated level when the noise is
what the pool says it is. With fewer sizes than `window` (but at least 2) the slope is taken
through the sizes there are, as AtS does with few points, and the fit says it is not reliable:
there is no backtest to measure its extrapolation error.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from lensray.core.types import CurveFit
from lensray.predict.fit import (
    FLAT_REASON,
    FitConfig,
    failed_fits,
    flat_curves,
    median_variance,
    prepare_curves,
)

LOCAL_MIN_POINTS = 2
"""Fewest sizes the local fit extrapolates from (a slope); below `FitConfig.window` it is not ok."""


def local_noise(sizes, losses, config: FitConfig | None = None) -> tuple[float, float]:
    """(sigma^2, eps^2) of the local fit, pooled over the rows of `losses` (see the module
    docstring); what `fit_local` estimates when it is not given them."""
    cfg = config or FitConfig()
    x, y, _ = prepare_curves(sizes, losses, None)
    n, k = x.size, cfg.window
    log_x, ly = np.log(x), np.log(y)
    # Noise per point: residuals of a quadratic in log D (curvature is signal, not noise).
    if n >= 4:
        coef = np.polynomial.polynomial.polyfit(log_x, ly.T, 2)  # (3, m)
        resid = ly - np.polynomial.polynomial.polyval(log_x, coef)
        sigma2 = median_variance((resid**2).sum(1) / (n - 3), n - 3)
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
        eps2 = max(median_variance(r**2, 1) - stat, 0.0) / d1**2
    return sigma2, eps2


def fit_local(
    sizes,
    losses,
    target: int,
    names: list[str] | None = None,
    config: FitConfig | None = None,
    noise: tuple[float, float] | None = None,
) -> list[CurveFit]:
    """Extrapolate the local log-log slope at the largest sizes to `target`.

    `noise`: (sigma^2, eps^2) from `local_noise` over a larger pool (the scheduler keeps one per
    rung); by default they are estimated from the rows given.
    """
    x, y, names = prepare_curves(sizes, losses, names)
    return local_fits(x, y, target, names, config or FitConfig(), noise)


def local_fits(
    x: np.ndarray, y: np.ndarray, target: int, names: list[str], cfg: FitConfig, noise: tuple[float, float] | None
) -> list[CurveFit]:
    """`fit_local` on curves `prepare_curves` has checked (the blend checks them once for both
    its halves: on a window of three points the checks cost as much as the fit)."""
    m, n = y.shape
    if n < LOCAL_MIN_POINTS:
        return failed_fits(names, "local", target, n, f"{n} size observed; the local fit needs {LOCAL_MIN_POINTS}")
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
    flat = flat_curves(y, sigma2)
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
            ok, reason = False, FLAT_REASON
        fits.append(
            CurveFit(
                names[i], "local", int(target), float(np.exp(pred[i])),
                (float(np.exp(pred[i] - z * sd)), float(np.exp(pred[i] + z * sd))), ok, reason,
                {"slope": float(slope[i]), "loss_at_window": float(np.exp(icept[i])),
                 "sigma_log": float(np.sqrt(sigma2)), "eps_slope": float(np.sqrt(eps2))},
                n, float(sd),
            )
        )
    return fits
