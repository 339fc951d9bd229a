"""The driver: runs a selection sweep on Ray Tune and turns the fits into one Selection.

    from lensray.config import load_config
    from lensray.driver import run_select
    selection = run_select(load_config("configs/replay-flan.yaml"))

One Tune trial per Candidate (`trial.probe_trial`), early stopping by `CurveFitScheduler`,
progress printed one line per decision. State lives in `<output>/<name>/` (a folder or a storage
URI, lensray.storage): the scheduler's side file `sweep.jsonl` is the record of every
Observation, decision and status, so `resume` launches trials only for unfinished candidates,
each skipping the sizes it already reported.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from pathlib import Path

from lensray.config import ConfigError, SelectConfig
from lensray.probe import failure_reason
from lensray.report import Selection, build_selection, write_report
from lensray.scheduler import FAILED, FINISHED, STOPPED, CurveFitScheduler, read_state
from lensray.storage import Storage
from lensray.trial import FAILED_KEY

STATE_FILE = "sweep.jsonl"
MIRROR_EVERY_S = 10.0
"""How often a URI's copy of the side file is refreshed while a sweep runs: a driver lost in
between re-runs at most this many seconds of reports on --resume."""


def experiment_storage(cfg: SelectConfig) -> Storage:
    return Storage(cfg.output, cfg.name)


def init_ray(cfg: SelectConfig) -> None:
    """Join the configured cluster ($RAY_ADDRESS or ray_address), else start a local Ray whose
    dashboard (and so its Jobs and State APIs) listens on 127.0.0.1 only.

    The local dashboard is not decoration: Ray Train frees the placement group of a probe whose
    trial the scheduler stopped through the State API, and without it a stopped probe's workers'
    CPUs stay reserved and the sweep starves."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)


HF_TRIAL_CPU = 0.1
"""CPU an hf trial reserves for itself: it only drives a TorchTrainer, whose workers reserve
their own CPUs and GPUs (Tune refuses a trial with no resources at all)."""


def probe_resources(cfg: SelectConfig) -> dict[str, float]:
    """Resources one trial reserves."""
    if cfg.backend == "replay":
        return {"CPU": cfg.resources.cpus_per_worker}
    return {"CPU": HF_TRIAL_CPU}


