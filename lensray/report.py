"""The Selection and its files: selection.json, observations.parquet, report.md, curves.png.

`selection.json` (for programs)::

    {"selected": name | null,            best finished candidate by predicted quantity at T
     "ranked_by": "loss" | "error",      the quantity ranked (RANKED_BY): held-out loss, or the
                                         task error 1 - accuracy (probe.metric: task)
     "target": T, "budget": B, "sizes": [D_1, ...],
     "ranking": [{"candidate", "model", "design", "predicted_loss", "interval": [lo, hi],
                  "status": "finished" | "stopped early" | "failed", "reason",
                  "reliable", "sizes": [...], "losses": [...], "flops"}, ...],
                 finished, then stopped, then failed (design: the sample design's name, null
                 without one; predicted_loss and losses are of the ranked quantity, and
                 predicted_loss is the one observed at T when a probe reached it, as in
                 `lensray verify`; reliable: whether the fit behind predicted_loss can be
                 trusted, `reason` says why not; flops: what this candidate's probes spent)
     "cost": {"flops_spent", "flops_all_probes", "flops_full",
              "fraction_of_all_probes", "fraction_of_full"},
     "decisions": n, "wall_s": s, "scheduler_s": s}   scheduler_s: time in its decisions

`observations.parquet`: one row per Observation (candidate, size, loss, tokens, flops, wall_s,
extra as JSON). `report.md`: the same for people. `curves.png`: points, fitted extrapolations
to T and where candidates were stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensray.config import SelectConfig
from lensray.cost import selection_cost
from lensray.fit import CurveFit, fit_local
from lensray.observation import Observation
from lensray.scheduler import FAILED, FINISHED, STOPPED, SweepState

_ORDER = {FINISHED: 0, STOPPED: 1, FAILED: 2}
RANKED_BY = {
    "loss": "held-out loss (response-token cross-entropy)",
    "error": "task error: 1 - accuracy of greedy responses to the held-out prompts, parsed under each "
             "candidate's sample design (smoothed: (wrong + 1/2) / (judgements + 1))",
}
"""What each value of selection.json's `ranked_by` means."""


@dataclass(frozen=True)
class Selection:
    """The outcome of a sweep."""

    doc: dict[str, Any]
    """The content of selection.json."""
    observations: dict[str, list[Observation]]
    fits: dict[str, CurveFit]

    @property
    def selected(self) -> str | None:
        return self.doc["selected"]


