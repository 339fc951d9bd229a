"""The Observation: what a probe reports after fine-tuning a candidate on one subset size.

One record per (candidate, size). Probes (hf and replay backends) produce them; fits,
predictors, the scheduler and the report consume them. Plain data, no heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Observation:
    """Held-out loss of one candidate after fine-tuning on `size` examples."""

    candidate: str
    """Name of the Candidate (model + sample design) this was measured on."""
    size: int
    """Number of training examples D of the nested subset (0 = the pretrained model, no tuning)."""
    loss: float
    """Mean held-out loss (token cross-entropy, or 1 - task metric when a metric is ranked)."""
    tokens: int = 0
    """Training tokens processed for this size (examples x tokens x epochs)."""
    flops: float = 0.0
    """Training compute for this size: 6 x trainable-and-frozen parameters x tokens."""
    wall_s: float = 0.0
    """Wall-clock seconds spent fine-tuning and evaluating this size."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend-specific measurements (e.g. the NTK term of LensLLM, metric details)."""

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in FIELDS} | {"extra": dict(self.extra)}


FIELDS = ("candidate", "size", "loss", "tokens", "flops", "wall_s")
"""The scalar fields, in order (extra is a dict)."""
