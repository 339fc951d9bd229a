"""The `aggregate` post-sweep stage (`stages: {post: [aggregate]}`): propose-and-aggregate over the
selection's finalists (Aggregation Fine-Tuning's inference, Li et al., arXiv 2501.11877).

The finalists are the `aggregate.finalists` best candidates of the ranking with per-query results
(`probe.metric: task`; lensray.stages.route.queries), each run with the weights its probe
fine-tuned (kept when the stage is configured; pretrained otherwise, as `route` does). On every
held-out query each finalist samples its share of the K proposals (ceil(K / m) each, taken in
turn); the selected model, the first finalist, aggregates them for `aggregate.rounds` rounds
(lensray.stages.aggregate.propose). Its answers are judged against the references as the
probes judged theirs, so the single greedy answer (the finalist's own per-query results) and
the aggregated one are scored alike. Proposals are cached under `aggregate_proposals/` in the
experiment folder. Files::

    aggregate.json      accuracy with and without aggregation, each finalist's own accuracy and
                        its drafts' accuracy, the cost a query of each (generations, FLOPs,
                        seconds), and per query its drafts, the aggregated answer and whether
                        it is right

selection.json gains "aggregate" (aggregate.json's content but the per-query records); report.md an
Aggregation section.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lensray.core.errors import ConfigError
from lensray.core.types import Selection
from lensray.stages.base import register_stage

if TYPE_CHECKING:
    from lensray.config.schema import SelectConfig

FILES = ("aggregate.json",)
CACHE = "aggregate_proposals"
"""The proposal cache's folder in the experiment folder."""


def check_aggregate(cfg: SelectConfig) -> None:
    """What the stage needs of a config, checked before Ray starts: probes that keep per-query
    results, and two finalists or more."""
    if cfg.backend != "hf" or cfg.probe.metric != "task":
        now = f"backend is {cfg.backend!r}" if cfg.backend != "hf" else f"probe.metric is {cfg.probe.metric!r}"
        raise ConfigError(f"the aggregate stage judges each held-out query's answer, but {now}: set backend: hf "
                          "and probe.metric: task")
    if cfg.aggregate.finalists < 2:
        raise ConfigError(f"aggregate.finalists={cfg.aggregate.finalists}: aggregating needs at least 2 finalists, e.g. 3")


def _references(model, ids: list[int]) -> list[str]:
    """The held-out references of the query ids, from the finalist's prepared data."""
    from lensray.data.dataset import prepare_data

    ev = prepare_data(model.spec.data, model.tokenizer).eval
    by_row = dict(zip(ev["row"], ev["reference"]))
    return [by_row[i] for i in ids]


class AggregateStage:
    """Propose-and-aggregate over the finalists (see the module)."""

    name = "aggregate"

    def run(self, cfg: SelectConfig, selection: Selection, folder: Path) -> tuple[Selection, list[Path]]:
        from lensray.data.dataset import judge_outputs, prompt_ids
        from lensray.stages.aggregate.propose import Cost, ProposalCache, aggregate, draft_accuracy, proposals
        from lensray.stages.aggregate.samples import pick_drafts
        from lensray.stages.route.queries import pick_finalists, query_results, route_data
        from lensray.stages.route.serve import FinalistModel
        from lensray.stages.route.stage import finalist_of

        ac = cfg.aggregate
        results = query_results(selection.observations)
        names = pick_finalists(selection.doc, results, ac.finalists)
        data = route_data(results, names)
        finalists = [finalist_of(cfg, n, data, j, results[n].weights) for j, n in enumerate(names)]
        models = {f.name: FinalistModel(f, cfg.probe) for f in finalists}
        ids = [r["id"] for r in results[names[0]].records]
        references = _references(models[names[0]], ids)
        each = math.ceil(ac.k / len(names))
        share = replace(ac, k=each)
        cache, propose_cost = ProposalCache(folder / CACHE), Cost()
        drawn = {}
        for f in finalists:
            m = models[f.name]
            prompts = [prompt_ids(m.spec.data, m.tokenizer, q) for q in data.queries]
            drawn[f.name] = proposals(m.model, m.tokenizer, f.model, prompts, share, cache, propose_cost)
        offpolicy = replace(ac, proposers="finalists")
        drafts = [pick_drafts(drawn, None, i, offpolicy) for i in range(data.n)]
        selected = models[names[0]]
        aggregate_cost = Cost()
        answers = aggregate(selected.model, selected.tokenizer, selected.spec.data, data.queries, drafts, ac, aggregate_cost)
        design, schema = selected.spec.data.sample_design, selected.spec.data.schema
        right = [r for r, _ in judge_outputs(answers, references, design, schema)]
        n = data.n
        result: dict[str, Any] = {
            "selected": names[0], "finalists": names, "queries": n, "k": ac.k, "rounds": ac.rounds,
            "proposals_each": each,
            "accuracy": {"aggregated": sum(right) / n, "single": finalists[0].accuracy,
                         "finalists": {f.name: f.accuracy for f in finalists},
                         "drafts": {name: sum(draft_accuracy(drawn[name], references, models[name].spec.data)) / n
                                    for name in names}},
            "cost_per_query": {
                "single": {"generations": 1, "flops": finalists[0].flops, "seconds": finalists[0].latency_s},
                "aggregated": {"generations": (propose_cost.generations + aggregate_cost.generations) / n,
                               "flops": (propose_cost.flops + aggregate_cost.flops) / n,
                               "seconds": (propose_cost.seconds + aggregate_cost.seconds) / n},
            },
            "fine_tuned": {f.name: f.fine_tuned for f in finalists},
            "per_query": [{"id": i, "query": q, "drafts": d, "answer": ans, "correct": int(r)}
                          for i, q, d, ans, r in zip(ids, data.queries, drafts, answers, right)],
        }
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / FILES[0]
        path.write_text(json.dumps(result, indent=1) + "\n")
        summary = {k: v for k, v in result.items() if k != "per_query"}
        return Selection({**selection.doc, "aggregate": summary}, selection.observations, selection.fits), [path]


def aggregate_section(doc: dict[str, Any]) -> str:
    """report.md's Aggregation section from selection.json's "aggregate" (empty when the stage did not run)."""
    a = doc.get("aggregate")
    if not a:
        return ""
    single, agg = a["cost_per_query"]["single"], a["cost_per_query"]["aggregated"]
    ratio = agg["flops"] / single["flops"] if single["flops"] else float("nan")
    lines = [
        "## Aggregation (propose, then aggregate)", "",
        (f"On each of the {a['queries']} held-out queries the finalists {', '.join(a['finalists'])} proposed "
         f"{a['k']} drafts ({a['proposals_each']} each, in turn) and {a['selected']} aggregated them in "
         f"{a['rounds']} round{'s' * (a['rounds'] != 1)}."), "",
        "| answer | accuracy | generations per query | FLOPs per query | seconds per query |",
        "| --- | --- | --- | --- | --- |",
        f"| {a['selected']} alone (greedy) | {a['accuracy']['single']:.3f} | 1 | {single['flops']:.3g} | {single['seconds']:.3g} |",
        f"| aggregated | {a['accuracy']['aggregated']:.3f} | {agg['generations']:.1f} | {agg['flops']:.3g} | {agg['seconds']:.3g} |",
        "",
        f"Aggregation costs {ratio:.1f}x the FLOPs of the single answer. Details in aggregate.json.", "",
    ]
    return "\n".join(lines)


register_stage("post", AggregateStage())