def final_fits(cfg: SelectConfig, observations: dict[str, list[Observation]]) -> dict[str, CurveFit]:
    """Fit every candidate with the default predictor; candidates observed at the same sizes are
    fitted together (their noise is pooled)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for c, obs in observations.items():
        groups.setdefault(tuple(o.size for o in obs), []).append(c)
    fits = {}
    for sizes, names in groups.items():
        if not sizes:
            continue
        losses = [[o.loss for o in observations[c]] for c in names]
        for f in fit_local(list(sizes), losses, cfg.plan.target, names, cfg.fit):
            fits[f.candidate] = f
    return fits


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def build_selection(
    cfg: SelectConfig,
    rows: dict[str, str],
    state: SweepState,
    errors: dict[str, str],
    wall_s: float,
    scheduler_s: float = 0.0,
) -> Selection:
    """Rank every candidate from the sweep's state and account for the compute."""
    sizes = cfg.plan.resolved_sizes()
    obs = {c: state.observations.get(c, []) for c in rows}
    fits = final_fits(cfg, obs)
    designs = {c.name: c.design or cfg.data.design for c in cfg.candidates()} if cfg.backend == "hf" else {}
    entries = []
    for c, model in rows.items():
        status, reason = state.status.get(c, ("", ""))
        if c in errors:
            status, reason = FAILED, errors[c]
        elif status != STOPPED and [o.size for o in obs[c]] == sizes:
            status, reason = FINISHED, ""
        elif status != STOPPED:
            status, reason = FAILED, reason or f"probe ended after {len(obs[c])} of {len(sizes)} sizes"
        f = fits.get(c)
        measured = [o.loss for o in obs[c] if o.size == cfg.plan.target]
        if measured:  # probed at T itself (e.g. `lensray verify`): nothing left to predict
            pred, interval, reliable, why = measured[0], (measured[0], measured[0]), True, ""
        elif f is not None:
            pred, interval, reliable, why = f.predicted_loss, f.interval, f.ok, "" if f.ok else f"fit: {f.reason}"
        else:
            pred, interval, reliable, why = float("nan"), (float("nan"), float("nan")), False, ""
        entries.append({
            "candidate": c,
            "model": model,
            "design": designs.get(c) or None,
            "predicted_loss": _num(pred),
            "interval": [_num(interval[0]), _num(interval[1])],
            "status": status,
            "reason": reason or why,
            "reliable": reliable,
            "sizes": [o.size for o in obs[c]],
            "losses": [o.loss for o in obs[c]],
            "flops": sum(o.flops for o in obs[c]),
        })
    entries.sort(key=lambda e: (_ORDER[e["status"]], e["predicted_loss"] is None, e["predicted_loss"] or 0.0))
    selected = next((e["candidate"] for e in entries if e["status"] == FINISHED and e["predicted_loss"] is not None), None)
    cost = selection_cost(obs, sizes, cfg.plan.target)
    cost["fraction_of_all_probes"] = cost["flops_spent"] / cost["flops_all_probes"] if cost["flops_all_probes"] else None
    cost["fraction_of_full"] = cost["flops_spent"] / cost["flops_full"] if cost["flops_full"] else None
    doc = {
        "selected": selected,
        "ranked_by": cfg.ranked_by(),
        "target": cfg.plan.target,
        "budget": cfg.plan.budget,
        "sizes": sizes,
        "ranking": entries,
        "cost": cost,
        "decisions": len(state.decisions),
        "wall_s": wall_s,
        "scheduler_s": scheduler_s,
    }
    return Selection(doc, obs, fits)


