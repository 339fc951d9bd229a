"""Benchmarks that print figures: the predictor on recorded curves, replay sweeps, and scale.

    lensray bench curves [--data CSV ...] [--methods M ...] [--json OUT]
    lensray bench curves --suite [--part dev|held-out|all] [--methods M ...] [--json OUT]

--json OUT writes every figure below and the machine (`bench_json`); `make docs`
(lensray.bench.docs) turns it into docs/benchmarks.md. --suite runs the predictor suite
(lensray/bench/suite.py) on the packaged, the recorded and synthetic pools through the same
scoring loop, `bench_curves`.

For each data set and each budget gamma = B/T in 1/8 ... 1/512 (T = the largest size column, B
the largest size column <= T/gamma), every method of `predict.METHODS` is scored by (Lin et al.
2024's protocol):

    PearCorr = 100 * Pearson(score, true loss at T)
    RelAcc   = 100 * (L_worst - L_selected) / (L_worst - L_best),  L = true loss at T

the regret (the true loss at T of the pick - the best true loss at T, and the log of their
ratio), and, for the methods that fit curves, the coverage of their intervals: the share of
candidates whose true loss at T lies inside the interval the fit gives at the configured level
(0.9), and, for every predictor (whose s.d. the stopping rule compares candidates with), the
coverage of the intervals of *differences*: the share of pairs of reliable fits (i, j) with::

    | (m_i - m_j) - (t_i - t_j) | <= z * sqrt(s_i^2 + s_j^2),   z = Phi^-1(1/2 + level/2)

m: predicted log-loss at T, s: its s.d., t: the true log-loss at T. This is what the stopping
rule's confidence rests on: a miss every candidate shares cancels in it, a miss that differs
between candidates does not. The time of one candidate's fit (what the scheduler runs after
every report) is measured too. A cell a method cannot fill from a file (a missing optional
column, too few sizes up to B) is None, with the reason in `CurvesBench.notes`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensray.core.curves import Curves, packaged_curves, read_curves
from lensray.core.errors import ConfigError, CurveError
from lensray.predict.fit import FitConfig
from lensray.predict.methods import METHODS, Prediction, get_method, predict
from lensray.predict.metrics import pair_coverage, pearcorr, relacc

GAMMAS = (8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class CurvesBench:
    """Result of `bench_curves`: scores[dataset][method][gamma] and the timing figures."""

    scores: dict[str, dict[str, dict[str, dict[str, float | None]]]]
    """scores[dataset][method][gamma]: {"pearcorr", "relacc"} (None: n/a)."""
    regret: dict[str, dict[str, dict[str, dict[str, float | None]]]]
    """regret[dataset][method][gamma]: {"regret": true loss at T of the pick - the best true loss
    at T, "log_regret": log(pick's / best's)} (None: n/a)."""
    coverage: dict[str, dict[str, dict[str, float]]]
    """coverage[dataset][method][gamma]: share of candidates whose true loss at T lies in their
    fit's interval (methods that fit curves only)."""
    pair_coverage: dict[str, dict[str, dict[str, float | None]]]
    """pair_coverage[dataset][method][gamma]: share of pairs of reliable fits whose true difference
    at T lies in the interval of their predicted difference (fits with an s.d.;
    None with fewer than two reliable fits)."""
    wall_s: float
    fit_ms_median: dict[str, float]
    notes: list[str]
    """Why a cell is n/a: a budget below every size, or a method's missing column or sizes."""


def budgets(curves: Curves) -> list[tuple[str, int | None]]:
    """(label, budget) for gamma in GAMMAS, T = the largest size: the budget is the largest size
    column <= T/gamma (exactly T/gamma when the sizes double, as in the paper's files), or None
    when no column is that small (the cell is reported as n/a)."""
    target = int(curves.sizes[-1])
    out = []
    for g in GAMMAS:
        within = curves.sizes[curves.sizes <= target / g]
        out.append((f"1/{g}", int(within[-1]) if within.size else None))
    return out


def budget_note(curves: Curves, label: str) -> str:
    """Why the budget `label` ("1/g") of `curves` is n/a."""
    gamma = int(label.split("/")[1])
    return (
        f"{curves.name} {label}: no size column is <= T/{gamma} = {curves.sizes[-1] / gamma:g} "
        f"(smallest size {int(curves.sizes[0])})"
    )


