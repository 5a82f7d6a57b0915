"""The hub process: the composition root.

It wires one store, one writer, the live-stream registry and the gRPC
services (sync, inventory, health, reflection) into a grpc.aio server::

    hub = Hub(HubConfig(listen="127.0.0.1:0", db="hub.db", insecure=True))
    port = await hub.start()
    ...
    await hub.stop()

Nothing here decides a rule: the protocol core, the store and the services do.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import json
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from uuid6 import uuid7

from stocksync.auth import TokenFile
from stocksync.config import HubConfig
from stocksync.errors import StocksyncError
from stocksync.grpc_edge import Wrap, Wrapped, enable_reflection, guard_decoding
from stocksync.hub.access import Admission, Limits
from stocksync.hub.clock import HubClock
from stocksync.hub.grpc_gate import Gate
from stocksync.hub.inventory import Inventory
from stocksync.hub.inventory_service import InventoryServicer
from stocksync.hub.metrics import HubMetrics
from stocksync.hub.notices import Notices
from stocksync.hub.room_service import SERVICE_NAME as ROOM_SERVICE
from stocksync.hub.room_service import RoomServicer
from stocksync.hub.room_store import WriterRoomStore
from stocksync.hub.rooms import RoomHub
from stocksync.hub.sqlite_store import SqliteHubStore
from stocksync.hub.stock import StalenessPolicy
from stocksync.hub.storage import HubStore
from stocksync.hub.streams import StreamRegistry
from stocksync.hub.sync_service import SyncServicer
from stocksync.hub.webhook_delivery import WebhookDelivery
from stocksync.hub.webhook_service import SERVICE_NAME as WEBHOOK_SERVICE
from stocksync.hub.webhook_service import WebhookServicer
from stocksync.hub.writer import Writer
from stocksync.tls import CertificateReloader, TlsFiles
from stocksync.v1 import (
    inventory_pb2,
    inventory_pb2_grpc,
    rooms_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
    webhooks_pb2_grpc,
)
from stocksync.wire import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from stocksync.hub.http import HttpServer

__all__ = ["SERVICE_NAMES", "Hub", "check_free", "server_options", "write_ready_file"]

log = logging.getLogger("stocksync.hub")

SERVICE_NAMES = (
    sync_pb2.DESCRIPTOR.services_by_name["SyncService"].full_name,
    inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name,
    ROOM_SERVICE,
    WEBHOOK_SERVICE,
)
"""The stocksync services; each has a health status of its own."""


def server_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """gRPC server channel arguments (message bounds and keepalive policy)."""
    return [
        # A larger message is refused by gRPC itself (RESOURCE_EXHAUSTED,
        # "received message larger than max") before any of it is parsed.
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Agents ping every 20 s (keepalive_s) to detect dead links; allow it
        # even while a stream is idle instead of answering GOAWAY.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
        # A second hub on the same address must fail, not share the port and
        # split the agents between two databases.
        ("grpc.so_reuseport", 0),
    ]


class Hub:
    """A running hub: store, writer, services and server.

    Args:
        config: validated hub configuration.
        store: a store to use instead of opening ``config.db`` (another backend).
        clock: the hub's clock (tests move time with their own).

    Raises:
        StoreError: if ``config.db`` cannot be opened as a hub store.
        TokenFileError: if ``config.tokens_file`` cannot be used.
        TlsError: if the TLS files cannot be used (a key that is not the
            certificate's, a file that is not PEM).
    """

    def __init__(
        self, config: HubConfig, store: HubStore | None = None, clock: HubClock | None = None
    ) -> None:
        self.config = config
        # Read before the store is opened (or created): a bad file changes nothing.
        self.tokens = TokenFile(config.tokens_file) if config.tokens_file else None
        self.certificates: CertificateReloader | None = None
        self._token_certificates: CertificateReloader | None = None
        if not config.insecure:
            files = TlsFiles.from_config(config)
            self.certificates = CertificateReloader(files)
            if config.token_listen:
                self._token_certificates = CertificateReloader(files, require_client_auth=False)
        self.store: HubStore = store or SqliteHubStore(config.db, config.synchronous)
        self.streams = StreamRegistry()
        self.reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-reads")
        self.writer = Writer(self.store)
        self.metrics = HubMetrics()
        """The hub's metrics, in a registry of its own (served at /metrics)."""
        self.inventory = Inventory(
            self.store,
            self.writer,
            self.reads,
            clock or HubClock(),
            StalenessPolicy(
                stale_after_ms=int(config.stale_after_s * 1000),
                stale_buffer=config.stale_buffer,
                offline_after_ms=int(config.offline_after_s * 1000),
            ),
            default_ttl_ms=int(config.reservation_ttl_s * 1000),
            max_lines=config.max_reservation_lines,
            max_query_skus=config.max_query_skus,
            metrics=self.metrics,
        )
        # Who may call, and how much.
        self.admission = Admission(
            Limits(
                max_streams_per_identity=config.max_streams_per_identity,
                max_watchers_per_identity=config.max_watchers_per_identity,
                max_requests_per_s=config.max_requests_per_s,
                request_burst=config.request_burst,
            )
        )
        notices = Notices(config.webhooks, (str(uuid7()) for _ in itertools.count()))
        if config.webhooks:  # else no change is worth an outbox event
            self.inventory.notices = notices
        self.webhooks = WebhookDelivery(
            config.webhooks,
            self.store,
            self.writer,
            self.reads,
            notices,
            timeout_s=config.webhook_timeout_s,
            backoff_initial_s=config.webhook_backoff_initial_s,
            backoff_max_s=config.webhook_backoff_max_s,
            retention_hours=config.webhook_retention_hours,
        )
        self.rooms: RoomHub | None = None
        self.http: HttpServer | None = None
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.http_port = 0
        self.token_port = 0

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with port 0).

        Raises:
            RuntimeError: if an address cannot be bound.
        """
        self.writer.start()
        await self.inventory.start()
        await self.webhooks.start()
        records = await asyncio.get_running_loop().run_in_executor(self.reads, self.store.rooms)
        self.rooms = rooms = RoomHub(
            self.inventory,
            WriterRoomStore(records, self.writer),
            max_featured=self.config.max_featured_skus,
            min_interval_s=self.config.room_update_interval_ms / 1000,
            max_writes_per_s=self.config.room_max_writes_per_s,
        )
        self.inventory.stock_listeners.append(rooms.stock_changed)
        rooms.observe_delivery = self.metrics.delivery_latency.observe
        known = await asyncio.get_running_loop().run_in_executor(self.reads, self.store.warehouses)
        self.metrics.last_seen_ms.update({r.warehouse: r.last_seen_ms for r in known})
        self.metrics.watch(self.streams, self.inventory, rooms, self.webhooks)
        # The gate goes first: a caller is identified before its request is looked at.
        wraps: list[Wrap] = [guard_decoding]
        if not self.config.insecure:
            wraps.insert(0, Gate(self.tokens, self.admission).wrap)
        server = Wrapped(
            grpc.aio.server(options=server_options(self.config.max_message_bytes)), *wraps
        )
        sync_pb2_grpc.add_SyncServiceServicer_to_server(
            SyncServicer(
                self.store,
                self.reads,
                self.inventory,
                self.streams,
                max_batch_events=self.config.max_batch_events,
                hello_timeout_s=self.config.hello_timeout_s,
                ping_interval_s=self.config.ping_interval_s,
                snapshot_timeout_s=self.config.snapshot_timeout_s,
                stall_after_s=self.config.stall_after_s,
            ),
            server,
        )
        inventory_pb2_grpc.add_InventoryServiceServicer_to_server(
            InventoryServicer(
                self.store,
                self.reads,
                self.streams,
                self.inventory,
            ),
            server,
        )
        rooms_pb2_grpc.add_LiveRoomServiceServicer_to_server(
            RoomServicer(rooms, on_end=self.inventory.release_quota), server
        )
        webhooks_pb2_grpc.add_WebhookServiceServicer_to_server(
            WebhookServicer(self.webhooks), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        enable_reflection([*SERVICE_NAMES, health_name], server)
        self._listen(server)
        if self.config.http:
            # aiohttp (~0.25 s to load) only for a hub that serves HTTP.
            from stocksync.hub.http import HttpServer, make_app
            from stocksync.hub.http_api import add_api
            from stocksync.hub.http_auth import HttpAuth
            from stocksync.metrics import metrics_handler

            host, _, port = self.config.http.rpartition(":")
            auth = None if self.config.insecure else HttpAuth(self.tokens, self.admission)
            app = make_app(rooms, auth=auth)
            add_api(app, self.inventory)
            # Unauthenticated, like any exporter: counts and warehouse ids only.
            app.router.add_get("/metrics", metrics_handler(self.metrics.registry, self._scraping))
            self.http = HttpServer(app, host.strip("[]"), int(port))
            try:
                self.http_port = await self.http.start()
            except OSError as e:
                self.http = None
                raise RuntimeError(
                    f"cannot serve HTTP on {self.config.http}: {e.strerror}"
                ) from None
        await server.start()
        for name in ["", *SERVICE_NAMES]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.server = server
        log.info("hub listening on port %d (store %s)", self.port, self.config.db)
        if self.token_port:
            log.info("token callers (TLS, no client certificate) on port %d", self.token_port)
        return self.port

    async def _scraping(self) -> None:
        """Before a scrape: what only the store knows (webhook backlogs)."""
        if not self.config.webhooks:
            return
        loop = asyncio.get_running_loop()
        try:
            counts = await loop.run_in_executor(self.reads, self.store.webhook_pending_counts)
        except StocksyncError as e:
            log.debug("webhook backlog not read for /metrics: %s", e)
            return
        for label in self.webhooks.subscriptions:
            self.metrics.webhook_pending[label] = counts.get(label, 0)

    def _listen(self, server: grpc.aio.Server) -> None:
        """Add the listeners: mutual TLS (or plaintext, when asked for), and
        the TLS-only listener for bearer-token callers if configured.

        gRPC asks a client for a certificate on every connection of a port or
        on none, so callers with a token and no certificate get a port of
        their own; each port's credentials follow renewed certificate files.
        """
        config = self.config
        for listen in (config.listen, config.token_listen):
            if listen:
                check_free(listen)
        if config.insecure:
            _warn_if_exposed("listen", config.listen)
            if config.http:
                _warn_if_exposed("http", config.http)
            self.port = _bind(server, config.listen, None)
            return
        assert self.certificates is not None  # read in __init__ unless insecure
        self.port = _bind(server, config.listen, self.certificates.credentials())
        if self._token_certificates is not None:
            self.token_port = _bind(
                server, config.token_listen, self._token_certificates.credentials()
            )
        if config.http and not _loopback(config.http):
            log.warning(
                "HTTP on %s is plaintext beyond this machine: the bearer tokens sent to it "
                "travel in the clear; put it behind a proxy that terminates TLS",
                config.http,
            )
        if config.http and self.tokens is None:
            log.warning(
                "HTTP on %s takes room tokens, but no tokens_file is set: every request "
                "to it will be refused (401)",
                config.http,
            )

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting streams, let in-flight batches finish, close the store.

        Each agent stream makes what it accepted durable, acknowledges it and
        ends with UNAVAILABLE ("hub is stopping"); calls still running after
        ``grace`` seconds are cancelled.
        """
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            self.streams.closing.set()
            await self.server.stop(self.config.grace_s if grace is None else grace)
            self.server = None
        await self.webhooks.stop()
        await self.inventory.stop()
        await self.writer.close()
        self.reads.shutdown(wait=True)
        self.store.close()
        log.info(
            "stopped: %d transactions committed, store %s checkpointed",
            self.writer.commits,
            self.config.db,
        )

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""
        await self.start()
        started = time.monotonic()
        await stop.wait()
        log.info("stopping after %.0f s", time.monotonic() - started)
        await self.stop()


