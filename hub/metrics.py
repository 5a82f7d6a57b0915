"""The hub's metrics, served at ``/metrics`` on its HTTP listener (``--http``).

Counters are counted where things happen, once per batch or decision (never
per event on the ingest path): the sync service counts applied, duplicate
and gap events, snapshots and stalls; the inventory counts reservations by
result and conflicts by kind once they are durable. Everything that is a
state — connected agents, watermarks, lag, freshness, oversold units, pick
commands pending, room subscribers, webhook backlogs — is read from the
hub's parts when Prometheus scrapes (:meth:`HubMetrics.watch`).

Per-warehouse children are created at 0 for every warehouse the hub knows
(its store at start, then each Hello); conflict kinds and reservation
results are fixed lists, all created at 0.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from stocksync.hub.ledger import ConflictKind
from stocksync.hub.stock import Freshness
from stocksync.metrics import BUILD_INFO, ScrapeCollector, Spec, new_registry

if TYPE_CHECKING:
    from stocksync.hub.inventory import Inventory
    from stocksync.hub.rooms import RoomHub
    from stocksync.hub.streams import StreamRegistry
    from stocksync.hub.webhook_delivery import WebhookDelivery

__all__ = ["RESERVATION_RESULTS", "SPECS", "HubMetrics"]

W = ("warehouse",)

CONNECTED_AGENTS = Spec(
    "stocksync_hub_connected_agents", "gauge", (), "Agent streams connected now."
)
WAREHOUSE_CONNECTED = Spec(
    "stocksync_hub_warehouse_connected", "gauge", W, "1 while the warehouse's agent is connected."
)
WATERMARK = Spec(
    "stocksync_hub_watermark_seq",
    "gauge",
    W,
    "The warehouse's last seq the hub holds durably (its current epoch).",
)
LAG_EVENTS = Spec(
    "stocksync_hub_lag_events",
    "gauge",
    W,
    "Events the agent last said it holds that the hub has not applied.",
)
LAG_SECONDS = Spec(
    "stocksync_hub_lag_seconds",
    "gauge",
    W,
    "Age of the oldest event the hub lacks, as the agent last reported it and "
    "counted on since (0 when caught up).",
)
LAST_SEEN = Spec(
    "stocksync_hub_last_seen_timestamp_seconds",
    "gauge",
    W,
    "Unix time the hub last heard from the warehouse's agent.",
)
STALE = Spec(
    "stocksync_hub_warehouse_stale",
    "gauge",
    W,
    "1 while the warehouse is stale or offline (silent past stale_after_s).",
)
APPLIED = Spec("stocksync_hub_events_applied_total", "counter", W, "Events applied durably.")
DUPLICATES = Spec(
    "stocksync_hub_duplicate_events_total",
    "counter",
    W,
    "Events received again (already applied) and dropped.",
)
GAPS = Spec(
    "stocksync_hub_gaps_total",
    "counter",
    W,
    "Batches refused because they started past the next expected seq.",
)
SNAPSHOTS = Spec(
    "stocksync_hub_snapshots_total", "counter", W, "Snapshots applied (a new or reset store)."
)
STALLS = Spec(
    "stocksync_hub_stalls_total",
    "counter",
    W,
    "Streams ended by the stall watchdog: events pending, watermark still for stall_after_s.",
)
CLOCK_SKEW = Spec(
    "stocksync_hub_agent_clock_skew_seconds",
    "gauge",
    W,
    "The agent's clock minus the hub's, from its last ping (nothing depends on it).",
)
CONFLICTS = Spec(
    "stocksync_hub_conflicts_total",
    "counter",
    ("kind",),
    "Conflicts recorded, by kind (oversold, reallocated, negative_on_hand, ...).",
)
OVERSOLD = Spec(
    "stocksync_hub_oversold_units",
    "gauge",
    (),
    "Units of active reservations that stock cannot cover now.",
)
RESERVATIONS = Spec(
    "stocksync_hub_reservations_total",
    "counter",
    ("result",),
    "Reservation calls and ends, by result: granted, short, duplicate, invalid, committed, "
    "released, expired, refused.",
)
PICKS_PENDING = Spec(
    "stocksync_hub_pick_commands_pending",
    "gauge",
    W,
    "Pick commands the warehouse has not acknowledged yet.",
)
SUBSCRIBERS = Spec(
    "stocksync_hub_room_subscribers", "gauge", (), "Room watchers (gRPC and SSE) connected now."
)
DELIVERED = Spec(
    "stocksync_hub_room_updates_delivered_total",
    "counter",
    (),
    "Room messages taken by watchers.",
)
COALESCED = Spec(
    "stocksync_hub_room_updates_coalesced_total",
    "counter",
    (),
    "Room messages a slow watcher took merged into one with later ones (counted as it takes them).",
)
DELIVERY_LATENCY = Spec(
    "stocksync_hub_delivery_latency_seconds",
    "histogram",
    (),
    "From the agent's batch (or the call) reaching the hub to a watcher taking the update.",
)
WEBHOOK_DELIVERIES = Spec(
    "stocksync_webhook_deliveries_total",
    "counter",
    ("subscription", "result"),
    "Webhook delivery attempts, by result: delivered (2xx) or failed.",
)
WEBHOOK_PENDING = Spec(
    "stocksync_webhook_pending_deliveries",
    "gauge",
    ("subscription",),
    "Webhook deliveries waiting in the outbox.",
)
WEBHOOK_FAILING = Spec(
    "stocksync_webhook_failing",
    "gauge",
    ("subscription",),
    "1 while the subscription's receiver is failing (its last attempt failed).",
)

SPECS = (
    BUILD_INFO,
    CONNECTED_AGENTS,
    WAREHOUSE_CONNECTED,
    WATERMARK,
    LAG_EVENTS,
    LAG_SECONDS,
    LAST_SEEN,
    STALE,
    APPLIED,
    DUPLICATES,
    GAPS,
    SNAPSHOTS,
    STALLS,
    CLOCK_SKEW,
    CONFLICTS,
    OVERSOLD,
    RESERVATIONS,
    PICKS_PENDING,
    SUBSCRIBERS,
    DELIVERED,
    COALESCED,
    DELIVERY_LATENCY,
    WEBHOOK_DELIVERIES,
    WEBHOOK_PENDING,
    WEBHOOK_FAILING,
)
"""Every hub metric, in the README's order."""

