"""`lensray bench scale`: a replay sweep over thousands of synthetic candidates; the wall time and
the share of it the scheduler's decisions take.
"""

from __future__ import annotations

from pathlib import Path

from lensray.bench.select import replay_config, sweep_name
from lensray.bench.synth import synthetic_curves
from lensray.core.curves import read_curves
from lensray.core.errors import ConfigError

BUDGET = 3200
"""The budget of the scale sweep: T/512 of the synthetic curves' largest size."""


def scale_outputs(candidates: int) -> list[str]:
    """What `bench_scale` writes into its folder: the synthetic curves and the sweep's folder."""
    if candidates < 1:
        raise ConfigError(f"--candidates must be at least 1, got {candidates}")
    stem = f"synthetic-{candidates}"
    return [f"{stem}.csv", sweep_name(Path(stem), BUDGET)]


def bench_scale(candidates: int, out_dir: Path, synchronous: bool = False) -> dict:
    """A replay sweep over `candidates` synthetic curves at budget T/512: wall time and the
    share of it spent in the scheduler's decisions. Asynchronous decisions by default: with
    synchronous rungs every size of every probe is a Tune pause and resume, which dominates the
    wall time of thousands of near-instant replay probes (docs/sweep.md)."""
    from lensray.pipeline import run_select

    out_dir.mkdir(parents=True, exist_ok=True)
    path = synthetic_curves(candidates, out_dir / scale_outputs(candidates)[0])
    cfg = replay_config(path, read_curves(path), BUDGET, out_dir, cpus=0.125, scheduler={"synchronous": synchronous})
    sel = run_select(cfg, quiet=True)
    return {
        "candidates": candidates,
        "wall_s": round(sel.doc["wall_s"], 2),
        "scheduler_share": round(sel.doc["scheduler_s"] / sel.doc["wall_s"], 5),
        "synchronous": synchronous,
        "fraction_of_all_probes": round(sel.doc["cost"]["fraction_of_all_probes"], 4),
    }
