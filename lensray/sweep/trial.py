"""The Tune trial: one Probe of one Candidate, reporting an Observation per subset size.

Runs in a Ray worker. `config` is {"candidate": name}; the job (`JobRef`: put in the object store
once by the driver, read once per worker process) holds the SelectConfig, the Pool's Candidates
by name, the sizes an interrupted run already observed ("skip") and the candidates it left paused
at a rung still to be decided ("hold"). The probe backend (lensray.probe.base) does the probing;
this function only works out which sizes are left, and holds a probe at its rung first.

Failures: a probe that fails on its own (a ProbeError: bad data, divergence, out of memory, a
model that cannot load) reports {"candidate", FAILED_KEY: reason} and ends, so the scheduler
records it and Tune does not retry it. Only a trial that dies (its node lost, its process
killed) raises inside Tune, which retries it (`resources.max_failures`): it resumes after the
sizes in its checkpoint (`report_with_progress`) or the side file.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lensray.core.types import Observation

@dataclass(frozen=True)
class JobRef:
    """The sweep's job in the object store. Wrapped so that `tune.with_parameters` ships the
    reference, not the job: Tune would deserialise the whole job (every Candidate of the pool)
    for each trial, which made a pool of n candidates cost O(n^2); `job()` reads it once per
    worker process."""

    ref: Any

    def job(self) -> dict[str, Any]:
        import ray

        key = self.ref.hex()
        if key not in _JOBS:
            _JOBS.clear()  # a reused worker of another sweep: one job at a time
            _JOBS[key] = ray.get(self.ref)
        return _JOBS[key]


_JOBS: dict[str, dict[str, Any]] = {}
"""This worker process's job, by object id (JobRef.job)."""

DONE_FILE = "sizes_done.json"
FAILED_KEY = "failed"
"""Result key of a probe that failed on its own; its value is the one-line reason."""
HOLD_KEY = "hold"
"""Result key of a probe of a resumed sweep that stands at a rung still to be decided (the job's
"hold"): it reports only that, before fine-tuning anything, so the scheduler can pause it there."""


def probe_trial(config: dict[str, Any], job_ref: JobRef) -> None:
    from ray import tune

    from lensray.core.errors import ProbeError
    from lensray.probe.base import get_backend

    job = job_ref.job()
    cfg = job["config"]
    candidate = job["candidates"][config["candidate"]]
    checkpoint = tune.get_checkpoint()
    skip = set(job["skip"].get(candidate.name, ())) | _sizes_done(checkpoint)
    sizes = [s for s in cfg.plan.resolved_sizes() if s not in skip]
    if not sizes:
        return
    if checkpoint is None and candidate.name in job["hold"]:  # paused there when the sweep stopped
        _report_done(tune, {"candidate": candidate.name, HOLD_KEY: True}, skip)
    try:
        get_backend(cfg.backend).run(cfg, candidate, sizes, tune.get_context().get_trial_id())
    except ProbeError as e:
        tune.report({"candidate": candidate.name, FAILED_KEY: e.reason})


def report_with_progress(tune, obs: Observation, done: set[int]) -> None:
    """Report `obs` to Tune with a checkpoint of the sizes `done`, so a paused or retried trial
    continues after them (every size is fine-tuned afresh, so that is all its state)."""
    _report_done(tune, obs.to_dict(), done)


def _report_done(tune, metrics: dict[str, Any], done: set[int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / DONE_FILE).write_text(json.dumps(sorted(done)))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _sizes_done(checkpoint) -> set[int]:
    """Sizes a paused (or restarted) probe already reported."""
    if checkpoint is None:
        return set()
    with checkpoint.as_directory() as folder:
        return set(json.loads((Path(folder) / DONE_FILE).read_text()))
