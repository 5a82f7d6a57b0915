"""Room edges: the hub's rooms served to many viewers by another process.

Every gRPC write to a watcher costs the process that makes it CPU; a hub
that writes to hundreds of watchers itself spends on them the time its
warehouses' batches and the shops' reservations need. An edge
(``stocksync-hub edge``) takes the watchers instead: for each room its
viewers follow it keeps **one** ``Watch`` stream to the hub, mirrors the
room from it, and serves ``LiveRoomService.Watch`` to its own viewers with
the hub's semantics — the same messages and positions (a viewer can move
between the hub and any edge and resume), a snapshot saying why when it
cannot resume, what a slow viewer has not taken merged to the latest value
per SKU. Edges run on other cores or machines, as many as the viewers need.

The hub going away does not end a viewer's stream: the edge resumes from
the last position it has (tenacity backoff) and passes on what the hub
answers — the missed messages, or a snapshot of the hub's new epoch. A room
that ends at the hub ends at the edge. A room the hub refuses the edge (its
certificate lacks ``rooms:watch``, say) is not tried again: its viewers get
``UNAVAILABLE`` naming the hub's answer, and :attr:`EdgeRooms.refusals`
counts it.

A room's upstream stream opens with its first viewer and closes
:data:`LINGER_S` after its last one leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import tenacity
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from stocksync.auth import TokenFile
from stocksync.errors import Status, StocksyncError
from stocksync.grpc_edge import Wrap, Wrapped, enable_reflection, guard_decoding
from stocksync.hub.access import Admission, Limits
from stocksync.hub.edge_metrics import EdgeMetrics
from stocksync.hub.grpc_gate import Gate
from stocksync.hub.http import HttpServer, make_app
from stocksync.hub.http_auth import HttpAuth
from stocksync.hub.room_service import SERVICE_NAME, WatchServicer, event_from_proto
from stocksync.hub.rooms import (
    DEFAULT_HISTORY,
    DisplayPolicy,
    Feed,
    Position,
    RoomEvent,
    SkuDisplay,
    Snapshot,
    SnapshotReason,
    Subscription,
    UnknownRoom,
    Update,
    resume_reason,
    validate_room_id,
)
from stocksync.metrics import metrics_handler
from stocksync.v1 import rooms_pb2, rooms_pb2_grpc

__all__ = ["LINGER_S", "REFUSAL_CODES", "Edge", "EdgeRooms", "EdgeServicer", "UpstreamError"]

log = logging.getLogger("stocksync.edge")

LINGER_S = 10.0
"""A room's upstream stream stays open this long after its last viewer left
(viewers that reconnect at once find it still current)."""

FIRST_MESSAGE_S = 10.0
"""A new viewer waits this long for the hub's first message of a room."""

_FINAL = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
}
"""Upstream statuses that trying again does not change."""

REFUSAL_CODES = tuple(sorted(c.name for c in _FINAL - {grpc.StatusCode.NOT_FOUND}))
"""The hub's answers that refuse the edge a room (NOT_FOUND is the room's own
end, not a refusal): the codes of ``stocksync_edge_hub_refusals_total``."""

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]


class UpstreamError(StocksyncError):
    """The hub refused the edge, or cannot be reached; carries the hub's status."""

    def __init__(self, status: Status, detail: str) -> None:
        super().__init__(detail)
        self.status = status  # type: ignore[misc]  # per instance: the hub's


@dataclass(eq=False)
class _Mirror:
    """One room as the hub last showed it, and its viewers."""

    room: str
    history: deque[RoomEvent]
    position: Position | None = None
    """Of the newest message from the hub."""
    floor: int = 0
    """A viewer at an offset of ``position.epoch`` from here on resumes exactly."""
    policy: DisplayPolicy | None = None
    """How the room shows stock (from the hub's latest snapshot)."""
    shown: dict[str, SkuDisplay] = field(default_factory=dict)
    watchers: set[Subscription] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: StocksyncError | None = None
    """Why the room cannot be followed (it ended, or the hub refuses)."""
    task: asyncio.Task[None] | None = None
    linger: asyncio.TimerHandle | None = None
    connected: bool = False
    """The stream to the hub is up (its last attempt received a message)."""
    feed: Feed = field(init=False)
    """What its viewers take."""
    woke: float = float("-inf")
    """When its viewers were last woken (``EdgeRooms.clock``)."""
    wake: asyncio.TimerHandle | None = None
    """The next wake-up, when one is due."""

    def now(self, reason: SnapshotReason) -> Snapshot:
        """The room as the hub last showed it."""
        assert self.position is not None and self.policy is not None
        return Snapshot(self.position, reason, self.policy, tuple(self.shown.values()))


