"""The Tune trial: one Probe of one Candidate, reporting an Observation per subset size.

Runs in a Ray worker. `config` is {"candidate": name}; `job` (shipped once through the object
store with `tune.with_parameters`) holds the SelectConfig (an hf probe takes its Candidate's
model and design from it), each candidate's curves row ("rows", replay) and the sizes an
interrupted run already observed ("skip").

Failures: a probe that fails on its own (a ProbeError: bad data, divergence, out of memory, a
model that cannot load) reports {"candidate", FAILED_KEY: reason} and ends, so the scheduler
records it and Tune does not retry it. Only a trial that dies (its node lost, its process
killed) raises inside Tune, which retries it (`resources.max_failures`): a replay probe resumes
from the sizes in its checkpoint, an hf probe's Ray Train run (named after the trial) from its
own.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

DONE_FILE = "sizes_done.json"
FAILED_KEY = "failed"
"""Result key of a probe that failed on its own; its value is the one-line reason."""


def probe_trial(config: dict[str, Any], job: dict[str, Any]) -> None:
    from ray import tune

    from lensray.probe import ProbeError

    cfg = job["config"]
    candidate = config["candidate"]
    skip = set(job["skip"].get(candidate, ())) | _sizes_done(tune.get_checkpoint())
    if cfg.backend == "hf":
        try:
            _hf(cfg, candidate, skip, tune.get_context().get_trial_id())
        except ProbeError as e:
            tune.report({"candidate": candidate, FAILED_KEY: e.reason})
        return
    from lensray.replay import replay_probe

    for obs in replay_probe(cfg, candidate, job["rows"][candidate], skip):
        skip.add(obs.size)
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / DONE_FILE).write_text(json.dumps(sorted(skip)))
            tune.report(obs.to_dict(), checkpoint=tune.Checkpoint.from_directory(folder))


def _hf(cfg, name: str, skip: set[int], trial_id: str) -> None:
    """Fine-tune the remaining sizes in one TorchTrainer run; each size reaches Tune as it is
    done (Ray's TuneReportCallback), so the scheduler can stop the probe between sizes."""
    from dataclasses import replace

    from lensray.driver import experiment_storage
    from lensray.probe import ProbeSpec, run_probe

    sizes = tuple(s for s in cfg.plan.resolved_sizes() if s not in skip)
    if not sizes:
        return
    r = cfg.resources
    candidate = cfg.candidate(name)
    spec = ProbeSpec(
        candidate=name,
        model=candidate.model.path or candidate.model.name,
        data=replace(cfg.candidate_data(candidate), sizes=sizes, seed=cfg.seed),
        probe=replace(
            cfg.probe, num_workers=r.workers, cpus_per_worker=r.cpus_per_worker,
            device="cuda" if r.gpus_per_worker > 0 else "cpu", seed=cfg.seed,
            storage_path=experiment_storage(cfg).uri("train"),
            run_name=f"probe-{name}-{trial_id}", max_failures=r.max_failures,
        ),
        trust_remote_code=candidate.model.trust_remote_code,
    )
    run_probe(spec)


def _sizes_done(checkpoint) -> set[int]:
    """Sizes a paused (or restarted) probe already reported: its state between sizes, since every
    size is fine-tuned afresh from the pretrained weights."""
    if checkpoint is None:
        return set()
    with checkpoint.as_directory() as folder:
        return set(json.loads((Path(folder) / DONE_FILE).read_text()))
