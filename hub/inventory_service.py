"""The gRPC adapter for stock and reservations (``InventoryService``).

Every call goes through :mod:`stocksync.hub.inventory_calls` to the
:class:`~stocksync.hub.inventory.Inventory`, which the JSON API shares; this
module only translates messages, and every refusal is
a domain error that :func:`~stocksync.grpc_edge.guarded` turns into its
status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from stocksync.errors import InvalidArgument
from stocksync.grpc_edge import guarded
from stocksync.hub import inventory_calls as calls
from stocksync.hub.inventory import Inventory
from stocksync.hub.inventory_calls import MAX_CONFLICTS, MAX_QUERY_SKUS, check_skus
from stocksync.hub.ledger import Conflict, Reservation, State
from stocksync.hub.stock import Freshness, SkuStock
from stocksync.hub.storage import HubStore
from stocksync.hub.streams import StreamRegistry
from stocksync.v1 import inventory_pb2, inventory_pb2_grpc

__all__ = [
    "MAX_CONFLICTS",
    "MAX_QUERY_SKUS",
    "InventoryServicer",
    "check_skus",
    "conflict_message",
    "reservation_message",
    "sku_message",
]

T = TypeVar("T")

_FRESHNESS = {
    Freshness.FRESH: inventory_pb2.FRESHNESS_FRESH,
    Freshness.STALE: inventory_pb2.FRESHNESS_STALE,
    Freshness.OFFLINE: inventory_pb2.FRESHNESS_OFFLINE,
}
_STATUS = {
    "HELD": inventory_pb2.RESERVATION_STATUS_HELD,
    "COMMITTED": inventory_pb2.RESERVATION_STATUS_COMMITTED,
    "SETTLED": inventory_pb2.RESERVATION_STATUS_SETTLED,
    "RELEASED": inventory_pb2.RESERVATION_STATUS_RELEASED,
    "AT_RISK": inventory_pb2.RESERVATION_STATUS_AT_RISK,
}


def sku_message(view: SkuStock, hub_now_ms: int, unix_now_ms: int) -> inventory_pb2.SkuSummary:
    """A SkuSummary of ``view``; last-seen times turned from hub time to wall clock."""
    return inventory_pb2.SkuSummary(
        sku=view.sku,
        on_hand=view.on_hand,
        sellable=view.sellable,
        held=view.held,
        committed=view.committed,
        safety_stock=view.safety_stock,
        quota_free=view.quota_free,
        warehouses=[
            inventory_pb2.WarehouseStock(
                warehouse=w.warehouse,
                on_hand=w.on_hand,
                committed=w.committed,
                available=w.available,
                stale=w.freshness is not Freshness.FRESH,
                freshness=_FRESHNESS[w.freshness],
                last_seen_unix_ms=unix_now_ms - (hub_now_ms - w.last_seen_ms)
                if w.last_seen_ms
                else 0,
            )
            for w in view.warehouses
        ],
    )


def reservation_message(r: Reservation, hub_now_ms: int) -> inventory_pb2.Reservation:
    """A Reservation message of ``r``."""
    return inventory_pb2.Reservation(
        id=r.id,
        status=_STATUS[r.status],
        room_id=r.room,
        idempotency_key=r.key,
        created_unix_ms=r.created_unix_ms,
        expires_in_ms=max(0, r.expires_ms - hub_now_ms) if r.state is State.HELD else 0,
        reason=r.reason,
        lines=[
            inventory_pb2.ReservationLine(
                sku=line.sku,
                qty=line.qty,
                from_quota=line.from_quota,
                sellable_at_grant=line.sellable_at_grant,
                at_risk=line.at_risk,
                allocations=[
                    inventory_pb2.Allocation(warehouse=w, qty=qty, shipped=line.shipped.get(w, 0))
                    for w, qty in sorted(line.allocations.items())
                    if qty
                ],
            )
            for line in r.lines
        ],
    )


def conflict_message(c: Conflict) -> inventory_pb2.Conflict:
    """A Conflict message of ``c``."""
    return inventory_pb2.Conflict(
        id=c.id,
        kind=c.kind.value,
        sku=c.sku,
        warehouse=c.warehouse,
        units=c.units,
        reservation_id=c.reservation_id,
        cause=c.cause,
        at_unix_ms=c.at_unix_ms,
        resolved_unix_ms=c.resolved_unix_ms,
        open=c.open,
    )


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    """Stock, warehouses, reservations, quotas and conflicts.

    Args:
        store: the hub's store.
        reads: the executor store reads run on.
        streams: the live agent streams.
        inventory: the hub's stock decisions.
    """

    def __init__(
        self, store: HubStore, reads: Executor, streams: StreamRegistry, inventory: Inventory
    ) -> None:
        self.store = store
        self.reads = reads
        self.streams = streams
        self.inventory = inventory

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.reads, fn, *args)

    def _now(self) -> tuple[int, int]:
        clock = self.inventory.clock
        return clock.now_ms(), clock.unix_ms()

    @guarded
    async def GetStock(
        self,
        request: inventory_pb2.GetStockRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.GetStockResponse:
        """Sellable and the per-warehouse breakdown of each SKU."""
        views = calls.stock(self.inventory, request.skus, request.room_id)
        hub_now, unix_now = self._now()
        return inventory_pb2.GetStockResponse(
            skus=[sku_message(v, hub_now, unix_now) for v in views]
        )

    @guarded
    async def ListWarehouses(
        self,
        request: inventory_pb2.ListWarehousesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.ListWarehousesResponse:
        """Every warehouse the hub has applied anything from, with its stream state."""
        hub_now, _ = self._now()
        book = self.inventory.ledger.book
        statuses = []
        for record in await self._read(self.store.warehouses):
            stream = self.streams.get(record.warehouse)
            live = stream if stream is not None and stream.epoch == record.epoch else None
            lagging = live is not None and live.lag_events > 0
            statuses.append(
                inventory_pb2.WarehouseStatus(
                    warehouse=record.warehouse,
                    connected=live is not None,
                    epoch=record.epoch,
                    watermark=record.watermark,
                    last_seen_unix_ms=max(
                        record.last_seen_ms, stream.last_seen_ms if stream else 0
                    ),
                    lag_events=live.lag_events if live else 0,
                    # The age the agent last reported, while anything is still behind.
                    lag_seconds=live.oldest_pending_age_s if live and lagging else 0.0,
                    agent_high_seq=live.agent_high_seq if live else record.watermark,
                    freshness=_FRESHNESS[book.freshness(record.warehouse, hub_now)],
                    alerts=[
                        f"#{c.id} {c.cause}" for c in self.inventory.ledger.alerts(record.warehouse)
                    ],
                )
            )
        return inventory_pb2.ListWarehousesResponse(warehouses=statuses)

    @guarded
    async def Reserve(
        self,
        request: inventory_pb2.ReserveRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.ReserveResponse:
        """Hold every line or none; answered once durable."""
        reservation = await calls.reserve(
            self.inventory,
            [(line.sku, line.qty) for line in request.lines],
            request.room_id,
            request.idempotency_key,
            request.ttl_seconds,
        )
        return inventory_pb2.ReserveResponse(
            reservation=reservation_message(reservation, self._now()[0])
        )

    @guarded
    async def Commit(
        self,
        request: inventory_pb2.CommitRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.CommitResponse:
        """Paid: allocate and send pick commands."""
        reservation = await calls.commit(self.inventory, request.reservation_id)
        return inventory_pb2.CommitResponse(
            reservation=reservation_message(reservation, self._now()[0])
        )

    @guarded
    async def Release(
        self,
        request: inventory_pb2.ReleaseRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.ReleaseResponse:
        """Cancel a reservation."""
        reservation = await calls.release(self.inventory, request.reservation_id)
        return inventory_pb2.ReleaseResponse(
            reservation=reservation_message(reservation, self._now()[0])
        )

    @guarded
    async def GetReservation(
        self,
        request: inventory_pb2.GetReservationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.GetReservationResponse:
        """A reservation as it stands."""
        reservation = calls.get_reservation(self.inventory, request.reservation_id)
        return inventory_pb2.GetReservationResponse(
            reservation=reservation_message(reservation, self._now()[0])
        )

    @guarded
    async def SetQuota(
        self,
        request: inventory_pb2.SetQuotaRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.SetQuotaResponse:
        """Set aside units for one room."""
        if request.qty > 100_000:
            raise InvalidArgument(f"quota qty must be 0 to 100,000, got {request.qty}")
        room_sellable = await self.inventory.set_quota(request.room_id, request.sku, request.qty)
        return inventory_pb2.SetQuotaResponse(room_sellable=room_sellable)

    @guarded
    async def ReleaseQuota(
        self,
        request: inventory_pb2.ReleaseQuotaRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.ReleaseQuotaResponse:
        """Return a room's unsold quota to sale."""
        await self.inventory.release_quota(request.room_id, request.sku or None)
        return inventory_pb2.ReleaseQuotaResponse()

    @guarded
    async def SetSafetyStock(
        self,
        request: inventory_pb2.SetSafetyStockRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.SetSafetyStockResponse:
        """Keep units back from sale."""
        await self.inventory.set_safety_stock(request.sku, request.units)
        return inventory_pb2.SetSafetyStockResponse()

    @guarded
    async def ListConflicts(
        self,
        request: inventory_pb2.ListConflictsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.ListConflictsResponse:
        """Conflicts, newest first."""
        conflicts = await calls.conflicts(self.inventory, request.open_only, request.limit)
        return inventory_pb2.ListConflictsResponse(
            conflicts=[conflict_message(c) for c in conflicts]
        )

    @guarded
    async def ResolveConflict(
        self,
        request: inventory_pb2.ResolveConflictRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.ResolveConflictResponse:
        """Close an open conflict an operator handled."""
        await self.inventory.resolve_conflict(request.conflict_id)
        return inventory_pb2.ResolveConflictResponse()
