"""The predictor suite: every method on the real, the recorded and many synthetic pools, side by side.

    lensray bench curves --suite [--part dev|held-out|all] [--methods M ...] [--json OUT]

    from lensray.bench.suite import format_suite, run_suite
    print(format_suite(run_suite("dev", ["local", "AtS"])))

Groups, each reported on its own (never averaged across groups):

    real                 the packaged FLAN and WMT19 curves (methods are developed on them)
    recorded             the zoo's recorded curves (`lensray.core.curves.recorded_curves`), if any
    synthetic <part>     the pools `lensray.bench.synth.suite_pool` draws for the seeds of
                         `SUITE_PARTS[part]`: "dev" (40 pools, developed on) or "held-out" (120
                         pools, reported); --part all runs both, as two groups

Every pool is scored by the one loop of `lensray.bench.curves.bench_curves` at the budgets
gamma = B/T in 1/8 ... 1/512. Per group and method, over the (pool, budget) cells ("overall")
and per budget over the pools: mean, 10th percentile and worst PearCorr and RelAcc; the mean
regret (true loss at T of the pick - the best true loss at T) and log-regret
(log(pick's / best's), comparable across pools); and, for the methods that fit curves, the mean
over the pools of the coverage of the 90% intervals at T (single: the share of candidates whose
true loss lies in the fit's interval; pairwise: `lensray.predict.metrics.pair_coverage`).

Targets of the default predictor (`DEFAULT_PREDICTOR`) against AtS, `check_targets`:

    synthetic   mean PearCorr >= AtS's + 5; mean RelAcc >= AtS's; 10th-percentile RelAcc >=
                AtS's; fewer than 2% of the (pool, budget) cells with a RelAcc more than 10
                below AtS's; single and pairwise coverage in [80, 95]% at every budget
    flan, wmt19 (each)  mean PearCorr over the budgets > AtS's; no budget with a RelAcc more
                than 10 below AtS's; single and pairwise coverage in [80, 95]% at every budget
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lensray.bench.curves import GAMMAS, CurvesBench, bench_curves, machine, read_all
from lensray.bench.synth import SUITE_PARTS, suite_pool
from lensray.core.curves import Curves, packaged_curves, recorded_curves
from lensray.core.errors import ConfigError
from lensray.predict.fit import FitConfig
from lensray.predict.methods import DEFAULT_PREDICTOR, METHODS, get_method

PARTS = ("dev", "held-out", "all")
"""What --part may name: a part of SUITE_PARTS, or all of them."""
REAL = ("flan", "wmt19")
"""The packaged data sets the real targets are checked on, each."""
COVERAGE_RANGE = (0.80, 0.95)
"""Where the 90% intervals' coverage must lie at every budget."""
LABELS = [f"1/{g}" for g in GAMMAS]


@dataclass(frozen=True)
class Target:
    """One target of the default predictor against AtS, met or missed."""

    group: str
    """The group (or data set) it is checked on."""
    what: str
    """The criterion, e.g. "mean PearCorr >= AtS's + 5"."""
    met: bool
    miss: float
    """How far the figure falls short of the goal, in the criterion's units (points x100 for
    scores and percent for shares and coverage); 0 when met."""
    figure: str
    """The measured figures, as printed."""

    def line(self) -> str:
        verdict = "met" if self.met else f"MISSED by {self.miss:.2f}"
        return f"{self.group}: {self.what}: {verdict} ({self.figure})"


@dataclass(frozen=True)
class SuiteResult:
    """What `run_suite` returns: the groups, every cell, the summaries and the targets."""

    part: str
    methods: list[str]
    groups: dict[str, list[str]]
    """Group -> the data sets (pools) in it."""
    seeds: dict[str, list[int]]
    """Synthetic part -> the seeds of its pools that were scored."""
    bench: CurvesBench
    """Every pool's cells, as `bench_curves` scores them."""
    summary: dict[str, dict[str, dict]]
    """summary[group][method] = {"overall": stats, "by_budget": {gamma: stats}}, stats as
    `cell_stats` gives them."""
    targets: list[Target]
    notes: list[str]
    """Why targets are not checked or groups are empty."""
    wall_s: float


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def _spread(values: list[float]) -> dict[str, float | None]:
    """{"mean", "p10", "worst"} of x100 scores (worst: the lowest); None where there are none."""
    if not values:
        return {"mean": None, "p10": None, "worst": None}
    return {"mean": statistics.mean(values), "p10": float(np.percentile(values, 10)), "worst": min(values)}


