"""The family tree of the pool: neighbour joining on the genetic distances, written as Newick
and drawn as a dendrogram with the families coloured; which leaves form a clade; each model's
nearest neighbour.

Neighbour joining (Saitou & Nei 1987) is Biopython's `DistanceTreeConstructor.nj`. Why
Biopython: it is what PhyloLM's authors used, so trees match theirs; it needs only numpy; and
the same `Bio.Phylo` tree gives midpoint rooting, monophyly tests, Newick I/O and a matplotlib
dendrogram, so nothing else is needed. (scipy has UPGMA but no NJ; scikit-bio's `nj` is faster
but brings pandas, h5py and more; dendropy's is pure Python like Biopython's.) Its NJ is pure
Python, O(M^3) for M models: 1.1 CPU seconds for 100 models and 27 for 300
(`python -m lensray.stages.phylo.tree 100 300`). NJ can give a branch a negative length; it is
set to 0 (a tree's branches are lengths), which leaves the topology as it is.

An NJ tree is unrooted; `is_clade` asks its question of the tree rooted at the midpoint of its
longest leaf-to-leaf path, where families of models hang as clades when they are closer to each
other than to anything else.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from lensray.core.errors import DataError


def nj_tree(names: Sequence[str], distances: np.ndarray):
    """The neighbour-joining tree (a `Bio.Phylo.BaseTree.Tree`, unrooted) of the models `names`
    whose (M, M) symmetric `distances` are given; inner nodes are unnamed."""
    from Bio.Phylo.TreeConstruction import DistanceMatrix, DistanceTreeConstructor

    d = np.asarray(distances, dtype=float)
    if d.shape != (len(names), len(names)) or not np.allclose(d, d.T) or not np.isfinite(d).all():
        raise DataError(f"distances must be a finite symmetric {len(names)} x {len(names)} matrix, got shape {d.shape}")
    if len(set(names)) != len(names):
        raise DataError("the tree's leaf names must differ")
    matrix = DistanceMatrix(list(names), [list(d[i, : i + 1]) for i in range(len(names))])
    tree = DistanceTreeConstructor().nj(matrix)
    for clade in tree.find_clades():
        if not clade.is_terminal():
            clade.name = None
        if clade.branch_length is not None and clade.branch_length < 0:
            clade.branch_length = 0.0
    return tree


def midpoint_rooted(tree):
    """A copy of `tree` rooted at the midpoint of its longest leaf-to-leaf path."""
    rooted = copy.deepcopy(tree)
    if rooted.count_terminals() > 2:
        rooted.root_at_midpoint()
    return rooted


def write_newick(tree, path: Path) -> Path:
    """Write `tree` to `path` in Newick format (names with spaces or punctuation quoted)."""
    from Bio import Phylo

    path.parent.mkdir(parents=True, exist_ok=True)
    Phylo.write(tree, str(path), "newick")
    return path


def is_clade(tree, leaves: Collection[str]) -> bool:
    """True when `leaves` are exactly the leaves under one node of the midpoint-rooted `tree`."""
    rooted = midpoint_rooted(tree)
    known = {c.name for c in rooted.get_terminals()}
    unknown = sorted(set(leaves) - known)
    if unknown:
        raise DataError(f"no leaves {unknown} in the tree; it has {sorted(known)}")
    wanted = set(leaves)
    return any({t.name for t in clade.get_terminals()} == wanted for clade in rooted.find_clades())


def nearest_neighbours(names: Sequence[str], distances: np.ndarray) -> dict[str, tuple[str, float]]:
    """Each model's nearest other model by distance, with that distance (ties: the first in
    `names`' order)."""
    if len(names) < 2:
        return {}
    d = np.asarray(distances, dtype=float).copy()
    np.fill_diagonal(d, np.inf)
    return {n: (names[int(j)], float(d[i, j])) for i, (n, j) in enumerate(zip(names, d.argmin(1)))}


def plot_tree(tree, path: Path, families: Mapping[str, str] | None = None, title: str = "") -> Path:
    """Draw the midpoint-rooted `tree` as a dendrogram PNG at `path`, each leaf's label coloured
    by its family (`families`: leaf -> family; a legend names them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from Bio import Phylo
    from matplotlib.lines import Line2D

    families = dict(families or {})
    names = sorted(set(families.values()))
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colour = {f: palette(i % palette.N) for i, f in enumerate(names)}
    rooted = midpoint_rooted(tree)
    n = rooted.count_terminals()
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.3 * n + 1)))
    Phylo.draw(rooted, axes=ax, do_show=False, label_colors=lambda leaf: colour.get(families.get(leaf), "black"))
    ax.set_xlabel("genetic distance (branch length)")
    ax.set_ylabel("")
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if names:
        ax.legend([Line2D([], [], color=colour[f], lw=3) for f in names], names, title="family", loc="best", fontsize=8)
    ax.set_title(title or f"PhyloLM tree of {n} models (neighbour joining, midpoint root)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":  # time NJ on random distances: python -m lensray.stages.phylo.tree 100 300
    for m in [int(a) for a in sys.argv[1:]] or [100]:
        x = np.random.default_rng(0).normal(size=(m, 8))
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        t0 = time.process_time()
        nj_tree([f"m{i}" for i in range(m)], d)
        print(f"{m} models: {time.process_time() - t0:.1f} CPU s")
