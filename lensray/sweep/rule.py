"""The stopping rule: after every Observation, refit that candidate's partial curve and decide
whether it can still win. Pure numpy (no Ray); `lensray.sweep.scheduler` runs it inside Tune.

After an Observation (a subset size and its held-out loss) the rule refits that candidate's
curve with the configured predictor (`fit.method`, `blend` by default), fitted with the
estimates pooled over the candidates that reached the same sizes (up to POOL_PEERS of them), so
noise and extrapolation error come from the rung: a predicted log-loss at the target T, m_i,
with standard deviation s_i (`CurveFit.sd_log`: the part of the error that is the candidate's
own; the part the pool shares cancels in a comparison). It then tests whether each other
reliable fit j beats candidate i at T::

    j beats i  iff  (m_i - m_j) / sqrt(s_i^2 + s_j^2) > z,    z = Phi^-1(1 - alpha / R)
    STOP candidate i  iff  fit_i is reliable  and  at least k others beat it

so i cannot be in the top k. This is a test of the *difference* of two predictions, not of the
overlap of their intervals: two intervals of level 0.9 with equal widths can overlap while the
difference is significant at up to 99% (Schenker & Gentleman 2001). alpha = (1 - level) / 2 is
the one-sided error of a bound of the `level` interval, spread over the R decisions a candidate
goes through (the planned sizes from the `min_points`-th to the one before the budget;
Bonferroni, as for the repeated looks of a group-sequential test): if the s.d. were right, a
candidate that would beat its rival at T would be stopped by that rival with probability at most
alpha over the whole sweep, however many sizes the plan has. `lensray bench curves --suite`
measures how far they are (the coverage of the intervals of differences, docs/predictor.md):
the default predictor's are calibrated on the suite's dev pools. A flat candidate (still in its
pre-power phase) has a reliable fit with a wide interval borrowed from its peers, so it is
stopped only when even a large fall from its level would leave it out of the top k; where a
pre-sweep stage gave the candidate a prior (its relatives' loss at T), the flat fit is combined
with it (lensray.predict.prior), and a flat fit with too few peers to borrow from is decided on
the prior. The rule
never decides on fewer than `min_points` sizes or on an unreliable fit (the fit says why), never stops
while only `top_k` candidates are left running, never stops at the last planned size (nothing
would be saved), and records every Decision with its reason.

Each decision is one vectorised pass over the pool: every reliable fit's (m_j, s_j) sits in one
array, one slot per candidate. The whole state (curves, rivals, pooled estimates) is this
object, so pickling it saves a rule that decides exactly as the original would.

    rule = StoppingRule(target=1_638_400, sizes=[200, 400, 800, 1600, 3200])
    rule.observe(Observation("a", 200, 2.1))        # -> Action.CONTINUE
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

import numpy as np

from lensray.config.schema import SchedulerConfig
from lensray.core.types import Action, CurveFit, Decision, Observation, Status
from lensray.predict.fit import FitConfig
from lensray.predict.methods import get_predictor
from lensray.predict.prior import with_prior
from lensray.sweep.record import SweepRecord


POOL_PEERS = 1000
"""Most candidates a rung's pooled estimates (noise, peers' slopes) are taken from: the first to
reach its sizes. With more, those estimates' own sampling error (a few percent at 1,000) is
already far below what they measure, and re-estimating them over a pool of thousands took a third
of the rule's time."""


@dataclass
class CandidateState:
    """What the rule knows of one candidate."""

    sizes: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    fit: CurveFit | None = None
    status: Status = Status.RUNNING
    reason: str = ""
    rung_decided: int = 0
    """Largest size decided with every live candidate's fit at that size (once per rung)."""


