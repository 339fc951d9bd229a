"""The `aggregate` post-sweep stage (`stages: {post: [aggregate]}`): propose-and-aggregate over the
selection's finalists (Aggregation Fine-Tuning's inference, Li et al., arXiv 2501.11877).

The finalists are the `aggregate.finalists` best candidates of the ranking with per-query results
(`probe.metric: task`; lensray.stages.route.queries), each run with the weights its probe
fine-tuned (kept when the stage is configured; pretrained otherwise, as `route` does). On every
held-out query each finalist samples its share of the K proposals (ceil(K / m) each, taken in
turn); the selected model, the first finalist, aggregates them for `aggregate.rounds` rounds
(lensray.stages.aggregate.propose). Its answers are judged against the references as the
probes judged theirs, so the single greedy answer (the finalist's own per-query results) and
the aggregated one are scored alike. Every model runs in a Ray task with one probe worker's
resources (`resources.cpus_per_worker`, `gpus_per_worker`), the finalists' proposals all at
once, so on a cluster they run on the nodes a probe would (the driver loads tokenizers only).
Proposals are cached under `aggregate_proposals/` in the experiment folder (a task on another
node caches on its own disk unless `output` is a path every node mounts).

With `aggregate.train_size` > 0 (the default) the selected model is also tuned to aggregate
(AFT's training, lensray.stages.aggregate.tune): on that many queries of the data's training
pool, each listing K proposals (its own, or the other finalists', by `aggregate.proposers`)
with the reference as the target, fine-tuned by its probe's recipe and resources
(`aggregate_train.jsonl`; weights under `<output>/<name>/weights/<candidate>.aggregator`); the
tuned model then aggregates the same held-out drafts. Files::

    aggregate.json      accuracy with and without aggregation (and with the tuned aggregator),
                        each finalist's own accuracy and its drafts' accuracy, the cost a
                        query of each (generations, FLOPs, seconds), the fine-tune's cost and
                        loss, and per query its drafts, the aggregated answers and whether
                        each is right

selection.json gains "aggregate" (aggregate.json's content but the per-query records); report.md an
Aggregation section.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lensray.core.errors import ConfigError, DataError
from lensray.core.types import Selection
from lensray.stages.aggregate.config import AggregateConfig
from lensray.stages.aggregate.propose import Cost, ProposalCache
from lensray.stages.base import register_stage, require_task_probes

if TYPE_CHECKING:
    from lensray.config.schema import SelectConfig

FILES = ("aggregate.json",)
CACHE = "aggregate_proposals"
"""The proposal cache's folder in the experiment folder."""
TRAIN_FILE = "aggregate_train.jsonl"
"""The aggregation fine-tune's samples, in the experiment folder."""


def check_aggregate(cfg: SelectConfig) -> None:
    """What the stage needs of a config, checked before Ray starts: probes that keep per-query
    results, and two finalists or more."""
    require_task_probes(cfg, "the aggregate stage judges each held-out query's answer")
    if cfg.aggregate.finalists < 2:
        raise ConfigError(f"aggregate.finalists={cfg.aggregate.finalists}: aggregating needs at least 2 finalists, e.g. 3")


def held_out_references(data, tokenizer, ids: list[int]) -> list[str]:
    """The held-out references of the query ids, from the data's prepared held-out rows."""
    from lensray.data.dataset import prepare_data

    ev = prepare_data(data, tokenizer).eval
    by_row = dict(zip(ev["row"], ev["reference"]))
    return [by_row[i] for i in ids]


def _sample_task(finalist, probe, device: str, queries: list[str], cfg: AggregateConfig, cache: str
                 ) -> tuple[list[list[str]], Cost]:
    """A Ray task: the finalist's cfg.k proposals to each query (read from or written to the cache
    folder `cache`), and what sampling them cost."""
    from lensray.data.dataset import prompt_ids
    from lensray.stages.aggregate.propose import proposals
    from lensray.stages.route.serve import FinalistModel

    m = FinalistModel(finalist, probe, device)
    prompts = [prompt_ids(m.spec.data, m.tokenizer, q) for q in queries]
    cost = Cost()
    return proposals(m.model, m.tokenizer, m.spec.model, prompts, cfg, ProposalCache(Path(cache)), cost), cost


def _aggregate_task(finalist, probe, device: str, queries: list[str], drafts: list[list[str]], cfg: AggregateConfig
                    ) -> tuple[list[str], Cost]:
    """A Ray task: the finalist's answer to each query after aggregating its drafts, and the cost."""
    from lensray.stages.aggregate.propose import aggregate
    from lensray.stages.route.serve import FinalistModel

    m = FinalistModel(finalist, probe, device)
    cost = Cost()
    return aggregate(m.model, m.tokenizer, m.spec.data, queries, drafts, cfg, cost), cost


