"""The agent's gRPC adapter: one stream to the hub, kept up forever.

The protocol decisions come from :class:`~stocksync.protocol.AgentSession`;
this module reads the outbox, writes messages, reads acks, and reconnects with
exponential backoff and full jitter (tenacity) whenever the stream fails. On
each new stream it resumes from the hub's Welcome watermark, so an event that
was in flight when the link broke is simply sent again and the hub drops the
duplicate.

The event loop never waits on SQLite's write lock: the daemon's own writes
(the acked watermark, its state for ``status``) go through a second
connection on a bookkeeping thread, so an ``import`` holding the lock for
seconds cannot freeze the stream. A failed bookkeeping write (a full disk) is
logged once and retried; it never ends the daemon, which keeps streaming what
the store holds. The same thread prunes acknowledged events older than
``retention_hours``, a few small transactions at a time.

A read of the outbox that fails, or returns anything but the whole run of
events asked for (what a damaged page can do), ends the daemon with a
:class:`StoreError`: nothing wrong is ever sent.

Backoff: attempts that fail — the hub unreachable, a refusal, a stream that
breaks before it got anywhere — wait longer each time, up to
``backoff_max_s``. Only a stream that made progress (an ack moved the
watermark, or it stayed up for ``backoff_max_s``) starts the backoff afresh,
so a setting the hub refuses never turns into a hot retry loop; the refusal
is logged once per attempt and shown by ``stocksync-agent status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_random_exponential,
)

from stocksync import wire
from stocksync.agent.counts import LinkMetrics
from stocksync.agent.store import PRUNE_BATCH_ROWS, AgentStore, DaemonState, StoreError
from stocksync.clock import wall_ms
from stocksync.config import AgentConfig
from stocksync.protocol import AgentSession, AgentState, ProtocolError
from stocksync.tls import channel_credentials
from stocksync.v1 import sync_pb2, sync_pb2_grpc

__all__ = ["AgentLink", "LinkFailed", "LinkLost", "Stalled"]

log = logging.getLogger("stocksync.agent")

SNAPSHOT_CHUNK_SKUS = 5000
"""SKUs per snapshot message (keeps each well under the message size limit)."""

GOODBYE_WAIT_S = 0.5
"""After a failed write, how long to wait for the hub's Goodbye (the reason)."""

BOOKKEEPING_INTERVAL_S = 0.5
"""How often the acked watermark and the daemon's state are written to the
store. They only feed ``status`` and the next snapshot point; the hub's
Welcome is the truth."""

PRUNE_INTERVAL_S = 60.0
"""How often the bookkeeper looks for acknowledged events past the retention
when nothing else wakes it (a new ack does)."""

PRUNE_STEPS_PER_TICK = 4
"""Pruning transactions (of up to ``store.PRUNE_BATCH_ROWS`` events each) per
bookkeeping tick; a larger backlog goes on at the next tick, so saving the
watermark never waits long behind it."""


class LinkEnded(Exception):
    """A stream or an attempt ended; the agent reconnects.

    Args:
        text: what happened.
        reason: the ``stocksync_agent_reconnects_total`` reason.
    """

    def __init__(self, text: str, reason: str = "unreachable") -> None:
        super().__init__(text)
        self.reason = reason


class LinkFailed(LinkEnded):
    """An attempt got nowhere (hub unreachable, refused, broke early): back off more."""


class LinkLost(LinkEnded):
    """A stream that made progress broke (or stalled); reconnect with a fresh backoff."""


class Stalled(Exception):
    """Events were pending but the hub acknowledged nothing for ``stall_after_s``."""


class _Stopped(Exception):
    """Raised out of a backoff sleep when the agent is asked to stop."""


