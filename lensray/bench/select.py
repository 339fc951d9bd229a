"""`lensray bench select`: a real replay sweep through Tune per data set and budget, probing every
size column up to B: the selection's RelAcc and PearCorr, and its cost against probing every
candidate at every one of those sizes (AtS's cost) and against fine-tuning every candidate at T.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lensray.bench.curves import budget_note, budgets, fmt, read_all, round2
from lensray.core.curves import Curves, read_curves
from lensray.predict.methods import predict
from lensray.predict.metrics import pearcorr, relacc


def sweep_name(path: Path, budget: int) -> str:
    """The experiment folder of the replay sweep of the curves file `path` at `budget`."""
    return f"{path.stem}-B{budget}"


def select_outputs(paths: list[Path]) -> list[str]:
    """What `bench_select` writes into its folder: one sweep per data set and distinct budget
    (every file is read and checked first)."""
    return [sweep_name(path, b) for path, curves in read_all(paths) for b in sorted({b for _, b in budgets(curves) if b})]


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


def bench_select(paths: list[Path], out_dir: Path, sleep_s_per_pflop: float = 1e-3) -> dict:
    """A real replay sweep through Tune per data set and budget; selection quality and cost."""
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
                swept[budget] = cell
            result[curves.name][label] = cell
    return result


def format_select(result: dict, paths: list[Path]) -> str:
    """`bench_select`'s result as one table per data set, beside AtS at the same budgets and the
    targets (RelAcc >= AtS's, fraction_of_all_probes <= 0.5)."""
    lines = []
    for path in paths:
        curves = read_curves(path)
        truth, target = curves.losses[:, -1], int(curves.sizes[-1])
        lines.append(f"\n{curves.name}: replay sweeps against AtS at the same budget")
        lines.append(f"{'gamma':<7}{'B':>9}{'RelAcc (AtS)':>16}{'PearCorr (AtS)':>18}{'cost of AtS':>13}  targets")
        for label, budget in budgets(curves):
            cell = result[curves.name][label]
            if budget is None or cell["relacc"] is None:
                lines.append(f"{label:<7}{'n/a':>9}")
                continue
            ats = predict("AtS", curves.upto(budget), target)
            ats_relacc, ats_pearcorr = round2(relacc(ats.selected, truth)), round2(pearcorr(ats.scores, truth))
            misses = [m for m, bad in (
                (f"RelAcc below AtS by {ats_relacc - cell['relacc']:.2f}", cell["relacc"] < ats_relacc),
                (f"cost over 0.5 by {cell['fraction_of_all_probes'] - 0.5:.3f}", cell["fraction_of_all_probes"] > 0.5),
            ) if bad]
            lines.append(
                f"{label:<7}{budget:>9}{fmt(cell['relacc']):>9} ({fmt(ats_relacc):>5})"
                f"{fmt(cell['pearcorr']):>11} ({fmt(ats_pearcorr):>5}){cell['fraction_of_all_probes']:>13.3f}  "
                + ("; ".join(misses) or "met")
            )
    return "\n".join(lines)
