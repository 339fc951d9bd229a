"""Benchmarks that print figures: the predictor on recorded curves, replay sweeps, and scale.

    lensray bench curves [--data CSV ...] [--json OUT]

For each data set and each budget gamma = B/T in 1/8 ... 1/512 (T = the largest size column, B
the largest size column <= T/gamma), every method of `predict.METHODS` is scored by (Lin et al.
2024's protocol):

    PearCorr = 100 * Pearson(score, true loss at T)
    RelAcc   = 100 * (L_worst - L_selected) / (L_worst - L_best),  L = true loss at T

and, for the methods that fit curves, the coverage of their intervals: the share of candidates
whose true loss at T lies inside the interval the fit gives at the configured level (0.9), and,
for lensray's fits (whose s.d. the scheduler compares candidates with), the coverage of the
intervals of *differences*: the share of pairs of reliable fits (i, j) with::

    | (m_i - m_j) - (t_i - t_j) | <= z * sqrt(s_i^2 + s_j^2),   z = Phi^-1(1/2 + level/2)

m: predicted log-loss at T, s: its s.d., t: the true log-loss at T. This is what the stopping
rule's confidence rests on: a miss every candidate shares cancels in it, a miss that differs
between candidates does not. The time of one candidate's fit (what the scheduler runs after
every report) is measured too. A cell a method cannot fill from a file (a missing optional
column, too few sizes up to B) is None, with the reason in `CurvesBench.notes`.

    lensray bench select [--data CSV ...] [--json OUT]

A real replay sweep through Tune per data set and budget, probing every size column up to B:
the selection's RelAcc and PearCorr, and its cost against probing every candidate at every one
of those sizes (AtS's cost) and against fine-tuning every candidate at T.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensray.curves import Curves, CurveError, packaged_curves, read_curves
from lensray.fit import CurveFit, FitConfig
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
    coverage: dict[str, dict[str, dict[str, float]]]
    """coverage[dataset][method][gamma]: share of candidates whose true loss at T lies in their
    fit's interval (methods that fit curves only)."""
    pair_coverage: dict[str, dict[str, dict[str, float | None]]]
    """pair_coverage[dataset][method][gamma]: share of pairs of reliable fits whose true difference
    at T lies in the interval of their predicted difference (fits with an s.d., i.e. lensray's;
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


def _budget_note(curves: Curves, label: str) -> str:
    """Why the budget `label` ("1/g") of `curves` is n/a."""
    gamma = int(label.split("/")[1])
    return (
        f"{curves.name} {label}: no size column is <= T/{gamma} = {curves.sizes[-1] / gamma:g} "
        f"(smallest size {int(curves.sizes[0])})"
    )


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _read_all(paths: list[Path]) -> list[tuple[Path, Curves]]:
    """Every file read and checked before any work, each data set named by its file stem."""
    read: dict[str, tuple[Path, Curves]] = {}
    for path in paths:
        curves = read_curves(path)
        if curves.name in read:
            raise CurveError(f"two data sets are named {curves.name!r} ({read[curves.name][0]}, {path}); rename one file")
        read[curves.name] = (path, curves)
    return list(read.values())


def pair_coverage(fits: list[CurveFit], truth: np.ndarray, level: float) -> float | None:
    """Share of pairs of reliable `fits` whose true log-loss difference at T (`truth`: true
    losses) lies within z s.d. of their predicted difference (see the module docstring); None
    with fewer than two reliable fits."""
    ok = np.array([f.ok for f in fits])
    if ok.sum() < 2:
        return None
    m = np.log([f.predicted_loss for f in fits])[ok]
    s = np.array([f.params["sd_log"] for f in fits])[ok]
    err = m - np.log(truth)[ok]
    i, j = np.triu_indices(m.size, 1)
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2.0)
    return float(np.mean(np.abs(err[i] - err[j]) <= z * np.sqrt(s[i] ** 2 + s[j] ** 2)))


def bench_curves(paths: list[Path], methods: list[str] | None = None) -> CurvesBench:
    """Score every method at every budget on every data set; time each method's fits."""
    methods = methods or list(METHODS)
    level = FitConfig().level
    start = time.perf_counter()
    scores: dict = {}
    coverage: dict = {}
    pairs: dict = {}
    per_fit: dict[str, list[float]] = {m: [] for m in methods}
    notes: dict[str, list[str]] = {}  # why a cell is n/a -> the budgets it applies to
    for _, curves in _read_all(paths):
        truth = curves.losses[:, -1]
        target = int(curves.sizes[-1])
        scores[curves.name] = {m: {} for m in methods}
        coverage[curves.name] = {}
        pairs[curves.name] = {}
        if np.ptp(truth) == 0:
            notes.setdefault(
                f"{curves.name}: every candidate ({len(truth)}) has the same loss at T; "
                "PearCorr and RelAcc need at least 2 that differ", []
            )
        for label, budget in budgets(curves):
            if budget is None:
                notes.setdefault(_budget_note(curves, label), [])
            for m in methods:
                scores[curves.name][m][label] = {"pearcorr": None, "relacc": None}
                if budget is None:
                    continue
                t0 = time.perf_counter()
                try:
                    pred: Prediction = predict(m, curves.upto(budget), target)
                except CurveError as err:  # the method needs a column or more sizes than this file has
                    notes.setdefault(str(err), []).append(label)
                    continue
                per_fit[m].append((time.perf_counter() - t0) / len(curves.candidates))
                scores[curves.name][m][label] = {
                    "pearcorr": _round(pearcorr(pred.scores, truth)),
                    "relacc": _round(relacc(pred.selected, truth)),
                }
                if pred.fits:
                    inside = [f.interval[0] <= t <= f.interval[1] for f, t in zip(pred.fits, truth)]
                    coverage[curves.name].setdefault(m, {})[label] = float(np.mean(inside))
                if pred.fits and all("sd_log" in f.params for f in pred.fits):
                    pairs[curves.name].setdefault(m, {})[label] = pair_coverage(pred.fits, truth, level)
    wall = time.perf_counter() - start
    fit_ms = {m: 1e3 * statistics.median(v) for m, v in per_fit.items() if v}
    return CurvesBench(
        scores, coverage, pairs, wall, fit_ms, [f"{n} [{', '.join(at)}]" if at else n for n, at in notes.items()]
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
                f"{_fmt(c['pearcorr']):>7}/{_fmt(c['relacc']):<6}" for c in cells.values()
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


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def run_bench_curves(data: list[str] | None, json_out: str | None) -> int:
    """CLI body of `lensray bench curves`."""
    paths = [Path(p) for p in data] if data else packaged_curves()
    result = bench_curves(paths)
    print(format_table(result))
    if result.notes:
        print("\nn/a cells:\n" + "\n".join(f"  {n}" for n in result.notes))
    print(format_coverage(result, FitConfig().level))
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


def _replay_config(path: Path, curves: Curves, budget: int, out: Path, **overrides):
    """A replay sweep of `curves` (read from `path`) probing every size column up to `budget`
    (the sizes AtS is charged for), predicting at the largest column."""
    from lensray.config import config_from_dict

    sizes = [int(s) for s in curves.sizes if s <= budget]
    raw = {
        "name": f"{path.stem}-B{budget}",
        "backend": "replay",
        "replay": {"curves": str(path.resolve()), "sleep_s_per_pflop": overrides.pop("sleep", 0.0)},
        "plan": {"sizes": sizes, "budget": budget, "target": int(curves.sizes[-1])},
        "resources": {"cpus_per_worker": overrides.pop("cpus", 0.25)},
        "output": str(out),
    }
    raw.update(overrides)
    return config_from_dict(raw)


def bench_select(paths: list[Path], out_dir: Path, sleep_s_per_pflop: float = 1e-3) -> dict:
    """A real replay sweep through Tune per data set and budget; selection quality and cost."""
    from lensray.config import ConfigError
    from lensray.driver import run_select

    result: dict = {}
    for path, curves in _read_all(paths):
        truth = curves.losses[:, -1]
        index = {c: i for i, c in enumerate(curves.candidates)}
        result[curves.name] = {}
        swept: dict[int, dict] = {}  # budget -> cell: gammas with the same largest size share a sweep
        for label, budget in budgets(curves):
            cell = dict.fromkeys(("relacc", "pearcorr", "cost_vs_ats", "cost_vs_full"))
            if budget is None:
                print(f"  {_budget_note(curves, label)}: skipped", flush=True)
            elif budget in swept:
                cell = swept[budget]
                print(f"  {curves.name} {label}: B={budget}, as at the gamma before", flush=True)
            else:
                try:
                    cfg = _replay_config(path, curves, budget, out_dir, sleep=sleep_s_per_pflop)
                except ConfigError as err:  # e.g. fewer sizes up to B than a fit needs to decide
                    print(f"  {curves.name} {label}: skipped, no sweep can run at B={budget}: {err}", flush=True)
                else:
                    sel = run_select(cfg, quiet=True)
                    ranked = [e for e in sel.doc["ranking"] if e["predicted_loss"] is not None]
                    scores = np.array([e["predicted_loss"] for e in ranked])
                    cost = sel.doc["cost"]
                    cell = {
                        "relacc": _round(relacc(index[sel.selected], truth)) if sel.selected else None,
                        "pearcorr": _round(pearcorr(scores, truth[[index[e["candidate"]] for e in ranked]])),
                        "cost_vs_ats": round(cost["fraction_of_all_probes"], 4),
                        "cost_vs_full": round(cost["fraction_of_full"], 6),
                    }
                    print(f"  {curves.name} {label}: {cell}", flush=True)
                swept[budget] = cell
            result[curves.name][label] = cell
    return result


def format_select(result: dict, paths: list[Path]) -> str:
    """`bench_select`'s result as one table per data set, beside AtS at the same budgets and the
    issue's targets (RelAcc >= AtS's, cost_vs_ats <= 0.5)."""
    lines = []
    for path in paths:
        curves = read_curves(path)
        truth, target = curves.losses[:, -1], int(curves.sizes[-1])
        lines.append(f"\n{curves.name}: replay sweeps against AtS at the same budget")
        lines.append(f"{'gamma':<7}{'B':>9}{'RelAcc (AtS)':>16}{'PearCorr (AtS)':>18}{'cost_vs_ats':>13}  targets")
        for label, budget in budgets(curves):
            cell = result[curves.name][label]
            if budget is None or cell["relacc"] is None:
                lines.append(f"{label:<7}{'n/a':>9}")
                continue
            ats = predict("AtS", curves.upto(budget), target)
            ats_relacc, ats_pearcorr = _round(relacc(ats.selected, truth)), _round(pearcorr(ats.scores, truth))
            misses = [m for m, bad in (
                (f"RelAcc below AtS by {ats_relacc - cell['relacc']:.2f}", cell["relacc"] < ats_relacc),
                (f"cost over 0.5 by {cell['cost_vs_ats'] - 0.5:.3f}", cell["cost_vs_ats"] > 0.5),
            ) if bad]
            lines.append(
                f"{label:<7}{budget:>9}{_fmt(cell['relacc']):>9} ({_fmt(ats_relacc):>5})"
                f"{_fmt(cell['pearcorr']):>11} ({_fmt(ats_pearcorr):>5}){cell['cost_vs_ats']:>13.3f}  "
                + ("; ".join(misses) or "met")
            )
    return "\n".join(lines)


def synthetic_curves(n: int, path: Path, seed: int = 0) -> Path:
    """n candidates with rectified-law curves (random onset, slope, floor, size) as a curves CSV."""
    from lensray.laws import rectified

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


def bench_scale(candidates: int, out_dir: Path, synchronous: bool = False) -> dict:
    """A replay sweep over `candidates` synthetic curves at budget T/512: wall time and the
    share of it spent in the scheduler's decisions. Asynchronous decisions by default: with
    synchronous rungs every size of every probe is a Tune pause and resume, which dominates the
    wall time of thousands of near-instant replay probes (see README)."""
    from lensray.driver import run_select

    out_dir.mkdir(parents=True, exist_ok=True)
    path = synthetic_curves(candidates, out_dir / f"synthetic-{candidates}.csv")
    cfg = _replay_config(path, read_curves(path), 3200, out_dir, cpus=0.125, scheduler={"synchronous": synchronous})
    sel = run_select(cfg, quiet=True)
    return {
        "candidates": candidates,
        "wall_s": round(sel.doc["wall_s"], 2),
        "scheduler_share": round(sel.doc["scheduler_s"] / sel.doc["wall_s"], 5),
        "synchronous": synchronous,
        "cost_vs_ats": round(sel.doc["cost"]["fraction_of_all_probes"], 4),
    }
