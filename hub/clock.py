"""The hub's own clock: monotonic, saved, and paused while the hub is down.

Reservation TTLs and warehouse staleness run on it, never on the wall clock:
a wall-clock jump (NTP, a bad RTC, a time zone change) neither expires every
held reservation at once nor keeps one alive for ever. The hub saves its
clock with its state about once a second; after a restart it resumes from
there, so the time the hub was down does not count towards any TTL.

Both sources are injectable, which is how tests move time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from stocksync.clock import wall_s

__all__ = ["HubClock"]


class HubClock:
    """Milliseconds of hub time, and the wall clock for people.

    Args:
        start_ms: the hub time saved by the previous run (0 for a new store).
        monotonic: seconds from a monotonic source.
        wall: seconds since the Unix epoch, for timestamps shown to people.
    """

    def __init__(
        self,
        start_ms: int = 0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = wall_s,
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._base_ms = start_ms
        self._base_mono = monotonic()

    def now_ms(self) -> int:
        """Hub time now, in milliseconds; never goes backwards."""
        return self._base_ms + int((self._monotonic() - self._base_mono) * 1000)

    def unix_ms(self) -> int:
        """The wall clock, in milliseconds: for display and logs only."""
        return int(self._wall() * 1000)

    def resume_from(self, start_ms: int) -> None:
        """Continue from ``start_ms`` (the saved hub time) from now on."""
        self._base_ms = start_ms
        self._base_mono = self._monotonic()