def cell_stats(cells: list[dict], coverage: list[float | None], pairs: list[float | None]) -> dict:
    """The figures of a set of cells (`CurvesBench.scores` cells merged with their
    `CurvesBench.regret` cells) and of the coverage of their
    intervals: {"pearcorr": spread, "relacc": spread, "regret", "log_regret", "coverage",
    "pair_coverage", "cells"} (means; coverage over the cells that have one; cells: how many
    were scored)."""
    def vals(key: str) -> list[float]:
        return [c[key] for c in cells if c.get(key) is not None]

    return {
        "pearcorr": _spread(vals("pearcorr")),
        "relacc": _spread(vals("relacc")),
        "regret": _mean(vals("regret")),
        "log_regret": _mean(vals("log_regret")),
        "coverage": _mean([v for v in coverage if v is not None]),
        "pair_coverage": _mean([v for v in pairs if v is not None]),
        "cells": sum(c.get("relacc") is not None or c.get("pearcorr") is not None for c in cells),
    }


def summarize(bench: CurvesBench, names: list[str], methods: list[str]) -> dict[str, dict]:
    """{method: {"overall": stats, "by_budget": {gamma: stats}}} over the data sets `names`."""
    out = {}
    for m in methods:
        def stats(labels: list[str]) -> dict:
            keys = [(ds, lab) for ds in names for lab in labels]
            return cell_stats(
                [bench.scores[ds][m][lab] | bench.regret[ds][m][lab] for ds, lab in keys],
                [bench.coverage[ds].get(m, {}).get(lab) for ds, lab in keys],
                [bench.pair_coverage[ds].get(m, {}).get(lab) for ds, lab in keys],
            )

        out[m] = {"overall": stats(LABELS), "by_budget": {lab: stats([lab]) for lab in LABELS}}
    return out


def _coverage_target(group: str, what: str, by_budget: dict[str, float | None]) -> Target:
    lo, hi = COVERAGE_RANGE
    off = {lab: (float("nan") if v is None else max(lo - v, v - hi, 0.0)) for lab, v in by_budget.items()}
    worst = max(off, key=lambda lab: (np.isnan(off[lab]), off[lab])) if off else None
    met = bool(off) and all(v == 0.0 for v in off.values())
    figure = ", ".join(f"{lab}: {'n/a' if v is None else f'{100 * v:.0f}'}" for lab, v in by_budget.items())
    miss = 0.0 if met or worst is None else 100 * off[worst]
    return Target(group, f"{what} coverage in [{100 * lo:.0f}, {100 * hi:.0f}]% at every budget", met, miss, figure)


