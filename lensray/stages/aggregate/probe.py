"""The `aggregate` design inside a probe's worker (lensray.probe.hf.worker), on one device in the
calling process (the worker runs it on rank 0 and shares what it returns)::

    from lensray.stages.aggregate.probe import aggregation_rows, propose_and_aggregate
    rows, dropped = aggregation_rows(model, tokenizer, data, samples, cfg, limit, cost)
    answers, drafts = propose_and_aggregate(model, tokenizer, data, queries, prompts, cfg, cost)

After a size's plain fine-tune the model proposes K drafts (on-policy) for each of that size's
training samples, and the worker fine-tunes it further on those aggregation samples together
with the plain ones (so it still proposes as well as it aggregates). It then answers each
held-out query by propose-and-aggregate: K proposals, then `rounds` rounds (lensray.stages.
aggregate.propose.aggregate). The probe's task error is that of the aggregated answers, so the
design is fitted, ranked and stopped early with the same curves as every other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from lensray.data.dataset import DataConfig, encode_prompt, encode_sample
from lensray.data.design import RenderedSample
from lensray.stages.aggregate.config import AggregateConfig
from lensray.stages.aggregate.propose import Cost, aggregate, sample_texts
from lensray.stages.aggregate.samples import aggregation_sample


def aggregation_rows(model, tokenizer, data: DataConfig, samples: Sequence[Sequence[str]], cfg: AggregateConfig,
                     limit: int, cost: Cost) -> tuple[list[tuple[list[int], list[int]]], int]:
    """The (input ids, labels) of each (prompt, response) sample's aggregation sample, its K drafts
    sampled from `model` (what that cost is added to `cost`); and how many were left out because
    the listing and the whole target do not fit in `limit` tokens (never cut: a cut target
    would teach a wrong answer)."""
    prompts = [encode_prompt(data, tokenizer, prompt) for prompt, _ in samples]
    drafts = sample_texts(model, tokenizer, prompts, cfg, cfg.k, cost=cost)
    whole = replace(data, overflow="drop")
    rows, dropped = [], 0
    for (prompt, response), own in zip(samples, drafts):
        sample = aggregation_sample(RenderedSample(prompt, response, False), own)
        encoded = encode_sample(whole, tokenizer, sample.prompt, sample.response, False, limit)
        if encoded is None:
            dropped += 1
            continue
        rows.append((encoded[0], encoded[1]))
    return rows, dropped


def propose_and_aggregate(model, tokenizer, data: DataConfig, queries: Sequence[str], prompts: Sequence[Sequence[int]],
                          cfg: AggregateConfig, cost: Cost) -> tuple[list[str], list[list[str]]]:
    """Each query's final answer and its K proposals: `model` proposes K drafts from each query's
    prompt (token ids) and aggregates them for cfg.rounds rounds; what it cost is added to `cost`."""
    drafts = sample_texts(model, tokenizer, prompts, cfg, cfg.k, cost=cost)
    return aggregate(model, tokenizer, data, queries, drafts, cfg, cost), drafts