class StoppingRule:
    """Decides CONTINUE / STOP for each candidate from its fit and its rivals' (see the module).

    Args:
        target: T, the data size whose loss is predicted and ranked.
        config: top_k, level, min_points, enabled, synchronous.
        fit_config: how curves are fitted; its `method` names the predictor. Its level is set to
            the rule's.
        sizes: the plan's sizes; the last is the budget (no decision there), and their number
            sets how many decisions share the confidence.
        record: where every Observation, Decision and Status is appended (the side file); a
            record that already holds events rebuilds the state from them first.
        priors: per candidate, the prior a pre-sweep stage attached (`Pool.priors`): a flat
            curve's fit is combined with it (lensray.predict.prior).
    """

    def __init__(
        self,
        target: int,
        config: SchedulerConfig | None = None,
        fit_config: FitConfig | None = None,
        sizes: list[int] | None = None,
        record: SweepRecord | None = None,
        priors: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        self.target = int(target)
        self.priors = dict(priors or {})
        self.config = config or SchedulerConfig()
        self.fit_config = replace(fit_config or FitConfig(), level=self.config.level)
        self.predictor = get_predictor(self.fit_config.method)
        self.min_points = max(self.config.min_points, self.predictor.min_points)
        self.budget = int(sizes[-1]) if sizes else None
        """Last planned size: probes that reached it are done, nothing left to decide."""
        self.decision_sizes = frozenset((sizes or [])[self.config.min_points - 1 : -1])
        """Planned sizes a candidate is decided at: from the `min_points`-th to the one before the
        budget. Synchronous rungs pause there only; the sizes before them have nothing to decide."""
        self.looks = max(len(self.decision_sizes), 1)
        """Decisions a candidate goes through (1 when the plan is not known): the confidence is
        spread over them."""
        self.alpha = (1.0 - self.config.level) / 2.0 / self.looks
        """One-sided error of each decision; a rival beats a candidate beyond z s.d. of a difference."""
        self.z = NormalDist().inv_cdf(1.0 - self.alpha)
        self.record = record or SweepRecord(None)
        self.curves: dict[str, CandidateState] = {}
        self.decisions: list[Decision] = []
        # Every reliable, non-failed fit's predicted log-loss at T and its s.d. (NaN for the
        # others), one slot per candidate, so a decision is one vectorised pass over the pool:
        self._slots: dict[str, int] = {}
        self._names: list[str] = []
        self._rivals = np.full((0, 2), np.nan)
        self._ended = 0  # candidates stopped or failed
        self._pooled: dict[int, tuple[int, int, Any]] = {}  # sizes -> (rung, peers used, pooled estimate)
        self._reached: dict[int, int] = {}  # number of sizes -> candidates that observed them
        self.decide_seconds = 0.0
        """Time spent in `observe` (fit, decision, side file): the scheduler's share of a sweep."""
        self._replay()

    # --- what the sweep calls ---------------------------------------------------------------
    def observe(self, obs: Observation, replaying: bool = False) -> Action:
        """Record one Observation and decide for its candidate (PAUSE: wait for the rung)."""
        t0 = time.perf_counter()
        curve = self.state(obs.candidate)
        if curve.status == Status.FAILED and not replaying:  # Tune retried a trial it had given up on
            self._status(obs.candidate, curve, Status.RUNNING, "")
            self.record.status(obs.candidate, Status.RUNNING, "reporting again after its trial died")
        if obs.size in curve.sizes:  # a re-run after a failure or resume reports the size again
            curve.losses[curve.sizes.index(obs.size)] = obs.loss
        else:
            order = int(np.searchsorted(curve.sizes, obs.size))
            curve.sizes.insert(order, obs.size)
            curve.losses.insert(order, obs.loss)
            self._reached[len(curve.sizes)] = self._reached.get(len(curve.sizes), 0) + 1
        if replaying:  # the side file's own decisions follow it
            self._refit(obs.candidate, curve)
            return Action.CONTINUE
        self.record.observation(obs)
        if self.pauses_after(obs.size):  # decided once the whole rung is in (`judge_rung`)
            action = Action.PAUSE
            self._note(Decision(obs.candidate, obs.size, action, f"waiting for every live candidate to reach D={obs.size}"))
        else:
            action = self._record(obs.candidate, curve)
        self.decide_seconds += time.perf_counter() - t0
        return action

    def judge_rung(self, names: list[str]) -> dict[str, Action]:
        """Decide, once, for the candidates of a complete rung: every fit first, then the
        judgements, so each is compared with the whole rung. Candidates already decided at
        their largest size are left out. The fits include those of the rung's candidates not in
        `names`: the last to report may not be paused yet, but it is a rival of the others."""
        undecided = [n for n in names if self.curves[n].rung_decided < self.curves[n].sizes[-1]]
        if undecided:
            rung, chosen = {self.curves[n].sizes[-1] for n in undecided}, set(undecided)
            waiting = [n for n, c in self.curves.items()
                       if n not in chosen and self.open_rung(n) and c.sizes[-1] in rung]
            for name in undecided + waiting:
                self._refit(name, self.curves[name])
        return {name: self._record(name, self.curves[name], rung_complete=True, refit=False) for name in undecided}

    def pauses_after(self, size: int) -> bool:
        """Whether a probe waits for its rung after `size` (synchronous rungs, at a decision size)."""
        return self.config.enabled and self.config.synchronous and size in self.decision_sizes

    def open_rung(self, name: str) -> bool:
        """Whether `name` stands at a decision size whose rung is not decided yet: a resumed
        sweep's probe must wait there before it goes on (`lensray.sweep.trial.HOLD_KEY`)."""
        curve = self.curves.get(name)
        return (
            curve is not None and curve.status == Status.RUNNING and bool(curve.sizes)
            and self.pauses_after(curve.sizes[-1]) and curve.rung_decided < curve.sizes[-1]
        )

    def set_status(self, name: str | None, status: Status, reason: str) -> None:
        """A running candidate finished or failed (a stopped one keeps its status)."""
        if name is None:
            return
        curve = self.state(str(name))
        if curve.status == Status.RUNNING:
            self._status(str(name), curve, status, reason)
            self.record.status(str(name), status, reason)

    def state(self, name: str) -> CandidateState:
        """The candidate's state (created empty on first sight)."""
        if name not in self.curves:
            self.curves[name] = CandidateState()
        return self.curves[name]

    def last_size(self, name: str | None) -> int:
        curve = self.curves.get(name) if name is not None else None
        return curve.sizes[-1] if curve is not None and curve.sizes else 0

    def counts(self) -> dict[Status, int]:
        counts = dict.fromkeys(Status, 0)
        for c in self.curves.values():
            counts[c.status] += 1
        return counts

    # --- the decision -----------------------------------------------------------------------
    def _record(self, name: str, curve: CandidateState, rung_complete: bool = False, refit: bool = True) -> Action:
        """Decide for `name` at its largest size, and write the decision down."""
        action, reason = self._decide(name, curve, refit)
        if rung_complete:
            curve.rung_decided = curve.sizes[-1]
        fit = curve.fit if curve.fit is not None and curve.fit.ok else None
        self._note(Decision(name, curve.sizes[-1], action, reason,
                            fit.predicted_loss if fit else None, tuple(fit.interval) if fit else None))
        if action == Action.STOP:
            self._status(name, curve, Status.STOPPED, reason)
        return action

    def _status(self, name: str, curve: CandidateState, status: Status, reason: str) -> None:
        """The one place a candidate's status changes (keeps the counters right)."""
        ended = (Status.STOPPED, Status.FAILED)
        self._ended += (status in ended) - (curve.status in ended)
        curve.status, curve.reason = status, reason
        if status == Status.FAILED:
            self._set_rival(name, None)

    def _note(self, decision: Decision) -> None:
        self.decisions.append(decision)
        self.record.decision(decision)

    def _refit(self, name: str, curve: CandidateState) -> None:
        """Fit `name` with the estimates pooled over the candidates that reached the same sizes
        (from the rung, not from a few points; re-estimated whenever the rung has grown by a
        tenth, until POOL_PEERS of them are in)."""
        n = len(curve.sizes)
        if n < self.min_points:
            return
        context = None
        if self.predictor.pool is not None:
            count = self._reached.get(n, 0)
            seen, used, context = self._pooled.get(n, (0, 0, None))
            if context is None or count >= max(seen + 1, 1.1 * seen) and used < POOL_PEERS:
                peers = (c.losses[:n] for c in self.curves.values() if c.sizes[:n] == curve.sizes)
                rows = list(itertools.islice(peers, POOL_PEERS))
                context = self.predictor.pool(curve.sizes, rows, self.fit_config)
                self._pooled[n] = (count, len(rows), context)
        fit = self.predictor.fit(curve.sizes, [curve.losses], self.target, [name], self.fit_config, context)[0]
        curve.fit = with_prior(fit, self.priors.get(name), self.fit_config.level)
        self._set_rival(name, curve.fit if curve.fit.ok and curve.status != Status.FAILED else None)

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
            (math.log(fit.predicted_loss), fit.sd_log) if fit is not None else (np.nan, np.nan)
        )

    def _decide(self, name: str, curve: CandidateState, refit: bool = True) -> tuple[Action, str]:
        cfg = self.config
        if not cfg.enabled:
            return Action.CONTINUE, "early stopping disabled"
        if len(curve.sizes) < self.min_points:
            return Action.CONTINUE, f"{len(curve.sizes)} of {self.min_points} sizes needed to decide"
        if refit:
            self._refit(name, curve)
        if self.budget is not None and curve.sizes[-1] >= self.budget:
            return Action.CONTINUE, "reached the budget"
        if not curve.fit.ok:
            return Action.CONTINUE, f"fit not reliable: {curve.fit.reason}"
        alive = len(self.curves) - self._ended
        if alive <= cfg.top_k:
            return Action.CONTINUE, f"only {alive} candidates left; keeping the top {cfg.top_k}"
        rivals = self._rivals[: len(self._names)]
        mean, sd = math.log(curve.fit.predicted_loss), curve.fit.sd_log
        with np.errstate(invalid="ignore"):
            margin = (mean - rivals[:, 0]) / np.sqrt(sd**2 + rivals[:, 1] ** 2)
        margin[self._slots[name]] = np.nan
        if np.count_nonzero(~np.isnan(margin)) < cfg.top_k:
            return Action.CONTINUE, f"fewer than {cfg.top_k} other reliable fits to compare with"
        # the k-th strongest rival decides: at least k others beat i iff it does
        margin[np.isnan(margin)] = -np.inf
        kth = int(np.argmax(margin) if cfg.top_k == 1 else np.argpartition(-margin, cfg.top_k - 1)[cfg.top_k - 1])
        rival, z_rival = self._names[kth], float(margin[kth])
        versus = (
            f"predicted {curve.fit.predicted_loss:.4g} at T against {math.exp(rivals[kth, 0]):.4g} of "
            f"{rival}, a difference of {z_rival:.2f} s.d."
        )
        if z_rival > self.z:
            return Action.STOP, (
                f"cannot reach the top {cfg.top_k}: {versus} > {self.z:.2f} (one-sided {1 - self.alpha:.2%}: "
                f"level {cfg.level:g} spread over {self.looks} decision{'s' * (self.looks > 1)})"
            )
        return Action.CONTINUE, f"in contention: {versus} <= {self.z:.2f}"

    # --- state ------------------------------------------------------------------------------
    def _replay(self) -> None:
        """Rebuild curves, fits and statuses from the record of an interrupted run.

        Replay what was recorded and decide nothing: a decision taken now would see the rung
        incomplete (or the statuses out of order) and could stop a probe the record keeps
        running, which a synchronous sweep would then wait for forever."""
        for rec in list(self.record.events()):
            if rec.get("event") == "observation":
                self.observe(Observation.from_dict(rec), replaying=True)
            elif rec.get("event") == "decision":
                d = Decision.from_record(rec)
                self.decisions.append(d)
                curve = self.state(d.candidate)
                if d.action != Action.PAUSE:  # a decided rung is not decided again
                    curve.rung_decided = max(curve.rung_decided, d.size)
                if d.action == Action.STOP:
                    self._status(d.candidate, curve, Status.STOPPED, d.reason)
            elif rec.get("event") == "status":
                self._status(rec["candidate"], self.state(rec["candidate"]), Status(rec["status"]), rec.get("reason", ""))