def _on_workers(cfg: SelectConfig, task, calls: list[tuple]) -> list:
    """task(finalist, probe, device, *args) for each (finalist, *args) of `calls`, all at once, each
    a Ray task with one probe worker's resources (resources.cpus_per_worker and gpus_per_worker),
    so a finalist's model runs where a probe of it would, never in the driver."""
    import ray

    from lensray.probe.hf.driver import ensure_ray

    ensure_ray()
    r = cfg.resources
    device = "cuda" if r.gpus_per_worker > 0 else "cpu"
    remote = ray.remote(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, max_retries=r.max_failures)(task)
    return ray.get([remote.remote(call[0], cfg.probe, device, *call[1:]) for call in calls])


def _propose(cfg: SelectConfig, finalists: dict[str, Any], names: list[str], queries: list[str], ac: AggregateConfig,
             folder: Path, cost: Cost) -> dict[str, list[list[str]]]:
    """ac.k proposals to each query from each finalist of `names`, cached under `folder`."""
    done = _on_workers(cfg, _sample_task, [(finalists[n], queries, ac, str(folder / CACHE)) for n in names])
    for _, spent in done:
        cost.add(spent)
    return {n: drawn for n, (drawn, _) in zip(names, done)}


def _answer(cfg: SelectConfig, finalist, queries: list[str], drafts: list[list[str]], references: list[str]
            ) -> tuple[list[str], list[bool], Cost]:
    """The aggregated answers of `finalist`, whether each is right, what they cost."""
    from lensray.data.dataset import DataConfig, judge_outputs

    [(answers, cost)] = _on_workers(cfg, _aggregate_task, [(finalist, queries, drafts, cfg.aggregate)])
    data = DataConfig.from_dict(finalist.data)
    return answers, [r for r, _ in judge_outputs(answers, references, data.sample_design, data.schema)], cost


def _per_query(cost: Cost, n: int) -> dict[str, float]:
    return {"generations": cost.generations / n, "flops": cost.flops / n, "seconds": cost.seconds / n}


def _tokenizer(cfg: SelectConfig, name: str):
    """Candidate `name`'s tokenizer (its pretrained model's: a probe saves the same one with its
    weights), loaded in the driver without the model."""
    from lensray.probe.hf.loading import load_tokenizer
    from lensray.probe.hf.recipe import ProbeSpec

    c = cfg.candidate(name)
    return load_tokenizer(ProbeSpec(name, c.model.path or c.model.name, cfg.candidate_data(c),
                                    trust_remote_code=c.model.trust_remote_code))


