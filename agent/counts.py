"""What the agent's link counts, and counting nothing when no one scrapes.

:class:`stocksync.agent.metrics.AgentMetrics` counts into Prometheus for
``stocksync-agent run --metrics``. Without ``--metrics`` nothing could ever
read a count, so the daemon passes :class:`Uncounted` instead and never
loads prometheus_client: its package loads its HTTP exposition with it,
~70 ms of CPU of an agent's ~0.37 s start-up (docs/benchmarks.md), which
agents restarted together would pay together, and ~4 MiB of its memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from stocksync.agent.link import AgentLink

__all__ = ["RECONNECT_REASONS", "Count", "LinkMetrics", "Observe", "Uncounted"]

RECONNECT_REASONS = ("unreachable", "refused", "lost", "stall")
"""The fixed reasons of ``stocksync_agent_reconnects_total``."""


class Count(Protocol):
    """A counter's child, as the link adds to it."""

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``."""


class Observe(Protocol):
    """A histogram's child, as the link observes into it."""

    def observe(self, amount: float) -> None:
        """Record one value."""


class LinkMetrics(Protocol):
    """What :class:`~stocksync.agent.link.AgentLink` counts as it runs."""

    @property
    def events_sent(self) -> Count:
        """Events sent to the hub."""

    @property
    def events_acked(self) -> Count:
        """Events the hub acknowledged."""

    @property
    def stalls(self) -> Count:
        """Streams ended by the stall watchdog."""

    @property
    def compactions(self) -> Count:
        """Outbox compactions run."""

    @property
    def events_folded(self) -> Count:
        """Events folded into others by compaction."""

    @property
    def ack_latency(self) -> Observe:
        """Seconds from sending a batch to its acknowledgement."""

    @property
    def reconnects(self) -> Mapping[str, Count]:
        """Reconnects, by each of :data:`RECONNECT_REASONS`."""

    def error(self, code: str) -> None:
        """Count one failure talking to the hub."""

    def watch(self, link: AgentLink) -> None:
        """Read scrape-time gauges from ``link`` from now on."""


class _Nothing:
    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


class Uncounted:
    """Every count of :class:`LinkMetrics`, kept nowhere (an agent run
    without ``--metrics``)."""

    def __init__(self) -> None:
        nothing = _Nothing()
        self.events_sent = self.events_acked = self.stalls = nothing
        self.compactions = self.events_folded = nothing
        self.ack_latency = nothing
        self.reconnects = dict.fromkeys(RECONNECT_REASONS, nothing)

    def error(self, code: str) -> None:
        """Nothing to count into."""

    def watch(self, link: AgentLink) -> None:
        """Nothing will be scraped."""