RESERVATION_RESULTS = (
    "granted",
    "short",
    "duplicate",
    "invalid",
    "committed",
    "released",
    "expired",
    "refused",
)
"""The results of ``stocksync_hub_reservations_total``: a reserve granted,
short of stock, answered from its idempotency key, or invalid; a commit or
release done, or refused (unknown or closed reservation); a hold expired."""

_SCRAPED = (
    CONNECTED_AGENTS,
    WAREHOUSE_CONNECTED,
    WATERMARK,
    LAG_EVENTS,
    LAG_SECONDS,
    LAST_SEEN,
    STALE,
    CLOCK_SKEW,
    OVERSOLD,
    PICKS_PENDING,
    SUBSCRIBERS,
    DELIVERED,
    COALESCED,
    WEBHOOK_DELIVERIES,
    WEBHOOK_PENDING,
    WEBHOOK_FAILING,
)


class HubMetrics:
    """The hub's metrics, in a registry of their own.

    Args:
        registry: where to register (default: a new one).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = reg = registry or new_registry("hub")
        self._applied = APPLIED.counter(reg)
        self._duplicates = DUPLICATES.counter(reg)
        self._gaps = GAPS.counter(reg)
        self._snapshots = SNAPSHOTS.counter(reg)
        self._stalls = STALLS.counter(reg)
        conflicts = CONFLICTS.counter(reg)
        self.conflicts = {kind: conflicts.labels(kind.value) for kind in ConflictKind}
        reservations = RESERVATIONS.counter(reg)
        self.reservations = {r: reservations.labels(r) for r in RESERVATION_RESULTS}
        self.delivery_latency = DELIVERY_LATENCY.histogram(reg)
        self.last_seen_ms: dict[str, int] = {}
        """Each warehouse's last-seen time as the store had it at start."""
        self.webhook_pending: dict[str, int] = {}
        """Pending deliveries per subscription, read before each scrape."""
        self._known: set[str] = set()
        self._parts: tuple[StreamRegistry, Inventory, RoomHub | None, WebhookDelivery] | None = None
        reg.register(ScrapeCollector(_SCRAPED, self._scrape))

    # -- counting ------------------------------------------------------------------

    def warehouse(self, warehouse: str) -> WarehouseCounters:
        """The warehouse's counters, created at 0 the first time."""
        self._known.add(warehouse)
        return WarehouseCounters(
            applied=self._applied.labels(warehouse).inc,
            duplicates=self._duplicates.labels(warehouse).inc,
            gaps=self._gaps.labels(warehouse).inc,
            snapshots=self._snapshots.labels(warehouse).inc,
            stalls=self._stalls.labels(warehouse).inc,
        )

    # -- reading at scrape time --------------------------------------------------------

    def watch(
        self,
        streams: StreamRegistry,
        inventory: Inventory,
        rooms: RoomHub | None,
        webhooks: WebhookDelivery,
    ) -> None:
        """Read the scrape-time gauges from the hub's parts."""
        self._parts = (streams, inventory, rooms, webhooks)
        for warehouse in inventory.warehouses():
            self.warehouse(warehouse)
        for label in webhooks.subscriptions:
            self.webhook_pending.setdefault(label, 0)

    def _scrape(self) -> Iterable[Metric]:
        if self._parts is None:
            return
        streams, inventory, rooms, webhooks = self._parts
        now_ms = time.time_ns() // 1_000_000
        known = sorted(self._known | set(inventory.warehouses()))
        per: dict[Spec, list[tuple[tuple[str, ...], float]]] = {
            spec: [] for spec in (WAREHOUSE_CONNECTED, WATERMARK, LAG_EVENTS, LAG_SECONDS)
        }
        per.update({spec: [] for spec in (LAST_SEEN, STALE, CLOCK_SKEW, PICKS_PENDING)})
        picks = Tally(p.warehouse for p in inventory.ledger.picks.values())
        for w in known:
            live, last = streams.get(w), streams.last.get(w)
            watermark = live.watermark if live is not None else inventory.watermark(w)
            lag = last.lag_events if last is not None else 0
            lag_s = 0.0
            if last is not None and lag > 0:
                lag_s = last.oldest_pending_age_s + max(0, now_ms - last.backlog_at_ms) / 1000
            seen = max(self.last_seen_ms.get(w, 0), last.last_seen_ms if last else 0)
            stale = inventory.freshness(w) is not Freshness.FRESH
            per[WAREHOUSE_CONNECTED].append(((w,), float(live is not None)))
            per[WATERMARK].append(((w,), float(watermark)))
            per[LAG_EVENTS].append(((w,), float(lag)))
            per[LAG_SECONDS].append(((w,), lag_s))
            per[LAST_SEEN].append(((w,), seen / 1000))
            per[STALE].append(((w,), float(stale)))
            per[CLOCK_SKEW].append(((w,), last.clock_skew_s if last else 0.0))
            per[PICKS_PENDING].append(((w,), float(picks.get(w, 0))))
        yield CONNECTED_AGENTS.family([((), float(len(streams.all())))])
        for spec, samples in per.items():
            yield spec.family(samples)
        yield OVERSOLD.family([((), float(inventory.ledger.at_risk_units()))])
        yield SUBSCRIBERS.family([((), float(rooms.watcher_count() if rooms else 0))])
        yield DELIVERED.family([((), float(rooms.delivered if rooms else 0))])
        yield COALESCED.family([((), float(rooms.coalesced if rooms else 0))])
        deliveries, pending, failing = [], [], []
        for label, stats in sorted(webhooks.stats.items()):
            deliveries.append(((label, "delivered"), float(stats.delivered_total)))
            deliveries.append(((label, "failed"), float(stats.failed_attempts_total)))
            pending.append(((label,), float(self.webhook_pending.get(label, 0))))
            failing.append(((label,), float(stats.failing)))
        yield WEBHOOK_DELIVERIES.family(deliveries)
        yield WEBHOOK_PENDING.family(pending)
        yield WEBHOOK_FAILING.family(failing)


class WarehouseCounters:
    """One warehouse's counters, bound once (cheap to bump on the ingest path)."""

    __slots__ = ("applied", "duplicates", "gaps", "snapshots", "stalls")

    def __init__(
        self,
        applied: Callable[..., None],
        duplicates: Callable[..., None],
        gaps: Callable[..., None],
        snapshots: Callable[..., None],
        stalls: Callable[..., None],
    ) -> None:
        self.applied = applied
        self.duplicates = duplicates
        self.gaps = gaps
        self.snapshots = snapshots
        self.stalls = stalls
