"""Rooms over HTTP: Server-Sent Events and the overlay route, on a real aiohttp
server on port 0, read by a real HTTP client (aiohttp's)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from test_room_service import until
from test_rooms import Stock

from stocksync.hub.http import HttpServer, make_app
from stocksync.hub.rooms import DisplayMode, DisplayPolicy

Frame = dict[str, Any]


class Events:
    """An event stream, read frame by frame (the Server-Sent Events format)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def frame(self) -> Frame | None:
        """The next frame with an event or data; None at the end of the stream."""
        fields: Frame = {}
        while True:
            raw = await asyncio.wait_for(self.response.content.readline(), 60)
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if not line:
                if "event" in fields or "data" in fields:
                    if "data" in fields:
                        fields["data"] = json.loads(fields["data"])
                    return fields
                fields = {}
            elif not line.startswith(":"):  # not a comment (heartbeat)
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")

    async def comment(self) -> str:
        """Read up to the next comment line (a heartbeat); returns its text."""
        while True:
            raw = await asyncio.wait_for(self.response.content.readline(), 60)
            assert raw, "the stream ended"
            if raw.startswith(b":"):
                return raw[1:].decode().strip()

    async def frames(self, count: int) -> list[Frame]:
        out = []
        for _ in range(count):
            frame = await self.frame()
            assert frame is not None, f"the stream ended after {out}"
            out.append(frame)
        return out


@contextlib.asynccontextmanager
async def serving(stock: Stock, heartbeat_s: float = 15.0) -> AsyncIterator[str]:
    """The hub's HTTP app on port 0; yields its base URL."""
    server = HttpServer(make_app(stock.rooms, heartbeat_s=heartbeat_s), "127.0.0.1", 0)
    port = await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await asyncio.wait_for(server.stop(), 60)


@contextlib.asynccontextmanager
async def events(url: str, **kw: Any) -> AsyncIterator[Events]:
    async with aiohttp.ClientSession() as session, session.get(url, **kw) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        yield Events(response)


def test_a_room_streams_a_snapshot_then_updates() -> None:
    stock = Stock()
    stock.add("A", 12)
    stock.rooms.set_featured("live-1", ["A", "B"])
    stock.rooms.set_policy("live-1", DisplayPolicy(DisplayMode.EXACT, low_threshold=3))
    epoch = stock.rooms.epoch

    async def scenario() -> None:
        async with serving(stock) as base, events(f"{base}/rooms/live-1/events") as stream:
            [snap] = await stream.frames(1)
            assert snap["id"] == f"{epoch}:2" and snap["event"] == "snapshot"
            assert snap["data"]["reason"] == "initial"
            assert snap["data"]["policy"] == {"mode": "exact", "low_threshold": 3}
            assert [(s["sku"], s["label"]) for s in snap["data"]["skus"]] == [
                ("A", "12 in stock"),
                ("B", "Sold out"),
            ]
            stock.add("A", -10)
            [update] = await stream.frames(1)
            assert update == {
                "id": f"{epoch}:3",
                "event": "update",
                "data": {
                    "type": "update",
                    "position": f"{epoch}:3",
                    "skus": [
                        {
                            "sku": "A",
                            "state": "low",
                            "sellable": 2,
                            "label": "Only 2 left!",
                            "stale_warehouses": [],
                        }
                    ],
                },
            }

    asyncio.run(scenario())


def test_last_event_id_resumes_by_header_or_query() -> None:
    stock = Stock()
    stock.rooms.set_featured("r", ["A"])
    stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT))
    epoch = stock.rooms.epoch

    async def scenario() -> None:
        # A short heartbeat: the hub notices a viewer who left at its next write.
        async with serving(stock, heartbeat_s=0.05) as base:
            url = f"{base}/rooms/r/events"
            async with events(url) as stream:
                [snap] = await stream.frames(1)
                assert await stream.comment() == "heartbeat"
            await until(lambda: stock.rooms.room("r").watchers == 0, "the viewer to leave")
            for delta in (1, 2, 3):
                stock.add("A", delta)
            async with events(url, headers={"Last-Event-ID": snap["id"]}) as stream:
                missed = await stream.frames(3)
            assert [f["id"] for f in missed] == [f"{epoch}:{n}" for n in (3, 4, 5)]
            assert [f["data"]["skus"][0]["sellable"] for f in missed] == [1, 3, 6]
            stock.add("A", 4)
            async with events(url, params={"last_event_id": missed[-1]["id"]}) as stream:
                [again] = await stream.frames(1)
            assert again["id"] == f"{epoch}:6" and again["event"] == "update"
            assert again["data"]["skus"][0]["sellable"] == 10
            # From another hub start: a snapshot that says so.
            async with events(url, headers={"Last-Event-ID": "0ther:6"}) as stream:
                [fresh] = await stream.frames(1)
            assert fresh["event"] == "snapshot" and fresh["data"]["reason"] == "new_epoch"
            assert fresh["id"] == f"{epoch}:6"

    asyncio.run(scenario())