def max_concurrent(cfg: SelectConfig, n_candidates: int) -> int:
    """How many probes fit on the cluster at once, so trials never starve each other."""
    import ray

    total = ray.cluster_resources()
    r = cfg.resources
    if cfg.backend == "replay":
        fit = int(total.get("CPU", 1) // r.cpus_per_worker)
    else:
        fit = int(total.get("CPU", 1) // (r.workers * r.cpus_per_worker + HF_TRIAL_CPU))
        if r.gpus_per_worker > 0:
            fit = min(fit, int(total.get("GPU", 0) // (r.workers * r.gpus_per_worker)))
    if fit < 1 and r.max_concurrent:
        return min(r.max_concurrent, n_candidates)  # an autoscaling cluster adds the nodes they ask for
    if fit < 1:
        raise ConfigError(
            f"one probe needs {r.workers} x {r.cpus_per_worker} CPU (+{HF_TRIAL_CPU} for its trial) and {r.workers} x "
            f"{r.gpus_per_worker} GPU but the cluster has {total.get('CPU', 0)} CPU / "
            f"{total.get('GPU', 0)} GPU: lower resources.* or add nodes (on an autoscaling cluster that starts "
            "empty, set resources.max_concurrent: the probes' requests make it add nodes)"
        )
    if r.max_concurrent:
        fit = min(fit, r.max_concurrent)
    return max(1, min(fit, n_candidates))


def live_trial_cap(cfg: SelectConfig, n_candidates: int) -> int | None:
    """Tune's cap on live trials (`max_concurrent_trials`; paused trials count), or None.

    An hf trial only drives a TorchTrainer whose workers reserve their own resources, so
    without a cap Tune would start more trials than their workers have room for and they would
    starve each other; synchronous rungs then run in cohorts of `max_concurrent` probes. A
    replay trial reserves its probe's resources itself, so Ray already bounds how many run, and
    with no cap every candidate is alive at once and each rung spans the whole pool."""
    cap = max_concurrent(cfg, n_candidates)  # also refuses a probe that fits nowhere
    return cap if cfg.backend == "hf" or cfg.resources.max_concurrent else None


def candidate_rows(cfg: SelectConfig) -> dict[str, str]:
    """Candidate name -> its model (the curves row for replay, the model's name for hf)."""
    if cfg.backend == "replay":
        from lensray.replay import replay_rows

        return replay_rows(cfg)
    return {c.name: c.model.name for c in cfg.candidates()}


class _Progress:
    """A Tune callback printing every new scheduler decision as one line (stderr)."""

    def __new__(cls, scheduler: CurveFitScheduler, total: int, quantity: str):
        from ray.tune import Callback

        class Progress(Callback):
            def __init__(self) -> None:
                self.t0, self.shown = time.time(), 0

            def on_step_end(self, iteration, trials, **info) -> None:
                new, self.shown = scheduler.decisions[self.shown :], len(scheduler.decisions)
                done = sum(c.status in (FINISHED, STOPPED, FAILED) for c in scheduler.curves.values())
                for d in new:
                    curve = scheduler.curves[d["candidate"]]
                    loss = curve.losses[curve.sizes.index(d["size"])]
                    pred = f" -> {d['predicted']:.4g} [{d['interval'][0]:.4g}, {d['interval'][1]:.4g}]" if "predicted" in d else ""
                    print(
                        f"[{time.time() - self.t0:7.1f}s {done}/{total} done] {d['candidate']} D={d['size']} "
                        f"{quantity}={loss:.4g}{pred} {d['decision']}: {d['reason']}",
                        file=sys.stderr, flush=True,
                    )

            def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
                if result.get(FAILED_KEY):
                    self._say(trial, f"FAILED: {result[FAILED_KEY]}")

            def on_trial_recover(self, iteration, trials, trial, **info) -> None:
                self._say(trial, f"lost ({self._reason(trial)}); retrying, failure "
                                 f"{trial.run_metadata.num_failures} of {trial.max_failures} allowed")

            def on_trial_error(self, iteration, trials, trial, **info) -> None:
                self._say(trial, f"FAILED: {self._reason(trial)}")

            @staticmethod
            def _reason(trial) -> str:
                return failure_reason(trial.get_pickled_error() or trial.get_error()) or "see the trial's error file"

            def _say(self, trial, text: str) -> None:
                print(f"[{time.time() - self.t0:7.1f}s] {trial.config.get('candidate')} {text}", file=sys.stderr, flush=True)

        return Progress()


class _Mirror:
    """A Tune callback copying the side file to a URI storage every MIRROR_EVERY_S seconds."""

    def __new__(cls, storage: Storage):
        from ray.tune import Callback

        class Mirror(Callback):
            def __init__(self) -> None:
                self.last = time.monotonic()

            def on_step_end(self, iteration, trials, **info) -> None:
                if time.monotonic() - self.last >= MIRROR_EVERY_S:
                    storage.push(STATE_FILE)
                    self.last = time.monotonic()

        return Mirror()


def run_select(cfg: SelectConfig, resume: bool = False, quiet: bool = False) -> Selection:
    """Run (or resume) the sweep, then fit, rank and write the report files."""
    from ray import tune

    from lensray.trial import probe_trial

    storage = experiment_storage(cfg)
    exp = storage.local
    state_path = exp / STATE_FILE
    storage.pull(STATE_FILE)
    if state_path.exists() and not resume:
        raise ConfigError(
            f"{storage.uri()} already holds a sweep: pass --resume to continue it, or choose another "
            "`name`/`output` (nothing was overwritten)"
        )
    exp.mkdir(parents=True, exist_ok=True)
    if cfg.zoo:
        from lensray.zoo import build_zoo

        build_zoo(Path(cfg.zoo))
    rows = candidate_rows(cfg)
    before = read_state(state_path)
    todo = [c for c in rows if before.status.get(c, ("",))[0] not in (FINISHED, STOPPED)]
    init_ray(cfg)
    scheduler = CurveFitScheduler(cfg.plan.target, cfg.scheduler, cfg.fit, state_path, cfg.plan.resolved_sizes())
    errors: dict[str, str] = {}
    t0 = time.time()
    if todo:
        job = {
            "config": cfg,
            "rows": rows,
            "skip": {c: [o.size for o in obs] for c, obs in before.observations.items()},
        }
        # sweep.jsonl is the sweep's record; Tune's own CSV/JSON/TensorBoard loggers would only
        # repeat it, and the TensorBoard one imports torch into the driver mid-run (on a cluster
        # job's driver that import intermittently aborted the process inside oneMKL).
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        trainable = tune.with_resources(tune.with_parameters(probe_trial, job=job), probe_resources(cfg))
        tuner = tune.Tuner(
            trainable,
            param_space={"candidate": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(
                scheduler=scheduler,
                max_concurrent_trials=live_trial_cap(cfg, len(todo)),
                reuse_actors=cfg.backend == "replay",
                trial_dirname_creator=lambda t: f"probe-{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=cfg.name,
                storage_path=cfg.output,
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
                callbacks=([_Mirror(storage)] if storage.remote else []) + ([] if quiet else [_Progress(scheduler, len(rows), cfg.ranked_by())]),
            ),
        )
        # lensray prints its own progress and one line per failed probe (stderr); Tune's console
        # tables and its tracebacks of failed trials would only repeat them.
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                results = tuner.fit()
        finally:
            storage.push(STATE_FILE)  # an interrupted sweep's record, for --resume
        for r in results:
            if r.error is not None:
                errors[r.config["candidate"]] = failure_reason(r.error)
    state = read_state(state_path)
    selection = build_selection(cfg, rows, state, errors, wall_s=time.time() - t0, scheduler_s=scheduler.decide_seconds)
    storage.push(STATE_FILE, *(p.name for p in write_report(selection, exp)))
    return selection
