"""The report files of a Selection: selection.json, observations.parquet, report.md, curves.png.

`selection.json` (for programs)::

    {"selected": name | null,            best finished candidate by predicted quantity at T
     "ranked_by": "loss" | "error",      the quantity ranked (RANKED_BY): held-out loss, or the
                                         task error 1 - accuracy (probe.metric: task)
     "target": T, "budget": B, "sizes": [D_1, ...],
     "ranking": [{"candidate", "model", "design", "predicted_loss", "interval": [lo, hi],
                  "status": "finished" | "stopped early" | "failed", "reason",
                  "reliable", "sizes": [...], "losses": [...], "flops", "prior"}, ...],
                 finished, then stopped, then failed (design: the sample design's name, null
                 without one; predicted_loss and losses are of the ranked quantity, and
                 predicted_loss is the one observed at T when a probe reached it, as in
                 `lensray verify`; reliable: whether the fit behind predicted_loss can be
                 trusted, `reason` says why not; flops: what this candidate's probes spent;
                 prior: what a pre-sweep stage attached, or null)
     "dropped": [{"candidate", "reason"}, ...],   removed by a pre-sweep stage, not probed
     "cost": {"flops_spent", "flops_all_probes", "flops_full",
              "fraction_of_all_probes", "fraction_of_full"},
     "decisions": n, "wall_s": s, "scheduler_s": s,   scheduler_s: time in its decisions
     ...}                                 post-sweep stages may add keys of their own

`observations.parquet`: one row per Observation (candidate, size, loss, tokens, flops, wall_s,
extra as JSON, without the per-query records). `queries.parquet`, when probes kept per-query
records (probe.metric: task): one row per candidate and held-out query, from the candidate's
last size (columns candidate, size and lensray.probe.hf.worker.QUERY_FIELDS). `report.md`: the
same for people, with a Routing section when the `route` stage ran (an Aggregation section when `aggregate` did). `curves.png`: points,
fitted extrapolations to T and where candidates were stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lensray.core.types import Selection
from lensray.report.plot import plot_curves
from lensray.report.rank import unreliable_finishers

RANKED_BY = {
    "loss": "held-out loss (response-token cross-entropy)",
    "error": "task error: 1 - accuracy of greedy responses to the held-out prompts, parsed under each "
             "candidate's sample design (smoothed: (wrong + 1/2) / (judgements + 1))",
}
"""What each value of selection.json's `ranked_by` means."""


def write_report(selection: Selection, out_dir: Path) -> list[Path]:
    """Write the report files into out_dir (queries.parquet only when probes kept per-query
    records); returns their paths."""
    from lensray.stages.aggregate.stage import aggregate_section
    from lensray.stages.route.stage import route_section

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / n for n in ("selection.json", "observations.parquet", "report.md", "curves.png")]
    paths[0].write_text(json.dumps(selection.doc, indent=1) + "\n")
    _write_observations(selection, paths[1])
    paths[2].write_text(_markdown(selection) + _phylo_section(out_dir) + route_section(selection.doc)
                        + aggregate_section(selection.doc))
    plot_curves(selection, paths[3])
    if _write_queries(selection, out_dir / "queries.parquet"):
        paths.append(out_dir / "queries.parquet")
    return paths


def _write_observations(selection: Selection, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lensray.probe.hf.worker import QUERIES_KEY

    rows = [o for obs in selection.observations.values() for o in obs]
    table = pa.table({
        "candidate": [o.candidate for o in rows],
        "size": pa.array([o.size for o in rows], pa.int64()),
        "loss": pa.array([o.loss for o in rows], pa.float64()),
        "tokens": pa.array([o.tokens for o in rows], pa.int64()),
        "flops": pa.array([o.flops for o in rows], pa.float64()),
        "wall_s": pa.array([o.wall_s for o in rows], pa.float64()),
        "extra": [json.dumps({k: v for k, v in o.extra.items() if k != QUERIES_KEY}) for o in rows],
    })
    pq.write_table(table, path)


def _write_queries(selection: Selection, path: Path) -> bool:
    """queries.parquet (see the module) from each candidate's last Observation with per-query
    records; False, and no file, when there are none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lensray.probe.hf.worker import QUERY_FIELDS
    from lensray.stages.route.queries import query_results

    rows = [{"candidate": r.candidate, "size": r.size, **{f: q[f] for f in QUERY_FIELDS}}
            for r in query_results(selection.observations).values() for q in r.records]
    if not rows:
        return False
    pq.write_table(pa.Table.from_pylist(rows), path)
    return True


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
    if d.get("dropped"):
        lines += ["", f"**Dropped before the sweep: {len(d['dropped'])}** (not probed)", ""]
        lines += [f"- {e['candidate']}: {e['reason']}" for e in d["dropped"]]
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
        "Intervals come from the predictor's fit at the largest probed sizes (docs/predictor.md); "
        "a candidate stopped early could not, with that confidence, reach the top k.",
        "",
        "![curves](curves.png)",
        "",
    ]
    return "\n".join(lines)


def _phylo_section(out_dir: Path) -> str:
    """The family tree the `phylo` stage drew into the folder, if it ran."""
    if not (out_dir / "phylo_tree.png").exists():
        return ""
    return "\n".join([
        "## Family tree (PhyloLM)", "",
        "Neighbour joining on the genetic distances of the models' fingerprints (phylo_tree.nwk, "
        "phylo_distances.parquet; cost and near-duplicate groups in phylo.json).", "",
        "![family tree](phylo_tree.png)", "",
    ])


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
