"""The gRPC adapter around the hub's protocol core (``SyncService.Sync``).

Each agent stream runs one :class:`~stocksync.protocol.HubSession`. This
module only moves messages between it, the network and the store: the core
decides what is allowed, the :class:`~stocksync.hub.writer.Writer` makes it
durable, and any domain error ends the stream through the one status table
of :mod:`stocksync.grpc_edge`.

Batches are pipelined: while one waits in the writer for its fsync, the next
is read, checked and queued; acks follow the commits in order and only ever
cover what is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from stocksync import wire
from stocksync.clock import wall_ms
from stocksync.errors import Status, StocksyncError
from stocksync.events import EventRow
from stocksync.faults import fault_point
from stocksync.grpc_edge import Undecodable, abort
from stocksync.hub.grpc_gate import current_caller
from stocksync.hub.inventory import Inventory
from stocksync.hub.ledger import ConflictKind, PickCommand
from stocksync.hub.metrics import WarehouseCounters
from stocksync.hub.storage import Applied, HubStore, Source, WarehouseRecord
from stocksync.hub.streams import AgentStream, StreamRegistry
from stocksync.logs import about
from stocksync.protocol import (
    Apply,
    EpochRetired,
    HubSession,
    HubState,
    MalformedMessage,
    SeqGap,
    Superseded,
    TimedOut,
)
from stocksync.v1 import sync_pb2, sync_pb2_grpc

__all__ = ["MAX_QUEUED_BATCHES", "SyncServicer"]

log = logging.getLogger("stocksync.hub.sync")

MAX_QUEUED_BATCHES = 64
"""Batches of one stream accepted but not yet durable; past this the stream
stops reading and HTTP/2 flow control holds the agent back."""

T = TypeVar("T")


def _now_ms() -> int:
    return wall_ms()


class _StreamEnded(Exception):
    """The agent closed its side."""


class HubStopping(StocksyncError):
    """The hub is shutting down; the agent reconnects (to it or its replacement)."""

    status = Status.UNAVAILABLE


class StreamStalled(StocksyncError):
    """The agent reports events pending but the watermark has not moved for
    ``stall_after_s``: the stream is ended so the agent makes a new one."""

    status = Status.UNAVAILABLE


class _Pipeline:
    """Commits one stream's accepted batches in order and acknowledges each commit.

    One command of this stream is in the writer at a time; batches accepted
    meanwhile are buffered and go in as **one** command when it is done (they
    are contiguous), so a catching-up agent costs one log insert and one
    upsert per distinct SKU per commit, not per batch. The writer groups that
    command with other streams' and reserves into one transaction. Nothing is
    acknowledged before it is durable; one Ack covers everything committed.
    """

    def __init__(
        self,
        session: HubSession,
        stream: AgentStream,
        out: wire.SerialWriter,
        submit: Callable[[list[EventRow], float], asyncio.Future[Applied]],
        counters: WarehouseCounters,
    ) -> None:
        self.session, self.stream, self.out, self._submit = session, stream, out, submit
        self._counters = counters
        self._in_flight_events = 0
        self._buffer: list[EventRow] = []
        self._buffer_origin = 0.0
        self._buffered_last = 0
        self._in_flight: asyncio.Future[Applied] | None = None
        self._in_flight_last = 0
        self._batches = 0
        self._reack = False
        self._changed = asyncio.Event()
        self._progress = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    @property
    def full(self) -> bool:
        """Too many batches are waiting: stop reading until some are durable."""
        return self._batches >= MAX_QUEUED_BATCHES

    @property
    def idle(self) -> bool:
        """Nothing accepted is waiting to be made durable or acknowledged."""
        return self._in_flight is None and not self._buffer and not self._reack

    def add(self, rows: list[EventRow], last_seq: int) -> None:
        """Make ``rows`` (ending at ``last_seq``) durable, then ack them."""
        if not self._buffer:
            self._buffer_origin = time.monotonic()
        self._buffer.extend(rows)
        self._buffered_last = last_seq
        self._batches += 1
        self._changed.set()

    def reack(self) -> None:
        """A duplicate: ack what is durable, after whatever is pending."""
        self._reack = True
        self._changed.set()

    async def wait(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds after an ack, or the pipeline ends
        (a failed commit: the stream's loop raises its error)."""
        while not condition() and not self.task.done():
            self._progress.clear()
            progress = asyncio.ensure_future(self._progress.wait())
            await asyncio.wait({progress, self.task}, return_when=asyncio.FIRST_COMPLETED)
            progress.cancel()

    async def drained(self) -> None:
        """Wait until everything accepted is durable and acknowledged."""
        await self.wait(lambda: self.idle)

    async def _run(self) -> None:
        while True:
            if self._in_flight is None and self._buffer:
                self._start_commit()
            if self._in_flight is not None:
                await asyncio.shield(self._in_flight)  # a store error ends the stream
                fault_point("hub-after-commit")  # durable, not yet acknowledged
                self._counters.applied(self._in_flight_events)
                self.session.on_applied(self._in_flight_last)
                self._in_flight = None
                if self._buffer:
                    self._start_commit()  # before the ack: the writer never waits on us
                self._reack = False  # this ack re-acks any duplicate too
            elif self._reack:
                self._reack = False
            else:
                self._changed.clear()
                await self._changed.wait()
                continue
            self.stream.watermark = self.session.watermark
            await self.out.write(
                sync_pb2.SyncResponse(ack=sync_pb2.Ack(up_to_seq=self.session.watermark))
            )
            self._progress.set()

    def _start_commit(self) -> None:
        rows, self._buffer = self._buffer, []
        self._in_flight_last, self._batches = self._buffered_last, 0
        self._in_flight_events = len(rows)
        self._in_flight = self._submit(rows, self._buffer_origin)

    def discard(self) -> None:
        """The stream is over: a commit still in the writer stands, unheard."""
        if self._in_flight is not None:
            self._in_flight.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class SyncServicer(sync_pb2_grpc.SyncServiceServicer):
    """Serves agent streams.

    Args:
        store: the hub's durable state (read here, off the event loop).
        reads: the executor for store reads.
        inventory: decides and makes durable what the agents send.
        streams: the live streams, shared with the inventory service.
        max_batch_events: largest batch accepted; sent in every Welcome.
        hello_timeout_s: how long a new stream may take to say Hello.
        ping_interval_s: how often the hub pings an idle agent.
        snapshot_timeout_s: how long a stream asked for a snapshot may stay
            silent about it (between chunks) before it is closed.
        stall_after_s: how long the watermark may stand still while the
            agent reports events pending before the stream is ended.
    """

    def __init__(
        self,
        store: HubStore,
        reads: Executor,
        inventory: Inventory,
        streams: StreamRegistry,
        max_batch_events: int = 5000,
        hello_timeout_s: float = 10.0,
        ping_interval_s: float = 15.0,
        snapshot_timeout_s: float = 60.0,
        stall_after_s: float = 60.0,
    ) -> None:
        self.store = store
        self.metrics = inventory.metrics
        self.stall_after_s = stall_after_s
        self.reads = reads
        self.inventory = inventory
        self.streams = streams
        self.max_batch_events = max_batch_events
        self.hello_timeout_s = hello_timeout_s
        self.ping_interval_s = ping_interval_s
        self.snapshot_timeout_s = snapshot_timeout_s

    async def _read_store(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.reads, fn, *args)

    async def Sync(
        self,
        request_iterator: AsyncIterator[sync_pb2.SyncRequest],
        context: grpc.aio.ServicerContext[sync_pb2.SyncRequest, sync_pb2.SyncResponse],
    ) -> None:
        """One agent stream: Hello, then batches, snapshots and pings."""
        out = wire.SerialWriter(context)
        try:
            await self._sync(context, out)
        except StocksyncError as e:
            if await _goodbye(out, e):
                await _let_agent_hang_up(context)
            await abort(context, e)

    async def _sync(self, context: Any, out: wire.SerialWriter) -> None:
        session = HubSession(identity=_identity(), max_batch=self.max_batch_events)
        try:
            async with asyncio.timeout(self.hello_timeout_s):
                first = await _read(context)
        except TimeoutError:
            raise TimedOut(f"no Hello received within {self.hello_timeout_s:g} s") from None
        except _StreamEnded:
            return
        session.receive(first.WhichOneof("message"))
        hello = wire.hello_info(first.hello)
        session.check_hello(hello)  # before the store is asked anything
        source = await self._read_store(self.store.source, hello.warehouse, hello.epoch)
        live = self.streams.get(hello.warehouse)
        try:
            welcome = session.on_hello(hello, source, live.epoch if live is not None else None)
        except EpochRetired:
            await self._two_stores(hello.warehouse, hello.epoch, context.peer())
            raise
        replacing = None
        if source is None:
            records = await self._read_store(self.store.warehouses)
            replacing = next((r for r in records if r.warehouse == hello.warehouse), None)
        stream = AgentStream(
            warehouse=session.warehouse,
            epoch=session.epoch,
            peer=context.peer(),
            connected_at_ms=_now_ms(),
            watermark=session.watermark,
            agent_high_seq=session.agent_high_seq,
        )
        stream.seen()
        where = about(stream.warehouse)
        if self.streams.attach(stream) is not None:
            log.info(
                "%s: new stream from %s supersedes the old one",
                stream.warehouse,
                stream.peer,
                extra=where,
            )
        log.info(
            "%s: connected epoch=%s watermark=%d snapshot=%s",
            stream.warehouse,
            stream.epoch,
            welcome.watermark,
            welcome.snapshot_required,
            extra=where,
        )
        counters = self.metrics.warehouse(stream.warehouse)
        try:
            await out.write(wire.welcome_message(welcome))
            await self._serve(session, source, stream, context, out, counters, replacing)
        finally:
            self.streams.detach(stream)
            log.info("%s: stream closed", stream.warehouse, extra=where)

    async def _serve(
        self,
        session: HubSession,
        source: Source | None,
        stream: AgentStream,
        context: Any,
        out: wire.SerialWriter,
        counters: WarehouseCounters,
        replacing: WarehouseRecord | None = None,
    ) -> None:
        def submit(rows: list[EventRow], origin: float) -> asyncio.Future[Applied]:
            assert source is not None  # STREAMING implies a known source
            return self.inventory.apply_batch(source, rows, origin)

        inventory, warehouse = self.inventory, stream.warehouse
        pipeline = _Pipeline(session, stream, out, submit, counters)
        stall = asyncio.ensure_future(self._stall_watch(session))
        superseded = asyncio.ensure_future(stream.superseded.wait())
        closing = asyncio.ensure_future(self.streams.closing.wait())
        pinger = asyncio.ensure_future(self._ping(out))
        picks: asyncio.Queue[list[PickCommand]] = asyncio.Queue()
        picker: asyncio.Future[None] | None = None
        reading: asyncio.Future[sync_pb2.SyncRequest] | None = None
        snapshot_deadline = time.monotonic() + self.snapshot_timeout_s
        try:
            if source is not None:
                picker = self._start_picks(warehouse, picks, out)
            while True:
                if pipeline.full:
                    await pipeline.wait(lambda: not pipeline.full)
                reading = asyncio.ensure_future(_read(context))
                waiting = {reading, superseded, closing, pipeline.task, stall}
                timeout = None
                if session.state is HubState.AWAITING_SNAPSHOT:
                    timeout = snapshot_deadline - time.monotonic()
                done, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    raise TimedOut(
                        f"no snapshot received within {self.snapshot_timeout_s:g} s of asking"
                    )
                if pipeline.task in done:
                    pipeline.task.result()  # a failed commit: its error ends the stream
                if closing in done and reading not in done:
                    await pipeline.drained()  # what was accepted is durable and acked
                    raise HubStopping("hub is stopping; reconnect later")
                if stall in done and reading not in done:
                    counters.stalls()
                    log.warning(
                        "%s: stream stalled: %s; ending it (the agent reconnects)",
                        warehouse,
                        stall.result(),
                        extra=about(warehouse),
                    )
                    raise StreamStalled(f"stream stalled: {stall.result()}; reconnect")
                if reading not in done:
                    raise Superseded(f"superseded: a newer stream for {stream.warehouse} took over")
                try:
                    msg = reading.result()
                except _StreamEnded:
                    await pipeline.drained()  # what arrived is valid: make it durable
                    if pipeline.task.done():
                        pipeline.task.result()
                    return
                stream.seen()
                inventory.seen(warehouse)
                kind = msg.WhichOneof("message")
                session.receive(kind)
                if kind == "batch":
                    self._on_batch(session, pipeline, stream, msg.batch, counters)
                elif kind == "snapshot":
                    snapshot_deadline = time.monotonic() + self.snapshot_timeout_s
                    chunk = msg.snapshot
                    stock = session.on_snapshot_chunk(
                        chunk.as_of_seq, [(s.sku, s.on_hand) for s in chunk.stock], chunk.last
                    )
                    if stock is not None:
                        source = await self._on_snapshot(session, pipeline, stream, stock, out)
                        counters.snapshots()
                        picker = picker or self._start_picks(warehouse, picks, out)
                        if replacing is not None and replacing.epoch != session.epoch:
                            await self._epoch_replaced(replacing, session.epoch)
                elif kind == "ping":
                    backlog = msg.ping.backlog
                    session.on_backlog(backlog.high_seq)
                    stream.agent_high_seq = session.agent_high_seq
                    stream.oldest_pending_age_s = backlog.oldest_pending_age_ms / 1000
                    stream.backlog_at_ms = stream.last_seen_ms
                    if msg.ping.sent_at_unix_ms:
                        stream.clock_skew_s = (msg.ping.sent_at_unix_ms - _now_ms()) / 1000
                elif kind == "command_ack":
                    inventory.ack_pick(warehouse, msg.command_ack.command_id)
        finally:
            pipeline.discard()
            if inventory.pick_listeners.get(warehouse) == picks.put_nowait:
                del inventory.pick_listeners[warehouse]
            for task in (superseded, closing, pinger, pipeline.task, reading, picker, stall):
                if task is not None:
                    task.cancel()
                    if task.done() and not task.cancelled():
                        task.exception()  # retrieved: the stream is over either way

    def _on_batch(
        self,
        session: HubSession,
        pipeline: _Pipeline,
        stream: AgentStream,
        batch: sync_pb2.Batch,
        counters: WarehouseCounters,
    ) -> None:
        events = batch.events
        try:
            verdict = session.on_batch(
                batch.first_seq, len(events), events[-1].seq if events else batch.first_seq
            )
        except SeqGap:
            counters.gaps()
            raise
        stream.agent_high_seq = session.agent_high_seq
        if isinstance(verdict, Apply):
            if verdict.skip:
                counters.duplicates(verdict.skip)
            pipeline.add(wire.batch_rows(batch, verdict.skip), verdict.last_seq)
        else:
            counters.duplicates(len(batch.events))
            pipeline.reack()  # a duplicate: re-ack, in order with the commits before it

    async def _on_snapshot(
        self,
        session: HubSession,
        pipeline: _Pipeline,
        stream: AgentStream,
        stock: list[tuple[str, int]],
        out: wire.SerialWriter,
    ) -> Source:
        await pipeline.drained()
        as_of = session.snapshot_as_of
        warehouse, epoch = session.warehouse, session.epoch
        source = await self.inventory.apply_snapshot(warehouse, epoch, as_of, stock)
        stream.watermark = session.on_snapshot_applied(as_of)
        log.info(
            "%s: snapshot of %d SKUs as of seq %d applied",
            warehouse,
            len(stock),
            as_of,
            extra=about(warehouse),
        )
        await out.write(sync_pb2.SyncResponse(ack=sync_pb2.Ack(up_to_seq=as_of)))
        return source

    async def _two_stores(self, warehouse: str, epoch: str, peer: str) -> None:
        """A replaced epoch spoke again: say so loudly, once per epoch."""
        if any(epoch in c.cause for c in self.inventory.ledger.alerts(warehouse)):
            return
        records = await self._read_store(self.store.warehouses)
        current = next((r.epoch for r in records if r.warehouse == warehouse), "?")
        cause = (
            f"two stores claim {warehouse}: epoch {epoch} was replaced by epoch {current} "
            f"but spoke again (from {peer}); its events are refused"
        )
        log.error("%s", cause, extra=about(warehouse))
        await self.inventory.note(ConflictKind.TWO_STORES, warehouse, cause)

    async def _epoch_replaced(self, old: WarehouseRecord, epoch: str) -> None:
        """A new store took over a warehouse whose old store was silent."""
        last = self.streams.last.get(old.warehouse)
        if last is not None and last.epoch == old.epoch and last.agent_high_seq >= old.watermark:
            units = last.agent_high_seq - old.watermark
            backlog = f"it last reported {units} events the hub never received"
        else:
            units, backlog = 0, "its backlog is unknown to this hub"
        cause = (
            f"{old.warehouse}: epoch {epoch} replaced epoch {old.epoch} (applied up to seq "
            f"{old.watermark}); {backlog}"
        )
        log.warning("%s", cause, extra=about(old.warehouse))
        await self.inventory.note(ConflictKind.EPOCH_REPLACED, old.warehouse, cause, units)

    def _start_picks(
        self, warehouse: str, queue: asyncio.Queue[list[PickCommand]], out: wire.SerialWriter
    ) -> asyncio.Future[None]:
        """Send the warehouse its pick commands: those not yet acknowledged
        now, then each new one as it becomes durable."""
        self.inventory.pick_listeners[warehouse] = queue.put_nowait
        pending = self.inventory.pending_picks(warehouse)
        if pending:
            queue.put_nowait(pending)
        return asyncio.ensure_future(self._send_picks(queue, out))

    async def _send_picks(
        self, queue: asyncio.Queue[list[PickCommand]], out: wire.SerialWriter
    ) -> None:
        while True:
            for pick in await queue.get():
                await out.write(wire.pick_message(pick))

    async def _stall_watch(self, session: HubSession) -> str:
        """Return (why) once the agent has reported events pending and the
        watermark has stood still for ``stall_after_s`` while streaming."""
        stall_after = self.stall_after_s
        mark, since = session.watermark, time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, stall_after / 4))
            now = time.monotonic()
            if (
                session.watermark != mark
                or session.lag_events == 0
                or session.state is not HubState.STREAMING
            ):
                mark, since = session.watermark, now
            elif now - since >= stall_after:
                return (
                    f"watermark {mark} has not moved for {now - since:.0f} s while the agent "
                    f"reports {session.lag_events} events pending (stall_after_s = "
                    f"{stall_after:g})"
                )

    async def _ping(self, out: wire.SerialWriter) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            await out.write(sync_pb2.SyncResponse(ping=sync_pb2.Ping(sent_at_unix_ms=_now_ms())))


