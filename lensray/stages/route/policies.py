"""SelectLLM's policies: which finalists a query is sent to, given the router's confidences, and
how their answers are combined. Pure numpy, one query at a time.

For one query with m finalists, the router gives confidences c_j = P(finalist j is right) and
each finalist a cost q_j (`RouteConfig.tie_cost`: latency or FLOPs). Finalists are ranked by
confidence, most confident first; equal confidences go cheaper first, then by index::

    order = sort j by (-c_j, q_j, j)

A policy picks a subset S of that order and the answer is the (weighted) majority vote of the
finalists in S: answers are grouped by equal strings, a group scores the sum of its members'
weights w_j (1 for a plain vote, c_j for a weighted one), and the highest score wins; equal
scores (within 1e-9 relative) go to the group whose cheapest member is cheapest, then to the
lowest index. The answer is taken from that cheapest member (its correctness is the answer's).

    policy              S                                                         vote
    max_conf            order[:1]: the single most confident finalist            (one answer)
    top_k               order[:k]                                                 plain
    labelled_max_conf   the finalists labelled right (c_j > 0.5, the multi-label  plain
                        classifier's decision) in order, at most k; none
                        labelled: order[:1]
    weighted_max_conf   order[:k]                                                 weighted by c_j
    threshold           every finalist with c_j > threshold, in order; none:      plain
                        order[:1]

SelectLLM (Maurya et al., arXiv 2408.08545) names MaxConf, LabelledMaxConf and
WeightedMaxConf, selects a subset by confidence, sends ties to the lower-latency model and
combines by (weighted) majority vote; lensray's SEEDS.md gives no finer rule, so the table above
is lensray's reading: MaxConf is the subset of one, LabelledMaxConf restricts the subset to the
finalists the classifier labels right, WeightedMaxConf weights each vote by its confidence.

    from lensray.stages.route.policies import decide
    d = decide("weighted_max_conf", conf, answers, cost, k=2)   # (m,), m strings, (m,)
    d.called, d.source, d.answer
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LABEL = 0.5
"""Confidence above which the multi-label classifier labels a finalist right."""


@dataclass(frozen=True)
class RouteDecision:
    """What a policy did with one query."""

    called: tuple[int, ...]
    """The finalists called (their answers are voted on), most confident first."""
    source: int
    """The finalist whose answer is returned."""
    answer: str
    """The answer returned."""


@dataclass(frozen=True)
class Policy:
    """A subset rule and whether its vote is weighted by confidence."""

    name: str
    select: Callable[[np.ndarray, np.ndarray, int, float], list[int]]
    """(confidences (m,), order (m,), k, threshold) -> the finalists called, in order."""
    weighted: bool
    """Votes weighted by confidence (else one finalist, one vote)."""


def rank(conf: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Finalist indices, most confident first; equal confidences cheaper first, then by index."""
    conf, cost = np.asarray(conf, dtype=float), np.asarray(cost, dtype=float)
    return np.lexsort((np.arange(len(conf)), cost, -conf))


def vote(answers: Sequence[str], weights: Sequence[float], cost: Sequence[float]) -> int:
    """The position (in `answers`) of the answer that wins the weighted majority vote, from its
    cheapest supporter; ties go to the group with the cheapest supporter, then the lowest
    position (see the module)."""
    if not answers:
        raise ValueError("vote needs at least one answer")
    groups: dict[str, list[int]] = {}
    for i, a in enumerate(answers):
        groups.setdefault(a, []).append(i)
    score = {a: math.fsum(weights[i] for i in idx) for a, idx in groups.items()}
    best = max(score.values())
    tied = [a for a, s in score.items() if math.isclose(s, best, rel_tol=1e-9)]
    cheapest = {a: min(groups[a], key=lambda i: (cost[i], i)) for a in tied}
    return min(cheapest.values(), key=lambda i: (cost[i], i))


def _max_conf(conf: np.ndarray, order: np.ndarray, k: int, threshold: float) -> list[int]:
    return [int(order[0])]


def _top_k(conf: np.ndarray, order: np.ndarray, k: int, threshold: float) -> list[int]:
    return [int(j) for j in order[:k]]


def _labelled(conf: np.ndarray, order: np.ndarray, k: int, threshold: float) -> list[int]:
    return [int(j) for j in order if conf[j] > LABEL][:k] or [int(order[0])]


def _above(conf: np.ndarray, order: np.ndarray, k: int, threshold: float) -> list[int]:
    return [int(j) for j in order if conf[j] > threshold] or [int(order[0])]


POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("max_conf", _max_conf, weighted=False),
    Policy("top_k", _top_k, weighted=False),
    Policy("labelled_max_conf", _labelled, weighted=False),
    Policy("weighted_max_conf", _top_k, weighted=True),
    Policy("threshold", _above, weighted=False),
)}
"""The policies by name (the table in the module's docstring)."""


def decide(policy: str, conf: np.ndarray, answers: Sequence[str], cost: np.ndarray, k: int = 2,
           threshold: float = 0.5) -> RouteDecision:
    """Apply `policy` to one query.

    Parameters
    ----------
    policy : a name of POLICIES.
    conf : (m,) the router's confidence that each finalist is right.
    answers : m answers, one per finalist (only the called ones are read).
    cost : (m,) each finalist's cost on this query; the cheaper wins ties.
    k : the most finalists top_k, labelled_max_conf and weighted_max_conf call.
    threshold : the threshold policy calls every finalist above it.

    Returns
    -------
    The RouteDecision: the finalists called, the one the answer comes from, the answer.
    """
    p = POLICIES[policy]
    conf = np.asarray(conf, dtype=float)
    called = p.select(conf, rank(conf, cost), k, threshold)
    weights = [conf[j] if p.weighted else 1.0 for j in called]
    source = called[vote([answers[j] for j in called], weights, [cost[j] for j in called])]
    return RouteDecision(tuple(called), source, answers[source])
