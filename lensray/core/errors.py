"""lensray's errors: one base, `LensrayError`, and one subclass per place a user's input can be wrong.

Every message names the field or file and the fix; the CLI prints it as one line (exit 2). Any
other exception is a bug in lensray. `failure_reason` digs a probe's one-line reason out of what
Ray and Tune wrap around it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lensray.core.types import Observation


class LensrayError(Exception):
    """Base of every error lensray raises about its input: the message says what and how to fix it."""


class ConfigError(LensrayError, ValueError):
    """A config problem; the message names the field (dotted path) and the fix."""


class CurveError(LensrayError, ValueError):
    """Bad curve data or a bad request on it (budget, target); the message says how to fix it."""


class DataError(LensrayError, ValueError):
    """The data set cannot be used as configured; the message names the field and the fix."""


class StorageError(LensrayError, ValueError):
    """The storage cannot be used; the message names `output` and the fix."""


class JobError(LensrayError):
    """The job server refused or could not be reached; the message says why and what to do."""


class ProbeError(LensrayError, RuntimeError):
    """A probe ended early; `reason` is one line fit for a report, `observations` what it finished."""

    def __init__(self, reason: str, candidate: str = "", observations: "list[Observation] | tuple" = ()):
        super().__init__(f"probe of {candidate!r} failed: {reason}" if candidate else reason)
        self.reason = reason
        self.candidate = candidate
        self.observations = list(observations)

    def __reduce__(self):
        return (ProbeError, (self.reason, self.candidate, self.observations))


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def failure_reason(error: BaseException | None) -> str:
    """The one-line reason inside `error` (a ProbeError, or what Tune/Ray wrapped around one)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ProbeError):
            return error.reason
        cause = getattr(error, "cause", None) or error.__cause__
        error = cause if isinstance(cause, BaseException) else None
    return "" if error is None else one_line(error)
