"""The agent daemon's local API: record events without a process per event.

A warehouse system or a scanner station on the edge box calls
``stocksync.v1.AgentService/Record`` (protos/stocksync/v1/agent.proto) on a
Unix socket or a loopback address — never anything a network can reach, as
the API has no authentication of its own: on a Unix socket, file permissions
(owner and group) decide who may record.

A request is recorded exactly as ``stocksync-agent import`` records a file:
every event checked by the same rules, all of them in one transaction or
none, durable when the call returns. Writes run on a thread of their own
with their own connection to the store, so the daemon's event loop never
waits on SQLite; once committed, the daemon's stream is woken to send them
at once instead of at its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from stocksync.agent.store import AgentStore, StoreError
from stocksync.config import check_local_address
from stocksync.errors import IncidentLog, InvalidArgument, Status, StocksyncError
from stocksync.events import InvalidEvent, Kind, NewEvent, validate_new_event
from stocksync.grpc_edge import Wrapped, enable_reflection, guard_decoding, guarded
from stocksync.v1 import agent_pb2, agent_pb2_grpc

__all__ = ["MAX_RECORD_EVENTS", "LocalApi", "LocalApiError"]

log = logging.getLogger("stocksync.agent.local_api")

MAX_RECORD_EVENTS = 10_000
"""Most events in one ``Record`` request: ~1.5 MB at the largest event form,
well under gRPC's 4 MB message limit, and one transaction a second caller
waits behind for at most a few tens of milliseconds."""

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


class LocalApiError(RuntimeError):
    """The local API cannot listen where it was told to; the text says why."""


class StoreUnavailable(StocksyncError):
    """The store could not take the events (a full disk, an I/O error)."""

    status = Status.UNAVAILABLE


def _socket_path(address: str) -> Path | None:
    if not address.startswith("unix:"):
        return None
    return Path(address.removeprefix("unix:").removeprefix("//"))


def _refuse_live_socket(path: Path) -> None:
    """gRPC replaces a socket file it finds; refuse instead if a process answers on it."""
    if not path.exists():
        return
    if not stat.S_ISSOCK(path.stat().st_mode):
        raise LocalApiError(f"cannot listen on unix:{path}: the path exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return  # a socket file left behind by a process that is gone
    raise LocalApiError(
        f"cannot listen on unix:{path}: another process is listening on it "
        "(a second agent with the same --local-api?)"
    )


def _new_event(i: int, e: agent_pb2.NewEvent) -> NewEvent:
    try:
        kind = Kind(e.kind)
    except ValueError:
        raise InvalidArgument(
            f"events[{i}].kind: must be RECEIVE, SHIP, ADJUST or COUNT, got {e.kind}"
        ) from None
    event = NewEvent(
        sku=e.sku,
        kind=kind,
        quantity=e.quantity,
        reason=e.reason,
        reservation_id=e.reservation_id,
        as_of_seq=e.as_of_seq if e.HasField("as_of_seq") else None,
    )
    try:
        return validate_new_event(event)
    except InvalidEvent as err:
        raise InvalidArgument(f"events[{i}]: {err}") from None


class _Recorder(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, api: LocalApi) -> None:
        self.api = api

    @guarded
    async def Record(
        self, request: agent_pb2.RecordRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.RecordResponse:
        """Record the request's events, all or none; their seqs."""
        n = len(request.events)
        if not 1 <= n <= MAX_RECORD_EVENTS:
            raise InvalidArgument(
                f"events: 1 to {MAX_RECORD_EVENTS} per request, got {n}; nothing was recorded"
            )
        events = [_new_event(i, e) for i, e in enumerate(request.events)]
        first, last = await self.api.record(events)
        return agent_pb2.RecordResponse(first_seq=first, last_seq=last)


class LocalApi:
    """The local API server, on the daemon's event loop.

    Args:
        address: ``unix:PATH`` or a loopback ``HOST:PORT`` (port 0: any free one).
        db: the agent's store.
        synchronous: the store's ``synchronous`` setting.
        wake: called after each commit, to send the new events at once.
    """

    def __init__(
        self, address: str, db: str | Path, synchronous: str, wake: Callable[[], None]
    ) -> None:
        self.address = check_local_address(address)
        self.db = Path(db)
        self.synchronous = synchronous
        self.wake = wake
        self.bound = ""
        """Where it listens once started (the port filled in)."""
        self.recorded = 0
        """Events recorded through it since start."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-api")
        self._incidents = IncidentLog(log)
        self._store: AgentStore | None = None
        self._server: grpc.aio.Server | None = None

    async def start(self) -> str:
        """Listen; returns the bound address.

        Raises:
            LocalApiError: the address is taken or cannot be bound.
        """
        path = _socket_path(self.address)
        if path is not None:
            _refuse_live_socket(path)
        server = Wrapped(grpc.aio.server(), guard_decoding)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(_Recorder(self), server)
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        enable_reflection([SERVICE_NAME, health_name], server)
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as e:
            raise LocalApiError(f"cannot listen on {self.address}: {e}") from None
        if path is None and port == 0:
            raise LocalApiError(f"cannot listen on {self.address}: address in use or unavailable")
        await server.start()
        if path is not None:
            os.chmod(path, 0o660)  # owner and group record; others may not connect
            self.bound = self.address
        else:
            host = self.address.rpartition(":")[0]
            self.bound = f"{host}:{port}"
        await checker.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        log.info("local API listening on %s", self.bound)
        return self.bound

    async def stop(self) -> None:
        """Finish the calls in progress (2 s at most), then close the store."""
        if self._server is not None:
            await self._server.stop(2.0)
            self._server = None
        await asyncio.get_running_loop().run_in_executor(self._pool, self._close)
        self._pool.shutdown(wait=True)
        path = _socket_path(self.address)
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()

    async def record(self, events: list[NewEvent]) -> tuple[int, int]:
        """Record ``events`` all or none on the writer thread; their first and last seq.

        Raises:
            InvalidArgument: an event the store refuses (a count as of a pruned
                or future seq); nothing recorded.
            StoreUnavailable: the store cannot write; nothing recorded.
        """
        loop = asyncio.get_running_loop()
        seqs = await loop.run_in_executor(self._pool, self._record, events)
        self.recorded += len(seqs)
        self.wake()
        return seqs[0], seqs[-1]

    def _record(self, events: list[NewEvent]) -> list[int]:
        try:
            if self._store is None:
                self._store = AgentStore(self.db, synchronous=self.synchronous)
            seqs = self._store.record_many(events)
        except InvalidEvent as e:
            raise InvalidArgument(f"{e}; nothing was recorded") from None
        except StoreError as e:
            self._incidents.failed("local API: cannot record", str(e))
            raise StoreUnavailable(f"{e}; nothing was recorded") from None
        self._incidents.recovered("local API: recording again")
        return seqs

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
