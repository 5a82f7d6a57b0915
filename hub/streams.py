"""The hub's live view of its agents' streams: one per warehouse.

A new stream for a warehouse supersedes the one it holds; the old stream's
handler sees :attr:`Link.superseded` set and ends with ABORTED. Kept in
memory only: after a hub restart every agent reconnects and says Hello.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

__all__ = ["Link", "LinkRegistry"]


@dataclass(eq=False)
class Link:
    """One agent stream, as the hub sees it now."""

    warehouse: str
    epoch: str
    peer: str
    connected_at_ms: int
    last_seen_ms: int = 0
    watermark: int = 0
    agent_high_seq: int = 0
    oldest_pending_age_s: float = 0.0
    clock_skew_s: float = 0.0
    superseded: asyncio.Event = field(default_factory=asyncio.Event)

    def seen(self) -> None:
        """The agent said something just now."""
        self.last_seen_ms = time.time_ns() // 1_000_000

    @property
    def lag_events(self) -> int:
        """Events the agent holds that the hub has not applied."""
        return max(0, self.agent_high_seq - self.watermark)


class LinkRegistry:
    """Which stream speaks for which warehouse."""

    def __init__(self) -> None:
        self._links: dict[str, Link] = {}

    def attach(self, link: Link) -> Link | None:
        """Make ``link`` the warehouse's stream; returns the one it superseded."""
        old = self._links.get(link.warehouse)
        self._links[link.warehouse] = link
        if old is not None:
            old.superseded.set()
        return old

    def detach(self, link: Link) -> None:
        """Forget ``link`` if it is still the warehouse's stream."""
        if self._links.get(link.warehouse) is link:
            del self._links[link.warehouse]

    def get(self, warehouse: str) -> Link | None:
        """The warehouse's live stream, if any."""
        return self._links.get(warehouse)

    def all(self) -> list[Link]:
        """Every live stream."""
        return list(self._links.values())
