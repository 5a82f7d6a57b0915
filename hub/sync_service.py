"""The gRPC adapter around the hub's protocol core (``SyncService.Sync``).

Each agent stream runs one :class:`~stocksync.protocol.HubSession`; this
module only moves messages between it, the network and the store, and maps
domain errors to gRPC status codes with a detail naming what was wrong.
Batches are applied on one writer thread (SQLite has one writer anyway), so
the event loop keeps reading the network while a commit waits for its fsync.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Any, NoReturn

import grpc

from stocksync import wire
from stocksync.events import InvalidEvent, check_fields, validate_warehouse
from stocksync.hub.links import Link, LinkRegistry
from stocksync.hub.storage import EpochRetired, HubRow, HubStore, Source, WatermarkMoved
from stocksync.protocol import PROTOCOL_VERSION, Apply, Duplicate, HubSession, ProtocolError
from stocksync.v1 import sync_pb2, sync_pb2_grpc

__all__ = ["MAX_SNAPSHOT_SKUS", "SyncServicer"]

log = logging.getLogger("stocksync.hub.sync")

MAX_SNAPSHOT_SKUS = 2_000_000
"""A snapshot with more SKUs than this is refused (memory bound)."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _StreamEnded(Exception):
    """The agent closed its side."""


MAX_QUEUED_BATCHES = 64
"""Accepted batches waiting for the store, per stream; past this the stream
stops reading and HTTP/2 flow control holds the agent back."""


class _Applier:
    """Commits one stream's accepted batches in order and acks each commit.

    Batches that queue up while a commit waits for its fsync are committed
    together in the next transaction (group commit); the ack then covers all
    of them. Reading and checking the next batch overlaps the commit, and
    nothing is acknowledged before it is durable.
    """

    def __init__(
        self,
        store: HubStore,
        writer: Executor,
        session: HubSession,
        link: Link,
        out: wire.SerialWriter,
        source: Source | None,
    ) -> None:
        self.store, self.writer, self.session, self.link, self.out = (
            store,
            writer,
            session,
            link,
            out,
        )
        self.source = source
        self.queue: asyncio.Queue[list[HubRow]] = asyncio.Queue(MAX_QUEUED_BATCHES)
        self.task = asyncio.ensure_future(self._run())

    async def submit(self, rows: list[HubRow]) -> None:
        """Queue a batch's rows; an empty list asks for an ack only (a duplicate).

        Waits while the queue is full, but not for a commit that failed: the
        stream's loop sees :attr:`task` end and closes the stream.
        """
        if not self.queue.full():
            self.queue.put_nowait(rows)
            return
        put = asyncio.ensure_future(self.queue.put(rows))
        await asyncio.wait({put, self.task}, return_when=asyncio.FIRST_COMPLETED)
        put.cancel()

    async def drained(self) -> None:
        """Wait until everything queued is committed and acknowledged."""
        joined = asyncio.ensure_future(self.queue.join())
        await asyncio.wait({joined, self.task}, return_when=asyncio.FIRST_COMPLETED)
        joined.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batches = [await self.queue.get()]
            while not self.queue.empty():
                batches.append(self.queue.get_nowait())
            try:
                rows = [row for batch in batches for row in batch]
                if rows:
                    assert self.source is not None  # STREAMING implies a known source
                    last = await loop.run_in_executor(
                        self.writer,
                        self.store.apply_batch,
                        self.source,
                        self.session.watermark,
                        rows,
                        _now_ms(),
                    )
                    self.link.watermark = self.session.on_applied(last)
                ack = sync_pb2.Ack(up_to_seq=self.session.watermark)
                await self.out.write(sync_pb2.SyncResponse(ack=ack))
            finally:
                for _ in batches:
                    self.queue.task_done()


