"""Genetic similarity and distance between models (Nei's identity, as PhyloLM uses it).

With P_i(a | g) model i's allele frequencies (lensray.stages.phylo.alleles), summed over all
genes g and their alleles a before normalising::

    S(i, j) = sum_g sum_a P_i(a|g) P_j(a|g) / sqrt( sum_g sum_a P_i(a|g)^2 * sum_g sum_a P_j(a|g)^2 )
    d(i, j) = -ln(max(S(i, j), 1e-10))

S is 1 for identical fingerprints (d = 0) and 0 for models that share no allele on any gene
(d = 23.03, the cap). The fingerprints become one sparse matrix, a column per (gene, allele),
so S is one sparse product: M models x G genes x N samples cost O(M^2 G N) at most.

The matrix is written as Parquet: a `_model` column (a name no candidate can have), then one
column per model, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import sparse

from lensray.core.errors import DataError
from lensray.stages.phylo.alleles import Alleles

EPS = 1e-10
"""Smallest similarity: distances are capped at -ln(EPS) = 23.03."""


def allele_matrix(fingerprints: Sequence[Alleles]) -> sparse.csr_matrix:
    """The (M, K) matrix of P_m(a | g), one row per model and one column per (gene, allele)
    seen in any model. Every fingerprint must cover the same genes."""
    n_genes = {len(f) for f in fingerprints}
    if len(n_genes) > 1:
        raise DataError(f"fingerprints cover different numbers of genes {sorted(n_genes)}: make them on the same genes")
    columns: dict[tuple[int, str], int] = {}
    rows, cols, vals = [], [], []
    for m, fingerprint in enumerate(fingerprints):
        for g, freqs in enumerate(fingerprint):
            for a, p in freqs.items():
                rows.append(m)
                cols.append(columns.setdefault((g, a), len(columns)))
                vals.append(p)
    return sparse.csr_matrix((vals, (rows, cols)), shape=(len(fingerprints), len(columns)), dtype=np.float64)


ROUNDING = 1e-12
"""Distances below this are floating-point rounding of identical fingerprints: 0."""


def similarity(fingerprints: Sequence[Alleles]) -> np.ndarray:
    """The (M, M) matrix S(i, j) of Nei's identity summed over all genes (see the module)."""
    p = allele_matrix(fingerprints)
    gram = (p @ p.T).toarray()
    norm = np.sqrt(np.diag(gram))
    return np.clip(gram / np.outer(norm, norm), 0.0, 1.0)


def distance(fingerprints: Sequence[Alleles]) -> np.ndarray:
    """The (M, M) genetic distance d = -ln(max(S, 1e-10)), 0 on the diagonal and between
    identical fingerprints (whose S rounds to a hair below 1)."""
    d = -np.log(np.maximum(similarity(fingerprints), EPS))
    d[d < ROUNDING] = 0.0
    np.fill_diagonal(d, 0.0)
    return d


def write_matrix(path: Path, names: Sequence[str], matrix: np.ndarray) -> Path:
    """Write the (M, M) `matrix` over `names` as Parquet: a `_model` column, then one per model."""
    table = pa.table({"_model": list(names)} | {n: matrix[:, j] for j, n in enumerate(names)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def read_matrix(path: Path) -> tuple[list[str], np.ndarray]:
    """(names, matrix) from a file `write_matrix` wrote."""
    table = pq.read_table(path)
    names = [str(n) for n in table.column("_model").to_pylist()]
    return names, np.column_stack([table.column(n).to_numpy() for n in names]).astype(float)