def round2(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def read_all(paths: list[Path]) -> list[tuple[Path, Curves]]:
    """Every file read and checked before any work, each data set named by its file stem."""
    read: dict[str, tuple[Path, Curves]] = {}
    for path in paths:
        curves = read_curves(path)
        if curves.name in read:
            raise CurveError(f"two data sets are named {curves.name!r} ({read[curves.name][0]}, {path}); rename one file")
        read[curves.name] = (path, curves)
    return list(read.values())


def bench_curves(
    data: list[Curves] | list[Path],
    methods: list[str] | None = None,
    progress: Callable[[int, Curves], None] | None = None,
) -> CurvesBench:
    """Score every method at every budget on every data set (Curves, or files to read); time
    each method's fits. `progress(i, curves)` is called after the i-th data set (from 1)."""
    if data and not isinstance(data[0], Curves):
        data = [c for _, c in read_all([Path(p) for p in data])]
    seen = [c.name for c in data]
    if len(set(seen)) < len(seen):
        raise CurveError(f"two data sets are named {next(n for n in seen if seen.count(n) > 1)!r}; rename one")
    methods = methods or list(METHODS)
    level = FitConfig().level
    start = time.perf_counter()
    scores: dict = {}
    regret: dict = {}
    coverage: dict = {}
    pairs: dict = {}
    per_fit: dict[str, list[float]] = {m: [] for m in methods}
    notes: dict[str, list[str]] = {}  # why a cell is n/a -> the budgets it applies to
    for done, curves in enumerate(data, start=1):
        truth = curves.losses[:, -1]
        target = int(curves.sizes[-1])
        scores[curves.name] = {m: {} for m in methods}
        regret[curves.name] = {m: {} for m in methods}
        coverage[curves.name] = {}
        pairs[curves.name] = {}
        if np.ptp(truth) == 0:
            notes.setdefault(
                f"{curves.name}: every candidate ({len(truth)}) has the same loss at T; "
                "PearCorr and RelAcc need at least 2 that differ", []
            )
        for label, budget in budgets(curves):
            if budget is None:
                notes.setdefault(budget_note(curves, label), [])
            for m in methods:
                scores[curves.name][m][label] = {"pearcorr": None, "relacc": None}
                regret[curves.name][m][label] = {"regret": None, "log_regret": None}
                if budget is None:
                    continue
                t0 = time.perf_counter()
                try:
                    pred: Prediction = predict(m, curves.upto(budget), target)
                except CurveError as err:  # the method needs a column or more sizes than this file has
                    notes.setdefault(str(err), []).append(label)
                    continue
                per_fit[m].append((time.perf_counter() - t0) / len(curves.candidates))
                picked, best = float(truth[pred.selected]), float(truth.min())
                scores[curves.name][m][label] = {
                    "pearcorr": round2(pearcorr(pred.scores, truth)),
                    "relacc": round2(relacc(pred.selected, truth)),
                }
                regret[curves.name][m][label] = {
                    "regret": round(picked - best, 6), "log_regret": round(float(np.log(picked / best)), 6)
                }
                if pred.fits:
                    inside = [f.interval[0] <= t <= f.interval[1] for f, t in zip(pred.fits, truth)]
                    coverage[curves.name].setdefault(m, {})[label] = float(np.mean(inside))
                if pred.fits and all(np.isfinite(f.sd_log) for f in pred.fits):
                    pairs[curves.name].setdefault(m, {})[label] = pair_coverage(pred.fits, truth, level)
        if progress is not None:
            progress(done, curves)
    wall = time.perf_counter() - start
    fit_ms = {m: 1e3 * statistics.median(v) for m, v in per_fit.items() if v}
    return CurvesBench(
        scores, regret, coverage, pairs, wall, fit_ms, [f"{n} [{', '.join(at)}]" if at else n for n, at in notes.items()]
    )


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
                f"{fmt(c['pearcorr']):>7}/{fmt(c['relacc']):<6}" for c in cells.values()
            )
            lines.append(f"{m:<13}{row}")
    return "\n".join(lines)


def format_coverage(result: CurvesBench, level: float) -> str:
    """The intervals' coverage, of the losses and of the differences, as text tables per data
    set, in percent."""
    lines = []
    labels = [f"1/{g}" for g in GAMMAS]
    tables = [
        (result.coverage, "intervals at T (% of candidates whose true loss is inside)"),
        (result.pair_coverage, "intervals of differences at T (% of pairs of reliable fits whose true "
         "difference is inside: what the scheduler's stopping rule rests on)"),
    ]
    for ds in result.coverage:
        for table, what in tables:
            by_method = table[ds]
            if not by_method:
                continue
            lines.append(f"\n{ds}: coverage of the {level:.0%} {what}")
            lines += _coverage_rows(by_method, labels)
    return "\n".join(lines)


