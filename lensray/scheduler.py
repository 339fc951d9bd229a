"""CurveFitScheduler: a Ray Tune scheduler that stops candidates that cannot win.

After an Observation (a subset size and its held-out loss) the scheduler refits that candidate's
partial curve (`fit.fit_local`, lensray's predictor, fitted together with every candidate that
reached the same sizes so noise and extrapolation error are estimated from the whole rung): a
predicted log-loss at the target T, m_i, with standard deviation s_i. It then tests whether each
other reliable fit j beats candidate i at T::

    j beats i  iff  (m_i - m_j) / sqrt(s_i^2 + s_j^2) > z,    z = Phi^-1(1 - alpha / R)
    STOP candidate i  iff  fit_i is reliable  and  at least k others beat it

so i cannot be in the top k. This is a test of the *difference* of two predictions, not of the
overlap of their intervals: two intervals of level 0.9 with equal widths can overlap while the
difference is significant at up to 99% (Schenker & Gentleman 2001); comparing overlaps needlessly
keeps candidates in the sweep. alpha = (1 - level) / 2 is the one-sided error of a bound of the
`level` interval, and it is spread over the R decisions a candidate goes through (the planned
sizes from the `min_points`-th to the one before the budget; Bonferroni, as for the repeated
looks of a group-sequential test): if the s.d. were right, a candidate that would beat its rival
at T would be stopped by that rival with probability at most alpha over the whole sweep, however
many sizes the plan has. `lensray bench curves` measures how far they are (the coverage of the
intervals of differences): at small budgets they are 2 to 4 times too small on the recorded
curves, so alpha is nominal (README, "How far to trust the intervals"). The extrapolation error is
kept whole in s_i, though a part of it shared by every curve would cancel in a difference: taking
that part out stops true bests (README, "late bloomers"). It never decides on fewer than
`min_points` sizes or on an unreliable fit (the fit says why), never stops while only `top_k`
candidates are left running, never stops at the last planned size (nothing would be saved), and
writes every decision with its reason.

Synchronous rungs (`synchronous`, the default): after each size a probe is PAUSED (it reports a
tiny checkpoint of the sizes it has done, so a resumed probe continues with the next size). When
every live candidate has reached that size, all of them are refitted and then judged, once, with
the whole rung's fits; the losers are stopped, the rest resumed. Without this, the first probes
to start run to the budget before any rival has a fit to be compared with, and a probe judged
early is compared with only part of the rung. "Live" means alive in Tune: when Tune caps the
live trials (hf probes, `driver.live_trial_cap`), a rung is that cohort's, and later cohorts
are judged against every fit recorded before them. The idea is that of successive halving /
ASHA (Li et al., MLSys 2020), with the rung comparison replaced by scaling-law extrapolation
(Lin et al. 2024; Zeng et al. 2025).

Progress is measured by the subset size, not `training_iteration` (which restarts on resume).
Tune does not restore a scheduler on `Tuner.restore`, so every observation and decision is also
appended to a JSON-lines side file in the experiment folder, from which a new scheduler rebuilds
its state.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from lensray.config import SchedulerConfig
from lensray.fit import CurveFit, FitConfig, fit_local, local_noise
from lensray.observation import Observation
from lensray.trial import FAILED_KEY

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

RUNNING, FINISHED, STOPPED, FAILED = "running", "finished", "stopped early", "failed"


@dataclass
class _Curve:
    """What the scheduler knows of one candidate."""

    sizes: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    fit: CurveFit | None = None
    status: str = RUNNING
    reason: str = ""
    rung_decided: int = 0
    """Largest size decided with every live candidate's fit at that size (once per rung)."""


