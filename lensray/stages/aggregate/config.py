"""`AggregateConfig`: how proposals are sampled and aggregated (Aggregation Fine-Tuning). Light:
no torch, transformers or Ray, so the config schema can hold it.

    from lensray.stages.aggregate.config import AggregateConfig
    cfg = AggregateConfig(k=5, rounds=2, proposers="finalists")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from lensray.core.errors import ConfigError

AGGREGATE_DESIGN = "aggregate"
"""The design name, in `pool.designs`, of Aggregation Fine-Tuning: a candidate under it is fine-tuned
on the pool's first design's samples, then on aggregation samples of its own proposals, and
answers by propose-and-aggregate (lensray.stages.aggregate.probe)."""
PROPOSERS = ("self", "finalists")
"""Where a candidate's training proposals come from: itself (on-policy) or the other finalists
(off-policy)."""


@dataclass(frozen=True)
class AggregateConfig:
    """Propose-and-aggregate: K proposals a query, R aggregation rounds (AFT's defaults)."""

    finalists: int = 3
    """The `aggregate` stage: the ranking's best candidates with per-query results whose
    proposals the selected model (the first of them) aggregates."""
    k: int = 5
    """Proposals sampled per query, and aggregations sampled per query in each round but the last."""
    rounds: int = 1
    """Aggregation rounds R: rounds 1..R-1 each sample K aggregations of the previous drafts; round
    R writes the one final answer greedily. Generations a query: K x R + 1."""
    temperature: float = 0.7
    """Sampling temperature of proposals and of the intermediate aggregations."""
    top_p: float = 0.95
    """Nucleus sampling's probability mass for the same."""
    proposers: Literal["self", "finalists"] = "self"
    """The `aggregate` stage's training proposals: from the selected model itself ("self",
    on-policy) or from the other finalists ("finalists", off-policy, taken in turn from each). A
    probe under the `aggregate` design always proposes for itself (no finalists exist yet)."""
    train_size: int = 256
    """The `aggregate` stage's aggregation fine-tune: training queries (from the data's training
    pool, each with K proposals under `proposers`) the selected model is tuned on by its probe's
    recipe; 0 aggregates with the model as probed only."""
    max_new_tokens: int = 64
    """Longest proposal or aggregation, in tokens."""
    batch: int = 16
    """Prompts per generate call (each with its K samples)."""
    seed: int = 0
    """Seed of the sampling (part of the proposal cache's key)."""

    def __post_init__(self) -> None:
        for name in ("finalists", "k", "rounds", "max_new_tokens", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"aggregate.{name}={getattr(self, name)}: must be at least 1")
        if self.train_size < 0:
            raise ConfigError(f"aggregate.train_size={self.train_size}: must be 0 (no aggregation fine-tune) or more, e.g. 256")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"aggregate.temperature={self.temperature}: must be a positive number, e.g. 0.7")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"aggregate.top_p={self.top_p}: must be in (0, 1], e.g. 0.95")
        if self.proposers not in PROPOSERS:
            raise ConfigError(f"aggregate.proposers={self.proposers!r}: must be one of {', '.join(PROPOSERS)}")
