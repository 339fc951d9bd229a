"""`lensray bench select`: a real replay sweep through Tune per data set and budget, probing every
size column up to B: the selection's RelAcc and PearCorr, and its cost against probing every
candidate at every one of those sizes (AtS's cost) and against fine-tuning every candidate at T.

Beside lensray's own sweep, the same pool at the same budget is swept with the Tune schedulers a
Tune user would pick instead (BASELINES: ASHA with reduction factors 2, 3 and 4, the median
stopping rule), each a real Tune run of its own through `run_select`'s `scheduler`. Each makes
two picks from the trials that reached B: the lowest loss observed at B, and AtS on their curves
up to B, predicting at T (`survivor_picks`); both are scored with RelAcc over the whole pool,
and the sweep's cost is the same accounting as lensray's (lensray.core.cost).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lensray.bench.curves import budget_note, budgets, fmt, read_all, round2
from lensray.core.curves import Curves, read_curves
from lensray.predict.methods import predict
from lensray.predict.metrics import pearcorr, relacc

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler

    from lensray.core.types import Selection


@dataclass(frozen=True)
class Baseline:
    """A Tune scheduler swept beside lensray's: ASHA with `reduction_factor`, or (None) the median
    stopping rule. Progress is the report index (`training_iteration`, one report per size), the
    metric the held-out loss the trials report, minimised; either may stop a trial from its
    first report on (grace period: the first size)."""

    key: str
    """Its name in the JSON and the suffix of its sweep's folder."""
    label: str
    """Its name in the table."""
    reduction_factor: int | None

    def scheduler(self, n_sizes: int) -> "TrialScheduler":
        """A fresh scheduler for a sweep of `n_sizes` sizes (ASHA's max_t)."""
        from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule

        common = {"time_attr": "training_iteration", "metric": "loss", "mode": "min", "grace_period": 1}
        if self.reduction_factor is None:
            return MedianStoppingRule(**common)
        return AsyncHyperBandScheduler(max_t=n_sizes, reduction_factor=self.reduction_factor, **common)


BASELINES = (
    Baseline("asha_rf2", "ASHA rf=2", 2),
    Baseline("asha_rf3", "ASHA rf=3", 3),
    Baseline("asha_rf4", "ASHA rf=4", 4),
    Baseline("median_stopping", "MedianStop", None),
)
PICKS = ("relacc_observed", "relacc_ats")
"""A baseline's two RelAccs: of the lowest loss observed at B, and of AtS on the trials that reached B."""


def sweep_name(path: Path, budget: int, baseline: Baseline | None = None) -> str:
    """The experiment folder of the replay sweep of the curves file `path` at `budget` (with
    `baseline`'s scheduler, else lensray's)."""
    return f"{path.stem}-B{budget}" + (f"-{baseline.key}" if baseline else "")


def select_outputs(paths: list[Path], baselines: bool = True) -> list[str]:
    """What `bench_select` writes into its folder: one sweep per data set and distinct budget, and
    one per baseline there (every file is read and checked first)."""
    return [
        sweep_name(path, b, base)
        for path, curves in read_all(paths)
        for b in sorted({b for _, b in budgets(curves) if b})
        for base in (None, *(BASELINES if baselines else ()))
    ]


def replay_config(path: Path, curves: Curves, budget: int, out: Path, **overrides):
    """A replay sweep of `curves` (read from `path`) probing every size column up to `budget`
    (the sizes AtS is charged for), predicting at the largest column."""
    from lensray.config.load import config_from_dict

    sizes = [int(s) for s in curves.sizes if s <= budget]
    raw = {
        "name": sweep_name(path, budget),
        "backend": "replay",
        "replay": {"curves": str(path.resolve()), "sleep_s_per_pflop": overrides.pop("sleep", 0.0)},
        "plan": {"sizes": sizes, "budget": budget, "target": int(curves.sizes[-1])},
        "resources": {"cpus_per_worker": overrides.pop("cpus", 0.25)},
        "output": str(out),
    }
    raw.update(overrides)
    return config_from_dict(raw)


