"""The hub's HTTP face (aiohttp, on the hub's own event loop).

Every route is listed in :func:`make_app`; for now, live rooms for browsers
(DESIGN §7):

- ``GET /rooms/{room}/events`` — Server-Sent Events: the room's messages as
  :func:`stocksync.hub.rooms.event_dict` JSON, ``event:`` ``snapshot`` or
  ``update`` (and one ``end`` when the room ends), ``id:`` the position
  (``EPOCH:OFFSET``). A browser's ``Last-Event-ID`` header, or a
  ``?last_event_id=`` query for clients that cannot set it, resumes; a
  comment line every ``heartbeat_s`` keeps proxies from closing an idle
  stream and notices a viewer who left.
- ``GET /rooms/{room}/overlay`` — the overlay page (``static/overlay.html``)
  a host adds to OBS Studio as a browser source.

Each route asks :func:`stocksync.hub.http_auth.authorize` for the scope it
needs (both room routes: ``rooms:watch`` for the room, by a token in the
``Authorization`` header or ``?token=``).

Every rule lives in :mod:`stocksync.hub.rooms`; a refusal maps to its HTTP
status by one table (:data:`HTTP_STATUS`) from the error's status.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from importlib import resources
from typing import Protocol

from aiohttp import web

from stocksync.auth import ROOMS_WATCH
from stocksync.errors import Status, StocksyncError
from stocksync.hub.http_auth import HTTP_AUTH, HttpAuth, authorize, challenge, open_stream
from stocksync.hub.rooms import (
    Position,
    RoomEvent,
    Subscription,
    event_dict,
    once_per_message,
    validate_room_id,
)

__all__ = [
    "HEARTBEAT_S",
    "HTTP_STATUS",
    "MAX_REQUEST_LINE",
    "RECONNECT_MS",
    "ROOMS",
    "HttpServer",
    "authorize",
    "make_app",
    "sse_frame",
]

log = logging.getLogger("stocksync.hub.http")

HEARTBEAT_S = 15.0
"""Seconds between comment lines on an idle event stream: below the idle
timeouts of common proxies (often 30-60 s), and the longest a viewer who
left keeps a subscription open."""

RECONNECT_MS = 1000
"""The ``retry:`` a browser waits before reconnecting a dropped event stream."""

HTTP_STATUS = {
    Status.INVALID_ARGUMENT: 400,
    Status.UNAUTHENTICATED: 401,
    Status.PERMISSION_DENIED: 403,
    Status.NOT_FOUND: 404,
    Status.FAILED_PRECONDITION: 409,
    Status.ABORTED: 409,
    Status.RESOURCE_EXHAUSTED: 429,
    Status.UNAVAILABLE: 503,
    Status.DEADLINE_EXCEEDED: 504,
    Status.INTERNAL: 500,
}
"""The HTTP status of each domain error status."""

MAX_REQUEST_LINE = 80 * 1024
"""Longest request line (aiohttp's default is 8 KiB): ``GET /v1/stock`` may
name 1,000 SKUs of up to 64 characters, as gRPC's GetStock may."""


class Rooms(Protocol):
    """What the event stream needs of rooms: a hub's :class:`RoomHub`, or a
    room edge's :class:`~stocksync.hub.edge.EdgeRooms` (whose subscribe waits
    for the hub)."""

    def subscribe(
        self, room_id: str, from_position: Position | None = None, /
    ) -> Subscription | Awaitable[Subscription]:
        """See :meth:`RoomHub.subscribe`."""
        ...


ROOMS = web.AppKey("rooms", Rooms)


@dataclass
class _Live:
    """What the room routes share."""

    heartbeat_s: float
    overlay: bytes
    streams: set[Subscription] = field(default_factory=set)
    """Open event streams, closed when the server shuts down."""


_LIVE = web.AppKey("live", _Live)


def make_app(
    rooms: Rooms, heartbeat_s: float = HEARTBEAT_S, auth: HttpAuth | None = None
) -> web.Application:
    """The hub's HTTP application.

    Args:
        rooms: the hub's rooms (or a room edge's).
        heartbeat_s: see :data:`HEARTBEAT_S`.
        auth: who may call; None: everyone (a hub serving plaintext).
    """
    app = web.Application()
    app[ROOMS] = rooms
    app[HTTP_AUTH] = auth or HttpAuth.without_authentication()
    overlay = resources.files("stocksync.hub").joinpath("static/overlay.html").read_bytes()
    app[_LIVE] = _Live(heartbeat_s, overlay)
    app.on_shutdown.append(_close_streams)
    app.add_routes(
        [
            web.get("/rooms/{room}/events", room_events),
            web.get("/rooms/{room}/overlay", room_overlay),
        ]
    )
    return app


async def _close_streams(app: web.Application) -> None:
    # An event stream never ends by itself: without this, stopping the
    # server would wait out its shutdown timeout. Browsers reconnect (and
    # resume) once the hub is back.
    for watcher in list(app[_LIVE].streams):
        watcher.close()


class HttpServer:
    """An application served on the running event loop.

    Args:
        app: what to serve (from :func:`make_app`).
        host: the address to bind.
        port: the port; 0 for any free one (see :attr:`port` once started).
        shutdown_timeout: the longest :meth:`stop` waits for requests in
            flight (event streams are closed at once).
    """

    def __init__(
        self, app: web.Application, host: str, port: int, shutdown_timeout: float = 5.0
    ) -> None:
        # No access log: a line per overlay viewer would drown the hub's own.
        self.runner = web.AppRunner(
            app,
            shutdown_timeout=shutdown_timeout,
            access_log=None,
            max_line_size=MAX_REQUEST_LINE,
        )
        self.host = host
        self.port = port

    async def start(self) -> int:
        """Bind and serve; returns the bound port.

        Raises:
            OSError: if the address cannot be bound.
        """
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await self.runner.cleanup()
            raise
        self.port = int(self.runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stop serving: event streams end, browsers will reconnect."""
        await self.runner.cleanup()


def _refusal(error: StocksyncError) -> web.Response:
    return web.json_response(
        {"error": error.detail}, status=HTTP_STATUS[error.status], headers=challenge(error)
    )


DIRECT_BUFFER = 64 * 1024
"""A viewer whose socket holds less than this unsent is written to directly
as a room publishes; beyond it, its messages merge until it reads."""


class _Direct:
    """Writes a message straight to the viewer's socket (no task wakes up):
    what lets one process serve many viewers (cf. ``websockets.broadcast``).

    Declines while the stream's own task is writing, or while the socket
    already holds :data:`DIRECT_BUFFER` unsent (a slow viewer): the message
    then merges in the subscription and the task writes it with backpressure.
    """

    def __init__(self, transport: asyncio.Transport, chunked: bool) -> None:
        self.transport = transport
        self.frame = _chunk if chunked else sse_frame
        self.busy = False

    def __call__(self, event: RoomEvent) -> bool:
        transport = self.transport
        if self.busy or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > DIRECT_BUFFER:
            return False
        transport.write(self.frame(event))
        return True


def _sse_frame(event: RoomEvent) -> bytes:
    data = event_dict(event)
    body = json.dumps(data, separators=(",", ":"))
    return f"id: {event.position}\nevent: {data['type']}\ndata: {body}\n\n".encode()


sse_frame = once_per_message(_sse_frame)
"""One room message as a Server-Sent Events frame (a message taken as
published, or merged by the room's feed, is one object for every viewer:
encoded once)."""


def _chunk_of(event: RoomEvent) -> bytes:
    frame = sse_frame(event)
    return b"%x\r\n%s\r\n" % (len(frame), frame)


_chunk = once_per_message(_chunk_of)
""":func:`sse_frame` as one HTTP/1.1 chunk."""


async def room_events(request: web.Request) -> web.StreamResponse:
    """``GET /rooms/{room}/events``: the room as Server-Sent Events."""
    rooms = request.app[ROOMS]
    last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id", "")
    try:
        room = validate_room_id(request.match_info["room"])
        identity = authorize(request, ROOMS_WATCH, room=room)
        start = Position.parse(last, "Last-Event-ID") if last else None
        ticket = open_stream(request, identity)
    except StocksyncError as e:
        return _refusal(e)
    try:
        return await _stream_room(request, rooms, room, start)
    finally:
        ticket.close()


async def _stream_room(
    request: web.Request, rooms: Rooms, room: str, start: Position | None
) -> web.StreamResponse:
    try:
        subscribed = rooms.subscribe(room, start)
        watcher = await subscribed if inspect.isawaitable(subscribed) else subscribed
    except StocksyncError as e:
        return _refusal(e)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            # Ask reverse proxies (nginx) not to buffer the stream.
            "X-Accel-Buffering": "no",
        }
    )
    heartbeat = request.app[_LIVE].heartbeat_s
    streams = request.app[_LIVE].streams
    streams.add(watcher)
    try:
        await response.prepare(request)
        await response.write(f"retry: {RECONNECT_MS}\n\n".encode())
        transport = request.transport
        direct = None
        if isinstance(transport, asyncio.Transport):
            chunked = response.headers.get("Transfer-Encoding") == "chunked"
            direct = watcher.direct = _Direct(transport, chunked)

        async def write(data: bytes) -> None:
            # Waits while the viewer's connection is full: meanwhile its
            # changes merge in the subscription.
            if direct is None:
                await response.write(data)
                return
            direct.busy = True
            try:
                await response.write(data)
            finally:
                direct.busy = False

        while True:
            try:
                async with asyncio.timeout(heartbeat):
                    event = await watcher.next()
            except TimeoutError:
                await write(b": heartbeat\n\n")
                continue
            except StopAsyncIteration:
                if watcher.room_ended:
                    await write(b"event: end\ndata: {}\n\n")
                break
            await write(sse_frame(event))
    except ConnectionResetError:
        log.debug("event stream of room %s: the viewer left", watcher.room)
    finally:
        streams.discard(watcher)
        watcher.close()
    return response


async def room_overlay(request: web.Request) -> web.Response:
    """``GET /rooms/{room}/overlay``: the overlay page (it reads the room
    from its own URL, so it loads before the room starts)."""
    try:
        authorize(request, ROOMS_WATCH, room=validate_room_id(request.match_info["room"]))
    except StocksyncError as e:
        return _refusal(e)
    return web.Response(
        body=request.app[_LIVE].overlay,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Cache-Control": "no-cache",
            # The page is self-contained: it may talk only to this hub.
            "Content-Security-Policy": (
                "default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'"
            ),
        },
    )
