"""The pipeline: one selection job from a config to its files.

    config -> Pool -> pre-sweep stages -> sweep -> rank -> post-sweep stages -> report

    from lensray.config.load import load_config
    from lensray.pipeline import run_select
    selection = run_select(load_config("configs/replay-flan.yaml"))

Everything that can be checked on this machine is checked before Ray starts (the config on
load, then the probe backend's `check`). The experiment's state and files live in
`<output>/<name>/`; a folder that already holds a sweep is continued only with `resume`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from lensray.config.schema import SelectConfig
from lensray.core.errors import ConfigError
from lensray.core.types import Pool, Selection
from lensray.probe.base import get_backend
from lensray.report.files import write_report
from lensray.report.rank import build_selection
from lensray.stages.base import get_stage
from lensray.sweep.record import STATE_FILE
from lensray.sweep.run import run_sweep

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler


def initial_pool(cfg: SelectConfig) -> Pool:
    """The config's Pool before any stage, once everything that can be checked here is (the
    zoo built first when the config names one)."""
    backend = get_backend(cfg.backend)
    if cfg.zoo:
        from lensray.zoo.build import build_zoo

        build_zoo(Path(cfg.zoo))
    backend.check(cfg)
    return backend.pool(cfg)


def run_select(cfg: SelectConfig, resume: bool = False, quiet: bool = False, scheduler: "TrialScheduler | None" = None) -> Selection:
    """Run (or resume) the whole pipeline and write the report files. `scheduler`: a Tune
    scheduler to sweep with instead of lensray's curve-fit one (lensray.sweep.run)."""
    storage = cfg.storage()
    storage.pull(STATE_FILE)
    if (storage.local / STATE_FILE).exists() and not resume:
        raise ConfigError(
            f"{storage.uri()} already holds a sweep: pass --resume to continue it, or choose another "
            "`name`/`output` (nothing was overwritten)"
        )
    pool = initial_pool(cfg)
    storage.local.mkdir(parents=True, exist_ok=True)
    for name in cfg.stages.pre:
        pool = get_stage("pre", name).run(cfg, pool, storage.local)
    t0 = time.time()
    state, errors, scheduler_s = run_sweep(cfg, pool, resume, quiet, scheduler)
    selection = build_selection(cfg, pool, state, errors, wall_s=time.time() - t0, scheduler_s=scheduler_s)
    files: list[Path] = []
    for name in cfg.stages.post:
        selection, written = get_stage("post", name).run(cfg, selection, storage.local)
        files += written
    files += write_report(selection, storage.local)
    storage.push(STATE_FILE, *(str(p.relative_to(storage.local)) for p in files))
    return selection