def write_report(selection: Selection, out_dir: Path) -> list[Path]:
    """Write the four report files into out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / n for n in ("selection.json", "observations.parquet", "report.md", "curves.png")]
    paths[0].write_text(json.dumps(selection.doc, indent=1) + "\n")
    _write_observations(selection, paths[1])
    paths[2].write_text(_markdown(selection))
    _plot(selection, paths[3])
    return paths


def _write_observations(selection: Selection, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [o for obs in selection.observations.values() for o in obs]
    table = pa.table({
        "candidate": [o.candidate for o in rows],
        "size": pa.array([o.size for o in rows], pa.int64()),
        "loss": pa.array([o.loss for o in rows], pa.float64()),
        "tokens": pa.array([o.tokens for o in rows], pa.int64()),
        "flops": pa.array([o.flops for o in rows], pa.float64()),
        "wall_s": pa.array([o.wall_s for o in rows], pa.float64()),
        "extra": [json.dumps(o.extra) for o in rows],
    })
    pq.write_table(table, path)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _markdown(selection: Selection) -> str:
    d = selection.doc
    c = d["cost"]
    lines = [
        "# lensray selection",
        "",
        f"**Selected: {d['selected'] or 'none (no candidate finished)'}** - lowest "
        f"{'measured' if d['sizes'][-1:] == [d['target']] else 'predicted'} {d['ranked_by']} "
        f"at T = {d['target']:,} examples, from probes on {', '.join(f'{s:,}' for s in d['sizes'])} examples.",
        "",
        f"Ranked by {RANKED_BY[d['ranked_by']]}.",
        "",
        "| rank | candidate | predicted at T | interval | status | share of compute | reason |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, e in enumerate(d["ranking"], 1):
        lo, hi = e["interval"]
        share = f"{e['flops'] / c['flops_spent']:.1%}" if c["flops_spent"] else "-"
        lines.append(
            f"| {i} | {e['candidate']} | {_fmt(e['predicted_loss'])} | [{_fmt(lo)}, {_fmt(hi)}] | "
            f"{e['status']} | {share} | {e['reason'].replace('|', '/')} |"
        )
    lines += _unreliable_note(d)
    frac = c["fraction_of_all_probes"]
    full = c["fraction_of_full"]
    lines += [
        "",
        "## Compute",
        "",
        f"- spent: {c['flops_spent']:.3g} FLOPs",
        f"- every candidate probed to the budget: {c['flops_all_probes']:.3g} FLOPs"
        + (f" (spent {frac:.1%} of it)" if frac is not None else ""),
        f"- every candidate fine-tuned at T: {c['flops_full']:.3g} FLOPs"
        + (f" (spent {full:.2%} of it)" if full is not None else ""),
        f"- {d['decisions']} scheduler decisions, {d['wall_s']:.1f} s wall",
        "",
        "Intervals come from the local power-law fit at the largest probed sizes (see lensray/fit.py); "
        "a candidate stopped early could not, with that confidence, reach the top k.",
        "",
        "![curves](curves.png)",
        "",
    ]
    return "\n".join(lines)


def unreliable_finishers(doc: dict[str, Any]) -> list[str]:
    """Candidates probed to the budget and ranked on a fit that cannot be trusted (e.g. still flat
    there): their place in the ranking is a guess, and any of them may beat the selection at T."""
    return [
        e["candidate"] for e in doc["ranking"]
        if e["status"] == FINISHED and not e["reliable"] and e["predicted_loss"] is not None
    ]


def _unreliable_note(doc: dict[str, Any]) -> list[str]:
    names = unreliable_finishers(doc)
    if not names:
        return []
    own = " The selection's own fit is one of them." if doc["selected"] in names else ""
    return [
        "",
        f"**Not ranked reliably: {len(names)} of the candidates probed to the budget** "
        f"({', '.join(names)}): their fits cannot be trusted (see their reasons), so their "
        f"predictions at T are guesses and any of them may beat the selection.{own} "
        "A larger `plan.budget` lets their curves show where they are heading.",
    ]


def _plot(selection: Selection, path: Path, most: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranking = selection.doc["ranking"]
    shown = [e for e in ranking if e["status"] == FINISHED][: most // 2 + 1]
    shown += [e for e in ranking if e["status"] == STOPPED][: most - len(shown)]
    target = selection.doc["target"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, e in enumerate(shown):
        color = plt.cm.tab20(i % 20)
        ax.plot(e["sizes"], e["losses"], "o", color=color, ms=4)
        f = selection.fits.get(e["candidate"])
        if f is not None and math.isfinite(f.predicted_loss):
            x0 = e["sizes"][-1]
            xs = np.geomspace(x0, target, 30)
            slope = f.params["slope"]
            ys = e["losses"][-1] * (xs / x0) ** slope
            if e["status"] == STOPPED:
                style, note = ":", " (stopped)"
            elif not e["reliable"]:
                style, note = "--", " (fit not reliable)"
            else:
                style, note = "-", ""
            ax.plot(xs, ys, style, color=color, lw=1.2, label=f"{e['candidate']}{note}")
            ax.errorbar([target], [f.predicted_loss], yerr=[[f.predicted_loss - f.interval[0]], [f.interval[1] - f.predicted_loss]],
                        fmt="s", color=color, ms=4, capsize=2)
        if e["status"] == STOPPED:
            ax.plot([e["sizes"][-1]], [e["losses"][-1]], "x", color="black", ms=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning examples D")
    ax.set_ylabel(f"held-out {selection.doc['ranked_by']}")
    ax.set_title(f"Probed curves and extrapolation to T={target:,} (x = stopped early)")
    if ax.get_legend_handles_labels()[0]:  # no fitted candidate: nothing to label
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
