"""The side file `sweep.jsonl`: the one record of a sweep, and its only reader and writer.

One JSON object a line, appended as the sweep goes::

    {"event": "observation", "candidate", "size", "loss", "tokens", "flops", "wall_s", "extra"}
    {"event": "decision", "candidate", "size", "decision": CONTINUE|STOP|PAUSE, "reason",
     "predicted", "interval"}                       (predicted/interval: when a fit was reliable)
    {"event": "status", "candidate", "status": finished|stopped early|failed|running, "reason"}
                                    (running: a trial that died reports again, retried by Tune)

Tune does not restore a scheduler on `Tuner.restore`, so a resumed sweep rebuilds its stopping
rule from this file, and the report reads the sweep's outcome from it. A line torn by a crash is
skipped (and ended, so later appends stay whole). Plain JSON, no heavy imports.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lensray.core.types import Action, Decision, Observation, Status

STATE_FILE = "sweep.jsonl"
"""The side file's name in the experiment folder."""


class SweepRecord:
    """Appends the sweep's events to `path` (nothing when `path` is None) and reads them back."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._file: Any = None
        """Opened on the first append and kept open (`close`): a sweep of thousands of
        candidates appends tens of thousands of lines, and opening the file for each was a
        fifth of the stopping rule's time."""

    def observation(self, obs: Observation) -> None:
        self._append({"event": "observation", **obs.to_dict()})

    def decision(self, decision: Decision) -> None:
        self._append(decision.to_record())

    def status(self, candidate: str, status: Status, reason: str) -> None:
        self._append({"event": "status", "candidate": candidate, "status": status.value, "reason": reason})

    def _append(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open: see __init__)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # each line whole in the file before the sweep goes on, as with a close

    def close(self) -> None:
        """Close the file the appends go to (a later append opens it again)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}  # a pickled rule (the scheduler's save) reopens it

    def events(self) -> Iterator[dict[str, Any]]:
        """Every whole record, in order; a torn last line is ended so appends stay whole."""
        if self.path is None or not self.path.exists():
            return
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write("\n")
        for line in text.splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash


@dataclass(frozen=True)
class SweepState:
    """What the side file of a sweep says: every Observation, Decision and final Status."""

    observations: dict[str, list[Observation]]
    """Candidate -> its Observations in order of size (the last record of a size wins)."""
    decisions: list[Decision]
    status: dict[str, tuple[Status, str]]
    """Candidate -> (Status, reason); a candidate stopped early stays stopped."""


def read_state(path: str | Path) -> SweepState:
    """Read a sweep's side file."""
    obs: dict[str, dict[int, Observation]] = {}
    decisions: list[Decision] = []
    status: dict[str, tuple[Status, str]] = {}
    for rec in SweepRecord(path).events():
        event = rec.get("event")
        if event == "observation":
            o = Observation.from_dict(rec)
            obs.setdefault(o.candidate, {})[o.size] = o
        elif event == "decision":
            d = Decision.from_record(rec)
            decisions.append(d)
            if d.action == Action.STOP:
                status[d.candidate] = (Status.STOPPED, d.reason)
        elif event == "status" and status.get(rec["candidate"], ("",))[0] != Status.STOPPED:
            status[rec["candidate"]] = (Status(rec["status"]), rec.get("reason", ""))
    return SweepState({c: [v[s] for s in sorted(v)] for c, v in obs.items()}, decisions, status)
