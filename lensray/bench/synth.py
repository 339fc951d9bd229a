"""Synthetic pools of curves for benchmarks, in the curves schema (lensray/core/curves.py).

`synthetic_curves`: n rectified-law curves with random onset, slope, floor and model size, as a
CSV (what `lensray bench scale` replays).

`suite_pool(seed)`: one pool of the predictor suite (`lensray bench curves --suite`), with the
pathologies recorded curves show, mixed per pool and per candidate. Each candidate's loss after
fine-tuning on D examples is::

    log L(D) = log( E + A * h(D) ) - s * [D >= D_s] + eps(D)
    h(D)     = (1 + (D / D*)**(beta * c))**(-1/c)

    E     floor (irreducible loss), E = E_pool * (N / N_mid)**(-0.15) * exp(N(0, 0.35)): lower for
          larger models, loosely (N: parameter count, N_mid: the pool's geometric mid size);
          E_pool log-uniform in [0.05, 1]
    A     reducible loss at D = 0, uniform in [1.2, 3.5]
    beta  data exponent, shared by a family, uniform in [0.12, 0.5]
    D*    end of the pre-power phase: log-uniform in the pool's range [D_lo, D_hi], D_lo
          log-uniform in [50, 2000], D_hi in [2e4, 1.6e6] (so D* falls anywhere from before the
          first size to past every budget: some curves are still flat at the budget); in half
          the pools a family shares it too, each member within a factor exp(N(0, 0.3))
    c     sharpness of the knee, log-uniform in [0.6, 6] per candidate: c = 1 is the rectified
          law of Lin et al.; a small c spreads the knee over decades, so the curve keeps
          steepening late in log-log; with a floor reached before T it bends towards E instead
    s     a step: in a share of the candidates (uniform in [0.1, 0.5] per pool), an abrupt drop
          of s uniform in [0.05, 0.35] in log loss between two adjacent sizes D_s/2 and D_s
          (any pair: just before a budget too), then the old slope again
    eps   multiplicative noise, N(0, sigma_i), sigma_i = sigma_pool * exp(N(0, 0.3)), sigma_pool
          log-uniform in [0.002, 0.03]; at sizes below T, outliers in a share of the points
          (uniform in [0, 0.03] per pool) move log L by a further +-U(0.04, 0.15)
    N     parameter count, log-uniform over [N_lo, N_lo * r], N_lo log-uniform in [3e7, 3e8],
          r log-uniform in [100, 300]; the smallest and largest candidates sit at the two ends,
          so every pool's sizes spread over r >= 100x

The zero-shot loss (column `0`) is (E + A) * exp(U(0.03, 0.3)). Sizes double from 200 over 14
columns (200 ... 1,638,400, as in the packaged files), T = 1,638,400; 15 to 40 candidates in 2
to 6 families (the `family` column); the candidates are named `<pool>-<i>`, the pool
`synth-<seed>`. Crossings (an early ranking that differs from the one at T) follow from the
spread of D*, beta, c and E. Everything is drawn from numpy's default_rng(seed): a seed gives
the same pool on every machine.

`SUITE_PARTS` fixes the suite's seeds: "dev" (40 pools) is what methods are developed on,
"held-out" (120 pools) what is reported. `suite_pool_truth(seed)` gives a pool with each
candidate's drawn parameters and noiseless curve, kept out of the Curves schema.

    from lensray.bench.synth import SUITE_PARTS, suite_pool
    curves = suite_pool(SUITE_PARTS["dev"][0])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensray.core.curves import Curves

SUITE_SIZES = np.array([200 * 2**i for i in range(14)], dtype=float)
"""The suite's fine-tuning sizes: doubling from 200 to 1,638,400 (T)."""
SUITE_PARTS: dict[str, range] = {"dev": range(0, 40), "held-out": range(1000, 1120)}
"""The suite's seeds: "dev" is what methods are developed on, "held-out" what is reported."""