def check_targets(
    kind: str,
    group: str,
    mine: list[tuple[float | None, float | None]],
    ats: list[tuple[float | None, float | None]],
    coverage: dict[str, float | None],
    pair_coverage: dict[str, float | None],
) -> list[Target]:
    """The targets of the module docstring for one group, from plain numbers.

    kind: "synthetic" or "real"; mine, ats: the default predictor's and AtS's (PearCorr, RelAcc),
    x100, one pair per (pool, budget) cell in the same order (a cell where either side is None
    is left out of that comparison); coverage, pair_coverage: the default predictor's share per
    budget (None: not measured, which misses the target)."""
    if kind not in ("synthetic", "real"):
        raise ValueError(f"kind must be 'synthetic' or 'real', got {kind!r}")
    pc = [(a[0], b[0]) for a, b in zip(mine, ats) if a[0] is not None and b[0] is not None]
    ra = [(a[1], b[1]) for a, b in zip(mine, ats) if a[1] is not None and b[1] is not None]
    out = []
    if pc:
        m, a = statistics.mean(x for x, _ in pc), statistics.mean(y for _, y in pc)
        goal, what = (5.0, "mean PearCorr >= AtS's + 5") if kind == "synthetic" else (0.0, "mean PearCorr > AtS's")
        met = m - a >= goal if kind == "synthetic" else m - a > goal
        out.append(Target(group, what, met, 0.0 if met else goal - (m - a), f"{m:.1f} vs AtS {a:.1f}, {m - a:+.1f}"))
    if ra:
        mine_ra, ats_ra = np.array([x for x, _ in ra]), np.array([y for _, y in ra])
        short = ats_ra - mine_ra  # > 0: below AtS
        if kind == "synthetic":
            m, a = float(mine_ra.mean()), float(ats_ra.mean())
            out.append(Target(group, "mean RelAcc >= AtS's", m >= a, max(a - m, 0.0), f"{m:.1f} vs AtS {a:.1f}"))
            m, a = float(np.percentile(mine_ra, 10)), float(np.percentile(ats_ra, 10))
            out.append(Target(group, "10th-percentile RelAcc >= AtS's", m >= a, max(a - m, 0.0),
                              f"{m:.1f} vs AtS {a:.1f}"))
            share = float((short > 10).mean())
            out.append(Target(group, "cells with RelAcc > 10 below AtS's < 2%", share < 0.02,
                              0.0 if share < 0.02 else 100 * (share - 0.02),
                              f"{100 * share:.1f}% of {short.size} cells"))
        else:
            worst = max(float(short.max()), 0.0)
            out.append(Target(group, "no cell with RelAcc > 10 below AtS's", worst <= 10,
                              max(worst - 10, 0.0), f"largest shortfall {worst:.1f} over {short.size} cells"))
    out.append(_coverage_target(group, "single", coverage))
    out.append(_coverage_target(group, "pairwise", pair_coverage))
    return out


def _pairs(bench: CurvesBench, names: list[str]) -> tuple[list, list]:
    """The default predictor's and AtS's (PearCorr, RelAcc) per (data set, budget) of `names`."""
    def cells(m: str) -> list[tuple[float | None, float | None]]:
        return [(bench.scores[ds][m][lab]["pearcorr"], bench.scores[ds][m][lab]["relacc"])
                for ds in names for lab in LABELS]

    return cells(DEFAULT_PREDICTOR), cells("AtS")


def suite_data(part: str, pools: int | None = None) -> dict[str, list[Curves]]:
    """The suite's groups for `part` (see the module docstring), every file read and checked;
    `pools`: only the first that many seeds of each synthetic part."""
    if part not in PARTS:
        raise ConfigError(f"--part {part!r}: choose one of {', '.join(PARTS)}")
    recorded = recorded_curves()
    files = dict(read_all([*packaged_curves(), *recorded]))  # two files of one name are refused
    groups = {"real": [files[p] for p in packaged_curves()], "recorded": [files[p] for p in recorded]}
    for name, seeds in suite_seeds(part, pools).items():
        groups[f"synthetic {name}"] = [suite_pool(seed) for seed in seeds]
    return groups


def suite_seeds(part: str, pools: int | None = None) -> dict[str, list[int]]:
    """The seeds of each synthetic part `part` covers ("all": every part), the first `pools` of
    each when given."""
    return {name: list(SUITE_PARTS[name][:pools]) for name in (SUITE_PARTS if part == "all" else [part])}