class SyncServicer(sync_pb2_grpc.SyncServiceServicer):
    """Serves agent streams.

    Args:
        store: the hub's durable state.
        links: the live streams, shared with the inventory service.
        writer: a single-thread executor for store writes.
        max_batch_events: largest batch accepted.
        hello_timeout_s: how long a new stream may take to say Hello.
        ping_interval_s: how often the hub pings an idle agent.
    """

    def __init__(
        self,
        store: HubStore,
        links: LinkRegistry,
        writer: Executor,
        max_batch_events: int = 5000,
        hello_timeout_s: float = 10.0,
        ping_interval_s: float = 15.0,
    ) -> None:
        self.store = store
        self.links = links
        self.writer = writer
        self.max_batch_events = max_batch_events
        self.hello_timeout_s = hello_timeout_s
        self.ping_interval_s = ping_interval_s

    async def Sync(
        self,
        request_iterator: AsyncIterator[sync_pb2.SyncRequest],
        context: grpc.aio.ServicerContext[sync_pb2.SyncRequest, sync_pb2.SyncResponse],
    ) -> None:
        """One agent stream: Hello, then batches, snapshots and pings."""
        session = HubSession(identity=_identity(context), max_batch=self.max_batch_events)
        try:
            async with asyncio.timeout(self.hello_timeout_s):
                first = await _read(context)
        except TimeoutError:
            await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello received in time")
        except _StreamEnded:
            return
        if first.WhichOneof("message") != "hello":
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "first message must be Hello")
        source, welcome = await self._handshake(session, first.hello, context)
        link = Link(
            warehouse=session.warehouse,
            epoch=session.epoch,
            peer=context.peer(),
            connected_at_ms=_now_ms(),
            watermark=session.watermark,
            agent_high_seq=session.agent_high_seq,
        )
        link.seen()
        if self.links.attach(link) is not None:
            log.info("%s: new stream from %s supersedes the old one", link.warehouse, link.peer)
        log.info(
            "%s: connected epoch=%s watermark=%d snapshot=%s",
            link.warehouse,
            link.epoch,
            welcome.watermark,
            welcome.snapshot_required,
        )
        out = wire.SerialWriter(context)
        try:
            await out.write(sync_pb2.SyncResponse(welcome=welcome))
            await self._serve(session, source, link, context, out)
        finally:
            self.links.detach(link)
            log.info("%s: stream closed", link.warehouse)

    async def _handshake(
        self, session: HubSession, hello: sync_pb2.Hello, context: Any
    ) -> tuple[Source | None, sync_pb2.Welcome]:
        try:
            validate_warehouse(hello.warehouse)
        except InvalidEvent as e:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if not hello.epoch or len(hello.epoch) > 64:
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "Hello epoch must be 1-64 chars"
            )
        source = self.store.source(hello.warehouse, hello.epoch)
        if source is not None and not source.current:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"epoch {hello.epoch} of {hello.warehouse} was replaced by a newer store; "
                "this store may no longer send events",
            )
        try:
            info = session.on_hello(
                wire.hello_info(hello), None if source is None else source.watermark
            )
        except PermissionError as e:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(e))
        except ProtocolError as e:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(e))
        return source, sync_pb2.Welcome(
            watermark=info.watermark,
            snapshot_required=info.snapshot_required,
            protocol_version=PROTOCOL_VERSION,
            max_batch_events=self.max_batch_events,
        )

    async def _serve(
        self,
        session: HubSession,
        source: Source | None,
        link: Link,
        context: Any,
        out: wire.SerialWriter,
    ) -> None:
        snapshot: list[tuple[str, int]] = []
        applier = _Applier(self.store, self.writer, session, link, out, source)
        superseded = asyncio.ensure_future(link.superseded.wait())
        pinger = asyncio.ensure_future(self._ping(out))
        reading: asyncio.Future[sync_pb2.SyncRequest] | None = None
        try:
            while True:
                reading = asyncio.ensure_future(_read(context))
                done, _ = await asyncio.wait(
                    {reading, superseded, applier.task}, return_when=asyncio.FIRST_COMPLETED
                )
                if applier.task in done:
                    await _store_failed(context, link, applier.task)
                if reading not in done:
                    await _abort(
                        context,
                        grpc.StatusCode.ABORTED,
                        f"superseded: a newer stream for {link.warehouse} took over",
                    )
                try:
                    msg = reading.result()
                except _StreamEnded:
                    await applier.drained()  # what arrived is valid: make it durable
                    return
                link.seen()
                kind = msg.WhichOneof("message")
                if kind == "batch":
                    await self._on_batch(session, applier, link, msg.batch, context)
                elif kind == "snapshot":
                    snapshot.extend((s.sku, s.on_hand) for s in msg.snapshot.stock)
                    if len(snapshot) > MAX_SNAPSHOT_SKUS:
                        await _abort(
                            context,
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"snapshot has more than {MAX_SNAPSHOT_SKUS} SKUs",
                        )
                    if msg.snapshot.last:
                        await applier.drained()
                        applier.source = await self._on_snapshot(
                            session, link, msg.snapshot.as_of_seq, snapshot, context, out
                        )
                        snapshot = []
                elif kind == "ping":
                    backlog = msg.ping.backlog
                    session.on_backlog(backlog.high_seq)
                    link.agent_high_seq = session.agent_high_seq
                    link.oldest_pending_age_s = backlog.oldest_pending_age_ms / 1000
                    if msg.ping.sent_at_unix_ms:
                        link.clock_skew_s = (msg.ping.sent_at_unix_ms - _now_ms()) / 1000
                elif kind == "command_ack":
                    log.debug("%s: command %s acknowledged", link.warehouse, msg.command_ack)
                else:
                    await _abort(
                        context, grpc.StatusCode.INVALID_ARGUMENT, f"unexpected message {kind!r}"
                    )
        finally:
            for task in (superseded, pinger, applier.task, reading):
                if task is not None:
                    task.cancel()
                    if task.done() and not task.cancelled():
                        task.exception()  # retrieved: the stream is over either way

    async def _on_batch(
        self,
        session: HubSession,
        applier: _Applier,
        link: Link,
        batch: sync_pb2.Batch,
        context: Any,
    ) -> None:
        try:
            verdict = session.on_batch(batch.first_seq, len(batch.events))
        except ProtocolError as e:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        link.agent_high_seq = session.agent_high_seq
        if isinstance(verdict, Duplicate):
            await applier.submit([])  # re-ack, in order with the commits before it
            return
        if not isinstance(verdict, Apply):
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                verdict.message(),
                (("resume-from-seq", str(verdict.expected)),),
            )
        assert applier.source is not None  # STREAMING implies a known source
        try:
            rows = wire.batch_rows(applier.source.source_id, batch, verdict.skip)
        except InvalidEvent as e:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"batch refused: {e}")
        await applier.submit(rows)

    async def _on_snapshot(
        self,
        session: HubSession,
        link: Link,
        as_of_seq: int,
        stock: list[tuple[str, int]],
        context: Any,
        out: wire.SerialWriter,
    ) -> Source:
        try:
            session.on_snapshot(as_of_seq)
            seen: set[str] = set()
            for sku, _ in stock:
                check_fields(sku, 1, 1, "", "", False)
                if sku in seen:
                    raise InvalidEvent(f"sku {sku} appears twice")
                seen.add(sku)
        except (ProtocolError, InvalidEvent) as e:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"snapshot refused: {e}")
        source = await asyncio.get_running_loop().run_in_executor(
            self.writer,
            self.store.apply_snapshot,
            session.warehouse,
            session.epoch,
            as_of_seq,
            stock,
            _now_ms(),
        )
        link.watermark = session.on_snapshot_applied(as_of_seq)
        log.info(
            "%s: snapshot of %d SKUs as of seq %d applied", link.warehouse, len(stock), as_of_seq
        )
        await out.write(sync_pb2.SyncResponse(ack=sync_pb2.Ack(up_to_seq=as_of_seq)))
        return source

    async def _ping(self, out: wire.SerialWriter) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            await out.write(sync_pb2.SyncResponse(ping=sync_pb2.Ping(sent_at_unix_ms=_now_ms())))


