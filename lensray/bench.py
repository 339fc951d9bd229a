"""Benchmarks that print figures: the predictor on recorded curves, and the speed of one fit.

    lensray bench curves [--data CSV ...] [--json OUT]

For each data set and each budget gamma = B/T in 1/8 ... 1/512 (T = the largest size column),
every method of `predict.METHODS` is scored by (Lin et al. 2024's protocol):

    PearCorr = 100 * Pearson(score, true loss at T)
    RelAcc   = 100 * (L_worst - L_selected) / (L_worst - L_best),  L = true loss at T

and the time of one candidate's fit (what the scheduler runs after every report) is measured.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensray.curves import Curves, CurveError, packaged_curves, read_curves
from lensray.predict import METHODS, Prediction, predict

GAMMAS = (8, 16, 32, 64, 128, 256, 512)


def pearcorr(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """100 x Pearson correlation; None when either side is constant."""
    s, t = scores - scores.mean(), truth - truth.mean()
    den = float(np.sqrt((s**2).sum() * (t**2).sum()))
    return None if den == 0 else 100.0 * float((s * t).sum()) / den


def relacc(selected: int, truth: np.ndarray) -> float | None:
    """100 x (worst - selected) / (worst - best) of the true losses; None when all are equal."""
    span = float(truth.max() - truth.min())
    return None if span == 0 else 100.0 * float(truth.max() - truth[selected]) / span


@dataclass(frozen=True)
class CurvesBench:
    """Result of `bench_curves`: scores[dataset][method][gamma] and the timing figures."""

    scores: dict[str, dict[str, dict[str, dict[str, float | None]]]]
    wall_s: float
    fit_ms_median: dict[str, float]


def budgets(curves: Curves) -> list[tuple[str, int]]:
    """(label, budget) for gamma in GAMMAS, T = the largest size; each must be a size column."""
    target = int(curves.sizes[-1])
    out = []
    for g in GAMMAS:
        b = target // g
        if b * g != target or b not in curves.sizes:
            raise CurveError(
                f"{curves.name}: budget T/{g} = {target / g:g} is not one of the size columns "
                f"{curves.sizes.astype(int).tolist()}; the benchmark needs sizes doubling up to T"
            )
        out.append((f"1/{g}", b))
    return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def bench_curves(paths: list[Path], methods: list[str] | None = None) -> CurvesBench:
    """Score every method at every budget on every data set; time each method's fits."""
    methods = methods or list(METHODS)
    start = time.perf_counter()
    scores: dict = {}
    per_fit: dict[str, list[float]] = {m: [] for m in methods}
    for path in paths:
        curves = read_curves(path)
        if curves.name in scores:
            raise CurveError(f"two data sets are named {curves.name!r}; rename one file")
        truth = curves.losses[:, -1]
        target = int(curves.sizes[-1])
        scores[curves.name] = {m: {} for m in methods}
        for label, budget in budgets(curves):
            seen = curves.upto(budget)
            for m in methods:
                t0 = time.perf_counter()
                pred: Prediction = predict(m, seen, target)
                per_fit[m].append((time.perf_counter() - t0) / len(curves.candidates))
                scores[curves.name][m][label] = {
                    "pearcorr": _round(pearcorr(pred.scores, truth)),
                    "relacc": _round(relacc(pred.selected, truth)),
                }
    wall = time.perf_counter() - start
    return CurvesBench(scores, wall, {m: 1e3 * statistics.median(v) for m, v in per_fit.items()})


def time_one_fit(method: str, repeats: int = 50) -> float:
    """Median ms of fitting ONE candidate alone (the call the scheduler makes after a report)."""
    curves = read_curves(packaged_curves()[0])
    one = Curves(curves.name, curves.candidates[:1], curves.sizes, curves.losses[:1],
                 curves.zero_shot[:1] if curves.zero_shot is not None else None,
                 curves.n_params[:1] if curves.n_params is not None else None)
    seen = one.upto(int(curves.sizes[-1]) // 64)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(method, seen, int(curves.sizes[-1]))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def format_table(result: CurvesBench) -> str:
    """The scores as one text table per data set: PearCorr / RelAcc per method and budget."""
    lines = []
    for ds, by_method in result.scores.items():
        labels = list(next(iter(by_method.values())))
        lines.append(f"\n{ds}: PearCorr / RelAcc (x100) by budget gamma = B/T")
        lines.append(f"{'method':<13}" + "".join(f"{lab:>14}" for lab in labels))
        for m, cells in by_method.items():
            row = "".join(
                f"{_fmt(c['pearcorr']):>7}/{_fmt(c['relacc']):<6}" for c in cells.values()
            )
            lines.append(f"{m:<13}{row}")
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def run_bench_curves(data: list[str] | None, json_out: str | None) -> int:
    """CLI body of `lensray bench curves`."""
    paths = [Path(p) for p in data] if data else packaged_curves()
    result = bench_curves(paths)
    print(format_table(result))
    one_fit = {m: time_one_fit(m) for m in ("lensray", "LensLLM", "RectifiedFit")}
    print("\nspeed")
    print(f"  whole bench, {len(paths)} data set(s): {result.wall_s:.2f} s")
    for m, ms in one_fit.items():
        print(f"  one candidate's fit, {m:<12}: {ms:.2f} ms median (alone, budget T/64)")
    if json_out:
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.scores, indent=1) + "\n")
        print(f"\nwrote {out}")
    return 0
