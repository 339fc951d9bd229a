"""CurveFitScheduler: the Ray Tune scheduler that runs the stopping rule (lensray.sweep.rule).

A thin adapter: each trial's result becomes an Observation for the rule, and the rule's Action
is Tune's (CONTINUE, STOP, PAUSE). The rule itself (the fits, the test of differences, the state)
is pure numpy and lives in `rule.py`; this module only speaks Tune.

Synchronous rungs (`scheduler.synchronous`, the default): after each size it can be decided at
(`StoppingRule.decision_sizes`) a probe is PAUSED (it reports a tiny checkpoint of the sizes it
has done, so a resumed probe continues with the next size). When every live candidate has
reached that size, all of them are refitted and then judged, once, with the whole rung's fits;
the losers are stopped, the rest resumed. Without this, the first probes to start run to the
budget before any rival has a fit to be compared with, and a probe judged early is compared
with only part of the rung. "Live" means alive in Tune: when Tune caps the live trials (hf
worker groups, or `resources.max_concurrent`), a rung is that cohort's, and later cohorts are
judged against every fit recorded before them. The idea is that of successive halving / ASHA
(Li et al., MLSys 2020), with the rung comparison replaced by scaling-law extrapolation (Lin et
al. 2024; Zeng et al. 2025).

A sweep resumed from its side file (`lensray select --resume`) starts new trials, which Tune runs
at once: a probe that was paused at a rung still to be decided first reports that it is there
(HOLD_KEY) and is paused again, so it is judged with the rung before it goes on.

Progress is measured by the subset size, not `training_iteration` (which restarts on resume).
Tune does not restore a scheduler on `Tuner.restore`, so every observation and decision is also
appended to the side file (lensray.sweep.record), from which a new scheduler rebuilds its rule;
`save`/`restore` keep the whole rule, so a restored scheduler decides exactly as the original.
"""

from __future__ import annotations

import math
import pickle
from typing import TYPE_CHECKING

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from lensray.core.types import Observation, Status
from lensray.sweep.rule import StoppingRule
from lensray.sweep.trial import FAILED_KEY, HOLD_KEY

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


def _unflatten(result: dict, prefix: str) -> dict:
    """The metrics under `prefix` as the nested dict they were reported as: Tune flattens nested
    metrics, so {"extra": {"a": 1, "b": {"c": 2}}} arrives as {"extra/a": 1, "extra/b/c": 2}."""
    out: dict = {}
    for key, value in result.items():
        if key.startswith(prefix):
            *parents, leaf = key[len(prefix):].split("/")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return out


class CurveFitScheduler(FIFOScheduler):
    """Early-stops Tune trials whose extrapolated loss at the target cannot reach the top k.

    Args:
        rule: the stopping rule (its target, config, predictor, plan and side file).
    """

    def __init__(self, rule: StoppingRule) -> None:
        super().__init__()
        self.rule = rule
        self._added: dict[str, int] = {}  # trial id -> the order Tune added it in

    def on_trial_add(self, tune_controller, trial: "Trial") -> None:
        self._added.setdefault(trial.trial_id, len(self._added))

    def on_trial_result(self, tune_controller, trial: "Trial", result: dict) -> str:
        name = result.get("candidate") or trial.config.get("candidate")
        if result.get(FAILED_KEY):
            self.rule.set_status(name, Status.FAILED, str(result[FAILED_KEY]))
            return TrialScheduler.STOP
        if result.get(HOLD_KEY):  # a resumed sweep's probe, at a rung still to be decided
            return TrialScheduler.PAUSE if name is not None and self.rule.open_rung(str(name)) else TrialScheduler.CONTINUE
        size, loss = result.get("size"), result.get("loss")
        if name is None or size is None or loss is None or not math.isfinite(float(loss)):
            return TrialScheduler.CONTINUE  # nothing to fit on
        return self.rule.observe(
            Observation(
                str(name), int(size), float(loss), int(result.get("tokens", 0)),
                float(result.get("flops", 0.0)), float(result.get("wall_s", 0.0)),
                dict(result.get("extra") or _unflatten(result, "extra/")),
            )
        ).value

    def choose_trial_to_run(self, tune_controller) -> "Trial | None":
        """Start pending probes first; resume a paused one only when its rung is complete."""
        from ray.tune.experiment import Trial

        rule = self.rule
        # only the trials not yet ended: scanning every trial on each call made a pool of n cost O(n^2)
        trials = tune_controller.get_live_trials()
        pending = [t for t in trials if t.status == Trial.PENDING]
        if pending:  # the first Tune added
            return min(pending, key=lambda t: self._added.get(t.trial_id, len(self._added)))
        paused = [t for t in trials if t.status == Trial.PAUSED]
        if not paused:
            return None
        live = [c for c in rule.curves.values() if c.status == Status.RUNNING]
        waiting = {t.trial_id for t in paused}
        behind = [
            rule.last_size(t.config.get("candidate"))
            for t in trials
            if t.status in (Trial.RUNNING, Trial.PENDING) and t.trial_id not in waiting
        ]
        rung = min([c.sizes[-1] if c.sizes else 0 for c in live] + behind, default=0)
        ready = []
        for trial in sorted(paused, key=lambda t: rule.last_size(t.config.get("candidate"))):
            curve = rule.curves.get(trial.config.get("candidate"))
            if curve is not None and curve.sizes and curve.sizes[-1] <= rung:
                ready.append((trial, curve))
        actions = rule.judge_rung([t.config["candidate"] for t, _ in ready])
        for trial, _ in ready:
            if actions.get(trial.config["candidate"]) == TrialScheduler.STOP:
                tune_controller.stop_trial(trial)
        return next((t for t, c in ready if c.status == Status.RUNNING), None)

    def on_trial_remove(self, tune_controller, trial: "Trial") -> None:
        """A paused probe stopped by `choose_trial_to_run`: its status is already recorded."""

    def on_trial_complete(self, tune_controller, trial: "Trial", result: dict) -> None:
        self.rule.set_status(trial.config.get("candidate"), Status.FINISHED, "")

    def on_trial_error(self, tune_controller, trial: "Trial") -> None:
        """The trial died more than `max_failures` times (its reason comes from Tune's result)."""
        self.rule.set_status(trial.config.get("candidate"), Status.FAILED, "the probe's trial died; see its error")

    def debug_string(self) -> str:
        cfg = self.rule.config
        return (
            f"CurveFitScheduler: top_k={cfg.top_k} level={cfg.level} | "
            + ", ".join(f"{v} {k}" for k, v in self.rule.counts().items())
        )

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.rule, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.rule = pickle.load(fh)