class EdgeRooms:
    """The rooms an edge mirrors from the hub, and their viewers.

    Runs on one event loop. Duck-types what a :class:`Subscription` needs of
    its hub (``_leave``, the counters, ``clock``).

    Args:
        channel: to the hub.
        history: messages kept per room for viewers that resume.
        linger_s: how long a room without viewers stays mirrored.
        max_writes_per_s: most messages a second one room asks the edge to
            write (``room_max_writes_per_s``, as at the hub): a room with more
            viewers than this x the hub's update interval wakes them less
            often, what comes meanwhile merging. 0: no bound.
        first_message_s: how long a new viewer waits for the hub.
        retry_max_s: the cap of the reconnect backoff.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        history: int = DEFAULT_HISTORY,
        linger_s: float = LINGER_S,
        first_message_s: float = FIRST_MESSAGE_S,
        retry_max_s: float = 5.0,
        max_writes_per_s: float = 0.0,
    ) -> None:
        self.stub = rooms_pb2_grpc.LiveRoomServiceStub(channel)
        self.max_writes_per_s = max_writes_per_s
        self.history = history
        self.linger_s = linger_s
        self.first_message_s = first_message_s
        self.retry_max_s = retry_max_s
        self.clock: Callable[[], float] = time.monotonic
        self.published = self.delivered = self.coalesced = 0
        self.reconnects = 0
        """Room streams to the hub lost and tried again."""
        self.refusals = dict.fromkeys(REFUSAL_CODES, 0)
        """Rooms the hub refused this edge, by status name."""
        self._hub_connected_at = time.time()
        """The last moment a room's stream was up (or none was wanted)."""
        self.observe_delivery: Callable[[float], None] | None = None
        self._mirrors: dict[str, _Mirror] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def watcher_count(self) -> int:
        """Open viewers over every room."""
        return sum(len(m.watchers) for m in self._mirrors.values())

    def mirrored(self) -> list[str]:
        """The rooms followed at the hub now."""
        return sorted(self._mirrors)

    def disconnected(self) -> int:
        """Rooms followed whose stream to the hub is down now."""
        return sum(1 for m in self._mirrors.values() if not m.connected)

    def hub_last_connected(self) -> float:
        """Unix time the edge last had a working stream to the hub: now while
        a room's stream is up (or no room is followed, so none is missing),
        else the moment the last one went down.

        Unlike :attr:`reconnects`, which climbs on every retry, this stands
        still only while the edge cannot reach the hub at all: streams that
        break and resume keep it current.
        """
        if self._hub_ok():
            return time.time()
        return self._hub_connected_at

    def _hub_ok(self) -> bool:
        return not self._mirrors or any(m.connected for m in self._mirrors.values())

    def _hub_may_fail(self) -> None:
        """Called before each change that can end the hub's "now" (a stream
        lost, a room followed, a room gone): remembers when it last held."""
        if self._hub_ok():
            self._hub_connected_at = time.time()

    async def subscribe(self, room_id: str, start: Position | None = None) -> Subscription:
        """Watch a room, as :meth:`RoomHub.subscribe` does at the hub.

        Raises:
            InvalidArgument: a bad room id, or a position ahead of the room.
            UnknownRoom: the hub has no such live room.
            UpstreamError: the hub refuses the edge, or did not answer in time.
        """
        validate_room_id(room_id)
        mirror = self._mirrors.get(room_id)
        if mirror is None or mirror.error is not None:
            mirror = self._follow(room_id)
        if mirror.linger is not None:
            mirror.linger.cancel()
            mirror.linger = None
        try:
            await asyncio.wait_for(mirror.ready.wait(), self.first_message_s)
        except TimeoutError:
            self._drop_if_unwatched(mirror)
            raise UpstreamError(
                Status.UNAVAILABLE,
                f"the hub did not show room {room_id!r} within {self.first_message_s:g} s; "
                "try again",
            ) from None
        if mirror.error is not None:
            raise mirror.error
        assert mirror.position is not None and mirror.policy is not None
        missed: list[RoomEvent] = []
        latest = mirror.position
        reason = resume_reason(room_id, start, latest, mirror.floor)
        if reason is SnapshotReason.RESUMED:
            assert start is not None
            missed = [e for e in mirror.history if e.position.offset > start.offset]
        opened = None if reason is SnapshotReason.RESUMED else mirror.now(reason)
        watcher = Subscription(self, room_id, reason, missed, mirror.feed, opened)  # type: ignore[arg-type]
        mirror.watchers.add(watcher)
        return watcher

    async def close(self) -> None:
        """Stop following every room; every viewer's stream ends."""
        for mirror in list(self._mirrors.values()):
            await self._drop(mirror)

    # -- following the hub --------------------------------------------------------------

    def _follow(self, room_id: str) -> _Mirror:
        self._hub_may_fail()
        mirror = self._mirrors[room_id] = _Mirror(room_id, deque(maxlen=self.history))
        mirror.feed = Feed(self.history, mirror.now)
        mirror.task = asyncio.create_task(self._run(mirror), name=f"edge-room-{room_id}")
        return mirror

    async def _run(self, mirror: _Mirror) -> None:
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, grpc.aio.AioRpcError) and e.code() not in _FINAL
            ),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=self.retry_max_s),
            before_sleep=functools.partial(self._lost, mirror),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._stream(mirror)
            self._ended(mirror, UnknownRoom(f"no live room {mirror.room!r}"))
            log.info("room %s ended at the hub; its viewers' streams end", mirror.room)
        except grpc.aio.AioRpcError as e:
            code, detail = e.code(), e.details() or ""
            if code is grpc.StatusCode.NOT_FOUND:
                error: StocksyncError = UnknownRoom(f"no live room {mirror.room!r}")
            else:
                log.warning(
                    "the hub refuses room %s to this edge: %s: %s", mirror.room, code.name, detail
                )
                self.refusals[code.name] = self.refusals.get(code.name, 0) + 1
                error = UpstreamError(
                    Status.UNAVAILABLE,
                    f"the hub refused this edge room {mirror.room!r}: {code.name}: {detail}",
                )
            self._ended(mirror, error)

    async def _stream(self, mirror: _Mirror) -> None:
        request = rooms_pb2.WatchRequest(
            room_id=mirror.room,
            from_position=str(mirror.position) if mirror.position is not None else "",
        )
        call = self.stub.Watch(request)
        try:
            # The hub sends its headers once it has taken the stream on:
            # resumed with nothing missed, a quiet room sends nothing else.
            await call.initial_metadata()
            if not call.done():  # not a refusal (a status without headers)
                mirror.connected = True
            async for message in call:
                mirror.connected = True
                self._publish(mirror, event_from_proto(message))
        finally:
            call.cancel()

    def _lost(self, mirror: _Mirror, state: tenacity.RetryCallState) -> None:
        self._hub_may_fail()
        mirror.connected = False
        self.reconnects += 1
        error = state.outcome.exception() if state.outcome is not None else None
        detail = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error)
        if state.attempt_number == 1:
            log.warning(
                "lost room %s at the hub (%s); its %d viewers keep what they have, "
                "resuming from %s",
                mirror.room,
                detail,
                len(mirror.watchers),
                mirror.position,
            )

    def _publish(self, mirror: _Mirror, event: RoomEvent) -> None:
        restart = isinstance(event, Snapshot) and event.reason in (
            SnapshotReason.INITIAL,
            SnapshotReason.HISTORY_GONE,
            SnapshotReason.NEW_EPOCH,
        )
        if isinstance(event, Snapshot):
            mirror.policy = event.policy
            mirror.shown = {s.sku: s for s in event.skus}
        else:
            for s in event.skus:
                mirror.shown[s.sku] = s
            event = Update(event.position, event.skus, self.clock())
        if restart:
            # What came before is another stretch of the room's stream: a
            # viewer there gets a snapshot.
            mirror.history.clear()
            mirror.floor = event.position.offset
        else:
            if len(mirror.history) == mirror.history.maxlen:
                mirror.floor = mirror.history[0].position.offset
            mirror.history.append(event)
        mirror.position = event.position
        self.published += 1
        if not mirror.ready.is_set():
            mirror.ready.set()
            return  # nobody has subscribed yet: they start from this state
        mirror.feed.publish(event, wake=False)
        self._pace(mirror, at_once=isinstance(event, Snapshot))

    def _pace(self, mirror: _Mirror, at_once: bool) -> None:
        """Wake the room's waiting viewers now, or once its interval is over:
        at most ``viewers / max_writes_per_s`` apart, as the hub paces its
        own watchers (``room_max_writes_per_s``); what comes meanwhile
        merges. A snapshot goes out at once. Viewers written to directly
        (Server-Sent Events keeping up) get each message as it comes and
        do not count: a socket write costs a fraction of a gRPC write, and
        they are written to before the next message from the hub is read."""
        if mirror.wake is not None:
            if not at_once:
                return  # due already
            mirror.wake.cancel()
            mirror.wake = None
        now = self.clock()
        due = mirror.woke
        if self.max_writes_per_s > 0:
            woken = sum(1 for w in mirror.watchers if w.direct is None)
            due += woken / self.max_writes_per_s
        if at_once or now >= due:
            mirror.woke = now
            mirror.feed.wake()
        else:
            mirror.wake = asyncio.get_running_loop().call_later(due - now, self._wake, mirror)

    def _wake(self, mirror: _Mirror) -> None:
        mirror.wake = None
        mirror.woke = self.clock()
        mirror.feed.wake()

    def _release(self, mirror: _Mirror) -> None:
        """Before the room's viewers end: what the feed holds goes out now."""
        if mirror.wake is not None:
            mirror.wake.cancel()
            mirror.wake = None
        mirror.feed.wake()

    def _ended(self, mirror: _Mirror, error: StocksyncError) -> None:
        self._hub_may_fail()
        mirror.error = error
        self._release(mirror)
        mirror.ready.set()
        for watcher in list(mirror.watchers):
            watcher._end()
        mirror.watchers.clear()
        if self._mirrors.get(mirror.room) is mirror:
            del self._mirrors[mirror.room]

    # -- viewers leaving ----------------------------------------------------------------

    def _leave(self, watcher: Subscription) -> None:
        mirror = self._mirrors.get(watcher.room)
        if mirror is None:
            return
        mirror.watchers.discard(watcher)
        self._drop_if_unwatched(mirror)

    def _drop_if_unwatched(self, mirror: _Mirror) -> None:
        if mirror.watchers or mirror.linger is not None:
            return
        loop = asyncio.get_running_loop()
        mirror.linger = loop.call_later(self.linger_s, self._linger_over, mirror)

    def _linger_over(self, mirror: _Mirror) -> None:
        mirror.linger = None
        if not mirror.watchers:
            task = asyncio.get_running_loop().create_task(self._drop(mirror))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drop(self, mirror: _Mirror) -> None:
        self._hub_may_fail()
        if mirror.linger is not None:
            mirror.linger.cancel()
            mirror.linger = None
        if self._mirrors.get(mirror.room) is mirror:
            del self._mirrors[mirror.room]
        self._release(mirror)
        for watcher in list(mirror.watchers):
            watcher._end()
        mirror.watchers.clear()
        if mirror.task is not None:
            mirror.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mirror.task


