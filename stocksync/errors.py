"""One family of domain errors, each carrying the status it means.

Inside stocksync, code raises small domain exceptions (a malformed event, a
gap in seqs, a full store). Each class names its :class:`Status` once, so an
edge translates any of them with one table — gRPC status codes in
``stocksync.grpc_edge``, exit codes in the CLIs — and one kind of
violation always gets one code, whichever call site saw it.

The statuses are gRPC's own names, used for what grpc's status-code guide
says they mean; this module imports nothing so the sans-IO core can use it.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import ClassVar

__all__ = ["IncidentLog", "InvalidArgument", "Status", "StocksyncError"]


class Status(enum.Enum):
    """What kind of failure an error is (values are gRPC status code names)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    """The request is wrong whatever the state: a bad field, a broken rule."""
    NOT_FOUND = "NOT_FOUND"
    """The named thing (a reservation, a room) does not exist."""
    UNAUTHENTICATED = "UNAUTHENTICATED"
    """No usable credential: no token, a wrong one, a certificate naming nobody."""
    PERMISSION_DENIED = "PERMISSION_DENIED"
    """The caller is known but may not do this."""
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    """Not enough of something: stock to reserve, a per-caller limit."""
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    """The system is not in a state that allows this until something changes."""
    ABORTED = "ABORTED"
    """A concurrency conflict (another stream took over); retry from the start."""
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    """Something expected did not arrive in time."""
    UNAVAILABLE = "UNAVAILABLE"
    """Transient: the store or a peer cannot serve now; retry with backoff."""
    INTERNAL = "INTERNAL"
    """A bug: an invariant broke."""


class StocksyncError(Exception):
    """Base of every domain error; ``str(error)`` is the detail for the peer.

    The detail is written for the person reading it at the other end: it
    names the field, the limit or the resume point, and never carries a raw
    Python exception text.
    """

    status: ClassVar[Status] = Status.INTERNAL

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def trailers(self) -> tuple[tuple[str, str], ...]:
        """Machine-readable trailing metadata sent with the status, if any."""
        return ()


class InvalidArgument(StocksyncError):
    """A request field is malformed or out of its range; the detail names it."""

    status = Status.INVALID_ARGUMENT


class IncidentLog:
    """Logs a failure once per incident, not once per attempt.

    An agent retrying against a full disk makes the same failure happen every
    few seconds; the operator needs one line when it starts, a reminder now
    and then (with how many more there were), and one line when it ends.

    Args:
        logger: where to log.
        remind_s: how often a failure that goes on is logged again.
        settle_s: how long things must work before an incident is over (a
            nearly full disk lets the odd small write through).
    """

    def __init__(
        self, logger: logging.Logger, remind_s: float = 60.0, settle_s: float = 10.0
    ) -> None:
        self._log = logger
        self._remind_s = remind_s
        self._settle_s = settle_s
        self._current: str | None = None
        self._since = 0.0
        self._last_failure = 0.0
        self._repeats = 0

    def failed(self, what: str, detail: str = "") -> None:
        """A failure happened; ``what`` identifies the incident."""
        now = time.monotonic()
        self._last_failure = now
        if what != self._current:
            self._current, self._since, self._repeats = what, now, 0
            self._log.error("%s%s", what, f": {detail}" if detail else "")
        elif now - self._since >= self._remind_s:
            self._log.error("%s (still; %d more times since)", what, self._repeats)
            self._since, self._repeats = now, 0
        else:
            self._repeats += 1
            self._log.debug("%s (again)%s", what, f": {detail}" if detail else "")

    def recovered(self, what: str) -> None:
        """Things worked: ends the incident, with one line, once they have
        worked for ``settle_s`` since the last failure."""
        if self._current is not None and time.monotonic() - self._last_failure >= self._settle_s:
            self._log.warning("%s (after: %s)", what, self._current)
            self._current = None
