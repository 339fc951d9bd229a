"""The scaling laws fitted by a grid posterior: the vanilla, rectified and LensLLM laws of `laws.py` by a grid posterior. The laws are
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
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from lensray.core.types import CurveFit
from lensray.predict.fit import (
    FLAT_REASON,
    LAW_PARAMS,
    LAWS,
    FitConfig,
    Law,
    failed_fits,
    flat_curves,
    median_variance,
    prepare_curves,
)
from lensray.predict.laws import rectified_params, rectified_shape, vanilla_shape


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
    x, y, names = prepare_curves(sizes, losses, names)
    m, n = y.shape
    p = LAW_PARAMS[law]
    if n <= p:
        return failed_fits(names, law, target, n, f"{n} sizes observed; the {law} law needs at least {p + 1}")
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
    sigma2 = max(median_variance(best / dof, dof), cfg.noise_floor**2)
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
    sd = np.sqrt((post * (flat_pred - mean[:, None]) ** 2).sum(1))
    q = (1.0 - cfg.level) / 2.0
    lo, hi = _weighted_quantiles(flat_pred, post, (q, 1.0 - q))
    # Reliability: the power phase must be visible, i.e. D* not piled up at the target.
    if law == "vanilla":
        top_mass = np.zeros(m)
    else:
        full_lds = np.broadcast_to(lds, log_post.shape).reshape(m, -1)
        top_mass = (post * (full_lds > np.log(x[-1]) + 0.9 * (log_t - np.log(x[-1])))).sum(1)
    flat = flat_curves(y, sigma2)
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
            ok, reason = False, FLAT_REASON
        elif top_mass[i] > 0.5:
            ok, reason = False, (
                f"power phase not visible yet: the curve is still flat at D={int(x[-1])} "
                f"({top_mass[i]:.0%} of the posterior puts its onset near the target)"
            )
        fits.append(
            CurveFit(names[i], law, int(target), float(np.exp(mean[i])),
                     (float(np.exp(lo[i])), float(np.exp(hi[i]))), ok, reason, params, n, float(sd[i]))
        )
    return fits
