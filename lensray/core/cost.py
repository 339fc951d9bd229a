"""Compute accounting: what a selection spent against what the alternatives would have.

Fine-tuning a model of N parameters on D examples of l tokens costs (Kaplan et al. 2020)::

    FLOPs(D) = 6 * N * D * l        (forward + backward; per epoch)

so a candidate's FLOPs per example is the same at every size, and it can be read off any of its
observations: rate = flops / size. Costs of sizes a candidate never ran follow from that rate.
"""

from __future__ import annotations

from lensray.core.types import Observation


def train_flops(n_params: float, tokens: float) -> float:
    """6 x parameters x tokens."""
    return 6.0 * float(n_params) * float(tokens)


def flops_per_example(observations: list[Observation]) -> float:
    """FLOPs per training example of one candidate (0 if it reported no training)."""
    rates = [o.flops / o.size for o in observations if o.size > 0 and o.flops > 0]
    return max(rates) if rates else 0.0


def selection_cost(by_candidate: dict[str, list[Observation]], sizes: list[int], target: int) -> dict[str, float]:
    """flops_spent (observed), flops_all_probes (every candidate at every planned size) and
    flops_full (every candidate fine-tuned once at the target size)."""
    spent = sum(o.flops for obs in by_candidate.values() for o in obs)
    rates = {c: flops_per_example(obs) for c, obs in by_candidate.items()}
    return {
        "flops_spent": spent,
        "flops_all_probes": sum(r * sum(sizes) for r in rates.values()),
        "flops_full": sum(r * target for r in rates.values()),
    }
