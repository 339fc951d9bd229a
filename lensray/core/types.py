"""The types every stage of the pipeline passes on, one name per thing::

    Candidate    a pretrained model under a sample design: what one probe fine-tunes
    Pool         the Candidates a sweep probes, the ones dropped before it (with the reason) and
                 a prior per Candidate (pre-sweep stages fill them)
    Observation  a probe's held-out loss (or task error) of one Candidate at one subset size
    CurveFit     a predictor's fit of one Candidate's partial curve: its prediction at T
    Decision     the scheduler's CONTINUE / STOP / PAUSE for one Candidate at one size, with the reason
    Status       where a Candidate stands: running, finished, stopped early, failed
    Selection    the ranking a sweep ends with (selection.json), its Observations and fits

Plain data, no heavy imports: numpy at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class _Word(str, Enum):
    """An enum whose members are their string values in JSON, f-strings and comparisons."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class Status(_Word):
    """Where a Candidate stands in a sweep; the value is what selection.json and sweep.jsonl say."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped early"
    FAILED = "failed"


class Action(_Word):
    """What a Decision tells the sweep; the values are Ray Tune's TrialScheduler constants."""

    CONTINUE = "CONTINUE"
    STOP = "STOP"
    PAUSE = "PAUSE"


@dataclass(frozen=True)
class ModelSpec:
    """One pretrained model of the pool."""

    name: str
    """Candidate name: letters, digits and . _ + = - / (e.g. a hub id); no `..`, no leading `/`."""
    path: str = ""
    """Local folder with a saved transformers model, or a hub id (e.g. `gpt2`) on a machine that
    can reach the hub. For the replay backend: the row name in the curves file (default: name)."""
    trust_remote_code: bool = False
    """Allow the model's own Python code to run when loading it (off unless you trust it)."""
    n_params: int = 0
    """Parameter count, when known in advance (the hf probe measures it)."""


@dataclass(frozen=True)
class Candidate:
    """What one probe fine-tunes and the selection ranks: a model under a sample design."""

    name: str
    """The model's name, or `<model>+<design>` when the pool crosses designs."""
    model: ModelSpec
    """The pretrained model."""
    design: str = ""
    """The sample design's name (empty: the data's own, `data.design`)."""


