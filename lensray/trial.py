"""The Tune trial: one Probe of one Candidate, reporting an Observation per subset size.

Runs in a Ray worker. `config` is {"candidate": name}; `job` (shipped once through the object
store with `tune.with_parameters`) holds the whole SelectConfig as plain data, what each
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

    from lensray.config import config_from_dict

    cfg = config_from_dict(job["config"])
    candidate = config["candidate"]
    skip = set(job["skip"].get(candidate, ())) | _sizes_done(tune.get_checkpoint())
    if cfg.backend == "replay":
        from lensray.replay import replay_probe

        observations = replay_probe(cfg, candidate, job["rows"][candidate], skip)
    else:
        from lensray.probe import hf_observations

        observations = hf_observations(cfg, candidate, skip)
    for obs in observations:
        skip.add(obs.size)
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / DONE_FILE).write_text(json.dumps(sorted(skip)))
            tune.report(obs.to_dict(), checkpoint=tune.Checkpoint.from_directory(folder))


def _sizes_done(checkpoint) -> set[int]:
    """Sizes a paused (or restarted) probe already reported: its state between sizes, since every
    size is fine-tuned afresh from the pretrained weights."""
    if checkpoint is None:
        return set()
    with checkpoint.as_directory() as folder:
        return set(json.loads((Path(folder) / DONE_FILE).read_text()))
