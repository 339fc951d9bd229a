"""Alleles: what a model says after a gene, and how often.

An allele is a sampled continuation with its leading whitespace (spaces, tabs, newlines)
stripped, cut to its first `ALLELE_CHARS` = 4 characters; a continuation with nothing but
whitespace is the empty allele "". A model's alleles for one gene are its N samples'
frequencies::

    P_m(a | g) = count_m(a | g) / N

A model's fingerprint is one such sparse distribution per gene: `list[dict[str, float]]`, in
the genes' order, each summing to 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

ALLELE_CHARS = 4
"""Characters an allele keeps (PhyloLM's choice)."""

Alleles = list[dict[str, float]]
"""One model's fingerprint: for each gene (in order) its alleles' frequencies."""


def allele(continuation: str) -> str:
    """The allele of one continuation: leading whitespace stripped, first 4 characters."""
    return continuation.lstrip()[:ALLELE_CHARS]


def allele_frequencies(continuations: Sequence[str]) -> dict[str, float]:
    """P(a | g) over the N `continuations` of one gene: each allele's count / N."""
    if not continuations:
        raise ValueError("allele_frequencies needs at least one continuation")
    counts = Counter(allele(c) for c in continuations)
    return {a: k / len(continuations) for a, k in sorted(counts.items())}
