"""The hub's live view of its agents' streams: one per warehouse.

A new stream for a warehouse supersedes the one it holds; the old stream's
handler sees :attr:`AgentStream.superseded` set and ends with ABORTED. Kept in
memory only: after a hub restart every agent reconnects and says Hello.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from stocksync.clock import wall_ms

__all__ = ["AgentStream", "StreamRegistry"]


@dataclass(eq=False)
class AgentStream:
    """One agent's live stream, as the hub sees it now."""

    warehouse: str
    epoch: str
    peer: str
    connected_at_ms: int
    last_seen_ms: int = 0
    watermark: int = 0
    agent_high_seq: int = 0
    oldest_pending_age_s: float = 0.0
    backlog_at_ms: int = 0
    """When the agent last reported its backlog (``oldest_pending_age_s``)."""
    clock_skew_s: float = 0.0
    superseded: asyncio.Event = field(default_factory=asyncio.Event)

    def seen(self) -> None:
        """The agent said something just now."""
        self.last_seen_ms = wall_ms()

    @property
    def lag_events(self) -> int:
        """Events the agent holds that the hub has not applied."""
        return max(0, self.agent_high_seq - self.watermark)


class StreamRegistry:
    """Which stream speaks for which warehouse."""

    def __init__(self) -> None:
        self._streams: dict[str, AgentStream] = {}
        self.last: dict[str, AgentStream] = {}
        """Each warehouse's most recent stream, connected or not (its last backlog)."""
        self.closing = asyncio.Event()
        """Set when the hub stops: every stream makes what it accepted durable,
        acknowledges it, and ends with UNAVAILABLE."""

    def attach(self, stream: AgentStream) -> AgentStream | None:
        """Make ``stream`` the warehouse's stream; returns the one it superseded."""
        old = self._streams.get(stream.warehouse)
        self._streams[stream.warehouse] = stream
        self.last[stream.warehouse] = stream
        if old is not None:
            old.superseded.set()
        return old

    def detach(self, stream: AgentStream) -> None:
        """Forget ``stream`` if it is still the warehouse's stream."""
        if self._streams.get(stream.warehouse) is stream:
            del self._streams[stream.warehouse]

    def get(self, warehouse: str) -> AgentStream | None:
        """The warehouse's live stream, if any."""
        return self._streams.get(warehouse)

    def all(self) -> list[AgentStream]:
        """Every live stream."""
        return list(self._streams.values())
