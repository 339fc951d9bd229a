"""The ranking: every candidate of a sweep ranked by its predicted quantity at T (from the
configured predictor, `fit.method`), with its interval, status, reliability and compute, and the
Selection it makes. Pure numpy; the file formats are described in lensray.report.files.
"""

from __future__ import annotations

import math
from typing import Any

from lensray.config.schema import SelectConfig
from lensray.core.cost import selection_cost
from lensray.core.types import CurveFit, Observation, Pool, Selection, Status
from lensray.predict.methods import get_predictor
from lensray.predict.prior import with_prior
from lensray.sweep.record import SweepState

FAILED, FINISHED, STOPPED = Status.FAILED, Status.FINISHED, Status.STOPPED
_ORDER = {FINISHED: 0, STOPPED: 1, FAILED: 2}


def final_fits(cfg: SelectConfig, observations: dict[str, list[Observation]],
               priors: dict[str, dict[str, float]] | None = None) -> dict[str, CurveFit]:
    """Fit every candidate with the configured predictor (`fit.method`); candidates observed at
    the same sizes are fitted together (their estimates are pooled). A flat curve's fit is
    combined with the candidate's prior (`Pool.priors`), as the stopping rule's is."""
    priors = priors or {}
    predictor = get_predictor(cfg.fit.method)
    groups: dict[tuple[int, ...], list[str]] = {}
    for c, obs in observations.items():
        groups.setdefault(tuple(o.size for o in obs), []).append(c)
    fits = {}
    for sizes, names in groups.items():
        if len(sizes) < predictor.min_points:
            continue
        losses = [[o.loss for o in observations[c]] for c in names]
        for f in predictor.fit_pool(list(sizes), losses, cfg.plan.target, names, cfg.fit):
            fits[f.candidate] = with_prior(f, priors.get(f.candidate), cfg.fit.level)
    return fits


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def build_selection(
    cfg: SelectConfig,
    pool: Pool,
    state: SweepState,
    errors: dict[str, str],
    wall_s: float,
    scheduler_s: float = 0.0,
) -> Selection:
    """Rank every candidate from the sweep's state and account for the compute."""
    sizes = cfg.plan.resolved_sizes()
    obs = {c: state.observations.get(c, []) for c in pool.names}
    fits = final_fits(cfg, obs, pool.priors)
    default_design = cfg.data.design if cfg.data is not None else ""
    entries = []
    for candidate in pool.candidates:
        c = candidate.name
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
            "model": candidate.model.name,
            "design": ((candidate.design or default_design) if cfg.backend == "hf" else "") or None,
            "predicted_loss": _num(pred),
            "interval": [_num(interval[0]), _num(interval[1])],
            "status": status,
            "reason": reason or why,
            "reliable": reliable,
            "sizes": [o.size for o in obs[c]],
            "losses": [o.loss for o in obs[c]],
            "flops": sum(o.flops for o in obs[c]),
            "prior": pool.priors.get(c),
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
        "dropped": [{"candidate": c, "reason": r} for c, r in pool.dropped.items()],
        "cost": cost,
        "decisions": len(state.decisions),
        "wall_s": wall_s,
        "scheduler_s": scheduler_s,
    }
    return Selection(doc, obs, fits)


def unreliable_finishers(doc: dict[str, Any]) -> list[str]:
    """Candidates probed to the budget and ranked on a fit that cannot be trusted (e.g. still flat
    there): their place in the ranking is a guess, and any of them may beat the selection at T."""
    return [
        e["candidate"] for e in doc["ranking"]
        if e["status"] == FINISHED and not e["reliable"] and e["predicted_loss"] is not None
    ]