class HubGoodbye(Exception):
    """The hub ended the stream and said why (its Goodbye message)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def channel_options(config: AgentConfig) -> list[tuple[str, Any]]:
    """gRPC channel arguments for the link to the hub."""
    return [
        ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", int(config.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # tenacity owns reconnect timing; keep grpc's own backoff short.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class AgentLink:
    """Streams one store's events to the hub until stopped.

    Args:
        config: validated agent configuration.
        store: the warehouse's store (opened by the caller); read from the
            event loop. The daemon's own writes use a second connection.
        metrics: where the link counts (default: a new
            :class:`~stocksync.agent.metrics.AgentMetrics`; the daemon passes
            :class:`~stocksync.agent.counts.Uncounted` when it serves no
            ``/metrics``).
    """

    def __init__(
        self, config: AgentConfig, store: AgentStore, metrics: LinkMetrics | None = None
    ) -> None:
        self.config = config
        self.store = store
        if metrics is None:
            from stocksync.agent.metrics import AgentMetrics

            metrics = AgentMetrics(config.warehouse)
        self.metrics = metrics
        self.connected = False
        self.reconnects = 0
        self.failed_attempts = 0
        """Attempts in a row that got nowhere; the backoff grows with it."""
        self.state = DaemonState(pid=os.getpid(), hub=config.hub)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._acked = store.acked_seq()
        """The highest ack received; written to the store by the bookkeeper."""
        self._reserved = store.sent_horizon()
        """No seq past this may be sent: compaction may fold it (DESIGN §6)."""
        self._books = _Bookkeeper(config, self)
        self._sends: deque[tuple[int, float]] = deque()
        """(last seq, monotonic send time) of each batch awaiting its ack."""
        self.metrics.watch(self)

    @property
    def acked(self) -> int:
        """The highest seq the hub has acknowledged (this run, or as saved)."""
        return self._acked

    def stop(self) -> None:
        """Ask :meth:`run` to finish; it returns once the stream is closed."""
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """New events were recorded: look for them now, not at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Stream until :meth:`stop`, reconnecting forever.

        Raises:
            StoreError: if the store cannot be read, or belongs to another
                warehouse.
        """
        self.store.claim(self.config.warehouse)
        await self._books.start()
        self._set_connected(False)
        try:
            while not self._stop.is_set():
                try:
                    async for attempt in AsyncRetrying(
                        retry=retry_if_exception_type(LinkFailed),
                        wait=wait_random_exponential(
                            multiplier=self.config.backoff_initial_s,
                            max=self.config.backoff_max_s,
                        ),
                        stop=stop_never,
                        before_sleep=self._before_sleep,
                        sleep=self._sleep,
                        reraise=True,
                    ):
                        with attempt:
                            await self._stream_once()
                except LinkLost as e:
                    if e.reason == "stall":  # one line, naming the warehouse
                        log.warning("%s: %s; reconnecting", self.config.warehouse, e)
                    else:
                        log.warning("link lost: %s; reconnecting", e)
                    self.reconnects += 1
                    self.metrics.reconnects[e.reason].inc()
                    self.failed_attempts = 0
                    # A fresh backoff, but never a hot loop: a short full-jitter pause.
                    await self._sleep(random.uniform(0, self.config.backoff_initial_s))
        except _Stopped:
            pass
        finally:
            self._set_connected(False)
            await self._books.close()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
        # cancellation that arrives as the awaited event is set.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        if self._stop.is_set():
            raise _Stopped  # ends the retry loop without another try

    def _before_sleep(self, state: RetryCallState) -> None:
        self.reconnects += 1
        self.failed_attempts = state.attempt_number
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        reason = exc.reason if isinstance(exc, LinkEnded) else "unreachable"
        self.metrics.reconnects[reason].inc()
        log.warning("attempt %d: %s; retrying in %.2f s", state.attempt_number, exc, wait)

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self.state.connected = connected
        self.state.since_unix_ms = wall_ms()
        self._books.dirty()

    def _failed(self, error: str, code: str) -> str:
        """Remember ``error`` as the last one, for ``status``, and count it
        under ``code`` (a gRPC status name or a local kind); returns it."""
        self.metrics.error(code)
        self.state.last_error = error
        self.state.last_error_unix_ms = wall_ms()
        self._books.dirty()
        return error

    async def _stream_once(self) -> None:
        """One stream: connect, handshake, stream until it fails or we stop.

        Raises:
            LinkFailed: if the attempt got nowhere.
            LinkLost: if a stream that made progress broke.
        """
        cfg = self.config
        options = channel_options(cfg)
        channel = (
            grpc.aio.insecure_channel(cfg.hub, options=options)
            if cfg.insecure
            else grpc.aio.secure_channel(cfg.hub, channel_credentials(cfg), options=options)
        )
        async with channel:
            stub = sync_pb2_grpc.SyncServiceStub(channel)
            call = stub.Sync()
            session = AgentSession(
                window=cfg.window_events,
                max_batch=cfg.max_batch_events,
                linger=cfg.batch_linger_ms / 1000,
            )
            acked = self.store.acked_seq()
            hello = session.hello(cfg.warehouse, self.store.epoch, self.store.high_seq(), acked)
            try:
                await call.write(wire.hello_message(hello))
                async with asyncio.timeout(cfg.connect_timeout_s):
                    reply = await call.read()
            except TimeoutError:
                call.cancel()
                raise LinkFailed(
                    self._failed(
                        f"hub {cfg.hub} sent no Welcome within {cfg.connect_timeout_s} s",
                        "NO_WELCOME",
                    )
                ) from None
            except grpc.aio.AioRpcError as e:
                text = self._failed(f"hub {cfg.hub}: {_describe(e)}", e.code().name)
                raise LinkFailed(text, _reason(e.code())) from None
            except asyncio.InvalidStateError:  # the call ended under the write
                code, text = await _status_of(call)
                raise LinkFailed(self._failed(f"hub {cfg.hub}: {text}", code)) from None
            if reply is grpc.aio.EOF:
                code, text = await _status_of(call)
                raise LinkFailed(self._failed(f"hub {cfg.hub}: {text}", code))
            if reply.WhichOneof("message") == "goodbye":
                call.cancel()
                code = reply.goodbye.code
                text = f"{code}: {reply.goodbye.detail}"
                refusal = code in {c.name for c in _REFUSALS}
                raise LinkFailed(
                    self._failed(f"hub {cfg.hub}: {text}", code),
                    "refused" if refusal else "unreachable",
                )
            try:
                session.receive(reply.WhichOneof("message"))
                session.on_welcome(wire.welcome_info(reply.welcome), acked)
            except ProtocolError as e:
                call.cancel()
                raise LinkFailed(
                    self._failed(f"hub {cfg.hub}: {e}", "PROTOCOL"), "refused"
                ) from None
            log.info(
                "connected to %s: watermark %d, batches of up to %d events%s",
                cfg.hub,
                reply.welcome.watermark,
                session.batch_limit,
                ", snapshot requested" if reply.welcome.snapshot_required else "",
            )
            if session.batch_limit < cfg.max_batch_events:
                log.info(
                    "the hub accepts at most %d events per batch; max_batch_events = %d is "
                    "lowered to that for this stream",
                    session.batch_limit,
                    cfg.max_batch_events,
                )
            pruned = self.store.pruned_through()
            if not reply.welcome.snapshot_required and reply.welcome.watermark < pruned:
                # The hub wants events this store has pruned: it lost what it
                # had acknowledged. Resending cannot heal that; a new epoch can.
                call.cancel()
                raise LinkFailed(
                    self._failed(
                        f"hub {cfg.hub} holds this store's events only up to seq "
                        f"{reply.welcome.watermark}, but it acknowledged them up to seq "
                        f"{pruned} before and they were pruned here: the hub lost "
                        "acknowledged events; start a new store for the warehouse "
                        "(stocksync-agent salvage) so the hub takes a snapshot",
                        "PRUNED",
                    ),
                    "refused",
                )
            if not reply.welcome.snapshot_required:
                self._acked = max(self._acked, session.acked)
            self._sends.clear()
            self._set_connected(True)
            connected_at = time.monotonic()
            welcome_acked = session.acked
            error: str | None = None
            code = "UNKNOWN"
            refused = stalled = False
            try:
                await self._exchange(wire.SerialWriter(call), call, session)
            except HubGoodbye as e:
                call.cancel()
                error, code = str(e), e.code
                refused = e.code in {c.name for c in _REFUSALS}
            except grpc.aio.AioRpcError as e:
                error, code, refused = _describe(e), e.code().name, e.code() in _REFUSALS
            except asyncio.InvalidStateError:
                pass  # a write raced the stream's end: the status says why it ended
            except ProtocolError as e:
                call.cancel()
                error, code, refused = f"hub broke the protocol: {e}", "PROTOCOL", True
            except Stalled as e:
                call.cancel()
                error, code, stalled = str(e), "STALLED", True
            finally:
                session.close()
                self._set_connected(False)
            if self._stop.is_set():
                return
            if error is None:
                code, error = await _status_of(call)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    refused = await call.code() in _REFUSALS
            self._failed(f"hub {cfg.hub}: {error}", code)
            if stalled:
                self.metrics.stalls.inc()
                raise LinkLost(f"hub {cfg.hub}: {error}", "stall")
            progressed = session.acked > welcome_acked or (
                time.monotonic() - connected_at >= cfg.backoff_max_s
            )
            reason = "refused" if refused else "lost"
            if progressed and not refused:
                raise LinkLost(f"hub {cfg.hub}: {error}", reason)
            raise LinkFailed(f"hub {cfg.hub}: {error}", reason)

    async def _exchange(self, out: wire.SerialWriter, call: Any, session: AgentSession) -> None:
        """Run sender, receiver and pinger until one ends or we stop."""
        receiver = asyncio.ensure_future(self._receive_loop(out, call, session))
        tasks = {
            asyncio.ensure_future(self._send_loop(out, session)),
            receiver,
            asyncio.ensure_future(self._ping_loop(out, session)),
            asyncio.ensure_future(self._stop.wait()),
            asyncio.ensure_future(self._stall_watch(session)),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if receiver not in done and any(
                not t.cancelled() and isinstance(t.exception(), grpc.aio.AioRpcError) for t in done
            ):
                # A write failed as the stream ended: the hub's Goodbye, if it
                # sent one, is in the receiver's hands and says why.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(GOODBYE_WAIT_S):
                        await asyncio.wait({receiver})
                if receiver.done() and isinstance(receiver.exception(), HubGoodbye):
                    done = {receiver}
            for task in done:
                if not task.cancelled() and (error := task.exception()) is not None:
                    raise error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._stop.is_set():
                # Tell the hub we are done; the stream may already be over.
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await call.done_writing()

    async def _send_loop(self, out: wire.SerialWriter, session: AgentSession) -> None:
        store = self.store
        poll = self.config.poll_interval_ms / 1000
        snapshot_sent = False
        while True:
            if session.state is AgentState.SNAPSHOT:
                if not snapshot_sent:
                    await self._send_snapshot(out, session)
                    snapshot_sent = True
            else:
                snapshot_sent = False
                rng = session.next_batch(store.high_seq(), time.monotonic())
                if rng is not None and rng[1] > self._reserved:
                    # Never send what a compaction may fold: the horizon first.
                    before = self._reserved
                    self._reserved = await self._books.reserve_sent(
                        rng[1], self.config.window_events
                    )
                    if self._reserved > before:
                        continue  # the session may have moved meanwhile: ask again
                    rng = (rng[0], self._reserved) if self._reserved >= rng[0] else None
                if rng is not None:
                    rows = store.outbox(*rng)
                    # Marked sent before the write: the hub's ack can arrive
                    # while this task is still waiting to resume after it.
                    last = rows[-1].seq  # past rng[1] when the last row is a fold
                    session.on_sent(rng[0], last)
                    self._sends.append((last, time.monotonic()))
                    await out.write(wire.batch_message(rows))
                    self.metrics.events_sent.inc(last - rng[0] + 1)
                    continue
            timeout = poll
            if session.send_at is not None:
                timeout = max(0.0, min(poll, session.send_at - time.monotonic()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _send_snapshot(self, out: wire.SerialWriter, session: AgentSession) -> None:
        as_of = session.snapshot_as_of
        stock = self.store.snapshot(as_of)
        step = SNAPSHOT_CHUNK_SKUS
        chunks = [stock[i : i + step] for i in range(0, len(stock), step)] or [[]]
        session.on_snapshot_sent()  # before the writes, for the same reason as batches
        for i, chunk in enumerate(chunks):
            await out.write(
                sync_pb2.SyncRequest(
                    snapshot=sync_pb2.SnapshotChunk(
                        as_of_seq=as_of,
                        stock=[sync_pb2.SkuStock(sku=s, on_hand=q) for s, q in chunk],
                        last=i == len(chunks) - 1,
                    )
                )
            )
        log.info("sent snapshot of %d SKUs as of seq %d", len(stock), as_of)

    async def _receive_loop(self, out: wire.SerialWriter, call: Any, session: AgentSession) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            kind = msg.WhichOneof("message")
            session.receive(kind)
            if kind == "goodbye":
                raise HubGoodbye(msg.goodbye.code, msg.goodbye.detail)
            if kind == "ack":
                before = session.acked
                session.on_ack(msg.ack.up_to_seq)
                self._on_acked(before, session.acked)
                if session.acked > self._acked:
                    self._acked = session.acked
                    self._books.dirty()
                self._wake.set()
            elif kind == "snapshot_request":
                log.info("hub asked for a snapshot: %s", msg.snapshot_request.reason)
                session.on_snapshot_request(self._acked)
                self._wake.set()
            elif kind in ("pick", "cancel_pick"):
                await self._take_command(out, msg)
            # pings from the hub need no answer: receiving them is the point.

    def _on_acked(self, before: int, acked: int) -> None:
        """Count what an ack covered, and how long each batch it covers waited."""
        if acked <= before:
            return
        self.metrics.events_acked.inc(acked - before)
        sends, now = self._sends, time.monotonic()
        while sends and sends[0][0] <= acked:
            self.metrics.ack_latency.observe(now - sends.popleft()[1])

    async def _stall_watch(self, session: AgentSession) -> None:
        """Raise :class:`Stalled` once events have been pending with no ack
        for ``stall_after_s``: a stream that looks up but moves nothing (a
        hub stuck on its disk, a half-dead proxy) is dropped and made again.

        Not while a snapshot is being applied: a big one may take the hub
        longer, and the hub bounds that phase itself (``snapshot_timeout_s``).
        """
        stall_after = self.config.stall_after_s
        acked, since = session.acked, time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, stall_after / 4))
            now = time.monotonic()
            if (
                session.acked != acked
                or session.state is not AgentState.STREAMING
                or self.store.high_seq() <= session.acked
            ):
                acked, since = session.acked, now
            elif now - since >= stall_after:
                pending = self.store.high_seq() - session.acked
                raise Stalled(
                    f"stream stalled: {pending} events pending and no ack for "
                    f"{now - since:.0f} s (watermark {session.acked}, stall_after_s = "
                    f"{stall_after:g})"
                )

    async def _take_command(self, out: wire.SerialWriter, msg: Any) -> None:
        """Keep a pick command (or its withdrawal) durably, then acknowledge it.

        If it cannot be kept (a full disk), it is not acknowledged: the hub
        sends it again on the next stream. The warehouse's WMS reads open
        picks with ``stocksync-agent picks``.
        """
        if msg.WhichOneof("message") == "pick":
            p = msg.pick
            args: tuple[Any, ...] = (p.command_id, p.reservation_id, p.sku, p.quantity, "")
            what = f"pick {p.quantity} {p.sku} for {p.reservation_id}"
        else:
            c = msg.cancel_pick
            args = (c.command_id, c.reservation_id, c.sku, 0, c.cancels_command_id)
            what = f"withdrawn: {c.cancels_command_id} ({c.sku} for {c.reservation_id})"
        try:
            await self._books.store_pick(*args)
        except StoreError as e:
            log.warning("cannot keep %s (%s); the hub will send it again", what, e)
            return
        log.info("%s", what)
        await out.write(sync_pb2.SyncRequest(command_ack=sync_pb2.CommandAck(command_id=args[0])))

    async def _ping_loop(self, out: wire.SerialWriter, session: AgentSession) -> None:
        while True:
            backlog = self.store.backlog(session.acked)
            await out.write(
                sync_pb2.SyncRequest(
                    ping=sync_pb2.Ping(
                        sent_at_unix_ms=wall_ms(),
                        backlog=sync_pb2.Backlog(
                            high_seq=backlog.high_seq,
                            pending_events=backlog.pending,
                            oldest_pending_age_ms=int((backlog.oldest_pending_age_s or 0) * 1000),
                        ),
                    )
                )
            )
            await asyncio.sleep(self.config.ping_interval_s)


class _Bookkeeper:
    """Writes the daemon's acked watermark and state, and prunes, on a thread
    of its own.

    Writes happen at most every :data:`BOOKKEEPING_INTERVAL_S`, through a
    second connection to the store, so the event loop never waits for the
    write lock. A failed write is logged once (until it succeeds again) and
    retried at the next tick. After each save, acknowledged events older
    than ``retention_hours`` are pruned (:meth:`AgentStore.prune`).
    """

    def __init__(self, config: AgentConfig, link: AgentLink) -> None:
        self._config = config
        self._link = link
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-books")
        self._store: AgentStore | None = None
        self._dirty = asyncio.Event()
        self._task: asyncio.Future[None] | None = None
        self._failing: str | None = None
        self._prune_failing: str | None = None
        self._prune_more = False
        self._reserve_failing: str | None = None
        self._compaction_stats: dict[str, int] | None = None

    async def start(self) -> None:
        """Open the second connection and start the ticks."""
        cfg = self._config
        self._store = await self._call(AgentStore, cfg.db, cfg.synchronous)
        try:
            await self._call(self._store.set_max_pending_events, cfg.max_pending_events)
        except StoreError as e:
            log.warning("cannot save max_pending_events (will retry at the next start): %s", e)
        with contextlib.suppress(StoreError):
            self._compaction_stats = await self._call(self._store.compaction_stats)
        self._task = asyncio.ensure_future(self._run())

    async def _compact(self) -> None:
        """Compact the outbox if it is past its cap, and count every compaction
        the store made since the last tick, whichever process made it."""
        store = self._store
        if store is None:
            return
        await self._call(store.compact_if_due)
        try:
            stats = await self._call(store.compaction_stats)
        except StoreError:
            return
        if self._compaction_stats is not None:
            metrics = self._link.metrics
            metrics.compactions.inc(
                max(0, stats["compactions"] - self._compaction_stats["compactions"])
            )
            metrics.events_folded.inc(
                max(0, stats["events_folded"] - self._compaction_stats["events_folded"])
            )
        self._compaction_stats = stats

    async def reserve_sent(self, last: int, ahead: int) -> int:
        """:meth:`AgentStore.reserve_sent` on the bookkeeping thread, when the
        store compacts (``max_pending_events`` > 0; otherwise there is nothing
        to reserve against and nothing is written). If it cannot be written,
        the horizon as it stands, or ``last`` when the cap could not be read
        back as set (so a full disk never stops the stream)."""
        store = self._store
        if store is None:
            return 0
        try:
            if int(await self._call(store.max_pending_events)) <= 0:
                # Nothing compacts this store: no horizon to keep, no write to wait for.
                return last + max(0, ahead)
            horizon = int(await self._call(store.reserve_sent, last, ahead))
        except StoreError as e:
            if self._reserve_failing != str(e):
                log.warning("cannot save the sent horizon (will retry): %s", e)
                self._reserve_failing = str(e)
            try:
                cap = int(await self._call(store.max_pending_events))
                horizon = int(await self._call(store.sent_horizon))
            except StoreError:
                return 0
            return last if cap == 0 else horizon
        self._reserve_failing = None
        return horizon

    def dirty(self) -> None:
        """Something changed: write it at the next tick."""
        self._dirty.set()

    async def store_pick(self, *args: Any) -> None:
        """:meth:`AgentStore.store_pick` on the bookkeeping thread.

        Raises:
            StoreError: if it cannot be stored.
        """
        if self._store is None:
            raise StoreError("the agent's store is not open yet")
        await self._call(self._store.store_pick, *args)

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def _run(self) -> None:
        while True:
            if not self._prune_more:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PRUNE_INTERVAL_S):
                        await self._dirty.wait()
            if self._dirty.is_set():
                await self.flush()
            await self.prune()
            if self._store is not None:
                await self._compact()
            await asyncio.sleep(BOOKKEEPING_INTERVAL_S)

    async def prune(self) -> None:
        """Prune up to :data:`PRUNE_STEPS_PER_TICK` small transactions' worth;
        log (once) and keep going if it fails."""
        if self._store is None:
            return
        hours = self._config.retention_hours
        cutoff = wall_ms() - int(hours * 3_600_000)
        total = 0
        self._prune_more = False
        for _ in range(PRUNE_STEPS_PER_TICK):
            try:
                deleted = await self._call(self._store.prune, cutoff, PRUNE_BATCH_ROWS)
            except StoreError as e:
                if self._prune_failing != str(e):
                    log.warning("cannot prune acknowledged events (will retry): %s", e)
                    self._prune_failing = str(e)
                return
            self._prune_failing = None
            total += deleted
            if deleted < PRUNE_BATCH_ROWS:
                break
        else:
            self._prune_more = True  # more to do: the next tick goes on at once
        if total:
            log.info("pruned %d acknowledged events older than %g h", total, hours)

    async def flush(self) -> None:
        """Write what changed now; log (once) and keep going if it fails."""
        if self._store is None:
            return
        self._dirty.clear()
        acked, state = self._link._acked, DaemonState(**vars(self._link.state))
        try:
            await self._call(_save, self._store, acked, state)
        except StoreError as e:
            self._dirty.set()  # retried at the next tick
            if self._failing != str(e):
                log.warning("cannot save the daemon's state (will retry): %s", e)
                self._failing = str(e)
            return
        if self._failing is not None:
            log.info("daemon state saved again")
            self._failing = None

    async def close(self) -> None:
        """A last write, then close the connection and the thread."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
        if self._store is not None:
            await self._call(self._store.close)
        self._thread.shutdown(wait=True)


def _save(store: AgentStore, acked: int, state: DaemonState) -> None:
    if acked > store.acked_seq():
        store.set_acked_seq(acked)
    store.set_daemon_state(state)


_REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
"""Statuses by which the hub refuses what this agent sends: retrying at once
would only be refused again, so they never count as progress."""


def _describe(e: grpc.aio.AioRpcError) -> str:
    return f"{e.code().name}: {e.details()}"


def _reason(code: grpc.StatusCode) -> str:
    """The reconnect reason of an attempt that ended with ``code``."""
    return "refused" if code in _REFUSALS else "unreachable"


async def _status_of(call: Any) -> tuple[str, str]:
    """How the call ended: (its status name, the text for logs and ``status``)."""
    try:
        code = await call.code()
        details = await call.details()
    except grpc.aio.AioRpcError as e:
        return e.code().name, _describe(e)
    if code == grpc.StatusCode.OK:
        return "CLOSED", "hub closed the stream"
    return code.name, f"{code.name}: {details}"
