"""Pipeline stages and their registry: what runs before the sweep and after it.

    pre-sweep stage    run(cfg, pool, folder) -> Pool
                       may drop Candidates (Pool.drop, with the reason) and attach priors
    post-sweep stage   run(cfg, selection, folder) -> (Selection, [files it wrote])

The config's `stages.pre` and `stages.post` list them by name, in the order they run; both are
empty by default. `folder` is the experiment's folder: a stage writes its own files there.
Adding a stage is one module and one `register_stage` call.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from lensray.core.errors import ConfigError
from lensray.core.types import Pool, Selection

if TYPE_CHECKING:
    from lensray.config.schema import SelectConfig

Kind = Literal["pre", "post"]


class PreSweepStage(Protocol):
    name: str

    def run(self, cfg: "SelectConfig", pool: Pool, folder: Path) -> Pool: ...


class PostSweepStage(Protocol):
    name: str

    def run(self, cfg: "SelectConfig", selection: Selection, folder: Path) -> tuple[Selection, list[Path]]: ...


STAGES: dict[str, dict[str, PreSweepStage | PostSweepStage]] = {"pre": {}, "post": {}}
"""Registered stages by kind and name."""


def require_task_probes(cfg: "SelectConfig", uses: str) -> None:
    """Raise a ConfigError unless cfg's probes keep each held-out query's result (backend hf,
    probe.metric task): what a post-sweep stage that `uses` them needs, e.g. "the route stage
    routes on each held-out query's result"."""
    if cfg.backend != "hf" or cfg.probe.metric != "task":
        now = f"backend is {cfg.backend!r}" if cfg.backend != "hf" else f"probe.metric is {cfg.probe.metric!r}"
        raise ConfigError(f"{uses}, but {now}: set backend: hf and probe.metric: task (the probes then keep them)")


def register_stage(kind: Kind, stage: PreSweepStage | PostSweepStage) -> None:
    """Make `stage` available to the config's `stages.<kind>`."""
    STAGES[kind][stage.name] = stage


def get_stage(kind: Kind, name: str) -> PreSweepStage | PostSweepStage:
    """The `kind` stage called `name`; an unknown name lists the options and the closest match."""
    options = STAGES[kind]
    if name in options:
        return options[name]
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    have = ", ".join(options) or "none registered yet"
    raise ConfigError(f"stages.{kind}: unknown stage {name!r}; the {kind}-sweep stages are: {have}.{hint}")
