"""Calibration of the default predictor's intervals on the predictor suite's dev pools.

    python -m lensray.bench.calibrate [--part dev]

For every dev pool (lensray.bench.synth.SUITE_PARTS) and budget of `lensray bench curves`, the
`blend` predictor is fitted with its three calibrated terms at zero (`FitConfig.extrapolation_growth`,
`shared_sd`, `flat_sd`; predict/blend.py), and each term is then chosen, in that order, as the
smallest value on a grid whose 90% intervals hold at least 90% of the truths, averaged over the
budgets:

    extrapolation_growth  intervals of differences of reliable, non-flat fits (the stopping rule's)
    shared_sd         intervals of the losses of those fits
    flat_sd           intervals of the losses of flat candidates (their borrowed uncertainty)

It prints the three values; they are FitConfig's defaults. Only the dev part is used: the
held-out part of the suite is what `lensray bench curves --suite` reports on.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from lensray.bench.curves import budgets
from lensray.bench.synth import SUITE_PARTS, suite_pool
from lensray.predict.blend import blend_pool, fit_blend
from lensray.predict.fit import FitConfig

GRID = np.round(np.arange(0.0, 3.0001, 0.0005), 4)


@dataclass(frozen=True)
class Cell:
    """One pool at one budget: errors of the uncalibrated blend and what the terms scale with."""

    error: np.ndarray
    """Predicted minus true log-loss at T, per candidate."""
    sd: np.ndarray
    """The local fit's s.d. (the blend's with every calibrated term at zero)."""
    delta: float
    """log(T / D_last)."""
    reliable: np.ndarray
    """Reliable, non-flat fits."""
    flat: np.ndarray
    """Flat fits with a borrowed uncertainty."""
    fall: np.ndarray
    """The fall the pool's median slope predicts over delta, for the flat fits (0 elsewhere)."""


def cells(part: str = "dev") -> dict[str, list[Cell]]:
    """The cells of the part's pools, by budget label."""
    raw = FitConfig(extrapolation_growth=0.0, shared_sd=0.0, flat_sd=0.0)
    out: dict[str, list[Cell]] = {}
    for seed in SUITE_PARTS[part]:
        curves = suite_pool(seed)
        target = int(curves.sizes[-1])
        truth = np.log(curves.losses[:, -1])
        for label, budget in budgets(curves):
            if budget is None:
                continue
            seen = curves.upto(budget)
            if seen.sizes.size < raw.window:
                continue
            pool = blend_pool(seen.sizes, seen.losses, raw)
            fits = fit_blend(seen.sizes, seen.losses, target, seen.candidates, raw, pool)
            flat = np.array([f.params.get("flat", 0.0) == 1.0 and f.ok for f in fits])
            reliable = np.array([f.ok for f in fits]) & ~flat
            delta = float(np.log(target / seen.sizes[-1]))
            mean = np.log([f.predicted_loss for f in fits])
            borrowed = float(np.median(pool.slopes)) if pool.slopes.size else 0.0
            out.setdefault(label, []).append(Cell(
                mean - truth, np.array([f.sd_log for f in fits]), delta, reliable, flat,
                np.where(flat, abs(borrowed) * delta, 0.0),
            ))
    return out


def _coverage(by_budget: dict[str, list[Cell]], inside) -> float:
    """Mean over budgets of the share of truths `inside(cell)` marks (pooled over the pools)."""
    shares = []
    for group in by_budget.values():
        hits = np.concatenate([inside(c) for c in group])
        if hits.size:
            shares.append(float(hits.mean()))
    return float(np.mean(shares)) if shares else float("nan")


def calibrate(part: str = "dev", level: float = 0.9) -> dict[str, float]:
    """The three terms, chosen in turn as the smallest on `GRID` reaching `level` coverage."""
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    by_budget = cells(part)

    def pairs(kappa: float):
        def inside(c: Cell) -> np.ndarray:
            e, s = c.error[c.reliable], c.sd[c.reliable] * (1.0 + kappa * c.delta)
            i, j = np.triu_indices(e.size, 1)
            return np.abs(e[i] - e[j]) <= z * np.hypot(s[i], s[j])
        return inside

    def singles(kappa: float, lam: float):
        def inside(c: Cell) -> np.ndarray:
            s = np.hypot(c.sd * (1.0 + kappa * c.delta), lam * c.delta**2)[c.reliable]
            return np.abs(c.error[c.reliable]) <= z * s
        return inside

    def flats(kappa: float, lam: float, phi: float):
        def inside(c: Cell) -> np.ndarray:
            s = np.hypot(np.hypot(c.sd * (1.0 + kappa * c.delta), phi * c.fall), lam * c.delta**2)[c.flat]
            return np.abs(c.error[c.flat]) <= z * s
        return inside

    def smallest(cover) -> float:
        lo, hi = 0, GRID.size - 1  # coverage grows with each term: bisect the grid
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if cover(GRID[mid]) >= level else (mid + 1, hi)
        return float(GRID[lo])

    kappa = smallest(lambda k: _coverage(by_budget, pairs(k)))
    lam = smallest(lambda v: _coverage(by_budget, singles(kappa, v)))
    phi = smallest(lambda v: _coverage(by_budget, flats(kappa, lam, v)))
    return {"extrapolation_growth": kappa, "shared_sd": lam, "flat_sd": phi}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lensray.bench.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="dev", choices=sorted(SUITE_PARTS))
    args = parser.parse_args(argv)
    for name, value in calibrate(args.part).items():
        print(f"fit.{name}: {value:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
