"""Cross-validated evaluation of routing over the finalists, its files and its plot.

The held-out queries are split into `folds` shuffled folds; each fold's queries get their
confidences from a router trained on the other folds only, so every query is scored exactly once
and never by a router that saw it. Every policy (lensray.stages.route.policies) is then applied
to every query with those confidences, and so are the baselines, on the same folds:

    single:<name>   one finalist answers every query
    best_single     the single finalist with the highest accuracy over all the queries (chosen
                    on the very queries it is scored on, which favours it; ties: cheaper)
    majority        every finalist called, plain majority vote (ties to the cheaper)
    oracle          a query counts when any finalist is right; it costs the cheapest right
                    finalist (the cheapest finalist when none is) (RouterBench's oracle)

A policy's cost on a query is the sum of the costs of the finalists it calls, in FLOPs and in
latency. Each Score is the mean over all n queries (each scored once) and the standard deviation
of the fold means (ddof 1): the cross-validation spread.

The cost-accuracy plane (RouterBench, Hu et al. 2024): the upper-left hull of the points
(cost, accuracy) of the policies, the single finalists and the majority vote, i.e. the concave,
non-decreasing frontier from the cheapest point to the most accurate one; points below it are
beaten by a mix of two points on it. AIQ is the area under that frontier (flat beyond its last
point) over the points' cost range, divided by the range::

    AIQ = 1 / (c_max - c_min) * integral_{c_min}^{c_max} hull(c) dc       (= max accuracy if c_max = c_min)

    from lensray.stages.route.evaluate import RouteData, cross_validate, write_route_json, plot_accuracy_cost
    result = cross_validate(RouteData(queries, finalists, correct, answers, flops, latency), RouteConfig())
    write_route_json(result, folder / "route.json"); plot_accuracy_cost(result, folder / "route.png")
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lensray.core.errors import DataError
from lensray.stages.route.config import RouteConfig
from lensray.stages.route.policies import LABEL, POLICIES, decide, vote

AXES = ("flops", "latency")
"""The two costs every score and hull is given in."""


@dataclass(frozen=True)
class RouteData:
    """The finalists' results on the held-out queries: n queries, m finalists."""

    queries: Sequence[str]
    """The n query texts (what the router reads)."""
    finalists: Sequence[str]
    """The m finalists' names, in the column order of the arrays."""
    correct: np.ndarray
    """(n, m) 0/1: finalist j answered query i right."""
    answers: Sequence[Sequence[str]]
    """n rows of m answers: what finalist j answered to query i (equal strings are one vote)."""
    flops: np.ndarray
    """(n, m) or (m,) FLOPs finalist j spends on query i (or on any query)."""
    latency: np.ndarray
    """(n, m) or (m,) seconds finalist j takes on query i (or on any query)."""

    def __post_init__(self) -> None:
        n, m = len(self.queries), len(self.finalists)
        correct = np.asarray(self.correct)
        if correct.shape != (n, m) or not np.isin(correct, (0, 1)).all():
            raise DataError(f"RouteData.correct: must be ({n}, {m}) zeros and ones (queries x finalists); got shape {correct.shape}")
        if len(self.answers) != n or any(len(row) != m for row in self.answers):
            raise DataError(f"RouteData.answers: must be {n} rows of {m} answers (queries x finalists)")
        object.__setattr__(self, "correct", correct.astype(bool))
        for name in AXES:
            cost = np.asarray(getattr(self, name), dtype=float)
            if cost.shape not in ((m,), (n, m)) or not (np.isfinite(cost).all() and (cost >= 0).all()):
                raise DataError(f"RouteData.{name}: must be ({m},) or ({n}, {m}) finite costs >= 0; got shape {cost.shape}")
            object.__setattr__(self, name, np.broadcast_to(cost, (n, m)))

    @property
    def n(self) -> int:
        return len(self.queries)

    @property
    def m(self) -> int:
        return len(self.finalists)


@dataclass(frozen=True)
class Score:
    """Accuracy and mean cost per query of one policy or baseline, with their spread over folds."""

    accuracy: float
    accuracy_std: float
    flops: float
    """Mean FLOPs per query: the sum over the finalists called."""
    flops_std: float
    latency: float
    """Mean latency per query (seconds): the sum over the finalists called."""
    latency_std: float
    calls: float
    """Mean finalists called per query."""