def survivor_picks(ranking: list[dict], sizes: list[int], target: int, name: str) -> tuple[str | None, str | None]:
    """A baseline's two picks from a sweep's ranking (selection.json's `ranking`): among the
    candidates that reached B (observed at every size of `sizes`), the one of lowest loss at B,
    and AtS's on their curves, predicting at `target`; (None, None) when none reached B."""
    survivors = [e for e in ranking if e["sizes"] == sizes]
    if not survivors:
        return None, None
    observed = min(survivors, key=lambda e: e["losses"][-1])["candidate"]
    curves = Curves(name, [e["candidate"] for e in survivors], np.array(sizes, dtype=float),
                    np.array([e["losses"] for e in survivors], dtype=float))
    return observed, curves.candidates[predict("AtS", curves, target).selected]


def baseline_cell(sel: "Selection", truth: np.ndarray, index: dict[str, int]) -> dict:
    """A baseline sweep's figures: both picks' RelAcc against `truth` (the loss at T of the whole
    pool, rows by `index`), its cost, and how many of its candidates reached B."""
    doc = sel.doc
    picks = survivor_picks(doc["ranking"], doc["sizes"], doc["target"], "survivors")
    return {
        **{key: round2(relacc(index[c], truth)) if c else None for key, c in zip(PICKS, picks)},
        "fraction_of_all_probes": round(doc["cost"]["fraction_of_all_probes"], 4),
        "reached_budget": sum(e["sizes"] == doc["sizes"] for e in doc["ranking"]),
    }


def bench_select(paths: list[Path], out_dir: Path, sleep_s_per_pflop: float = 1e-3, baselines: bool = True) -> dict:
    """A real replay sweep through Tune per data set and budget, and one per baseline there
    (`baselines`); selection quality and cost."""
    from lensray.core.errors import ConfigError
    from lensray.pipeline import run_select

    result: dict = {}
    for path, curves in read_all(paths):
        truth = curves.losses[:, -1]
        index = {c: i for i, c in enumerate(curves.candidates)}
        result[curves.name] = {}
        swept: dict[int, dict] = {}  # budget -> cell: gammas with the same largest size share a sweep
        for label, budget in budgets(curves):
            cell = dict.fromkeys(("relacc", "pearcorr", "fraction_of_all_probes", "fraction_of_full"))
            if budget is None:
                print(f"  {budget_note(curves, label)}: skipped", flush=True)
            elif budget in swept:
                cell = swept[budget]
                print(f"  {curves.name} {label}: B={budget}, as at the gamma before", flush=True)
            else:
                try:
                    cfg = replay_config(path, curves, budget, out_dir, sleep=sleep_s_per_pflop)
                except ConfigError as err:  # e.g. fewer sizes up to B than a fit needs to decide
                    print(f"  {curves.name} {label}: skipped, no sweep can run at B={budget}: {err}", flush=True)
                else:
                    sel = run_select(cfg, quiet=True)
                    ranked = [e for e in sel.doc["ranking"] if e["predicted_loss"] is not None]
                    scores = np.array([e["predicted_loss"] for e in ranked])
                    cost = sel.doc["cost"]
                    cell = {
                        "relacc": round2(relacc(index[sel.selected], truth)) if sel.selected else None,
                        "pearcorr": round2(pearcorr(scores, truth[[index[e["candidate"]] for e in ranked]])),
                        "fraction_of_all_probes": round(cost["fraction_of_all_probes"], 4),
                        "fraction_of_full": round(cost["fraction_of_full"], 6),
                    }
                    print(f"  {curves.name} {label}: {cell}", flush=True)
                    if baselines:
                        cell["baselines"] = {}
                        for base in BASELINES:
                            run = replay_config(path, curves, budget, out_dir, sleep=sleep_s_per_pflop,
                                                name=sweep_name(path, budget, base))
                            found = run_select(run, quiet=True, scheduler=base.scheduler(len(run.plan.resolved_sizes())))
                            cell["baselines"][base.key] = baseline_cell(found, truth, index)
                            print(f"  {curves.name} {label} {base.label}: {cell['baselines'][base.key]}", flush=True)
                swept[budget] = cell
            result[curves.name][label] = cell
    return result


def ats_at(curves: Curves, budget: int) -> tuple[float | None, float | None]:
    """AtS's (RelAcc, PearCorr) on `curves` at `budget`, predicting at the largest size, rounded
    as the table shows them."""
    truth, target = curves.losses[:, -1], int(curves.sizes[-1])
    ats = predict("AtS", curves.upto(budget), target)
    return round2(relacc(ats.selected, truth)), round2(pearcorr(ats.scores, truth))