def test_refusals_are_json_with_an_http_status() -> None:
    stock = Stock()
    stock.rooms.set_featured("r", ["A"])

    async def scenario() -> None:
        async with serving(stock) as base, aiohttp.ClientSession() as session:
            for path, headers, status, error in [
                ("/rooms/nope/events", {}, 404, "no live room 'nope'"),
                ("/rooms/a%20b/events", {}, 400, "room_id 'a b' must be"),
                ("/rooms/r/events", {"Last-Event-ID": "x"}, 400, "Last-Event-ID 'x' is not a"),
                ("/rooms/a%20b/overlay", {}, 400, "room_id 'a b' must be"),
            ]:
                async with session.get(base + path, headers=headers) as response:
                    assert response.status == status, path
                    assert error in (await response.json())["error"]
            assert stock.rooms.room("r").watchers == 0

    asyncio.run(scenario())


def test_ending_the_room_ends_the_stream() -> None:
    stock = Stock()
    stock.rooms.set_featured("r", ["A"])

    async def scenario() -> None:
        async with serving(stock) as base, events(f"{base}/rooms/r/events") as stream:
            await stream.frames(1)
            stock.rooms.end_room("r")
            [end] = await stream.frames(1)
            assert end["event"] == "end"
            assert await stream.frame() is None

    asyncio.run(scenario())


def test_stopping_the_server_closes_open_streams() -> None:
    stock = Stock()
    stock.rooms.set_featured("r", ["A"])

    async def scenario() -> None:
        server = HttpServer(make_app(stock.rooms), "127.0.0.1", 0, shutdown_timeout=600)
        port = await server.start()
        async with events(f"http://127.0.0.1:{port}/rooms/r/events") as stream:
            await stream.frames(1)
            # Without closing the streams itself, stop would wait 600 s.
            await asyncio.wait_for(server.stop(), 60)
            assert await stream.frame() is None  # no "end": the room goes on
        assert stock.rooms.room("r").watchers == 0

    asyncio.run(scenario())


def test_the_overlay_page_is_served_self_contained() -> None:
    stock = Stock()

    async def scenario() -> None:
        async with serving(stock) as base, aiohttp.ClientSession() as session:
            # Served before the room starts: OBS may load it first.
            async with session.get(f"{base}/rooms/live-1/overlay?token=t") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "text/html; charset=utf-8"
                csp = response.headers["Content-Security-Policy"]
                assert "default-src 'none'" in csp and "connect-src 'self'" in csp
                page = await response.text()
            assert "EventSource" in page
            assert "http://" not in page.replace("http://HUB:PORT", "")
            assert "https://" not in page and "@import" not in page

    asyncio.run(scenario())


def test_a_viewer_who_stops_reading_holds_at_most_the_featured_skus() -> None:
    stock = Stock()
    skus = [f"SKU-{i}" for i in range(10)]
    stock.rooms.set_featured("r", skus)
    stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT))
    total = 20_000

    async def scenario() -> None:
        async with serving(stock) as base:
            port = int(base.rsplit(":", 1)[1])
            # A raw client with a tiny receive buffer that never reads.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
            writer.write(b"GET /rooms/r/events HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            [viewer] = await until(lambda: stock.rooms.watchers("r"), "the viewer")
            most = 0
            for _ in range(total):
                # Every SKU at once: frames of ~1.5 kB outgrow any socket buffers.
                for sku in skus:
                    stock.book.add_on_hand("WH-1", sku, 1)
                stock.rooms.stock_changed(skus, time.monotonic())
                most = max(most, viewer.pending)
                await asyncio.sleep(0)
            assert 0 < viewer.pending <= len(skus) and most <= len(skus)
            # Reading again, it catches up to the latest value of every SKU.
            last = f"{stock.rooms.epoch}:{stock.rooms.room('r').position.offset}"
            text = ""
            # Until the whole of the last frame is in (its id line may come
            # in one read and its data in the next).
            while not re.search(rf"id: {last}\n.*?\n\n", text, re.S):
                text += (await asyncio.wait_for(reader.read(2**16), 60)).decode()
            # Each frame went out as one HTTP chunk; its data line ends it.
            frames = [f for f in text.split("\n\n") if "\ndata: " in f]
            values: dict[str, int] = {}
            for frame in frames:
                data = json.loads(frame.split("\ndata: ", 1)[1])
                values.update({s["sku"]: s["sellable"] for s in data["skus"]})
            assert values == {sku: total for sku in skus}
            assert len(frames) < total and stock.rooms.coalesced > 0
            writer.close()

    asyncio.run(scenario())


def test_an_address_in_use_is_an_os_error() -> None:
    stock = Stock()

    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            server = HttpServer(make_app(stock.rooms), "127.0.0.1", port)
            try:
                await server.start()
            except OSError as e:
                assert "address already in use" in str(e).lower()
            else:
                raise AssertionError("bound a port that was taken")

    asyncio.run(scenario())
