"""`RouteConfig`: the settings of the `route` post-sweep stage (SelectLLM routing over the
finalists). Light: it imports numpy and the policies, never torch, transformers or Ray, so the
config schema can hold it.

    from lensray.stages.route.config import RouteConfig
    cfg = RouteConfig(finalists=3, policy="weighted_max_conf", k=2)
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Literal

from lensray.core.errors import ConfigError
from lensray.stages.route.policies import POLICIES

HASHED = "hashed"
"""The encoder trained here (hashed word and character n-grams); any other name is a hub id."""


@dataclass(frozen=True)
class RouteConfig:
    """The route stage: a query -> finalist router, its policy, and how it is cross-validated."""

    finalists: int = 3
    """Finalists m routed between: the Selection's m best candidates."""
    encoder: str = HASHED
    """Query encoder: "hashed" (hashed word 1-2-grams and character 2-4-grams, nothing to
    download) or a hub id / local folder of a transformers encoder (mean-pooled last hidden
    states, e.g. "roberta-base" as SelectLLM)."""
    policy: str = "weighted_max_conf"
    """The policy the stage serves (lensray.stages.route.policies); every policy is evaluated."""
    k: int = 2
    """Most finalists a top-k, LabelledMaxConf or WeightedMaxConf policy calls per query
    (SelectLLM's subset size; more than m means all m)."""
    threshold: float = 0.5
    """The threshold policy calls every finalist whose confidence is above this."""
    folds: int = 5
    """Cross-validation folds over the held-out queries (each query is scored by a router
    trained on the other folds)."""
    seed: int = 0
    """Seed of the folds' shuffle."""
    tie_cost: Literal["latency", "flops"] = "latency"
    """The cost that breaks ties, to the cheaper finalist: equal confidences when ranking, equal
    votes when combining answers (SelectLLM: latency)."""
    features: int = 2**18
    """Hash buckets of each of the hashed encoder's two views (words, characters)."""
    l2: float = 1.0
    """L2 penalty on the router's weights (its loss sums the binary cross-entropy over queries
    and finalists, so the penalty weakens as queries are added)."""
    max_length: int = 128
    """A hub encoder's longest query, in tokens (SelectLLM: 128)."""
    batch_size: int = 32
    """Queries per forward pass of a hub encoder."""
    device: str = "cpu"
    """Where a hub encoder runs ("cpu", "cuda")."""

    def __post_init__(self) -> None:
        for name in ("finalists", "k", "max_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"route.{name}={getattr(self, name)}: must be at least 1")
        if self.folds < 2:
            raise ConfigError(f"route.folds={self.folds}: must be at least 2 (the router is scored on queries it did not train on)")
        if self.policy not in POLICIES:
            close = difflib.get_close_matches(self.policy, POLICIES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"route.policy={self.policy!r}: unknown; the policies are: {', '.join(POLICIES)}.{hint}")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"route.threshold={self.threshold}: must be a probability in [0, 1], e.g. 0.5")
        if self.tie_cost not in ("latency", "flops"):
            raise ConfigError(f"route.tie_cost={self.tie_cost!r}: must be 'latency' or 'flops'")
        if not self.encoder.strip():
            raise ConfigError(f"route.encoder={self.encoder!r}: give 'hashed' or a hub id such as 'roberta-base'")
        if self.features < 16:
            raise ConfigError(f"route.features={self.features}: must be at least 16, e.g. {2**18}")
        if not (self.l2 > 0 and math.isfinite(self.l2)):
            raise ConfigError(f"route.l2={self.l2}: must be a positive number, e.g. 1.0")
