"""The router the `route` stage trains on all the held-out queries, on disk: what `lensray serve`
loads. Two files in the experiment folder::

    route_router.json   the RouteConfig it was trained with, the number of queries, and the
                        finalists in the router's column order: each one's candidate name,
                        model (folder or hub id), data section (how its prompts are written:
                        design, template, schema) and its mean accuracy, FLOPs and latency per
                        held-out query (the costs break ties when serving)
    route_router.npz    its weights: the feature columns used, coef (d', m) and intercept (m,)

No pickles: the weights are arrays and the rest is JSON, so a router file runs no code.

    from lensray.stages.route.saved import load_router, save_router
    save_router(folder, router, finalists, queries=n)
    saved = load_router(folder)     # SavedRouter: .router (fitted), .route, .finalists, .queries
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from lensray.core.errors import ConfigError
from lensray.stages.route.config import RouteConfig
from lensray.stages.route.router import Router

FILES = ("route_router.json", "route_router.npz")
TRAINED_WITH = ("encoder", "features", "l2", "max_length")
"""The RouteConfig fields the weights depend on: serving with other values needs a new router."""


@dataclass(frozen=True)
class Finalist:
    """One finalist as serving runs it."""

    name: str
    """The candidate's name (model, or model+design)."""
    model: str
    """The model served: a save_pretrained folder (a path or a URI) or a hub id."""
    data: dict[str, Any]
    """The candidate's data section (DataConfig.to_dict()): how a query becomes its prompt."""
    trust_remote_code: bool = False
    """Let transformers run code shipped with the model."""
    fine_tuned: bool = False
    """`model` holds the weights the probe fine-tuned (else the candidate's pretrained model)."""
    accuracy: float = 0.0
    """Share of the held-out queries it answered right."""
    flops: float = 0.0
    """Mean FLOPs per held-out query."""
    latency_s: float = 0.0
    """Mean seconds per held-out query."""

    def cost(self, tie_cost: str) -> float:
        """Its mean cost per query on the axis `tie_cost` ("latency" or "flops")."""
        return self.latency_s if tie_cost == "latency" else self.flops


@dataclass(frozen=True)
class SavedRouter:
    """A fitted Router and the finalists its columns stand for."""

    router: Router
    route: RouteConfig
    """The settings it was trained with."""
    finalists: list[Finalist]
    """In the router's column order."""
    queries: int
    """Held-out queries it was trained on."""


def save_router(folder: Path, router: Router, finalists: list[Finalist], queries: int) -> list[Path]:
    """Write FILES into `folder` for a fitted `router` whose columns are `finalists`; their paths."""
    if router.coef_.shape[1] != len(finalists):
        raise ValueError(f"save_router: the router has {router.coef_.shape[1]} columns for {len(finalists)} finalists")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"route": asdict(router.cfg), "queries": queries, "finalists": [asdict(f) for f in finalists]}
    paths = [folder / FILES[0], folder / FILES[1]]
    paths[0].write_text(json.dumps(meta, indent=1) + "\n")
    with open(paths[1], "wb") as fh:  # a file object: np.savez would append .npz to a name
        np.savez(fh, columns=router.columns_, coef=router.coef_, intercept=router.intercept_)
    return paths


def load_router(folder: Path) -> SavedRouter:
    """The router FILES in `folder` describe; ConfigError when they are not there."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in FILES):
        raise ConfigError(
            f"{folder} holds no trained router ({' and '.join(FILES)}): run `lensray route CONFIG` on the "
            "finished selection, or select with stages: {post: [route]}"
        )
    meta = json.loads((folder / FILES[0]).read_text())
    known = {f.name for f in fields(Finalist)}
    finalists = [Finalist(**{k: v for k, v in f.items() if k in known}) for f in meta["finalists"]]
    router = Router(RouteConfig(**meta["route"]))
    with np.load(folder / FILES[1]) as weights:
        router.columns_, router.coef_, router.intercept_ = weights["columns"], weights["coef"], weights["intercept"]
    return SavedRouter(router, router.cfg, finalists, int(meta["queries"]))


def check_trained_with(saved: SavedRouter, route: RouteConfig) -> None:
    """Refuse serving under `route` settings the saved weights were not trained with."""
    for name in TRAINED_WITH:
        now, then = getattr(route, name), getattr(saved.route, name)
        if now != then:
            raise ConfigError(
                f"route.{name}={now!r} but the saved router was trained with {then!r} ({FILES[0]}): "
                f"train it again with `lensray route CONFIG`, or set route.{name} back"
            )