def synthetic_curves(n: int, path: Path, seed: int = 0) -> Path:
    """n candidates with rectified-law curves (random onset, slope, floor, size) as a curves CSV."""
    from lensray.predict.laws import rectified

    rng = np.random.default_rng(seed)
    sizes = [200 * 2**i for i in range(14)]
    beta = rng.uniform(0.2, 0.6, n)
    d_star = np.exp(rng.uniform(np.log(300), np.log(3e5), n))
    amp, floor = rng.uniform(1.0, 3.0, n), rng.uniform(0.5, 1.5, n)
    params = np.exp(rng.uniform(np.log(1e8), np.log(7e9), n))
    lines = ["config name," + ",".join(map(str, [0, *sizes])) + ",size"]
    for i in range(n):
        d_l = d_star[i] ** beta[i]
        losses = rectified(np.array([0, *sizes], float), amp[i] * d_l, d_l, beta[i], floor[i])
        losses *= np.exp(rng.normal(0, 0.005, losses.size))
        lines.append(f"synthetic-{i:05d}," + ",".join(f"{v:.5f}" for v in losses) + f",{params[i]:.0f}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class PoolKnobs:
    """What one suite pool draws before its candidates (the ranges are in the module docstring)."""

    candidates: int
    """Pool size, 15 to 40."""
    families: int
    """Number of families, 2 to 6."""
    noise: float
    """sigma_pool: the pool's typical log-space noise per point (0.002 to 0.03)."""
    outlier_rate: float
    """Share of the points below T moved by an outlier (0 to 0.03)."""
    step_share: float
    """Chance that a candidate's curve has a step (0.1 to 0.5)."""
    shared_transition: bool
    """Whether a family's members share D* (each within a factor exp(N(0, 0.3))) besides beta."""
    floor: float
    """E_pool, the floor of a model of the pool's mid size (0.05 to 1)."""
    d_star_range: tuple[float, float]
    """(D_lo, D_hi) that the candidates' D* are drawn from, log-uniformly."""
    size_range: tuple[float, float]
    """(N_lo, N_hi) of the parameter counts; N_hi / N_lo >= 100."""


@dataclass(frozen=True)
class CandidateTruth:
    """One candidate's drawn parameters (the symbols of the module docstring)."""

    name: str
    family: str
    beta: float
    d_star: float
    sharpness: float
    """c."""
    amplitude: float
    """A."""
    floor: float
    """E."""
    n_params: float
    noise: float
    """sigma_i."""
    step_at: int | None
    """Index of the first size after the step (the drop falls between sizes[step_at - 1] and
    sizes[step_at]); None: no step."""
    step_drop: float
    """s (0 without a step)."""
    outliers: tuple[int, ...]
    """Indices of the sizes an outlier moved."""


@dataclass(frozen=True)
class SuitePool:
    """A suite pool, the knobs it was drawn with, and each candidate's truth."""

    curves: Curves
    knobs: PoolKnobs
    truth: list[CandidateTruth]
    clean: np.ndarray
    """Noiseless losses (with the steps, without noise or outliers), shape (candidates, sizes)."""


def suite_pool_truth(seed: int) -> SuitePool:
    """The suite pool of `seed` with its knobs and per-candidate truth (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(15, 41))
    knobs = PoolKnobs(
        candidates=n,
        families=int(rng.integers(2, 7)),
        noise=float(np.exp(rng.uniform(np.log(0.002), np.log(0.03)))),
        outlier_rate=float(rng.uniform(0.0, 0.03)),
        step_share=float(rng.uniform(0.1, 0.5)),
        shared_transition=bool(rng.random() < 0.5),
        floor=float(np.exp(rng.uniform(np.log(0.05), np.log(1.0)))),
        d_star_range=(float(np.exp(rng.uniform(np.log(50), np.log(2000)))),
                      float(np.exp(rng.uniform(np.log(2e4), np.log(1.6e6))))),
        size_range=(lo := float(np.exp(rng.uniform(np.log(3e7), np.log(3e8)))),
                    lo * float(np.exp(rng.uniform(np.log(100), np.log(300))))),
    )
    log_d_lo, log_d_hi = np.log(knobs.d_star_range)
    # families: every family gets one member first, the rest are spread at random
    fam = np.concatenate([np.arange(knobs.families), rng.integers(0, knobs.families, n - knobs.families)])
    rng.shuffle(fam)
    fam_beta = rng.uniform(0.12, 0.5, knobs.families)
    fam_log_d = rng.uniform(log_d_lo, log_d_hi, knobs.families)
    beta = fam_beta[fam]
    if knobs.shared_transition:
        log_d_star = fam_log_d[fam] + rng.normal(0.0, 0.3, n)
    else:
        log_d_star = rng.uniform(log_d_lo, log_d_hi, n)
    sharp = np.exp(rng.uniform(np.log(0.6), np.log(6.0), n))
    amp = rng.uniform(1.2, 3.5, n)
    u = rng.uniform(0.0, 1.0, n)
    u[np.argmin(u)], u[np.argmax(u)] = 0.0, 1.0
    log_n_lo, log_n_hi = np.log(knobs.size_range)
    n_params = np.exp(log_n_lo + u * (log_n_hi - log_n_lo))
    mid = 0.5 * (log_n_lo + log_n_hi)
    floor = knobs.floor * np.exp(-0.15 * (np.log(n_params) - mid) + rng.normal(0.0, 0.35, n))
    has_step = rng.random(n) < knobs.step_share
    step_at = rng.integers(1, SUITE_SIZES.size, n)
    step_drop = np.where(has_step, rng.uniform(0.05, 0.35, n), 0.0)
    noise = knobs.noise * np.exp(rng.normal(0.0, 0.3, n))
    zero_shot = (floor + amp) * np.exp(rng.uniform(0.03, 0.3, n))

    z = (np.log(SUITE_SIZES)[None, :] - log_d_star[:, None]) * (beta * sharp)[:, None]
    log_h = -np.logaddexp(0.0, z) / sharp[:, None]  # log (1 + (D/D*)**(beta c))**(-1/c)
    log_clean = np.log(floor[:, None] + amp[:, None] * np.exp(log_h))
    log_clean -= step_drop[:, None] * (np.arange(SUITE_SIZES.size)[None, :] >= step_at[:, None])
    eps = rng.normal(0.0, 1.0, log_clean.shape) * noise[:, None]
    hit = rng.random(log_clean.shape) < knobs.outlier_rate
    hit[:, -1] = False  # the truth at T carries noise, never an outlier
    eps += hit * rng.choice([-1.0, 1.0], log_clean.shape) * rng.uniform(0.04, 0.15, log_clean.shape)
    losses = np.exp(log_clean + eps)

    name = f"synth-{seed}"
    names = [f"{name}-{i:02d}" for i in range(n)]
    families = [f"F{k}" for k in fam]
    curves = Curves(name, names, SUITE_SIZES.copy(), losses, zero_shot, n_params, families)
    truth = [
        CandidateTruth(
            names[i], families[i], float(beta[i]), float(np.exp(log_d_star[i])), float(sharp[i]),
            float(amp[i]), float(floor[i]), float(n_params[i]), float(noise[i]),
            int(step_at[i]) if has_step[i] else None, float(step_drop[i]),
            tuple(int(j) for j in np.flatnonzero(hit[i])),
        )
        for i in range(n)
    ]
    return SuitePool(curves, knobs, truth, np.exp(log_clean))


def suite_pool(seed: int) -> Curves:
    """The suite pool of `seed` as Curves (what the suite scores); see the module docstring."""
    return suite_pool_truth(seed).curves
