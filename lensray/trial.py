"""The Tune trial: one Probe of one Candidate, reporting an Observation per subset size.

Runs in a Ray worker. `config` is {"candidate": name}; `job` (shipped once through the object
store with `tune.with_parameters`) holds the whole SelectConfig as plain data, what each
candidate's probe loads ("rows") and the sizes an interrupted run already observed ("skip").
"""

from __future__ import annotations

from typing import Any


def probe_trial(config: dict[str, Any], job: dict[str, Any]) -> None:
    from ray import tune

    from lensray.config import config_from_dict

    cfg = config_from_dict(job["config"])
    candidate = config["candidate"]
    skip = set(job["skip"].get(candidate, ()))
    if cfg.backend == "replay":
        from lensray.replay import replay_probe

        observations = replay_probe(cfg, candidate, job["rows"][candidate], skip)
    else:
        from lensray.probe import hf_observations

        observations = hf_observations(cfg, candidate, skip)
    for obs in observations:
        tune.report(obs.to_dict())