@dataclass(frozen=True)
class Observation:
    """Held-out loss of one candidate after fine-tuning on `size` examples."""

    candidate: str
    """Name of the Candidate (model + sample design) this was measured on."""
    size: int
    """Number of training examples D of the nested subset (0 = the pretrained model, no tuning)."""
    loss: float
    """Mean held-out loss (token cross-entropy, or 1 - task metric when a metric is ranked)."""
    tokens: int = 0
    """Training tokens processed for this size (examples x tokens x epochs)."""
    flops: float = 0.0
    """Training compute for this size: 6 x trainable-and-frozen parameters x tokens."""
    wall_s: float = 0.0
    """Wall-clock seconds spent fine-tuning and evaluating this size."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend-specific measurements (e.g. the NTK term of LensLLM, metric details)."""

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in FIELDS} | {"extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Observation":
        """The Observation `to_dict` wrote (a side-file record, a worker's report); missing
        counters are 0."""
        return cls(
            str(d["candidate"]), int(d["size"]), float(d["loss"]), int(d.get("tokens", 0)),
            float(d.get("flops", 0.0)), float(d.get("wall_s", 0.0)), dict(d.get("extra") or {}),
        )


FIELDS = ("candidate", "size", "loss", "tokens", "flops", "wall_s")
"""The scalar fields, in order (extra is a dict)."""


@dataclass(frozen=True)
class CurveFit:
    """One candidate's fitted curve and its prediction at the target size."""

    candidate: str
    """Candidate name."""
    law: str
    """'vanilla', 'rectified', 'lensllm' or 'local'."""
    target: int
    """Target size T the prediction is for."""
    predicted_loss: float
    """Predicted loss at T (posterior mean in log space); NaN when there was nothing to fit."""
    interval: tuple[float, float]
    """(lo, hi) of the predicted loss at T with coverage FitConfig.level."""
    ok: bool
    """False when the fit should not be trusted for decisions; `reason` says why."""
    reason: str = ""
    """Why the fit is not ok (empty when ok)."""
    params: dict[str, float] = field(default_factory=dict)
    """Best-fit parameters in the paper's terms (B, D_l, beta, E) or (slope, intercept)."""
    n_points: int = 0
    """Number of observed sizes the fit used."""
    sd_log: float = math.nan
    """Standard deviation of the predicted log-loss at T: what the stopping rule compares
    candidates with (NaN when the fitter gives none). Where the fitter splits its error, this is
    the candidate's own part; `sd_shared` is the part the pool shares."""
    sd_shared: float = 0.0
    """S.d. of the part of the predicted log-loss's error that every candidate of the pool shares
    (the curves of one task bend alike after the budget): in the interval, not in comparisons."""

    def to_dict(self) -> dict:
        return {
            "candidate": self.candidate,
            "law": self.law,
            "target": self.target,
            "predicted_loss": self.predicted_loss,
            "interval": list(self.interval),
            "ok": self.ok,
            "reason": self.reason,
            "params": dict(self.params),
            "n_points": self.n_points,
            "sd_log": self.sd_log,
            "sd_shared": self.sd_shared,
        }


@dataclass(frozen=True)
class Decision:
    """The scheduler's verdict on one Candidate after its Observation at `size`."""

    candidate: str
    """The Candidate decided on."""
    size: int
    """Its largest observed size when the decision was taken."""
    action: Action
    """CONTINUE, STOP (it cannot reach the top k) or PAUSE (waiting for its rung)."""
    reason: str
    """Why, in one line (e.g. the difference in s.d. that stopped it)."""
    predicted: float | None = None
    """The fit's prediction at T behind the decision, when there was a reliable one."""
    interval: tuple[float, float] | None = None
    """That prediction's interval."""

    def to_record(self) -> dict[str, Any]:
        """The side file's record of this decision (sweep.jsonl)."""
        rec: dict[str, Any] = {"event": "decision", "candidate": self.candidate, "size": self.size,
                               "decision": self.action.value, "reason": self.reason}
        if self.predicted is not None:
            rec.update(predicted=self.predicted, interval=list(self.interval or ()))
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "Decision":
        interval = rec.get("interval")
        return cls(str(rec["candidate"]), int(rec["size"]), Action(rec["decision"]), rec.get("reason", ""),
                   rec.get("predicted"), tuple(interval) if interval else None)


@dataclass(frozen=True)
class Pool:
    """The Candidates a sweep probes, as the pre-sweep stages leave them."""

    candidates: list[Candidate]
    """The Candidates to probe, in order."""
    dropped: dict[str, str] = field(default_factory=dict)
    """Candidates a stage removed before the sweep -> the reason (e.g. a near-duplicate of X)."""
    priors: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per-Candidate prior knowledge a stage attached (e.g. a predicted loss from its relatives)."""

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.candidates]

    def drop(self, reasons: dict[str, str]) -> "Pool":
        """This Pool without the Candidates named in `reasons`, which record why they went."""
        unknown = sorted(set(reasons) - set(self.names))
        if unknown:
            raise KeyError(f"cannot drop {unknown}: not in the pool")
        return Pool([c for c in self.candidates if c.name not in reasons], {**self.dropped, **reasons}, self.priors)


@dataclass(frozen=True)
class Selection:
    """The outcome of a sweep: selection.json's content, the Observations and the final fits."""

    doc: dict[str, Any]
    """The content of selection.json (its schema: lensray.report.files)."""
    observations: dict[str, list[Observation]]
    fits: dict[str, CurveFit]

    @property
    def selected(self) -> str | None:
        return self.doc["selected"]