@dataclass(frozen=True)
class RouteResult:
    """The cross-validated evaluation: what route.json holds."""

    finalists: list[str]
    queries: int
    folds: int
    policy: str
    """The policy the stage serves (RouteConfig.policy)."""
    k: int
    threshold: float
    scores: dict[str, Score]
    """Every policy by name, then single:<finalist>, best_single, majority, oracle."""
    best_single: str
    """The finalist best_single stands for."""
    router_f1: float
    """Micro F1 of the router's labels (confidence above 0.5) on the queries it did not see."""
    router_f1_std: float
    hull: dict[str, list[str]]
    """Per cost axis, the names on the upper-left hull, cheapest first."""
    aiq: dict[str, float]
    """Per cost axis, the area under the hull over the cost range, per unit cost."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RouterLike(Protocol):
    def fit(self, texts: Sequence[str], correct: np.ndarray) -> RouterLike: ...

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """(n,) the fold of each query: a seeded shuffle cut into `folds` near-equal parts."""
    if n < folds:
        raise DataError(f"route: {n} held-out queries cannot fill route.folds={folds} folds; lower route.folds or add queries")
    fold = np.empty(n, dtype=int)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return fold


def out_of_fold(data: RouteData, cfg: RouteConfig, make_router: Callable[[], RouterLike]) -> tuple[np.ndarray, np.ndarray]:
    """(n, m) confidences, each row from a router trained on the other folds, and (n,) folds."""
    fold = fold_ids(data.n, cfg.folds, cfg.seed)
    conf = np.empty((data.n, data.m))
    for f in range(cfg.folds):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        router = make_router().fit([data.queries[i] for i in train], data.correct[train])
        conf[test] = router.predict_proba([data.queries[i] for i in test])
    return conf, fold


def _score(right: np.ndarray, called: np.ndarray, data: RouteData, fold: np.ndarray) -> Score:
    """Score answers `right` (n,) bool from the finalists `called` (n, m) bool."""
    per_query = {"accuracy": right.astype(float), "calls": called.sum(1).astype(float)}
    per_query |= {a: (getattr(data, a) * called).sum(1) for a in AXES}
    folds = np.unique(fold)
    out = {}
    for name, v in per_query.items():
        out[name] = float(v.mean())
        if name != "calls":
            out[f"{name}_std"] = float(np.std([v[fold == f].mean() for f in folds], ddof=1))
    return Score(**out)


def _cheapest(cost: np.ndarray, among: np.ndarray) -> int:
    """The cheapest of the finalists `among` (bool (m,)), lowest index on equal cost."""
    idx = np.flatnonzero(among)
    return int(idx[np.lexsort((idx, cost[idx]))[0]])


def baselines(data: RouteData, fold: np.ndarray, tie_cost: str) -> tuple[dict[str, Score], str]:
    """The single finalists, best_single, majority and oracle (see the module), and the
    finalist best_single stands for."""
    n, m = data.n, data.m
    tie = getattr(data, tie_cost)
    scores = {}
    for j, name in enumerate(data.finalists):
        called = np.zeros((n, m), dtype=bool)
        called[:, j] = True
        scores[f"single:{name}"] = _score(data.correct[:, j], called, data, fold)
    best = max(range(m), key=lambda j: (data.correct[:, j].mean(), -tie[:, j].mean(), -j))
    scores["best_single"] = scores[f"single:{data.finalists[best]}"]
    source = [vote(list(data.answers[i]), [1.0] * m, tie[i]) for i in range(n)]
    scores["majority"] = _score(data.correct[np.arange(n), source], np.ones((n, m), dtype=bool), data, fold)
    oracle = np.zeros((n, m), dtype=bool)
    for i in range(n):
        right = data.correct[i]
        oracle[i, _cheapest(tie[i], right if right.any() else np.ones(m, dtype=bool))] = True
    scores["oracle"] = _score(data.correct.any(1), oracle, data, fold)
    return scores, data.finalists[best]


def upper_hull(costs: Sequence[float], accuracies: Sequence[float]) -> list[int]:
    """Indices of the points on the upper-left hull (see the module), cheapest first: from the
    cheapest point (the most accurate of the cheapest) up the concave frontier to the cheapest
    of the most accurate points."""
    c, a = np.asarray(costs, dtype=float), np.asarray(accuracies, dtype=float)
    hull: list[int] = []
    for i in np.lexsort((-a, c)):
        if hull and c[i] == c[hull[-1]]:
            continue  # same cost, less (or equally) accurate: below the point already kept
        while len(hull) >= 2:
            o, p = hull[-2], hull[-1]
            if (c[p] - c[o]) * (a[i] - a[o]) - (a[p] - a[o]) * (c[i] - c[o]) >= 0:
                hull.pop()  # p lies on or below the chord o -> i
            else:
                break
        hull.append(int(i))
    top = max(range(len(hull)), key=lambda h: (a[hull[h]], -h))
    return hull[:top + 1]


def aiq(costs: Sequence[float], accuracies: Sequence[float]) -> float:
    """RouterBench's AIQ of the points: the area under their upper-left hull, flat beyond its
    most accurate point, over the cost range, per unit cost (see the module)."""
    c, a = np.asarray(costs, dtype=float), np.asarray(accuracies, dtype=float)
    lo, hi = c.min(), c.max()
    if hi == lo:
        return float(a.max())
    h = upper_hull(c, a)
    xs, ys = np.append(c[h], hi), np.append(a[h], a[h[-1]])
    return float(np.trapezoid(ys, xs) / (hi - lo))


def cross_validate(data: RouteData, cfg: RouteConfig, make_router: Callable[[], RouterLike] | None = None) -> RouteResult:
    """Evaluate every policy and the baselines on the same cross-validation folds (see the module).

    Parameters
    ----------
    data : the finalists' correctness, answers and costs on the n held-out queries.
    cfg : the router, `k`, `threshold`, `folds`, `seed`, `tie_cost`.
    make_router : a fresh, untrained router per fold (default: `Router(cfg)`, all folds sharing
        one encoder).
    """
    if make_router is None:
        from lensray.stages.route.router import Router, make_encoder

        encoder = make_encoder(cfg)
        make_router = lambda: Router(cfg, encoder)
    conf, fold = out_of_fold(data, cfg, make_router)
    tie = getattr(data, cfg.tie_cost)
    scores: dict[str, Score] = {}
    for name in POLICIES:
        decisions = [decide(name, conf[i], data.answers[i], tie[i], cfg.k, cfg.threshold) for i in range(data.n)]
        called = np.zeros((data.n, data.m), dtype=bool)
        for i, d in enumerate(decisions):
            called[i, list(d.called)] = True
        right = data.correct[np.arange(data.n), [d.source for d in decisions]]
        scores[name] = _score(right, called, data, fold)
    base, best = baselines(data, fold, cfg.tie_cost)
    scores |= base
    labels = conf > LABEL
    f1 = [_micro_f1(labels[fold == f], data.correct[fold == f]) for f in range(cfg.folds)]
    on_plane = [s for s in scores if s not in ("best_single", "oracle")]
    hull, area = {}, {}
    for axis in AXES:
        costs = [getattr(scores[s], axis) for s in on_plane]
        accs = [scores[s].accuracy for s in on_plane]
        hull[axis] = [on_plane[i] for i in upper_hull(costs, accs)]
        area[axis] = aiq(costs, accs)
    return RouteResult(list(data.finalists), data.n, cfg.folds, cfg.policy, cfg.k, cfg.threshold, scores, best,
                       _micro_f1(labels, data.correct), float(np.std(f1, ddof=1)), hull, area)


def _micro_f1(pred: np.ndarray, true: np.ndarray) -> float:
    """2 TP / (2 TP + FP + FN) over every (query, finalist) label; 1 when both are all 0."""
    tp = int((pred & true).sum())
    wrong = int((pred != true).sum())
    return 1.0 if tp + wrong == 0 else 2 * tp / (2 * tp + wrong)


def write_route_json(result: RouteResult, path: Path) -> Path:
    """Write `result` as JSON to `path` (its folder is created); returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def plot_accuracy_cost(result: RouteResult, path: Path) -> Path:
    """Accuracy against mean cost per query, one panel per cost axis: every policy, single
    finalist and the majority vote as a point (the served policy ringed), their upper-left hull
    as a line, the oracle's accuracy as a dashed line. PNG at `path`; returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s for s in result.scores if s not in ("best_single", "oracle")]
    fig, axes = plt.subplots(1, len(AXES), figsize=(6 * len(AXES), 4.5), constrained_layout=True)
    for ax, axis in zip(axes, AXES):
        xs = [getattr(result.scores[s], axis) for s in names]
        near = 0.02 * (max(xs) - min(xs))  # points this close on the cost axis, at one accuracy, share a label
        at: dict[tuple[float, float], list[str]] = {}
        for s in names:
            sc = result.scores[s]
            color = "tab:blue" if s in POLICIES else "tab:gray" if s.startswith("single:") else "tab:orange"
            ax.errorbar(getattr(sc, axis), sc.accuracy, yerr=sc.accuracy_std, fmt="o", color=color, capsize=2)
            xy = next((k for k in at if k[1] == sc.accuracy and abs(k[0] - getattr(sc, axis)) <= near),
                      (getattr(sc, axis), sc.accuracy))
            at.setdefault(xy, []).append(s.removeprefix("single:"))
        for xy, labels in at.items():  # one label per point, naming all that coincide there
            ax.annotate(", ".join(labels), xy, fontsize=7, xytext=(4, 3), textcoords="offset points")
        served = result.scores[result.policy]
        ax.scatter([getattr(served, axis)], [served.accuracy], s=160, facecolors="none", edgecolors="tab:red",
                   label=f"served: {result.policy}")
        hx = [getattr(result.scores[s], axis) for s in result.hull[axis]]
        hy = [result.scores[s].accuracy for s in result.hull[axis]]
        ax.plot(hx, hy, "-", color="tab:green", label=f"hull (AIQ {result.aiq[axis]:.3f})")
        ax.axhline(result.scores["oracle"].accuracy, ls="--", color="k", lw=0.8, label="oracle")
        ax.set_xlabel("mean FLOPs per query" if axis == "flops" else "mean latency per query (s)")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"routing over {len(result.finalists)} finalists, {result.folds}-fold cross-validation "
                 f"({result.queries} queries)", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
