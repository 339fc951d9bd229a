"""The sweep on Ray: one Tune trial per Candidate of the Pool, early stopping by the curve-fit
scheduler, progress printed one line per decision.

    state, errors, scheduler_s = run_sweep(cfg, pool, resume=False)

`scheduler` replaces the curve-fit scheduler by another Tune scheduler (the baselines of
`lensray bench select`: ASHA, the median stopping rule); the side file then records what the
trials report and how each ended (_Record), so the report and the cost read the same.

State lives in `<output>/<name>/` (a folder or a storage URI, lensray.cluster.storage): the side
file `sweep.jsonl` (lensray.sweep.record) is the record of every Observation, Decision and
Status, so `resume` launches trials only for unfinished candidates, each skipping the sizes it
already reported. Ray is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

from lensray.cluster.storage import Storage
from lensray.config.schema import SelectConfig
from lensray.core.environ import environ
from lensray.core.errors import ConfigError, failure_reason
from lensray.core.types import Observation, Pool, Status
from lensray.probe.base import Footprint, get_backend
from lensray.sweep.record import STATE_FILE, SweepRecord, SweepState, read_state
from lensray.sweep.rule import StoppingRule
from lensray.sweep.trial import FAILED_KEY

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler

MIRROR_EVERY_S = 10.0
"""How often a URI's copy of the side file is refreshed while a sweep runs: a driver lost in
between re-runs at most this many seconds of reports on --resume."""


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


def max_concurrent(cfg: SelectConfig, n_candidates: int, footprint: Footprint) -> int:
    """How many probes fit on the cluster at once, so trials never starve each other."""
    import ray

    total = ray.cluster_resources()
    r = cfg.resources
    fit = int(total.get("CPU", 1) // footprint.cpus)
    if footprint.gpus > 0:
        fit = min(fit, int(total.get("GPU", 0) // footprint.gpus))
    if fit < 1 and r.max_concurrent:
        return min(r.max_concurrent, n_candidates)  # an autoscaling cluster adds the nodes they ask for
    if fit < 1:
        raise ConfigError(
            f"one probe needs {footprint.cpus:g} CPU and {footprint.gpus:g} GPU (resources.workers x "
            f"cpus_per_worker / gpus_per_worker, and its trial's) but the cluster has {total.get('CPU', 0)} CPU / "
            f"{total.get('GPU', 0)} GPU: lower resources.* or add nodes (on an autoscaling cluster that starts "
            "empty, set resources.max_concurrent: the probes' requests make it add nodes)"
        )
    if r.max_concurrent:
        fit = min(fit, r.max_concurrent)
    return max(1, min(fit, n_candidates))


def live_trial_cap(cfg: SelectConfig, n_candidates: int, footprint: Footprint) -> int | None:
    """Tune's cap on live trials (`max_concurrent_trials`; paused trials count), or None.

    A trial that only drives workers reserving their own resources (an hf worker group) needs a
    cap, or Tune would start more trials than their workers have room for and they would starve
    each other; synchronous rungs then run in cohorts of `max_concurrent` probes. A trial that
    reserves its probe's resources itself (replay, an hf probe in its trial's process) is
    bounded by Ray already, and with no cap every candidate is alive at once (a paused one holds
    nothing) and each rung spans the whole pool."""
    cap = max_concurrent(cfg, n_candidates, footprint)  # also refuses a probe that fits nowhere
    return cap if footprint.cap_live_trials or cfg.resources.max_concurrent else None


WAIT_NOTE_S = 60.0
"""After this long without a report, the progress says what the probes are waiting for."""


class _Progress:
    """A Tune callback printing every new scheduler decision as one line (stderr), and, when no
    probe has reported for WAIT_NOTE_S, what one probe needs against what the cluster has free."""

    def __new__(cls, rule: StoppingRule, total: int, quantity: str, footprint: Footprint):
        from ray.tune import Callback

        class Progress(Callback):
            def __init__(self) -> None:
                self.t0, self.shown = time.time(), 0
                self.active = time.monotonic()  # the last report, or the last note

            def on_step_end(self, iteration, trials, **info) -> None:
                if len(rule.decisions) == self.shown and time.monotonic() - self.active > WAIT_NOTE_S:
                    self._waiting(trials)
                new, self.shown = rule.decisions[self.shown :], len(rule.decisions)
                if new:
                    self.active = time.monotonic()
                done = sum(c.status != Status.RUNNING for c in rule.curves.values())
                for d in new:
                    curve = rule.curves[d.candidate]
                    loss = curve.losses[curve.sizes.index(d.size)]
                    pred = f" -> {d.predicted:.4g} [{d.interval[0]:.4g}, {d.interval[1]:.4g}]" if d.predicted is not None else ""
                    print(
                        f"[{time.time() - self.t0:7.1f}s {done}/{total} done] {d.candidate} D={d.size} "
                        f"{quantity}={loss:.4g}{pred} {d.action}: {d.reason}",
                        file=sys.stderr, flush=True,
                    )

            def _waiting(self, trials) -> None:
                """Say what the probes wait for, when one that Tune started holds less than a
                probe needs (its workers are not placed) or none could start at all."""
                import ray

                self.active = time.monotonic()
                running = sum(t.status == "RUNNING" for t in trials)
                pending = sum(t.status == "PENDING" for t in trials)
                total, free = ray.cluster_resources(), ray.available_resources()
                held = {r: total.get(r, 0.0) - free.get(r, 0.0) for r in ("CPU", "GPU")}
                short = any(running * need > held[r] + 1e-6 for r, need in (("CPU", footprint.cpus), ("GPU", footprint.gpus)))
                if not (short or (pending and not running)):
                    return  # the probes are running, just long
                print(
                    f"[{time.time() - self.t0:7.1f}s] no probe has reported for {time.monotonic() - self.active:.0f} s: "
                    f"each probe needs {footprint.cpus:g} CPU and {footprint.gpus:g} GPU, the cluster has "
                    f"{free.get('CPU', 0):g} CPU and {free.get('GPU', 0):g} GPU free (probes wait for resources; "
                    "an autoscaling cluster adds nodes for them)",
                    file=sys.stderr, flush=True,
                )

            def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
                self.active = time.monotonic()
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


class _Record:
    """A Tune callback writing to the side file what the trials of a scheduler other than the
    curve-fit one report (that one's stopping rule records its own): every Observation, and how
    each trial ended: finished (every planned size reported), stopped early by `scheduler`, or
    failed. `before`: the side file's state when the sweep started (sizes already reported)."""

    def __new__(cls, record: SweepRecord, sizes: list[int], before: SweepState, scheduler: str):
        from ray.tune import Callback

        class Record(Callback):
            def __init__(self) -> None:
                self.reported = {c: {o.size for o in obs} for c, obs in before.observations.items()}
                self.failed: set[str] = set()

            def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
                name = trial.config["candidate"]
                if result.get(FAILED_KEY):
                    self.failed.add(name)
                    record.status(name, Status.FAILED, str(result[FAILED_KEY]))
                elif result.get("size") is not None and result.get("loss") is not None:
                    obs = Observation.from_dict(result)
                    record.observation(obs)
                    self.reported.setdefault(name, set()).add(obs.size)

            def on_trial_complete(self, iteration, trials, trial, **info) -> None:
                name = trial.config["candidate"]
                if name in self.failed:
                    return
                done = self.reported.get(name, set())
                if done >= set(sizes):
                    record.status(name, Status.FINISHED, "")
                else:
                    record.status(name, Status.STOPPED, f"stopped by {scheduler} after {len(done)} of {len(sizes)} sizes")

            def on_trial_error(self, iteration, trials, trial, **info) -> None:
                record.status(trial.config["candidate"], Status.FAILED, "the probe's trial died; see its error")

        return Record()


def run_sweep(
    cfg: SelectConfig, pool: Pool, resume: bool = False, quiet: bool = False, scheduler: "TrialScheduler | None" = None
) -> tuple[SweepState, dict[str, str], float]:
    """Run (or resume) the sweep of `pool`; returns the side file's state, the candidates whose
    trials died (-> reason) and the seconds the stopping rule took. `scheduler`: a Tune scheduler
    run instead of the curve-fit one (see the module docstring); it takes no seconds of the rule."""
    import ray
    from ray import tune

    from lensray.sweep.scheduler import CurveFitScheduler
    from lensray.sweep.trial import JobRef, probe_trial

    storage = cfg.storage()
    state_path = storage.local / STATE_FILE
    before = read_state(state_path)
    todo = [c for c in pool.names if before.status.get(c, ("",))[0] not in (Status.FINISHED, Status.STOPPED)]
    init_ray(cfg)
    record = SweepRecord(state_path)
    rule = StoppingRule(cfg.plan.target, cfg.scheduler, cfg.fit, cfg.plan.resolved_sizes(), record, pool.priors)
    errors: dict[str, str] = {}
    if todo:
        footprint = get_backend(cfg.backend).footprint(cfg)
        job = {
            "config": cfg,
            "candidates": {c.name: c for c in pool.candidates},
            "skip": {c: [o.size for o in obs] for c, obs in before.observations.items()},
            "hold": {c for c in todo if rule.open_rung(c)} if scheduler is None else set(),
        }
        # sweep.jsonl is the sweep's record; Tune's own CSV/JSON/TensorBoard loggers would only
        # repeat it, and the TensorBoard one imports torch into the driver mid-run (on a cluster
        # job's driver that import intermittently aborted the process inside oneMKL).
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        # Tune's experiment state (every trial, saved every ~10 s) serves Tuner.restore, which
        # lensray does not use (--resume reads sweep.jsonl); saved every minute it stops growing
        # into the wall time of a pool of thousands.
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "60")
        job_ref = JobRef(ray.put(job))  # the driver keeps the reference alive until the sweep ends
        trainable = tune.with_resources(tune.with_parameters(probe_trial, job_ref=job_ref), footprint.trial)
        pending = footprint.pending_per_slot * max_concurrent(cfg, len(todo), footprint)
        tuner = tune.Tuner(
            trainable,
            param_space={"candidate": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(
                scheduler=CurveFitScheduler(rule) if scheduler is None else scheduler,
                max_concurrent_trials=live_trial_cap(cfg, len(todo), footprint),
                reuse_actors=footprint.reuse_actors,
                trial_dirname_creator=lambda t: f"probe-{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=cfg.name,
                storage_path=cfg.output,
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
                callbacks=([_Mirror(storage)] if storage.remote else [])
                + ([_Record(record, cfg.plan.resolved_sizes(), before, type(scheduler).__name__)] if scheduler is not None else [])
                + ([] if quiet else [_Progress(rule, len(pool.names), cfg.ranked_by(), footprint)]),
            ),
        )
        # lensray prints its own progress and one line per failed probe (stderr); Tune's console
        # tables and its tracebacks of failed trials would only repeat them.
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        try:
            with contextlib.redirect_stdout(io.StringIO()), environ(TUNE_MAX_PENDING_TRIALS_PG=str(pending) if pending else None):
                results = tuner.fit()
        finally:
            record.close()
            storage.push(STATE_FILE)  # an interrupted sweep's record, for --resume
        for r in results:
            if r.error is not None:
                errors[r.config["candidate"]] = failure_reason(r.error)
    return read_state(state_path), errors, rule.decide_seconds
