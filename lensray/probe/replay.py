"""The replay backend: a probe that replays a recorded curve instead of fine-tuning.

The same Tune sweep, scheduler and driver then run on published curves (and on pools of
thousands of synthetic candidates) on a laptop. Each planned size reports the recorded loss
and the FLOPs that size would have cost (6 x parameters x examples x tokens per example);
`sleep_s_per_pflop` makes a replayed size take time in proportion to that cost, so probes
progress at realistic relative speeds.
"""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np

from lensray.config.schema import SelectConfig
from lensray.core.cost import train_flops
from lensray.core.curves import Curves, read_curves
from lensray.core.errors import ConfigError
from lensray.core.types import Candidate, ModelSpec, Observation, Pool
from lensray.probe.base import Footprint

DEFAULT_PARAMS = 1e8  # assumed when the curves carry no `size` column


@lru_cache(maxsize=4)
def _curves(path: str) -> Curves:
    return read_curves(path)


def replay_rows(cfg: SelectConfig) -> dict[str, str]:
    """Candidate name -> row name in the curves file, validated against the plan."""
    curves = _curves(cfg.replay.curves)
    missing = [s for s in cfg.plan.resolved_sizes() if s not in curves.sizes]
    if missing:
        raise ConfigError(
            f"plan sizes {missing} are not columns of {cfg.replay.curves}; its sizes are "
            f"{curves.sizes.astype(int).tolist()}"
        )
    if not cfg.pool.models:
        return {c: c for c in curves.candidates}
    rows = {m.name: (m.path or m.name) for m in cfg.pool.models}
    unknown = [r for r in rows.values() if r not in curves.candidates]
    if unknown:
        raise ConfigError(f"pool.models rows {unknown} are not in {cfg.replay.curves}; it has {curves.candidates[:5]}...")
    return rows


def replay_probe(cfg: SelectConfig, candidate: str, row: str, sizes: list[int]):
    """Yield one Observation per size of `sizes` from `row`'s recorded curve."""
    curves = _curves(cfg.replay.curves)
    i = curves.candidates.index(row)
    n_params = float(curves.n_params[i]) if curves.n_params is not None else DEFAULT_PARAMS
    for size in sizes:
        tokens = size * cfg.replay.tokens_per_example
        flops = train_flops(n_params, tokens)
        t0 = time.perf_counter()
        if cfg.replay.sleep_s_per_pflop > 0:
            time.sleep(cfg.replay.sleep_s_per_pflop * flops / 1e15)
        loss = float(curves.losses[i, int(np.flatnonzero(curves.sizes == size)[0])])
        yield Observation(candidate, size, loss, tokens, flops, time.perf_counter() - t0)


class ReplayBackend:
    """The `replay` probe backend (see the module docstring)."""

    name = "replay"

    def check(self, cfg: SelectConfig) -> None:
        replay_rows(cfg)

    def pool(self, cfg: SelectConfig) -> Pool:
        """One Candidate per row (its model's name is the row's)."""
        return Pool([Candidate(name, ModelSpec(row, row)) for name, row in replay_rows(cfg).items()])

    def footprint(self, cfg: SelectConfig) -> Footprint:
        cpus = cfg.resources.cpus_per_worker
        return Footprint({"CPU": cpus}, cpus, 0.0, cap_live_trials=False, reuse_actors=cfg.resources.reuse_processes,
                         pending_per_slot=2)

    def run(self, cfg: SelectConfig, candidate: Candidate, sizes: list[int], trial_id: str) -> None:
        """Report each size's recorded loss to Tune, with a checkpoint of the sizes done so a
        retried trial resumes after them."""
        from ray import tune

        from lensray.sweep.trial import report_with_progress

        planned = cfg.plan.resolved_sizes()
        done = set(planned) - set(sizes)
        for obs in replay_probe(cfg, candidate.name, candidate.model.path or candidate.model.name, sizes):
            done.add(obs.size)
            report_with_progress(tune, obs, done)


BACKEND = ReplayBackend()
