"""The agent's metrics, served on ``stocksync-agent run --metrics HOST:PORT``.

Every metric carries ``warehouse`` (the agent's one warehouse id). Counters
are counted where things happen (:mod:`stocksync.agent.link`), once per
batch, not per event; the gauges (pending events, oldest pending age, store
size, connected, last error) and ``events_recorded_total`` (the store's high
seq: seqs are gap-free from 1) are read from the link and the store when
Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from stocksync.agent.counts import RECONNECT_REASONS
from stocksync.metrics import BUILD_INFO, ScrapeCollector, Spec, new_registry

if TYPE_CHECKING:
    from stocksync.agent.link import AgentLink

__all__ = ["ERROR_CODES", "RECONNECT_REASONS", "SPECS", "AgentMetrics"]

W = ("warehouse",)

CONNECTED = Spec("stocksync_agent_connected", "gauge", W, "1 while a stream to the hub is up.")
PENDING = Spec(
    "stocksync_agent_pending_events",
    "gauge",
    W,
    "Events recorded here that the hub has not acknowledged.",
)
OLDEST_AGE = Spec(
    "stocksync_agent_oldest_pending_age_seconds",
    "gauge",
    W,
    "Age of the oldest unacknowledged event (0 when none is pending).",
)
RECORDED = Spec(
    "stocksync_agent_events_recorded_total",
    "counter",
    W,
    "Events recorded in the store (its high seq).",
)
SENT = Spec("stocksync_agent_events_sent_total", "counter", W, "Events sent to the hub.")
ACKED = Spec(
    "stocksync_agent_events_acknowledged_total",
    "counter",
    W,
    "Events the hub acknowledged (durable there).",
)
RECONNECTS = Spec(
    "stocksync_agent_reconnects_total",
    "counter",
    ("warehouse", "reason"),
    "Reconnects to the hub, by reason: unreachable (no stream), refused (the hub "
    "refused what was sent), lost (a working stream broke), stall (the watchdog).",
)
ACK_LATENCY = Spec(
    "stocksync_agent_ack_latency_seconds",
    "histogram",
    W,
    "From sending a batch to the hub's acknowledgement of it.",
)
STORE_SIZE = Spec(
    "stocksync_agent_store_size_bytes", "gauge", W, "The store on disk: database and WAL."
)
LAST_ERROR = Spec(
    "stocksync_agent_last_error_timestamp_seconds",
    "gauge",
    W,
    "Unix time of the last failure talking to the hub (0: none since the start).",
)
ERRORS = Spec(
    "stocksync_agent_errors_total",
    "counter",
    ("warehouse", "code"),
    "Failures talking to the hub, by gRPC status name or local kind (NO_WELCOME, "
    "PROTOCOL, PRUNED, STALLED, CLOSED).",
)
STALLS = Spec(
    "stocksync_agent_stalls_total",
    "counter",
    W,
    "Streams ended by the stall watchdog: events pending, no ack for stall_after_s.",
)
COMPACTIONS = Spec("stocksync_agent_compactions_total", "counter", W, "Outbox compactions run.")
FOLDED = Spec(
    "stocksync_agent_events_folded_total",
    "counter",
    W,
    "Events folded into others by outbox compaction.",
)

SPECS = (
    BUILD_INFO,
    CONNECTED,
    PENDING,
    OLDEST_AGE,
    RECORDED,
    SENT,
    ACKED,
    RECONNECTS,
    ACK_LATENCY,
    STORE_SIZE,
    LAST_ERROR,
    ERRORS,
    STALLS,
    COMPACTIONS,
    FOLDED,
)
"""Every agent metric, in the README's order."""

LOCAL_ERRORS = ("NO_WELCOME", "PROTOCOL", "PRUNED", "STALLED", "CLOSED")
ERROR_CODES = (*(c.name for c in grpc.StatusCode if c is not grpc.StatusCode.OK), *LOCAL_ERRORS)
"""The codes of ``stocksync_agent_errors_total``, each created at 0."""


class AgentMetrics:
    """The agent's metrics, in a registry of their own.

    Args:
        warehouse: the agent's warehouse id (every metric's label).
        registry: where to register (default: a new one).
    """

    def __init__(self, warehouse: str, registry: CollectorRegistry | None = None) -> None:
        self.warehouse = warehouse
        self.registry = registry or new_registry("agent")
        reg, w = self.registry, warehouse
        self.events_sent = SENT.counter(reg).labels(w)
        self.events_acked = ACKED.counter(reg).labels(w)
        self.stalls = STALLS.counter(reg).labels(w)
        self.compactions = COMPACTIONS.counter(reg).labels(w)
        self.events_folded = FOLDED.counter(reg).labels(w)
        self.ack_latency = ACK_LATENCY.histogram(reg).labels(w)
        reconnects = RECONNECTS.counter(reg)
        self.reconnects = {r: reconnects.labels(w, r) for r in RECONNECT_REASONS}
        self._errors = ERRORS.counter(reg)
        for code in ERROR_CODES:
            self._errors.labels(w, code)
        self._link: AgentLink | None = None
        scraped = (CONNECTED, PENDING, OLDEST_AGE, RECORDED, STORE_SIZE, LAST_ERROR)
        reg.register(ScrapeCollector(scraped, self._scrape))

    def error(self, code: str) -> None:
        """Count one failure talking to the hub."""
        self._errors.labels(self.warehouse, code).inc()

    def watch(self, link: AgentLink) -> None:
        """Read the scrape-time gauges from ``link`` (and its store)."""
        self._link = link

    def _scrape(self) -> Iterable[Metric]:
        link = self._link
        w = (self.warehouse,)
        if link is None:
            values = {spec: 0.0 for spec in (CONNECTED, PENDING, OLDEST_AGE, RECORDED)}
            size, last_error = 0.0, 0.0
        else:
            backlog = link.store.backlog(link.acked, time.time_ns() // 1_000_000)
            values = {
                CONNECTED: float(link.connected),
                PENDING: float(backlog.pending),
                OLDEST_AGE: backlog.oldest_pending_age_s or 0.0,
                RECORDED: float(backlog.high_seq),
            }
            size = float(link.store.size_bytes())
            last_error = link.state.last_error_unix_ms / 1000
        for spec, value in values.items():
            yield spec.family([(w, value)])
        yield STORE_SIZE.family([(w, size)])
        yield LAST_ERROR.family([(w, last_error)])
