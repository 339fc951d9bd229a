"""The Tune trial: one Probe of one Candidate, reporting an Observation per subset size.

Runs in a Ray worker. `config` is {"candidate": name}; `job` (shipped once through the object
store with `tune.with_parameters`) holds the SelectConfig, what each
candidate's probe loads ("rows") and the sizes an interrupted run already observed ("skip").
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

DONE_FILE = "sizes_done.json"


def probe_trial(config: dict[str, Any], job: dict[str, Any]) -> None:
    from ray import tune

    cfg = job["config"]
    candidate = config["candidate"]
    skip = set(job["skip"].get(candidate, ())) | _sizes_done(tune.get_checkpoint())
    if cfg.backend == "hf":
        _hf(cfg, candidate, job["rows"][candidate], skip)
        return
    from lensray.replay import replay_probe

    for obs in replay_probe(cfg, candidate, job["rows"][candidate], skip):
        skip.add(obs.size)
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / DONE_FILE).write_text(json.dumps(sorted(skip)))
            tune.report(obs.to_dict(), checkpoint=tune.Checkpoint.from_directory(folder))


def _hf(cfg, candidate: str, model: str, skip: set[int]) -> None:
    """Fine-tune the remaining sizes in one TorchTrainer run; each size reaches Tune as it is
    done (Ray's TuneReportCallback), so the scheduler can stop the probe between sizes."""
    from dataclasses import replace

    from lensray.driver import experiment_dir
    from lensray.probe import ProbeSpec, run_probe

    sizes = tuple(s for s in cfg.plan.resolved_sizes() if s not in skip)
    if not sizes:
        return
    r = cfg.resources
    spec = ProbeSpec(
        candidate=candidate,
        model=model,
        data=replace(cfg.data, sizes=sizes, seed=cfg.seed),
        probe=replace(
            cfg.probe, num_workers=r.workers, cpus_per_worker=r.cpus_per_worker,
            device="cuda" if r.gpus_per_worker > 0 else "cpu", seed=cfg.seed,
            storage_path=str((experiment_dir(cfg) / "train").resolve()),
        ),
        trust_remote_code=next((m.trust_remote_code for m in cfg.pool.models if m.name == candidate), False),
    )
    run_probe(spec)


def _sizes_done(checkpoint) -> set[int]:
    """Sizes a paused (or restarted) probe already reported: its state between sizes, since every
    size is fine-tuned afresh from the pretrained weights."""
    if checkpoint is None:
        return set()
    with checkpoint.as_directory() as folder:
        return set(json.loads((Path(folder) / DONE_FILE).read_text()))
