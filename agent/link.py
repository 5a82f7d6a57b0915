"""The agent's gRPC adapter: one stream to the hub, kept up forever.

The protocol decisions come from :class:`~stocksync.protocol.AgentSession`;
this module reads the outbox, writes messages, reads acks, and reconnects with
exponential backoff and full jitter (tenacity) whenever the stream fails. On
each new stream it resumes from the hub's Welcome watermark, so an event that
was in flight when the link broke is simply sent again and the hub drops the
duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
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
from stocksync.agent.store import AgentStore
from stocksync.config import AgentConfig
from stocksync.protocol import AgentSession, AgentState, ProtocolError, WelcomeInfo
from stocksync.tls import channel_credentials
from stocksync.v1 import sync_pb2, sync_pb2_grpc

__all__ = ["AgentLink", "LinkFailed", "LinkLost"]

log = logging.getLogger("stocksync.agent")

SNAPSHOT_CHUNK_SKUS = 5000
"""SKUs per snapshot message (keeps each well under the message size limit)."""

ACK_SAVE_INTERVAL_S = 0.5
"""How often the acked watermark is written to the store. It only feeds
``status`` and the next snapshot point; the hub's Welcome is the truth."""


class LinkFailed(Exception):
    """The stream could not be set up (hub unreachable, refused the Hello...)."""


class LinkLost(Exception):
    """An established stream broke; reconnect with a fresh backoff."""


class _Stopped(Exception):
    """Raised out of a backoff sleep when the agent is asked to stop."""


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
        store: the warehouse's store (opened by the caller).
    """

    def __init__(self, config: AgentConfig, store: AgentStore) -> None:
        self.config = config
        self.store = store
        self.connected = False
        self.reconnects = 0
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._acked = store.acked_seq()
        """The highest ack received; saved to the store at most every ACK_SAVE_INTERVAL_S."""

    def stop(self) -> None:
        """Ask :meth:`run` to finish; it returns once the stream is closed."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Stream until :meth:`stop`, reconnecting forever."""
        self.store.claim(self.config.warehouse)
        self._record_link(False)
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
                    log.warning("link lost: %s; reconnecting", e)
                    self.reconnects += 1
                    # A fresh backoff, but never a hot loop: a short full-jitter pause.
                    await self._sleep(random.uniform(0, self.config.backoff_initial_s))
        except _Stopped:
            pass
        finally:
            self._save_acked()
            self._record_link(False)

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
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("cannot reach hub %s: %s; retrying in %.2f s", self.config.hub, exc, wait)

    def _record_link(self, connected: bool) -> None:
        self.connected = connected
        self.store.set_link(
            {
                "connected": connected,
                "pid": os.getpid(),
                "hub": self.config.hub,
                "since_unix_ms": time.time_ns() // 1_000_000,
            }
        )

    def _save_acked(self) -> None:
        if self._acked > self.store.acked_seq():
            self.store.set_acked_seq(self._acked)

    async def _ack_saver(self) -> None:
        """Write the latest ack to the store when it moved (for ``status``)."""
        while True:
            await asyncio.sleep(ACK_SAVE_INTERVAL_S)
            self._save_acked()

    async def _stream_once(self) -> None:
        """One stream: connect, handshake, stream until it fails or we stop.

        Raises:
            LinkFailed: before the Welcome.
            LinkLost: after it.
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
                max_batch=cfg.batch_max_events,
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
                raise LinkFailed(f"no Welcome within {cfg.connect_timeout_s} s") from None
            except grpc.aio.AioRpcError as e:
                raise LinkFailed(_describe(e)) from None
            except asyncio.InvalidStateError:  # the call ended under the write
                raise LinkFailed(await _status_of(call)) from None
            if reply is grpc.aio.EOF:
                raise LinkFailed(await _status_of(call))
            if reply.WhichOneof("message") != "welcome":
                raise LinkFailed(f"hub answered Hello with {reply.WhichOneof('message')}")
            try:
                session.on_welcome(
                    WelcomeInfo(reply.welcome.watermark, reply.welcome.snapshot_required), acked
                )
            except ProtocolError as e:
                call.cancel()
                raise LinkFailed(str(e)) from None
            log.info(
                "connected to %s: watermark %d%s",
                cfg.hub,
                reply.welcome.watermark,
                ", snapshot requested" if reply.welcome.snapshot_required else "",
            )
            if not reply.welcome.snapshot_required:
                self._acked = max(self._acked, session.acked)
            self._record_link(True)
            try:
                await self._exchange(wire.SerialWriter(call), call, session)
            except grpc.aio.AioRpcError as e:
                raise LinkLost(_describe(e)) from None
            except asyncio.InvalidStateError:
                # A write raced the stream's end ("RPC already finished"):
                # the status says why it ended.
                raise LinkLost(await _status_of(call)) from None
            except ProtocolError as e:
                call.cancel()
                raise LinkLost(str(e)) from None
            finally:
                session.close()
                self._record_link(False)
            if not self._stop.is_set():
                raise LinkLost(await _status_of(call))

    async def _exchange(self, out: wire.SerialWriter, call: Any, session: AgentSession) -> None:
        """Run sender, receiver and pinger until one ends or we stop."""
        tasks = {
            asyncio.ensure_future(self._send_loop(out, session)),
            asyncio.ensure_future(self._receive_loop(out, call, session)),
            asyncio.ensure_future(self._ping_loop(out, session)),
            asyncio.ensure_future(self._ack_saver()),
            asyncio.ensure_future(self._stop.wait()),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
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
                if rng is not None:
                    rows = store.events(*rng)
                    # Marked sent before the write: the hub's ack can arrive
                    # while this task is still waiting to resume after it.
                    session.on_sent(*rng)
                    await out.write(wire.batch_message(rows))
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
            if kind == "ack":
                session.on_ack(msg.ack.up_to_seq)
                self._acked = max(self._acked, session.acked)
                self._wake.set()
            elif kind == "snapshot_request":
                log.info("hub asked for a snapshot: %s", msg.snapshot_request.reason)
                session.on_snapshot_request(self._acked)
                self._wake.set()
            elif kind == "pick":
                # Pick commands are acknowledged so the hub stops resending them;
                # carrying them out is the WMS's job once reservations land.
                log.info("pick command %s received", msg.pick.reservation_id)
                await out.write(
                    sync_pb2.SyncRequest(
                        command_ack=sync_pb2.CommandAck(command_id=msg.pick.reservation_id)
                    )
                )
            # pings from the hub need no answer: receiving them is the point.

    async def _ping_loop(self, out: wire.SerialWriter, session: AgentSession) -> None:
        while True:
            backlog = self.store.backlog(session.acked)
            await out.write(
                sync_pb2.SyncRequest(
                    ping=sync_pb2.Ping(
                        sent_at_unix_ms=time.time_ns() // 1_000_000,
                        backlog=sync_pb2.Backlog(
                            high_seq=backlog.high_seq,
                            pending_events=backlog.pending,
                            oldest_pending_age_ms=int((backlog.oldest_pending_age_s or 0) * 1000),
                        ),
                    )
                )
            )
            await asyncio.sleep(self.config.ping_interval_s)


def _describe(e: grpc.aio.AioRpcError) -> str:
    return f"{e.code().name}: {e.details()}"


async def _status_of(call: Any) -> str:
    try:
        code = await call.code()
        details = await call.details()
    except grpc.aio.AioRpcError as e:
        return _describe(e)
    return f"{code.name}: {details}" if code != grpc.StatusCode.OK else "hub closed the stream"