def run_suite(
    part: str = "held-out", methods: list[str] | None = None, pools: int | None = None, quiet: bool = False
) -> SuiteResult:
    """Score `methods` (default: every method of METHODS) on the suite's groups for `part`, with
    a progress line per group and every 20 pools on stderr (unless `quiet`). `pools`: only the
    first that many pools of each synthetic part (a quick look: the targets are then checked on
    those pools only)."""
    methods = list(methods) if methods else list(METHODS)
    for m in methods:
        get_method(m)  # an unknown name lists the options before any work
    start = time.perf_counter()
    groups = suite_data(part, pools)
    data = [c for group in groups.values() for c in group]
    group_of = {c.name: g for g, cs in groups.items() for c in cs}

    def progress(i: int, curves: Curves) -> None:
        g = group_of[curves.name]
        k = [c.name for c in groups[g]].index(curves.name) + 1
        if not quiet and (k == len(groups[g]) or k % 20 == 0):
            print(f"suite: {g}: {k}/{len(groups[g])} pools scored ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)

    bench = bench_curves(data, methods, progress)
    names = {g: [c.name for c in cs] for g, cs in groups.items()}
    summary = {g: summarize(bench, ns, methods) for g, ns in names.items() if ns}
    notes = [f"{g}: no data sets" for g, ns in names.items() if not ns]
    targets: list[Target] = []
    missing = [m for m in (DEFAULT_PREDICTOR, "AtS") if m not in methods]
    if missing:
        notes.append(f"targets not checked: they compare {DEFAULT_PREDICTOR} with AtS; add {', '.join(missing)} to --methods")
    else:
        for g, ns in names.items():
            if g.startswith("synthetic") and ns:
                by = summary[g][DEFAULT_PREDICTOR]["by_budget"]
                targets += check_targets("synthetic", g, *_pairs(bench, ns),
                                         {lab: by[lab]["coverage"] for lab in LABELS},
                                         {lab: by[lab]["pair_coverage"] for lab in LABELS})
        for ds in REAL:
            if ds in names["real"]:
                cov = bench.coverage[ds].get(DEFAULT_PREDICTOR, {})
                pair = bench.pair_coverage[ds].get(DEFAULT_PREDICTOR, {})
                targets += check_targets("real", ds, *_pairs(bench, [ds]),
                                         {lab: cov.get(lab) for lab in LABELS}, {lab: pair.get(lab) for lab in LABELS})
    return SuiteResult(part, methods, names, suite_seeds(part, pools), bench, summary, targets,
                       notes + bench.notes, time.perf_counter() - start)


# --- text ---------------------------------------------------------------------------------------


def _f(v: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "n/a" if v is None else f"{scale * v:.{digits}f}"


def _budget_table(title: str, by_method: dict[str, dict], cell) -> list[str]:
    lines = [title, f"{'method':<13}" + "".join(f"{lab:>13}" for lab in LABELS)]
    for m, s in by_method.items():
        lines.append(f"{m:<13}" + "".join(f"{cell(s['by_budget'][lab]):>13}" for lab in LABELS))
    return lines


def format_group(group: str, names: list[str], by_method: dict[str, dict]) -> list[str]:
    """One group's tables: overall, then per budget."""
    head = (f"{'method':<13}{'PearCorr':>8}{'p10':>7}{'worst':>7} |{'RelAcc':>7}{'p10':>7}{'worst':>7} |"
            f"{'regret':>8}{'logreg':>8} |{'cover':>6}{'pair':>6}")
    lines = [f"\n== {group}: {len(names)} data set(s) x {len(LABELS)} budgets ==",
             "overall, over data sets x budgets (x100; regret: loss; logreg: x100; coverage: %)", head]
    for m, s in by_method.items():
        o = s["overall"]
        pc, ra = o["pearcorr"], o["relacc"]
        lines.append(
            f"{m:<13}{_f(pc['mean']):>8}{_f(pc['p10']):>7}{_f(pc['worst']):>7} |"
            f"{_f(ra['mean']):>7}{_f(ra['p10']):>7}{_f(ra['worst']):>7} |"
            f"{_f(o['regret'], digits=4):>8}{_f(o['log_regret'], 100, 2):>8} |"
            f"{_f(o['coverage'], 100, 0):>6}{_f(o['pair_coverage'], 100, 0):>6}"
        )
    lines += _budget_table("by budget: mean PearCorr / mean RelAcc", by_method,
                           lambda s: f"{_f(s['pearcorr']['mean'])}/{_f(s['relacc']['mean'])}")
    lines += _budget_table("by budget: RelAcc p10 / worst", by_method,
                           lambda s: f"{_f(s['relacc']['p10'])}/{_f(s['relacc']['worst'])}")
    lines += _budget_table("by budget: mean regret / log-regret x100", by_method,
                           lambda s: f"{_f(s['regret'], digits=3)}/{_f(s['log_regret'], 100, 1)}")
    fitted = {m: s for m, s in by_method.items() if s["overall"]["coverage"] is not None}
    if fitted:
        lines += _budget_table("by budget: coverage of the 90% intervals, single / pairwise (%)", fitted,
                               lambda s: f"{_f(s['coverage'], 100, 0)}/{_f(s['pair_coverage'], 100, 0)}")
    return lines


def format_suite(result: SuiteResult) -> str:
    """The suite as text: a header, each group's tables, the targets, the notes and the wall time."""
    lines = [
        f"Predictor suite, part {result.part} ("
        + "; ".join(f"{p}: {len(s)} pools, seeds {s[0]}..{s[-1]}" for p, s in result.seeds.items() if s)
        + f"), methods: {', '.join(result.methods)}"
    ]
    for g, names in result.groups.items():
        if names:
            lines += format_group(g, names, result.summary[g])
    if result.targets:
        lines += [f"\ntargets of {DEFAULT_PREDICTOR} against AtS"]
        lines += [f"  {t.line()}" for t in result.targets]
        met = sum(t.met for t in result.targets)
        lines.append(f"  {met} of {len(result.targets)} met")
    if result.notes:
        lines += ["\nnotes:", *(f"  {n}" for n in result.notes)]
    lines.append(f"\nwall time: {result.wall_s:.1f} s")
    return "\n".join(lines)


# --- JSON ---------------------------------------------------------------------------------------


def suite_json(result: SuiteResult) -> dict:
    """What `lensray bench curves --suite --json OUT` writes: every figure (lensray.bench.docs
    renders it into docs/benchmarks.md)::

        {"part", "methods", "level", "seeds": {part: [seed of each pool scored]},
         "groups": {group: [data set]},
         "summary": {group: {method: {"overall": stats, "by_budget": {gamma: stats}}}},
         "targets": [{"group", "what", "met", "miss", "figure"}],
         "cells": {data set: {method: {gamma: {"pearcorr", "relacc", "regret", "log_regret"}}}},
         "coverage": {data set: {method: {gamma: share}}},
         "pair_coverage": {data set: {method: {gamma: share | null}}},
         "notes", "wall_s", "fit_ms_median": {method: ms}, "machine"}

    stats: {"pearcorr": {"mean", "p10", "worst"}, "relacc": {...}, "regret", "log_regret",
    "coverage", "pair_coverage", "cells"} (`cell_stats`)."""
    return {
        "part": result.part,
        "methods": result.methods,
        "level": FitConfig().level,
        "seeds": result.seeds,
        "groups": result.groups,
        "summary": result.summary,
        "targets": [asdict(t) for t in result.targets],
        "cells": {ds: {m: {lab: c | result.bench.regret[ds][m][lab] for lab, c in cells.items()}
                       for m, cells in by_method.items()} for ds, by_method in result.bench.scores.items()},
        "coverage": result.bench.coverage,
        "pair_coverage": result.bench.pair_coverage,
        "notes": result.notes,
        "wall_s": round(result.wall_s, 3),
        "fit_ms_median": {m: round(ms, 4) for m, ms in result.bench.fit_ms_median.items()},
        "machine": machine(),
    }


def run_bench_suite(part: str, methods: list[str] | None, json_out: str | None) -> int:
    """CLI body of `lensray bench curves --suite`: the tables and targets on stdout, progress on
    stderr; --json writes `suite_json`."""
    result = run_suite(part, methods)
    print(format_suite(result))
    if json_out:
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(suite_json(result), indent=1) + "\n")
        print(f"\nwrote {out}")
    return 0
