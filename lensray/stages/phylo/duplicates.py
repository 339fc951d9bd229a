"""Near-duplicates: models whose fingerprints are within a genetic distance of each other.

Two models with d(i, j) <= threshold are linked; a group is a connected component of those
links (so a chain a~b~c is one group even when d(a, c) is above the threshold). Each group of
two or more keeps one representative, the cheapest: the fewest parameters, then the first
name in sorted order. The others are dropped before the sweep with the reason
"near-duplicate of <representative> (d = <their distance>)"; `drop_reasons` maps those to the
pool's Candidates, in the form `Pool.drop` takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from lensray.core.types import Pool


@dataclass(frozen=True)
class DuplicateGroup:
    """Models whose fingerprints are near-duplicates, and which of them is kept."""

    representative: str
    """The model kept: the fewest parameters, then the first name."""
    members: tuple[str, ...]
    """Every model of the group, the representative included, in the input's order."""
    distances: dict[str, float]
    """Each other member's distance to the representative."""

    def reasons(self) -> dict[str, str]:
        """The drop reason of each member other than the representative."""
        return {m: f"near-duplicate of {self.representative} (d = {d:.3g})" for m, d in self.distances.items()}


def near_duplicates(names: Sequence[str], distances: np.ndarray, n_params: Mapping[str, int], threshold: float) -> list[DuplicateGroup]:
    """The groups of two or more models within `threshold` of each other (see the module), in
    the order of their first member; `n_params` gives each model's cost (missing: 0)."""
    d = np.asarray(distances, dtype=float)
    linked = (d <= threshold) & ~np.eye(len(names), dtype=bool)
    _, labels = connected_components(csr_matrix(linked), directed=False)
    groups = []
    for label in dict.fromkeys(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) < 2:
            continue
        rep = min(idx, key=lambda i: (n_params.get(names[i], 0), names[i]))
        groups.append(DuplicateGroup(
            names[rep], tuple(names[i] for i in idx), {names[i]: float(d[i, rep]) for i in idx if i != rep}
        ))
    return groups


def drop_reasons(pool: Pool, groups: Sequence[DuplicateGroup]) -> dict[str, str]:
    """{candidate: reason} for every Candidate of `pool` whose model is a dropped near-duplicate
    (under every sample design it is crossed with): what `Pool.drop` takes."""
    by_model = {m: r for g in groups for m, r in g.reasons().items()}
    return {c.name: by_model[c.model.name] for c in pool.candidates if c.model.name in by_model}
