"""The hub process: a grpc.aio server with the sync, inventory, health and
reflection services over one store.

    hub = Hub(HubConfig(listen="127.0.0.1:0", db="hub.db", insecure=True))
    port = await hub.start()
    ...
    await hub.stop()
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from stocksync.config import HubConfig
from stocksync.events import InvalidEvent, validate_sku
from stocksync.hub.links import LinkRegistry
from stocksync.hub.sqlite_store import SqliteHubStore
from stocksync.hub.storage import HubStore
from stocksync.hub.sync_service import SyncServicer
from stocksync.tls import server_credentials
from stocksync.v1 import inventory_pb2, inventory_pb2_grpc, sync_pb2, sync_pb2_grpc
from stocksync.wire import MAX_MESSAGE_BYTES

__all__ = ["MAX_QUERY_SKUS", "Hub", "InventoryServicer", "server_options"]

log = logging.getLogger("stocksync.hub")

MAX_QUERY_SKUS = 1000
"""Most SKUs one GetStock may ask for."""


def server_options() -> list[tuple[str, Any]]:
    """gRPC server channel arguments (message bounds and keepalive policy)."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Agents ping every 20 s (keepalive_s) to detect dead links; allow it
        # even while a stream is idle instead of answering GOAWAY.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
    ]


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    """Answers what the hub holds: on_hand per SKU, warehouses and their lag."""

    def __init__(self, store: HubStore, links: LinkRegistry) -> None:
        self.store = store
        self.links = links

    async def GetStock(
        self,
        request: inventory_pb2.GetStockRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.GetStockResponse:
        """on_hand of each SKU, in total and per warehouse."""
        skus = list(request.skus)
        if not skus:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name at least one SKU")
        if len(skus) > MAX_QUERY_SKUS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_QUERY_SKUS} SKUs per request"
            )
        try:
            for sku in skus:
                validate_sku(sku)
        except InvalidEvent as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        on_hand = self.store.on_hand(skus)
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

    async def ListWarehouses(
        self,
        request: inventory_pb2.ListWarehousesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.ListWarehousesResponse:
        """Every warehouse the hub has applied anything from, with its link state."""
        statuses = []
        for record in self.store.warehouses():
            link = self.links.get(record.warehouse)
            live = link is not None and link.epoch == record.epoch
            lagging = live and link is not None and link.lag_events > 0
            statuses.append(
                inventory_pb2.WarehouseStatus(
                    warehouse=record.warehouse,
                    connected=live,
                    epoch=record.epoch,
                    watermark=record.watermark,
                    last_seen_unix_ms=max(record.last_seen_ms, link.last_seen_ms if link else 0),
                    lag_events=link.lag_events if live and link else 0,
                    # The age the agent last reported, while anything is still behind.
                    lag_seconds=link.oldest_pending_age_s if lagging and link else 0.0,
                    agent_high_seq=link.agent_high_seq if live and link else record.watermark,
                )
            )
        return inventory_pb2.ListWarehousesResponse(warehouses=statuses)


class Hub:
    """A running hub: store, services and server.

    Args:
        config: validated hub configuration.
        store: a store to use instead of opening ``config.db`` (another backend).
    """

    def __init__(self, config: HubConfig, store: HubStore | None = None) -> None:
        self.config = config
        self.store: HubStore = store or SqliteHubStore(config.db, config.synchronous)
        self.links = LinkRegistry()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-writer")
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.port = 0

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with port 0)."""
        server = grpc.aio.server(options=server_options())
        sync_pb2_grpc.add_SyncServiceServicer_to_server(
            SyncServicer(
                self.store,
                self.links,
                self._writer,
                max_batch_events=self.config.max_batch_events,
                hello_timeout_s=self.config.hello_timeout_s,
                ping_interval_s=self.config.ping_interval_s,
            ),
            server,
        )
        inventory_pb2_grpc.add_InventoryServiceServicer_to_server(
            InventoryServicer(self.store, self.links), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [
            sync_pb2.DESCRIPTOR.services_by_name["SyncService"].full_name,
            inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, server)
        if self.config.insecure:
            self.port = server.add_insecure_port(self.config.listen)
        else:
            self.port = server.add_secure_port(self.config.listen, server_credentials(self.config))
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {self.config.listen}")
        await server.start()
        for name in ["", *names[:2]]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.server = server
        log.info("hub listening on port %d (store %s)", self.port, self.config.db)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting streams, let in-flight batches finish, close the store."""
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(self.config.grace_s if grace is None else grace)
            self.server = None
        self._writer.shutdown(wait=True)
        self.store.close()

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""
        await self.start()
        started = time.monotonic()
        await stop.wait()
        log.info("stopping after %.0f s", time.monotonic() - started)
        await self.stop()