class EdgeServicer(WatchServicer):
    """``LiveRoomService`` at an edge: ``Watch`` only; setting rooms up is the hub's."""

    def __init__(self, rooms: EdgeRooms) -> None:
        super().__init__()
        self.rooms = rooms

    async def _subscribe(self, room_id: str, start: Position | None) -> Subscription:
        return await self.rooms.subscribe(room_id, start)

    async def _hub_only(self, context: Context, method: str) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"this is a room edge: it serves Watch only; call {method} at the hub",
        )

    async def SetFeatured(self, request: Any, context: Context) -> Any:
        """Refused: the hub's."""
        return await self._hub_only(context, "SetFeatured")

    async def SetDisplayPolicy(self, request: Any, context: Context) -> Any:
        """Refused: the hub's."""
        return await self._hub_only(context, "SetDisplayPolicy")

    async def GetRoom(self, request: Any, context: Context) -> Any:
        """Refused: the hub's."""
        return await self._hub_only(context, "GetRoom")

    async def ListRooms(self, request: Any, context: Context) -> Any:
        """Refused: the hub's."""
        return await self._hub_only(context, "ListRooms")

    async def EndRoom(self, request: Any, context: Context) -> Any:
        """Refused: the hub's."""
        return await self._hub_only(context, "EndRoom")