def _coverage_rows(by_method: dict[str, dict[str, float | None]], labels: list[str]) -> list[str]:
    """One header and one row per method of a coverage table, in percent."""
    rows = [f"{'method':<13}" + "".join(f"{lab:>8}" for lab in labels)]
    for m, cells in by_method.items():
        rows.append(f"{m:<13}" + "".join(
            f"{'n/a' if cells.get(lab) is None else f'{100 * cells[lab]:.0f}':>8}" for lab in labels
        ))
    return rows


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def machine() -> dict[str, int | str | None]:
    """The machine a bench runs on: {"cpus", "processor", "cpu_model"} (cpu_model: the first
    `model name` of /proc/cpuinfo, None where there is none). No GPU: torch is not imported here."""
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                cpu_model = line.split(":", 1)[1].strip() or None
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), "cpu_model": cpu_model}


def bench_json(
    result: CurvesBench, one_fit_ms: dict[str, float], data: list[Curves], paths: list[Path], packaged: bool
) -> dict:
    """What `lensray bench curves --json OUT` writes: every figure the tables of
    docs/benchmarks.md need (lensray.bench.docs)::

        {"scores": {dataset: {method: {gamma: {"pearcorr", "relacc"}}}},
         "regret": {dataset: {method: {gamma: {"regret", "log_regret"}}}},
         "level": interval level, "coverage": {dataset: {method: {gamma: share}}},
         "pair_coverage": {dataset: {method: {gamma: share | null}}},
         "budgets": {dataset: {gamma: B | null}},
         "wall_s": s, "fit_ms_median": {method: ms}, "one_fit_ms": {method: ms},
         "notes": [why a cell is n/a], "data": [curves file], "packaged": bool,
         "machine": {"cpus", "processor", "cpu_model"}}

    `data`: the curves scored, read from `paths`; `packaged`: they are the packaged curves (no
    --data given)."""
    return {
        "scores": result.scores,
        "regret": result.regret,
        "level": FitConfig().level,
        "coverage": result.coverage,
        "pair_coverage": result.pair_coverage,
        "budgets": {curves.name: dict(budgets(curves)) for curves in data},
        "wall_s": round(result.wall_s, 3),
        "fit_ms_median": {m: round(ms, 4) for m, ms in result.fit_ms_median.items()},
        "one_fit_ms": {m: round(ms, 4) for m, ms in one_fit_ms.items()},
        "notes": result.notes,
        "data": [str(p) for p in paths],
        "packaged": packaged,
        "machine": machine(),
    }


def run_bench_curves(
    data: list[str] | None,
    json_out: str | None,
    methods: list[str] | None = None,
    suite: bool = False,
    part: str | None = None,
) -> int:
    """CLI body of `lensray bench curves`; --json writes `bench_json`, --suite runs
    `lensray.bench.suite.run_bench_suite` instead (on `part`, default held-out)."""
    if suite:
        if data:
            raise ConfigError("--suite scores the packaged, recorded and synthetic pools; give --data or --suite, not both")
        from lensray.bench.suite import run_bench_suite

        return run_bench_suite(part or "held-out", methods, json_out)
    if part:
        raise ConfigError(f"--part {part} chooses the suite's synthetic pools; add --suite")
    for m in methods or []:
        get_method(m)  # an unknown name lists the options before any work
    paths = [Path(p) for p in data] if data else packaged_curves()
    curves = [c for _, c in read_all(paths)]
    result = bench_curves(curves, methods)
    print(format_table(result))
    if result.notes:
        print("\nn/a cells:\n" + "\n".join(f"  {n}" for n in result.notes))
    print(format_coverage(result, FitConfig().level))
    one_fit = {m: time_one_fit(m) for m in ("local", "LensLLM", "RectifiedFit") if not methods or m in methods}
    print("\nspeed")
    print(f"  whole bench, {len(paths)} data set(s): {result.wall_s:.2f} s")
    for m, ms in one_fit.items():
        print(f"  one candidate's fit, {m:<12}: {ms:.2f} ms median (alone, budget T/64)")
    if json_out:
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(bench_json(result, one_fit, curves, paths, not data), indent=1) + "\n")
        print(f"\nwrote {out}")
    return 0
