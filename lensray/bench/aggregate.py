"""`lensray bench aggregate CONFIG`: what propose-and-aggregate gives each probed model, against the
same model's single greedy answer, on a finished selection whose probes kept their weights (a
config with a post-sweep stage that runs them, e.g. `aggregate`).

    lensray select configs/aft-aspects.yaml
    lensray bench aggregate configs/aft-aspects.yaml --rounds 1 2 --json out/bench-aggregate.json

For every candidate with kept weights (its probe's last size), on the held-out queries its probe
answered: the accuracy of its greedy answer (`probe.max_new_tokens`, as its probe answered);
its `aggregate.k` proposals (the config's sampling) and their accuracy; and for each R of `--rounds` the accuracy of aggregating them for R rounds
(lensray.stages.aggregate.propose.aggregate), each with its generations, FLOPs (2 x parameters x
tokens) and seconds per query, and its FLOPs as a multiple of the greedy answer's. A candidate
under a plain design is a plain fine-tune aggregating untrained; one under the `aggregate` design
was tuned on aggregation samples of its own proposals (lensray.stages.aggregate.probe), so the
two rows of one model compare plain fine-tuning with Aggregation Fine-Tuning.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lensray.config.schema import SelectConfig


def _scores(model, answers: list[str], references: list[str]) -> dict[str, float]:
    """`accuracy` as the probes score it (lensray.data.dataset.score_outputs: every target of
    structured data counts, plain data is an exact match) and `exact`, the share of queries
    answered right whole (judge_outputs)."""
    from lensray.data.dataset import judge_outputs, score_outputs

    design, schema = model.spec.data.sample_design, model.spec.data.schema
    right = [r for r, _ in judge_outputs(answers, references, design, schema)]
    return {"accuracy": score_outputs(answers, references, design, schema).accuracy, "exact": sum(right) / len(right)}


def _per_query(cost, n: int) -> dict[str, float]:
    return {k: v / n for k, v in asdict(cost).items() if k != "tokens"}


def bench_candidate(cfg: SelectConfig, results: dict[str, Any], name: str, rounds: list[int]) -> dict[str, Any]:
    """The figures of the module docstring for candidate `name`, served from the weights its probe
    kept (`results`: lensray.stages.route.queries.query_results of the selection)."""
    from lensray.data.dataset import prompt_ids
    from lensray.stages.aggregate.propose import Cost, aggregate, sample_texts
    from lensray.stages.aggregate.stage import held_out_references
    from lensray.stages.route.queries import route_data
    from lensray.stages.route.serve import FinalistModel
    from lensray.stages.route.stage import finalist_of

    data = route_data(results, [name])
    model = FinalistModel(finalist_of(cfg, name, data, 0, results[name].weights), cfg.probe)
    ac, queries, n = cfg.aggregate, list(data.queries), data.n
    references = held_out_references(model.spec.data, model.tokenizer, [r["id"] for r in results[name].records])
    prompts = [prompt_ids(model.spec.data, model.tokenizer, q) for q in queries]
    greedy_cost, draft_cost = Cost(), Cost()
    as_probed = replace(ac, max_new_tokens=cfg.probe.max_new_tokens)  # the greedy answer its probe scored
    greedy = [a[0] for a in sample_texts(model.model, model.tokenizer, prompts, as_probed, 1, greedy=True, cost=greedy_cost)]
    drafts = sample_texts(model.model, model.tokenizer, prompts, ac, ac.k, cost=draft_cost)
    every_draft = [d for query_drafts in drafts for d in query_drafts]
    out: dict[str, Any] = {
        "candidate": name, "design": cfg.candidate(name).design, "queries": n, "k": ac.k,
        "greedy": {**_scores(model, greedy, references), **_per_query(greedy_cost, n)},
        "drafts": _scores(model, every_draft, [r for r in references for _ in range(ac.k)]),
        "rounds": {},
    }
    for r in rounds:
        cost = Cost() + draft_cost
        answers = aggregate(model.model, model.tokenizer, model.spec.data, queries, drafts, replace(ac, rounds=r), cost)
        per = _per_query(cost, n)
        out["rounds"][str(r)] = {**_scores(model, answers, references), **per,
                                 "flops_ratio": per["flops"] / out["greedy"]["flops"]}
    return out


def bench_aggregate(cfg: SelectConfig, rounds: list[int]) -> dict[str, Any]:
    """Every candidate of the finished selection that kept its weights, printed and returned."""
    from lensray.core.errors import ConfigError
    from lensray.stages.route.queries import query_results
    from lensray.stages.route.stage import finished_selection

    if not rounds or min(rounds) < 1:
        raise ConfigError(f"--rounds {rounds}: give one or more round counts of at least 1, e.g. --rounds 1 2")
    results = query_results(finished_selection(cfg).observations)
    kept = sorted(name for name, r in results.items() if r.weights)
    if not kept:
        raise ConfigError(f"no probe of {cfg.name!r} kept its weights: add a stage that runs the finalists "
                          "(stages.post: [aggregate]) and run `lensray select` again")
    rows = []
    for name in kept:
        row = bench_candidate(cfg, results, name, rounds)
        rows.append(row)
        aggregated = ", ".join(f"R={r} {v['accuracy']:.3f} ({v['generations']:.0f} generations, "
                               f"{v['flops_ratio']:.1f}x FLOPs)" for r, v in row["rounds"].items())
        print(f"bench aggregate: {name}: greedy {row['greedy']['accuracy']:.3f}, drafts "
              f"{row['drafts']['accuracy']:.3f}, aggregated (K={row['k']}) {aggregated}; {row['queries']} queries",
              flush=True)
    return {"config": cfg.name, "k": cfg.aggregate.k, "temperature": cfg.aggregate.temperature,
            "rounds_measured": list(rounds), "candidates": rows}
