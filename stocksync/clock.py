"""The wall clock both ends read, with an offset tests can inject.

Nothing in stocksync depends on a wall clock for correctness (DESIGN §11.5):
event times are informational, reservation TTLs and staleness run on the
hub's own monotonic clock (:class:`stocksync.hub.clock.HubClock`). The wall
clock still reaches stored data (``recorded_at_ms``, pruning by age, status
times), so the clock-skew campaign moves it: a process started with
``STOCKSYNC_TEST_CLOCK_OFFSET_S=-43200`` believes it is twelve hours earlier
than it is, on every wall-clock reading it makes.

The offset is read once, when this module is imported.
"""

from __future__ import annotations

import os
import time

__all__ = ["OFFSET_ENV", "offset_s", "wall_ms", "wall_s"]

OFFSET_ENV = "STOCKSYNC_TEST_CLOCK_OFFSET_S"
"""Environment variable: seconds added to every wall-clock reading (tests only)."""


def _read_offset() -> float:
    raw = os.environ.get(OFFSET_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{OFFSET_ENV}={raw!r} is not a number of seconds") from None


_OFFSET_S = _read_offset()
_OFFSET_NS = int(_OFFSET_S * 1e9)


def offset_s() -> float:
    """The injected offset, in seconds (0 outside tests)."""
    return _OFFSET_S


def wall_s() -> float:
    """Seconds since the Unix epoch, as this process's clock reads them."""
    return time.time() + _OFFSET_S


def wall_ms() -> int:
    """Milliseconds since the Unix epoch, as this process's clock reads them."""
    return (time.time_ns() + _OFFSET_NS) // 1_000_000