class Edge:
    """A running edge: the channel to the hub, the mirrored rooms, the server.

    Args:
        hub: the hub's ``HOST:PORT``.
        listen: ``HOST:PORT`` to serve viewers on.
        upstream: client credentials for the hub (a certificate with the
            ``rooms:watch`` scope); None: plaintext.
        serving: server credentials (TLS; viewers present bearer tokens);
            None: plaintext.
        tokens: the viewers' accepted tokens (with ``serving``).
        limits: per-viewer-identity quotas.
        history, linger_s, max_writes_per_s: as :class:`EdgeRooms`.
        http: ``HOST:PORT`` to serve the rooms' Server-Sent Events and
            overlay pages on, as the hub's ``--http`` does; empty: none.
    """

    def __init__(
        self,
        hub: str,
        listen: str,
        *,
        upstream: grpc.ChannelCredentials | None = None,
        serving: grpc.ServerCredentials | None = None,
        tokens: TokenFile | None = None,
        limits: Limits | None = None,
        history: int = DEFAULT_HISTORY,
        linger_s: float = LINGER_S,
        http: str = "",
        max_writes_per_s: float = 0.0,
    ) -> None:
        self.hub = hub
        self.max_writes_per_s = max_writes_per_s
        self.listen = listen
        self.http = http
        self.upstream = upstream
        self.serving = serving
        self.tokens = tokens
        self.limits = limits or Limits()
        self.history = history
        self.linger_s = linger_s
        self.health = health.aio.HealthServicer()
        self.rooms: EdgeRooms | None = None
        self.server: grpc.aio.Server | None = None
        self.channel: grpc.aio.Channel | None = None
        self.http_server: HttpServer | None = None
        self.port = 0
        self.http_port = 0

    async def start(self) -> int:
        """Bind and serve; returns the port.

        Raises:
            RuntimeError: the address cannot be bound.
        """
        from stocksync.hub.server import _bind, check_free, server_options

        check_free(self.listen)
        options = [("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000)]
        if self.upstream is None:
            self.channel = grpc.aio.insecure_channel(self.hub, options=options)
        else:
            self.channel = grpc.aio.secure_channel(self.hub, self.upstream, options=options)
        self.rooms = EdgeRooms(
            self.channel, self.history, self.linger_s, max_writes_per_s=self.max_writes_per_s
        )
        # One set of quotas per viewer's token over gRPC and HTTP, as at the hub.
        admission = Admission(self.limits)
        wraps: list[Wrap] = [guard_decoding]
        if self.serving is not None:
            wraps.insert(0, Gate(self.tokens, admission).wrap)
        server = Wrapped(grpc.aio.server(options=server_options()), *wraps)
        rooms_pb2_grpc.add_LiveRoomServiceServicer_to_server(EdgeServicer(self.rooms), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        enable_reflection([SERVICE_NAME, health_name], server)
        self.port = _bind(server, self.listen, self.serving)
        if self.http:
            host, _, port = self.http.rpartition(":")
            auth = None if self.serving is None else HttpAuth(self.tokens, admission)
            app = make_app(self.rooms, auth=auth)
            # Unauthenticated, like any exporter: counts only.
            app.router.add_get("/metrics", metrics_handler(EdgeMetrics(self.rooms).registry))
            http_server = HttpServer(app, host.strip("[]"), int(port))
            try:
                self.http_port = await http_server.start()
            except OSError as e:
                raise RuntimeError(f"cannot serve HTTP on {self.http}: {e.strerror}") from None
            self.http_server = http_server
        await server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.server = server
        log.info("room edge for hub %s listening on port %d", self.hub, self.port)
        return self.port

    async def stop(self, grace: float = 2.0) -> None:
        """End every viewer's stream and stop."""
        if self.http_server is not None:
            await self.http_server.stop()
            self.http_server = None
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            if self.rooms is not None:
                await self.rooms.close()
            await self.server.stop(grace)
            self.server = None
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