class CurveFitScheduler(FIFOScheduler):
    """Early-stops Tune trials whose extrapolated loss at `target` cannot reach the top k."""

    def __init__(
        self,
        target: int,
        config: SchedulerConfig | None = None,
        fit_config: FitConfig | None = None,
        state_path: str | Path | None = None,
        sizes: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.target = int(target)
        self.config = config or SchedulerConfig()
        self.budget = int(sizes[-1]) if sizes else None
        """Last planned size: probes that reached it are done, nothing left to decide."""
        self.looks = max(len(sizes or []) - self.config.min_points, 1)
        """Decisions a candidate goes through (planned sizes from the `min_points`-th to the one
        before the budget; 1 when the plan is not known): the confidence is spread over them."""
        self.alpha = (1.0 - self.config.level) / 2.0 / self.looks
        """One-sided error of each decision; a rival beats a candidate beyond z s.d. of a difference."""
        self.z = NormalDist().inv_cdf(1.0 - self.alpha)
        self.fit_config = replace(fit_config or FitConfig(), level=self.config.level)
        self.state_path = Path(state_path) if state_path else None
        self.curves: dict[str, _Curve] = {}
        self.decisions: list[dict[str, Any]] = []
        # Every reliable, non-failed fit's predicted log-loss at T and its s.d. (NaN for the
        # others), one slot per candidate, so a decision is one vectorised pass over the pool:
        self._slots: dict[str, int] = {}
        self._names: list[str] = []
        self._rivals = np.full((0, 2), np.nan)
        self._ended = 0  # candidates stopped or failed
        self._noise: dict[int, tuple[int, tuple[float, float]]] = {}  # rung -> (peers, noise)
        self._reached: dict[int, int] = {}  # number of sizes -> candidates that observed them
        self._replaying = False  # rebuilding the state from the side file (see _replay)
        self.decide_seconds = 0.0
        """Time spent in `observe` (fit, decision, side file): the scheduler's share of a sweep."""
        if self.state_path and self.state_path.exists():
            self._replay(self.state_path)

    # --- Tune hooks -----------------------------------------------------------------------
    def on_trial_result(self, tune_controller, trial: "Trial", result: dict) -> str:
        name = result.get("candidate") or trial.config.get("candidate")
        if result.get(FAILED_KEY):
            self._set_status(name, FAILED, str(result[FAILED_KEY]))
            return TrialScheduler.STOP
        size, loss = result.get("size"), result.get("loss")
        if name is None or size is None or loss is None or not math.isfinite(float(loss)):
            return TrialScheduler.CONTINUE  # nothing to fit on
        return self.observe(
            Observation(
                str(name), int(size), float(loss), int(result.get("tokens", 0)),
                float(result.get("flops", 0.0)), float(result.get("wall_s", 0.0)),
                # Tune flattens nested metrics: {"extra": {"a": 1}} arrives as {"extra/a": 1}
                dict(result.get("extra") or {k[6:]: v for k, v in result.items() if k.startswith("extra/")}),
            )
        )

    def choose_trial_to_run(self, tune_controller) -> "Trial | None":
        """Start pending probes first; resume a paused one only when its rung is complete."""
        from ray.tune.experiment import Trial

        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        paused = [t for t in trials if t.status == Trial.PAUSED]
        if not paused:
            return None
        live = [c for c in self.curves.values() if c.status == RUNNING]
        waiting = {t.trial_id for t in paused}
        behind = [
            self._last_size(t.config.get("candidate"))
            for t in trials
            if t.status in (Trial.RUNNING, Trial.PENDING) and t.trial_id not in waiting
        ]
        rung = min([c.sizes[-1] if c.sizes else 0 for c in live] + behind, default=0)
        ready = []
        for trial in sorted(paused, key=lambda t: self._last_size(t.config.get("candidate"))):
            curve = self.curves.get(trial.config.get("candidate"))
            if curve is not None and curve.sizes and curve.sizes[-1] <= rung:
                ready.append((trial, trial.config.get("candidate"), curve))
        undecided = [(t, n, c) for t, n, c in ready if c.rung_decided < c.sizes[-1]]
        for _, name, curve in undecided:  # every fit of the rung first, then the judgements
            self._refit(name, curve)
        for trial, name, curve in undecided:
            if self._record(name, curve, rung_complete=True, refit=False) == TrialScheduler.STOP:
                tune_controller.stop_trial(trial)
        return next((t for t, _, c in ready if c.status == RUNNING), None)

    def _curve(self, name: str) -> _Curve:
        if name not in self.curves:
            self.curves[name] = _Curve()
        return self.curves[name]

    def _last_size(self, name: str | None) -> int:
        curve = self.curves.get(name) if name is not None else None
        return curve.sizes[-1] if curve is not None and curve.sizes else 0

    def on_trial_remove(self, tune_controller, trial: "Trial") -> None:
        """A paused probe stopped by `choose_trial_to_run`: its status is already recorded."""

    def on_trial_complete(self, tune_controller, trial: "Trial", result: dict) -> None:
        self._set_status(trial.config.get("candidate"), FINISHED, "")

    def on_trial_error(self, tune_controller, trial: "Trial") -> None:
        """The trial died more than `max_failures` times (its reason comes from Tune's result)."""
        self._set_status(trial.config.get("candidate"), FAILED, "the probe's trial died; see its error")

    def debug_string(self) -> str:
        counts = {s: 0 for s in (RUNNING, FINISHED, STOPPED, FAILED)}
        for c in self.curves.values():
            counts[c.status] += 1
        return (
            f"CurveFitScheduler: top_k={self.config.top_k} level={self.config.level} | "
            + ", ".join(f"{v} {k}" for k, v in counts.items())
        )

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump({"curves": self.curves, "decisions": self.decisions}, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            state = pickle.load(fh)
        self.curves, self.decisions = state["curves"], state["decisions"]

    # --- the decision -----------------------------------------------------------------------
    def observe(self, obs: Observation) -> str:
        """Record one Observation and decide CONTINUE or STOP for its candidate."""
        t0 = time.perf_counter()
        name, size, loss = obs.candidate, obs.size, obs.loss
        curve = self._curve(name)
        if size in curve.sizes:  # a re-run after a failure or resume reports the size again
            curve.losses[curve.sizes.index(size)] = loss
        else:
            order = int(np.searchsorted(curve.sizes, size))
            curve.sizes.insert(order, size)
            curve.losses.insert(order, loss)
            self._reached[len(curve.sizes)] = self._reached.get(len(curve.sizes), 0) + 1
        if self._replaying:  # the side file's own decisions follow it
            self._refit(name, curve)
            return TrialScheduler.CONTINUE
        self._log({"event": "observation", **obs.to_dict()})
        if self._pause_after(size):  # decided once the whole rung is in (choose_trial_to_run)
            decision = TrialScheduler.PAUSE
            self._note(name, size, decision, f"waiting for every live candidate to reach D={size}")
        else:
            decision = self._record(name, curve)
        self.decide_seconds += time.perf_counter() - t0
        return decision

    def _pause_after(self, size: int) -> bool:
        return (
            self.config.enabled
            and self.config.synchronous
            and self.budget is not None
            and size < self.budget
        )

    def _record(self, name: str, curve: _Curve, rung_complete: bool = False, refit: bool = True) -> str:
        """Decide for `name` at its largest size, and write the decision down."""
        decision, reason = self._decide(name, curve, refit)
        if rung_complete:
            curve.rung_decided = curve.sizes[-1]
        self._note(name, curve.sizes[-1], decision, reason, curve.fit if curve.fit is not None and curve.fit.ok else None)
        if decision == TrialScheduler.STOP:
            self._status(name, curve, STOPPED, reason)
        return decision

    def _status(self, name: str, curve: _Curve, status: str, reason: str) -> None:
        """The one place a candidate's status changes (keeps the counters right)."""
        ended = (STOPPED, FAILED)
        self._ended += (status in ended) - (curve.status in ended)
        curve.status, curve.reason = status, reason
        if status == FAILED:
            self._set_rival(name, None)

    def _note(self, name: str, size: int, decision: str, reason: str, fit: CurveFit | None = None) -> None:
        record = {"event": "decision", "candidate": name, "size": size, "decision": decision, "reason": reason}
        if fit is not None:
            record.update(predicted=fit.predicted_loss, interval=list(fit.interval))
        self.decisions.append(record)
        self._log(record)

    def _refit(self, name: str, curve: _Curve) -> None:
        """Fit `name` with the noise and extrapolation error of every candidate that reached the
        same sizes (estimated from the whole rung, not from a few points; re-estimated whenever
        the rung has grown by a tenth)."""
        n = len(curve.sizes)
        if n < self.config.min_points:
            return
        count = self._reached.get(n, 0)
        seen, noise = self._noise.get(n, (0, None))
        if noise is None or count >= max(seen + 1, 1.1 * seen) and seen < 20 or count >= 1.1 * seen:
            rows = [c.losses[:n] for c in self.curves.values() if c.sizes[:n] == curve.sizes]
            noise = local_noise(curve.sizes, rows, self.fit_config)
            self._noise[n] = (count, noise)
        curve.fit = fit_local(curve.sizes, [curve.losses], self.target, [name], self.fit_config, noise)[0]
        self._set_rival(name, curve.fit if curve.fit.ok and curve.status != FAILED else None)

    def _set_rival(self, name: str, fit: CurveFit | None) -> None:
        """Enter (or, with None, withdraw) `name`'s fit as a rival of every other candidate."""
        if name not in self._slots:
            self._slots[name] = len(self._names)
            self._names.append(name)
            if len(self._names) > self._rivals.shape[0]:  # grow by doubling: O(1) amortised
                grown = np.full((max(2 * self._rivals.shape[0], 16), 2), np.nan)
                grown[: self._rivals.shape[0]] = self._rivals
                self._rivals = grown
        self._rivals[self._slots[name]] = (
            (math.log(fit.predicted_loss), fit.params["sd_log"]) if fit is not None else (np.nan, np.nan)
        )

    def _decide(self, name: str, curve: _Curve, refit: bool = True) -> tuple[str, str]:
        cfg = self.config
        if not cfg.enabled:
            return TrialScheduler.CONTINUE, "early stopping disabled"
        if len(curve.sizes) < cfg.min_points:
            return TrialScheduler.CONTINUE, f"{len(curve.sizes)} of {cfg.min_points} sizes needed to decide"
        if refit:
            self._refit(name, curve)
        if self.budget is not None and curve.sizes[-1] >= self.budget:
            return TrialScheduler.CONTINUE, "reached the budget"
        if not curve.fit.ok:
            return TrialScheduler.CONTINUE, f"fit not reliable: {curve.fit.reason}"
        alive = len(self.curves) - self._ended
        if alive <= cfg.top_k:
            return TrialScheduler.CONTINUE, f"only {alive} candidates left; keeping the top {cfg.top_k}"
        rivals = self._rivals[: len(self._names)]
        mean, sd = math.log(curve.fit.predicted_loss), curve.fit.params["sd_log"]
        with np.errstate(invalid="ignore"):
            margin = (mean - rivals[:, 0]) / np.sqrt(sd**2 + rivals[:, 1] ** 2)
        margin[self._slots[name]] = np.nan
        others = np.flatnonzero(~np.isnan(margin))
        if others.size < cfg.top_k:
            return TrialScheduler.CONTINUE, f"fewer than {cfg.top_k} other reliable fits to compare with"
        # the k-th strongest rival decides: at least k others beat i iff it does
        kth = others[np.argpartition(-margin[others], cfg.top_k - 1)[cfg.top_k - 1]]
        rival, z_rival = self._names[kth], float(margin[kth])
        versus = (
            f"predicted {curve.fit.predicted_loss:.4g} at T against {math.exp(rivals[kth, 0]):.4g} of "
            f"{rival}, a difference of {z_rival:.2f} s.d."
        )
        if z_rival > self.z:
            return TrialScheduler.STOP, (
                f"cannot reach the top {cfg.top_k}: {versus} > {self.z:.2f} (one-sided {1 - self.alpha:.2%}: "
                f"level {cfg.level:g} spread over {self.looks} decision{'s' * (self.looks > 1)})"
            )
        return TrialScheduler.CONTINUE, f"in contention: {versus} <= {self.z:.2f}"

    # --- state ------------------------------------------------------------------------------
    def _set_status(self, name: str | None, status: str, reason: str) -> None:
        if name is None:
            return
        curve = self._curve(str(name))
        if curve.status == RUNNING:
            self._status(str(name), curve, status, reason)
            self._log({"event": "status", "candidate": str(name), "status": status, "reason": reason})

    def _log(self, record: dict[str, Any]) -> None:
        if self.state_path is None:
            return
        with open(self.state_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def _replay(self, path: Path) -> None:
        """Rebuild curves, fits and statuses from the side file of an interrupted run."""
        text = path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):  # a record torn by a crash: end it so appends stay whole
            with open(path, "a", encoding="utf-8") as fh:
                fh.write("\n")
        # Replay what was recorded and decide nothing: a decision taken now would see the rung
        # incomplete (or the statuses out of order) and could stop a probe the record keeps
        # running, which a synchronous sweep would then wait for forever.
        log, self.state_path, self._replaying = self.state_path, None, True
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec.get("event") == "observation":
                self.observe(_observation(rec))
            elif rec.get("event") == "decision":
                self.decisions.append(rec)
                curve = self._curve(rec["candidate"])
                if rec["decision"] != TrialScheduler.PAUSE:  # a decided rung is not decided again
                    curve.rung_decided = max(curve.rung_decided, int(rec["size"]))
                if rec["decision"] == TrialScheduler.STOP:
                    self._status(rec["candidate"], curve, STOPPED, rec.get("reason", ""))
            elif rec.get("event") == "status":
                self._status(rec["candidate"], self._curve(rec["candidate"]), rec["status"], rec.get("reason", ""))
        self.state_path, self._replaying = log, False


def _observation(rec: dict[str, Any]) -> Observation:
    fields = ("candidate", "size", "loss", "tokens", "flops", "wall_s", "extra")
    return Observation(**{k: rec[k] for k in fields if k in rec})


@dataclass(frozen=True)
class SweepState:
    """What the side file of a sweep says: every Observation, decision and final status."""

    observations: dict[str, list[Observation]]
    decisions: list[dict[str, Any]]
    status: dict[str, tuple[str, str]]


def read_state(path: str | Path) -> SweepState:
    """Read a scheduler side file (the last record of a size or a status wins)."""
    obs: dict[str, dict[int, Observation]] = {}
    decisions, status = [], {}
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        event = rec.get("event")
        if event == "observation":
            o = _observation(rec)
            obs.setdefault(o.candidate, {})[o.size] = o
        elif event == "decision":
            decisions.append(rec)
            if rec["decision"] == TrialScheduler.STOP:
                status[rec["candidate"]] = (STOPPED, rec["reason"])
        elif event == "status" and status.get(rec["candidate"], ("",))[0] != STOPPED:
            status[rec["candidate"]] = (rec["status"], rec.get("reason", ""))
    return SweepState({c: [v[s] for s in sorted(v)] for c, v in obs.items()}, decisions, status)