class AggregateStage:
    """Propose-and-aggregate over the finalists (see the module)."""

    name = "aggregate"

    def run(self, cfg: SelectConfig, selection: Selection, folder: Path) -> tuple[Selection, list[Path]]:
        from lensray.stages.aggregate.propose import draft_accuracy
        from lensray.stages.aggregate.samples import pick_drafts
        from lensray.stages.route.queries import pick_finalists, query_results, route_data
        from lensray.stages.route.stage import finalist_of

        ac = cfg.aggregate
        results = query_results(selection.observations)
        names = pick_finalists(selection.doc, results, ac.finalists)
        data = route_data(results, names)
        finalists = {n: finalist_of(cfg, n, data, j, results[n].weights) for j, n in enumerate(names)}
        ids = [r["id"] for r in results[names[0]].records]
        selected, n = finalists[names[0]], data.n
        tokenizer = _tokenizer(cfg, names[0])
        references = held_out_references(cfg.candidate_data(cfg.candidate(names[0])), tokenizer, ids)
        each = math.ceil(ac.k / len(names))
        propose_cost = Cost()
        drawn = _propose(cfg, finalists, names, data.queries, replace(ac, k=each), folder, propose_cost)
        drafts = [pick_drafts(drawn, None, i, replace(ac, proposers="finalists")) for i in range(n)]
        answers, right, aggregate_cost = _answer(cfg, selected, data.queries, drafts, references)
        result: dict[str, Any] = {
            "selected": names[0], "finalists": names, "queries": n, "k": ac.k, "rounds": ac.rounds,
            "proposals_each": each,
            "accuracy": {"aggregated": sum(right) / n, "single": selected.accuracy,
                         "finalists": {f.name: f.accuracy for f in finalists.values()},
                         "drafts": {name: sum(draft_accuracy(drawn[name], references, cfg.candidate_data(cfg.candidate(name)))) / n
                                    for name in names}},
            "cost_per_query": {
                "single": {"generations": 1, "flops": selected.flops, "seconds": selected.latency_s},
                "aggregated": _per_query(propose_cost + aggregate_cost, n),
            },
            "fine_tuned": {f.name: f.fine_tuned for f in finalists.values()},
        }
        per_query = [{"id": i, "query": q, "drafts": d, "answer": a, "correct": int(r)}
                     for i, q, d, a, r in zip(ids, data.queries, drafts, answers, right)]
        if ac.train_size:
            tuned = self._tune(cfg, folder, finalists, tokenizer, names)
            tuned_answers, tuned_right, tuned_cost = _answer(cfg, tuned["finalist"], data.queries, drafts, references)
            result["accuracy"]["aggregated_tuned"] = sum(tuned_right) / n
            result["cost_per_query"]["aggregated_tuned"] = _per_query(propose_cost + tuned_cost, n)
            result["tune"] = tuned["summary"]
            for q, a, r in zip(per_query, tuned_answers, tuned_right):
                q["answer_tuned"], q["correct_tuned"] = a, int(r)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / FILES[0]
        path.write_text(json.dumps(result | {"per_query": per_query}, indent=1) + "\n")
        return Selection({**selection.doc, "aggregate": result}, selection.observations, selection.fits), [path]

    @staticmethod
    def _tune(cfg: SelectConfig, folder: Path, finalists: dict[str, Any], tokenizer, names: list[str]) -> dict[str, Any]:
        """The selected finalist (names[0]: its probe's weights or the pretrained model) tuned on
        aggregation samples of cfg.aggregate.train_size training queries
        (lensray.stages.aggregate.tune): {"finalist": the tuned model as a Finalist, "summary"}."""
        from transformers import AutoConfig

        from lensray.data.design import RenderedSample
        from lensray.probe.hf.worker import model_context
        from lensray.stages.aggregate.samples import aggregation_length, aggregation_sample, pick_drafts
        from lensray.stages.aggregate.tune import EVAL_ROWS, training_rows, tune_aggregator, write_samples
        from lensray.stages.route.saved import Finalist

        ac, name = cfg.aggregate, names[0]
        selected = finalists[name]
        data = cfg.candidate_data(cfg.candidate(name))
        try:
            rows = training_rows(data, tokenizer, ac.train_size + EVAL_ROWS)
        except DataError as e:
            raise DataError(f"aggregate.train_size={ac.train_size}: the fine-tune takes that many training queries "
                            f"and {EVAL_ROWS} more to hold out, from the data's training pool ({e}); lower "
                            "aggregate.train_size, or 0 for no aggregation fine-tune") from None
        queries = [q for q, _, _, _ in rows]
        proposers = [name] if ac.proposers == "self" else names[1:]
        spent = Cost()
        drawn = _propose(cfg, finalists, proposers, queries, replace(ac, k=math.ceil(ac.k / len(proposers))), folder, spent)
        samples = [aggregation_sample(RenderedSample(prompt, response, False), pick_drafts(drawn, name, i, ac))
                   for i, (_, prompt, response, _) in enumerate(rows)]
        path = write_samples(folder / TRAIN_FILE, samples)
        c = cfg.candidate(name)
        context = model_context(AutoConfig.from_pretrained(c.model.path or c.model.name,
                                                           trust_remote_code=c.model.trust_remote_code))
        limit = aggregation_length(data.max_length, ac, context)
        weights = cfg.storage().uri("weights", f"{name}.aggregator")
        obs = tune_aggregator(cfg, name, selected.model, data, path, ac.train_size, limit, weights)
        tuned = Finalist(f"{name}.aggregator", weights, data.to_dict(), fine_tuned=True,
                         trust_remote_code=c.model.trust_remote_code)
        summary = {"examples": ac.train_size, "proposers": ac.proposers, "loss": obs.loss, "flops": obs.flops,
                   "wall_s": obs.wall_s, "proposal_flops": spent.flops, "weights": weights}
        return {"finalist": tuned, "summary": summary}


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
        f"| aggregated by it as probed | {a['accuracy']['aggregated']:.3f} | {agg['generations']:.1f} | {agg['flops']:.3g} | {agg['seconds']:.3g} |",
    ]
    if "tune" in a:
        t, tuned = a["tune"], a["cost_per_query"]["aggregated_tuned"]
        lines.append(f"| aggregated by it tuned to aggregate | {a['accuracy']['aggregated_tuned']:.3f} | {tuned['generations']:.1f} | "
                     f"{tuned['flops']:.3g} | {tuned['seconds']:.3g} |")
    lines += ["", f"Aggregation costs {ratio:.1f}x the FLOPs of the single answer a query."]
    if "tune" in a:
        lines.append(f"The aggregation fine-tune: {t['examples']} training queries with drafts from "
                     f"{'itself' if t['proposers'] == 'self' else 'the other finalists'}, {t['flops']:.3g} FLOPs "
                     f"({t['proposal_flops']:.3g} more to sample its drafts), held-out loss {t['loss']:.3f}.")
    lines += ["Details in aggregate.json.", ""]
    return "\n".join(lines)


register_stage("post", AggregateStage())