GOODBYE_TIMEOUT_S = 1.0
"""How long the hub waits to write a Goodbye before ending the stream anyway."""


async def _goodbye(out: wire.SerialWriter, error: StocksyncError) -> bool:
    """Best effort: tell the agent why the stream ends, in a message it reads
    even when gRPC would report the end as INTERNAL (it was still writing).
    Returns whether the Goodbye was written."""
    resume = next((int(v) for k, v in error.trailers() if k == "resume-from-seq"), 0)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(GOODBYE_TIMEOUT_S):
            await out.write(wire.goodbye_message(error.status.name, error.detail, resume))
            return True
    return False


async def _let_agent_hang_up(context: Any) -> None:
    """Wait (at most GOODBYE_TIMEOUT_S) for the agent to read the Goodbye and
    end the call itself. Ending it first while the agent is still writing
    resets the stream, and the reset can overtake the Goodbye."""
    ended = asyncio.Event()
    context.add_done_callback(lambda _: ended.set())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(GOODBYE_TIMEOUT_S):
            await ended.wait()


def _identity() -> str | None:
    """The warehouse the caller's certificate names (the gate admits only
    agents here), or None on a hub without authentication."""
    caller = current_caller()
    return caller.warehouse if caller is not None else None


async def _read(context: Any) -> sync_pb2.SyncRequest:
    msg = await context.read()
    if msg is grpc.aio.EOF:
        raise _StreamEnded
    if isinstance(msg, Undecodable):
        raise MalformedMessage(msg.detail)
    return msg  # type: ignore[no-any-return]  # context is Any: read() gives EOF | request