def summary(cells: list[tuple[dict, float | None]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per scheduler (lensray, AtS, each baseline by label), over the `cells` a sweep filled, each
    given with AtS's RelAcc there (None: not known): {"relacc" (lensray, AtS) or each of PICKS:
    (mean, worst), "cost": (lowest, highest) fraction_of_all_probes}; AtS's cost is 1 by
    definition. A figure no cell has is left out."""
    seen: dict[str, dict[str, list[float]]] = {}

    def add(who: str, **figures: float | None) -> None:
        for key, v in figures.items():
            if v is not None:
                seen.setdefault(who, {}).setdefault(key, []).append(v)

    for cell, ats_relacc in cells:
        if cell.get("relacc") is None:
            continue
        add("lensray", relacc=cell["relacc"], cost=cell["fraction_of_all_probes"])
        if ats_relacc is not None:
            add("AtS", relacc=ats_relacc, cost=1.0)
        for base in BASELINES:
            got = (cell.get("baselines") or {}).get(base.key)
            if got:
                add(base.label, **{k: got[k] for k in PICKS}, cost=got["fraction_of_all_probes"])
    return {
        who: {k: (min(v), max(v)) if k == "cost" else (round2(statistics.mean(v)), min(v)) for k, v in figures.items()}
        for who, figures in seen.items()
    }


def format_summary(stats: dict[str, dict[str, tuple[float, float]]], n_cells: int) -> list[str]:
    """`summary`'s figures, one line per scheduler."""
    names = {"relacc": "RelAcc", "relacc_observed": "RelAcc lowest at B", "relacc_ats": "AtS on survivors"}
    lines = [f"\nsummary over {n_cells} cells: RelAcc mean / worst; cost (fraction_of_all_probes) lowest-highest"]
    for who, figures in stats.items():
        rel = ", ".join(f"{names[k]} {fmt(m)} / {fmt(w)}" for k, (m, w) in figures.items() if k != "cost")
        lo, hi = figures["cost"]
        lines.append(f"  {who:<11}{rel:<62}  cost {lo:.3f}" + (f"-{hi:.3f}" if hi != lo else ""))
    return lines


def format_select(result: dict, paths: list[Path]) -> str:
    """`bench_select`'s result as one table per data set, beside AtS at the same budgets and the
    targets (RelAcc >= AtS's, fraction_of_all_probes <= 0.5), and beside each baseline's two
    RelAccs and cost; then `summary`'s lines over every cell."""
    lines = []
    scored: list[tuple[dict, float | None]] = []
    shown = [b for b in BASELINES if any("baselines" in c for cells in result.values() for c in cells.values())]
    for path in paths:
        curves = read_curves(path)
        lines.append(f"\n{curves.name}: replay sweeps against AtS at the same budget"
                     + ("; each baseline: RelAcc of the lowest loss at B / of AtS on the trials that reached B, cost"
                        if shown else ""))
        lines.append(f"{'gamma':<7}{'B':>9}{'RelAcc (AtS)':>16}{'PearCorr (AtS)':>18}{'cost of AtS':>13}"
                     + "".join(f"{b.label:>21}" for b in shown) + "  targets")
        for label, budget in budgets(curves):
            cell = result[curves.name][label]
            if budget is None or cell["relacc"] is None:
                lines.append(f"{label:<7}{'n/a':>9}")
                continue
            ats_relacc, ats_pearcorr = ats_at(curves, budget)
            scored.append((cell, ats_relacc))
            misses = [m for m, bad in (
                (f"RelAcc below AtS by {ats_relacc - cell['relacc']:.2f}", cell["relacc"] < ats_relacc),
                (f"cost over 0.5 by {cell['fraction_of_all_probes'] - 0.5:.3f}", cell["fraction_of_all_probes"] > 0.5),
            ) if bad]
            others = ""
            for base in shown:
                got = (cell.get("baselines") or {}).get(base.key)
                others += (f"{fmt(got['relacc_observed']):>8} /{fmt(got['relacc_ats']):>5} {got['fraction_of_all_probes']:.3f}"
                           if got else f"{'n/a':>21}")
            lines.append(
                f"{label:<7}{budget:>9}{fmt(cell['relacc']):>9} ({fmt(ats_relacc):>5})"
                f"{fmt(cell['pearcorr']):>11} ({fmt(ats_pearcorr):>5}){cell['fraction_of_all_probes']:>13.3f}"
                + others + "  " + ("; ".join(misses) or "met")
            )
    return "\n".join(lines + format_summary(summary(scored), len(scored)))
