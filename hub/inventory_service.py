"""The gRPC adapter for queries on what the hub holds (``InventoryService``).

Every store read runs on the hub's read executor, never on the event loop;
every refusal is a domain error that :func:`~stocksync.hub.grpc_edge.guarded`
turns into its status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from stocksync.events import InvalidEvent, validate_sku
from stocksync.hub.grpc_edge import guarded
from stocksync.hub.storage import HubStore
from stocksync.hub.streams import StreamRegistry
from stocksync.v1 import inventory_pb2, inventory_pb2_grpc

__all__ = ["MAX_QUERY_SKUS", "InventoryServicer"]

MAX_QUERY_SKUS = 1000
"""Most SKUs one GetStock may ask for."""

T = TypeVar("T")


def check_skus(skus: list[str]) -> list[str]:
    """The SKUs of a query, each well-formed, at least one and at most
    :data:`MAX_QUERY_SKUS`.

    Raises:
        InvalidEvent: naming the first problem.
    """
    if not skus:
        raise InvalidEvent("name at least one SKU")
    if len(skus) > MAX_QUERY_SKUS:
        raise InvalidEvent(f"at most {MAX_QUERY_SKUS} SKUs per request, got {len(skus)}")
    for sku in skus:
        validate_sku(sku)
    return skus


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    """Answers what the hub holds: on_hand per SKU, warehouses and their lag.

    Args:
        store: the hub's store.
        reads: the executor store reads run on.
        streams: the live agent streams.
    """

    def __init__(self, store: HubStore, reads: Executor, streams: StreamRegistry) -> None:
        self.store = store
        self.reads = reads
        self.streams = streams

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.reads, fn, *args)

    @guarded
    async def GetStock(
        self,
        request: inventory_pb2.GetStockRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.GetStockResponse:
        """on_hand of each SKU, in total and per warehouse."""
        skus = check_skus(list(request.skus))
        on_hand = await self._read(self.store.on_hand, skus)
        return inventory_pb2.GetStockResponse(
            skus=[
                inventory_pb2.SkuSummary(
                    sku=sku,
                    on_hand=sum(on_hand[sku].values()),
                    warehouses=[
                        inventory_pb2.WarehouseStock(warehouse=w, on_hand=q)
                        for w, q in sorted(on_hand[sku].items())
                    ],
                )
                for sku in skus
            ]
        )

    @guarded
    async def ListWarehouses(
        self,
        request: inventory_pb2.ListWarehousesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.ListWarehousesResponse:
        """Every warehouse the hub has applied anything from, with its stream state."""
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
                )
            )
        return inventory_pb2.ListWarehousesResponse(warehouses=statuses)
