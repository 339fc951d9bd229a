"""Aggregation samples: a query followed by K numbered proposals, with the reference answer as the
target. Pure Python (no torch)::

    from lensray.stages.aggregate.samples import aggregation_prompt, aggregation_sample, pick_drafts
    drafts = pick_drafts(proposals, "llama-copy-96", query=0, cfg=AggregateConfig(proposers="finalists"))
    sample = aggregation_sample(rendered, drafts)   # a RenderedSample: loss on the response only

The prompt (AFT's "1. ... 2. ..." listing, written for word-level tokenizers as the designs are:
each punctuation mark its own word, lines joined by `` \\n ``)::

    <query> \\n 1 . <draft 1> \\n 2 . <draft 2> ... \\n K . <draft K> \\n

A draft's own newlines become spaces, so each draft is one line of the listing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lensray.core.errors import DataError
from lensray.data.design import NEWLINE, RenderedSample
from lensray.stages.aggregate.config import AggregateConfig

SEPARATOR = f" {NEWLINE} "
"""Between the query and the first draft, between drafts, and after the last."""


def aggregation_prompt(query: str, drafts: Sequence[str]) -> str:
    """`query`, then each draft on its own line, numbered from 1 (see the module)."""
    if not drafts:
        raise ValueError("an aggregation prompt needs at least one draft")
    lines = [f"{i} . {' '.join(d.split())}" for i, d in enumerate(drafts, 1)]
    return query + SEPARATOR + SEPARATOR.join(lines) + SEPARATOR


def aggregation_sample(sample: RenderedSample, drafts: Sequence[str]) -> RenderedSample:
    """The aggregation sample of one rendered sample: its prompt with the drafts listed after it,
    its response as the target, and the loss on the target only (whatever the design's
    input_loss: the drafts are not text to learn to write)."""
    return RenderedSample(prompt=aggregation_prompt(sample.prompt, drafts), response=sample.response,
                          loss_on_input=False)


def aggregation_length(max_length: int, cfg: AggregateConfig, context: int | None) -> int:
    """Tokens an aggregation sample may take: the data's `max_length` plus K drafts of
    cfg.max_new_tokens tokens and their numbers, within the model's `context` (1024 when its
    config names none)."""
    return min(context or 1024, max_length + cfg.k * (cfg.max_new_tokens + 3))


def pick_drafts(proposals: Mapping[str, Sequence[Sequence[str]]], candidate: str | None, query: int,
                cfg: AggregateConfig) -> list[str]:
    """The K drafts `candidate` reads for query number `query`.

    `proposals` maps each model to its proposals, one list per query (at least K each for the
    candidate when on-policy). On-policy ("self"): the candidate's first K. Off-policy
    ("finalists"): the other models' proposals taken in turn (the first of each, then the second
    of each, ...) until K, the candidate's own never among them (candidate None: every model's,
    as the `aggregate` stage lists all the finalists' drafts).
    """
    if cfg.proposers == "self":
        own = proposals.get(candidate)
        if own is None or len(own[query]) < cfg.k:
            have = 0 if own is None else len(own[query])
            raise DataError(f"aggregate: {candidate!r} has {have} proposals for query {query}, "
                            f"aggregate.k={cfg.k} needs {cfg.k}: sample them first (propose.proposals)")
        return list(own[query][: cfg.k])
    others = [name for name in proposals if name != candidate]
    if not others:
        raise DataError(f"aggregate.proposers=finalists: no finalist but {candidate!r} has proposals; "
                        "give two or more finalists, or use aggregate.proposers: self")
    drafts: list[str] = []
    for turn in range(max(len(proposals[name][query]) for name in others)):
        for name in others:
            if turn < len(proposals[name][query]) and len(drafts) < cfg.k:
                drafts.append(proposals[name][query][turn])
    if len(drafts) < cfg.k:
        raise DataError(f"aggregate: the other finalists have {len(drafts)} proposals for query {query}, "
                        f"aggregate.k={cfg.k} needs {cfg.k}: sample more of each")
    return drafts