def _bind(server: grpc.aio.Server, listen: str, creds: grpc.ServerCredentials | None) -> int:
    """Add one listener; returns its port.

    Raises:
        RuntimeError: it cannot be bound.
    """
    try:
        if creds is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, creds)
    except RuntimeError:
        port = 0
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    return port


def _loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _warn_if_exposed(setting: str, listen: str) -> None:
    """Plaintext beyond this machine: say so at every start."""
    if not _loopback(listen):
        log.warning(
            "%s %s serves PLAINTEXT beyond this machine: anyone who can reach it may "
            "stream events for any warehouse, reserve and read everything "
            "(insecure is for development and trusted test networks only)",
            setting,
            listen,
        )


def check_free(listen: str) -> None:
    """Refuse, in one line, an address another process already listens on.

    gRPC would only log it from its C core (and, with port reuse, share it).

    Raises:
        RuntimeError: "address already in use".
    """
    host, _, port = listen.rpartition(":")
    if port == "0":
        return
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]") or "0.0.0.0", int(port)))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise RuntimeError(
                    f"cannot listen on {listen}: address already in use (is another hub running?)"
                ) from None
            raise RuntimeError(f"cannot listen on {listen}: {e.strerror}") from None


def write_ready_file(path: str | Path, **fields: Any) -> None:
    """Atomically write ``{"pid": ..., **fields}`` as JSON to ``path``.

    A supervisor or a test waits for the file to learn that the hub serves and
    on which port (with ``--listen HOST:0``), then asks the health service.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **fields}))
    tmp.replace(target)
