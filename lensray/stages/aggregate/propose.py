"""Proposals and propose-and-aggregate with a transformers model, in the calling process (a probe's
worker, a Ray task, or a script)::

    from lensray.stages.aggregate.propose import Cost, ProposalCache, aggregate, draft_accuracy, proposals
    cost = Cost()
    drafts = proposals(model, tokenizer, "zoo/models/llama-copy-96", prompt_ids, cfg, ProposalCache(folder), cost)
    answers = aggregate(model, tokenizer, data_cfg, queries, drafts, cfg, cost)   # one answer a query
    draft_accuracy(drafts, references, data_cfg)                            # share right a query

Sampling is seeded (`AggregateConfig.seed`) and batched by prompt length, as the probe generates
(lensray.probe.hf.worker.generate). A model's proposals are cached per (model, query set,
sampling settings): the key hashes the model's id and, for a local folder, each file's name,
size and modification time, the prompts' tokens, and K, temperature, top_p, max_new_tokens and
the seed, so a retrained model or another setting samples afresh.

Rounds (AFT's inference): the drafts are the proposals; each round but the last samples K
aggregations of the previous round's drafts (temperature, top_p), and the last writes one answer
greedily. A draft that does not parse under the data's design is a wrong draft (it still goes
into the listing as written), never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lensray.data.dataset import DataConfig, encode_prompt, judge_outputs, rendered_prompt
from lensray.stages.aggregate.config import AggregateConfig
from lensray.stages.aggregate.samples import aggregation_prompt

SAMPLING_FIELDS = ("k", "temperature", "top_p", "max_new_tokens", "seed")
"""The AggregateConfig fields that change what is sampled: part of the proposal cache's key."""


def model_id(model: str) -> str:
    """What identifies a model's weights: a hub id as given, or a local folder's resolved path
    with each file's name, size and modification time."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return model
    files = sorted((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in path.rglob("*") if f.is_file())
    return json.dumps([str(path.resolve()), files])


@dataclass
class Cost:
    """What generating cost: responses, tokens (prompt plus generated, each response), FLOPs
    (2 x parameters x tokens: one forward pass a position, the cache keeping the rest) and wall
    seconds. Proposals read from the cache add what sampling them cost."""

    generations: int = 0
    tokens: int = 0
    flops: float = 0.0
    seconds: float = 0.0

    def add(self, other: "Cost") -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def __add__(self, other: "Cost") -> "Cost":
        total = Cost(**asdict(self))
        total.add(other)
        return total


class ProposalCache:
    """Proposals on disk, one JSON file per key under `folder` (written whole, then renamed, so a
    crash never leaves half a file)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(model: str, prompts: Sequence[Sequence[int]], cfg: AggregateConfig) -> str:
        settings = {name: getattr(cfg, name) for name in SAMPLING_FIELDS}
        blob = json.dumps({"model": model_id(model), "prompts": [list(p) for p in prompts], "sampling": settings})
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def get(self, key: str) -> tuple[list[list[str]], Cost] | None:
        """The proposals kept under `key` and what sampling them cost, or None."""
        path = self.folder / f"{key}.json"
        if not path.is_file():
            return None
        doc = json.loads(path.read_text())
        return doc["proposals"], Cost(**doc["cost"])

    def put(self, key: str, value: list[list[str]], cost: Cost) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"proposals": value, "cost": asdict(cost)}))
        tmp.replace(self.folder / f"{key}.json")


def sample_texts(model, tokenizer, prompts: Sequence[Sequence[int]], cfg: AggregateConfig, samples: int,
                 greedy: bool = False, cost: Cost | None = None) -> list[list[str]]:
    """`samples` decoded responses to each prompt (token ids): sampled at cfg's temperature and
    top_p, seeded by cfg.seed, or one greedy response each; what it cost is added to `cost`."""
    import time

    import torch

    from lensray.probe.hf.recipe import ProbeConfig
    from lensray.probe.hf.worker import generate

    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    probe = ProbeConfig(max_new_tokens=cfg.max_new_tokens, eval_batch=cfg.batch)
    n = 1 if greedy else samples
    start = time.perf_counter()
    ids = generate(model, list(prompts), tokenizer.pad_token_id, tokenizer.eos_token_id, probe, 0, 1, torch, device,
                   samples=n, temperature=0.0 if greedy else cfg.temperature, top_p=cfg.top_p)
    if cost is not None:
        tokens = n * sum(len(p) for p in prompts) + sum(len(x) for x in ids)
        n_params = sum(p.numel() for p in model.parameters())
        cost.add(Cost(len(ids), tokens, 2.0 * n_params * tokens, time.perf_counter() - start))
    texts = [tokenizer.decode(x, skip_special_tokens=True) for x in ids]
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def proposals(model, tokenizer, model_name: str, prompts: Sequence[Sequence[int]], cfg: AggregateConfig,
              cache: ProposalCache | None = None, cost: Cost | None = None) -> list[list[str]]:
    """K proposals to each prompt (token ids) from `model` (loaded from `model_name`), read from
    `cache` when it holds them for this model, these prompts and cfg's sampling settings, else
    sampled and written there; what sampling them cost (then or now) is added to `cost`."""
    key = ProposalCache.key(model_name, prompts, cfg) if cache is not None else ""
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        drawn, spent = hit
    else:
        spent = Cost()
        drawn = sample_texts(model, tokenizer, prompts, cfg, cfg.k, cost=spent)
        if cache is not None:
            cache.put(key, drawn, spent)
    if cost is not None:
        cost.add(spent)
    return drawn


def aggregate(model, tokenizer, data: DataConfig, queries: Sequence[str], drafts: Sequence[Sequence[str]],
              cfg: AggregateConfig, cost: Cost | None = None) -> list[str]:
    """The final answer to each query after cfg.rounds rounds of aggregation, starting from its
    `drafts` (see the module); what it cost is added to `cost`."""
    current = [list(d) for d in drafts]
    for r in range(cfg.rounds):
        prompts = [encode_prompt(data, tokenizer, aggregation_prompt(rendered_prompt(data, q), d))
                   for q, d in zip(queries, current)]
        current = sample_texts(model, tokenizer, prompts, cfg, cfg.k, greedy=r == cfg.rounds - 1, cost=cost)
    return [d[0] for d in current]


def draft_accuracy(drafts: Sequence[Sequence[str]], references: Sequence[str], data: DataConfig) -> list[float]:
    """Per query, the share of its drafts that are right against its reference (the held-out
    `reference` column): lensray.data.dataset.judge_outputs, so a malformed draft is wrong."""
    out = []
    for query_drafts, reference in zip(drafts, references):
        judged = judge_outputs(list(query_drafts), [reference] * len(query_drafts), data.sample_design, data.schema)
        out.append(sum(right for right, _ in judged) / len(judged))
    return out
