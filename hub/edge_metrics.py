"""A room edge's metrics, served at ``/metrics`` on its HTTP listener (``--http``).

Everything is read from the edge's rooms when Prometheus scrapes: viewers,
rooms followed, rooms whose stream to the hub is down, when the edge last
had a working stream to the hub, reconnects and refusals, and the message
counters (received from the hub, delivered to viewers, merged for slow
ones). The names are in the README's metrics table with the agent's and
the hub's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from stocksync.metrics import BUILD_INFO, ScrapeCollector, Spec, new_registry

if TYPE_CHECKING:
    from stocksync.hub.edge import EdgeRooms

__all__ = ["SPECS", "EdgeMetrics"]

WATCHERS = Spec("stocksync_edge_watchers", "gauge", (), "Viewers watching a room at this edge now.")
ROOMS = Spec(
    "stocksync_edge_rooms", "gauge", (), "Rooms this edge follows at the hub now (one stream each)."
)
ROOMS_DISCONNECTED = Spec(
    "stocksync_edge_rooms_disconnected",
    "gauge",
    (),
    "Rooms whose stream to the hub is down now (the edge is reconnecting; viewers keep "
    "what they have).",
)
RECONNECTS = Spec(
    "stocksync_edge_hub_reconnects_total",
    "counter",
    (),
    "Room streams to the hub lost and tried again.",
)
LAST_CONNECTED = Spec(
    "stocksync_edge_hub_last_connected_timestamp_seconds",
    "gauge",
    (),
    "Unix time this edge last had a working stream to the hub (the scrape's time while a "
    "room's stream is up, or no room is followed).",
)
REFUSALS = Spec(
    "stocksync_edge_hub_refusals_total",
    "counter",
    ("code",),
    "Rooms the hub refused this edge, by gRPC status: PERMISSION_DENIED, UNAUTHENTICATED, "
    "INVALID_ARGUMENT, UNIMPLEMENTED (not retried; the room's viewers here get UNAVAILABLE).",
)
RECEIVED = Spec(
    "stocksync_edge_messages_received_total",
    "counter",
    (),
    "Room messages received from the hub.",
)
DELIVERED = Spec(
    "stocksync_edge_messages_delivered_total",
    "counter",
    (),
    "Room messages taken by this edge's viewers.",
)
COALESCED = Spec(
    "stocksync_edge_messages_coalesced_total",
    "counter",
    (),
    "Room messages a slow viewer took merged into one with later ones (counted as it takes them).",
)

SPECS = (
    BUILD_INFO,
    WATCHERS,
    ROOMS,
    ROOMS_DISCONNECTED,
    LAST_CONNECTED,
    RECONNECTS,
    REFUSALS,
    RECEIVED,
    DELIVERED,
    COALESCED,
)
"""Every metric an edge exports (the README table reads them)."""


class EdgeMetrics:
    """The edge's registry, read from ``rooms`` at scrape time."""

    def __init__(self, rooms: EdgeRooms) -> None:
        self.rooms = rooms
        self.registry: CollectorRegistry = new_registry("edge")
        self.registry.register(ScrapeCollector(SPECS[1:], self._collect))

    def _collect(self) -> Iterable[Metric]:
        rooms = self.rooms
        yield WATCHERS.family([((), rooms.watcher_count())])
        yield ROOMS.family([((), len(rooms.mirrored()))])
        yield ROOMS_DISCONNECTED.family([((), rooms.disconnected())])
        yield LAST_CONNECTED.family([((), rooms.hub_last_connected())])
        yield RECONNECTS.family([((), rooms.reconnects)])
        yield REFUSALS.family([((code,), n) for code, n in sorted(rooms.refusals.items())])
        yield RECEIVED.family([((), rooms.published)])
        yield DELIVERED.family([((), rooms.delivered)])
        yield COALESCED.family([((), rooms.coalesced)])