def _identity(context: Any) -> str | None:
    """The warehouse a client certificate names, or None without mTLS."""
    auth = context.auth_context()
    names = auth.get("x509_common_name") or []
    return names[0].decode() if names else None


async def _read(context: Any) -> sync_pb2.SyncRequest:
    msg = await context.read()
    if msg is grpc.aio.EOF:
        raise _StreamEnded
    return msg  # type: ignore[no-any-return]  # context is Any: read() gives EOF | request


async def _store_failed(context: Any, link: Link, applier: asyncio.Future[None]) -> NoReturn:
    """End the stream for a failed commit; nothing of it was applied."""
    error = applier.exception()
    if isinstance(error, WatermarkMoved | EpochRetired):
        await _abort(context, grpc.StatusCode.ABORTED, str(error))
    log.error("%s: applying a batch failed", link.warehouse, exc_info=error)
    await _abort(context, grpc.StatusCode.UNAVAILABLE, f"hub store failed: {error}")


async def _abort(
    context: Any,
    code: grpc.StatusCode,
    detail: str,
    trailing: tuple[tuple[str, str], ...] = (),
) -> NoReturn:
    log.warning("stream from %s ended: %s: %s", context.peer(), code.name, detail)
    if trailing:
        context.set_trailing_metadata(trailing)
    await context.abort(code, detail)
    raise AssertionError("unreachable")  # context.abort raises
