"""The probe backend protocol and its registry: how one Candidate is probed in a Tune trial.

A backend is looked up by the config's `backend` name (an unknown name lists the options and the
closest match). The sweep asks it four things, and nothing else about probes::

    check(cfg)                before Ray starts: what can be checked on this machine
    pool(cfg)                 the Candidates, as a Pool
    footprint(cfg)            what one probe occupies, for how many run at once
    run(cfg, candidate, sizes, trial_id)
                              inside a Tune trial: probe `candidate` on `sizes`, reporting one
                              Observation per size to Tune as each is done, so the scheduler can
                              stop it between sizes; a failure of its own raises ProbeError

Built in: `hf` (lensray.probe.hf.backend: transformers + DeepSpeed under Ray Train) and `replay`
(lensray.probe.replay: recorded curves). Adding one is one module and one `register_backend`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Protocol

from lensray.core.errors import ConfigError

if TYPE_CHECKING:
    from lensray.config.schema import SelectConfig
    from lensray.core.types import Candidate, Pool


@dataclass(frozen=True)
class Footprint:
    """What one probe holds while it runs."""

    trial: dict[str, float]
    """Resources the Tune trial itself reserves (e.g. {"CPU": 0.25})."""
    cpus: float
    """CPUs the probe occupies in all (the trial's and its workers')."""
    gpus: float
    """GPUs the probe occupies in all."""
    cap_live_trials: bool
    """Whether Tune must cap the live trials: true when the trial only drives workers that
    reserve their own resources (Tune would otherwise start trials whose workers starve)."""
    reuse_actors: bool = False
    """Whether Tune may reuse a trial's actor for the next candidate (cheap, stateless probes)."""
    pending_per_slot: int = 0
    """Trials Tune may keep pending per probe that fits at once (0 = Tune's own default, at least
    200, so an autoscaling cluster sees the demand). Cheap probes set a few: each pending trial
    holds a placement-group request that Tune goes over at every step."""


class ProbeBackend(Protocol):
    name: str

    def check(self, cfg: "SelectConfig") -> None: ...

    def pool(self, cfg: "SelectConfig") -> "Pool": ...

    def footprint(self, cfg: "SelectConfig") -> Footprint: ...

    def run(self, cfg: "SelectConfig", candidate: "Candidate", sizes: list[int], trial_id: str) -> None: ...


BACKENDS: dict[str, str] = {"hf": "lensray.probe.hf.backend", "replay": "lensray.probe.replay"}
"""Backend name -> the module defining it (imported on first use; each defines BACKEND)."""
_LOADED: dict[str, ProbeBackend] = {}


def register_backend(backend: ProbeBackend) -> ProbeBackend:
    """Make `backend` available to the config's `backend`."""
    _LOADED[backend.name] = backend
    BACKENDS.setdefault(backend.name, type(backend).__module__)
    return backend


def get_backend(name: str) -> ProbeBackend:
    """The backend called `name`; an unknown name lists the options and the closest match."""
    if name not in _LOADED:
        if name not in BACKENDS:
            close = difflib.get_close_matches(name, BACKENDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}.{hint}")
        _LOADED[name] = import_module(BACKENDS[name]).BACKEND
    return _LOADED[name]
