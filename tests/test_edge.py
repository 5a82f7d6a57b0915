"""Room edges (``stocksync-hub edge``): the hub's rooms served by another process.

The "hub" here is the real ``LiveRoomService`` servicer over a RoomHub on a
real gRPC server on port 0 (as in test_room_service); the edge is a real
:class:`~stocksync.hub.edge.Edge` on port 0 in front of it; viewers are real
grpc.aio channels. The TLS test runs a real hub with mutual TLS and the
edge as the CLI subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import wait_until
from securehub import Pki, cert_creds, hub_thread, token_creds
from test_room_service import until
from test_rooms import WH, Stock

from stocksync.grpc_edge import Wrapped, guard_decoding
from stocksync.hub.edge import Edge
from stocksync.hub.room_service import RoomServicer, event_from_proto
from stocksync.hub.rooms import Position, RoomEvent, Snapshot, SnapshotReason, Update
from stocksync.tools.faultproxy import FaultProxy
from stocksync.tools.procs import command
from stocksync.v1 import rooms_pb2, rooms_pb2_grpc

ROOM = "room-1"


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 120))


class FakeHubServer:
    """The hub's room servicer over ``stock`` on a real server; restartable on its port."""

    def __init__(self, stock: Stock) -> None:
        self.stock = stock
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> FakeHubServer:
        server = Wrapped(grpc.aio.server(), guard_decoding)
        rooms_pb2_grpc.add_LiveRoomServiceServicer_to_server(RoomServicer(self.stock.rooms), server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self.server = server
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def hub_and_edge(
    stock: Stock, **edge_args: Any
) -> AsyncIterator[tuple[FakeHubServer, Edge, rooms_pb2_grpc.LiveRoomServiceStub]]:
    """A hub server, an edge in front of it, and a stub for the edge."""
    hub = await FakeHubServer(stock).start()
    edge = Edge(hub.target, "127.0.0.1:0", **edge_args)
    await edge.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}")
    try:
        yield hub, edge, rooms_pb2_grpc.LiveRoomServiceStub(channel)
    finally:
        await channel.close()
        await edge.stop(0)
        await hub.stop()


class Viewer:
    """A Watch stream, read by a task into ``events``."""

    def __init__(self, stub: rooms_pb2_grpc.LiveRoomServiceStub, position: str = "") -> None:
        self.call = stub.Watch(rooms_pb2.WatchRequest(room_id=ROOM, from_position=position))
        self.events: list[RoomEvent] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.call:
            self.events.append(event_from_proto(message))

    def values(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for e in self.events:
            if isinstance(e, Snapshot):
                out = {}
            out.update({s.sku: s.sellable for s in e.skus})
        return out

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self.task


def exact_room(stock: Stock, skus: list[str]) -> None:
    from stocksync.hub.rooms import DisplayMode, DisplayPolicy

    for sku in skus:
        stock.add(sku, 100)
    stock.rooms.set_featured(ROOM, skus)
    stock.rooms.set_policy(ROOM, DisplayPolicy(DisplayMode.EXACT))


def test_viewers_at_the_edge_see_what_viewers_at_the_hub_see_through_one_stream() -> None:
    async def go() -> None:
        stock = Stock()
        exact_room(stock, ["LIP-RED", "LIP-NUDE"])
        async with hub_and_edge(stock) as (hub, edge, stub):
            direct_channel = grpc.aio.insecure_channel(hub.target)
            direct = Viewer(rooms_pb2_grpc.LiveRoomServiceStub(direct_channel))
            viewers = [Viewer(stub) for _ in range(20)]
            await until(lambda: all(v.events for v in [direct, *viewers]), "snapshots")
            # One stream at the hub for the edge's 20 viewers (and the direct one).
            assert len(stock.rooms.watchers(ROOM)) == 2
            assert edge.rooms is not None and edge.rooms.watcher_count() == 20
            first = viewers[0].events[0]
            assert isinstance(first, Snapshot) and first.reason is SnapshotReason.INITIAL
            assert first.position == direct.events[0].position  # the hub's positions
            for i in range(30):
                stock.add("LIP-RED" if i % 3 else "LIP-NUDE", -1)
                await asyncio.sleep(0.002)
            want = {"LIP-RED": 80, "LIP-NUDE": 90}
            await until(lambda: all(v.values() == want for v in [direct, *viewers]), "the end")
            last = stock.rooms.room(ROOM).position
            assert all(v.events[-1].position == last for v in viewers)
            for v in [direct, *viewers]:
                await v.close()
            await direct_channel.close()

    run(go)


@pytest.mark.parametrize("bound", [0.0, 20.0])
def test_an_edge_wakes_a_rooms_viewers_at_most_its_write_bound_allows(bound: float) -> None:
    """4 gRPC viewers, 20 messages a second at most: woken every 0.2 s, what
    comes meanwhile merging; with no bound, every message the hub sends. A
    Server-Sent Events viewer that keeps up is written every message either
    way (a socket write, not a task woken) and does not count."""
    import aiohttp

    async def go() -> None:
        stock = Stock()
        exact_room(stock, ["LIP-RED", "LIP-NUDE"])
        async with (
            hub_and_edge(stock, max_writes_per_s=bound, http="127.0.0.1:0") as (_, edge, stub),
            aiohttp.ClientSession() as session,
        ):
            sse: list[dict[str, Any]] = []

            async def read_sse() -> None:
                url = f"http://127.0.0.1:{edge.http_port}/rooms/{ROOM}/events"
                async with session.get(url) as response:
                    buffer = ""
                    async for chunk in response.content.iter_any():
                        buffer += chunk.decode()
                        *done, buffer = buffer.split("\n\n")
                        sse.extend(
                            json.loads(f.split("data: ", 1)[1]) for f in done if f.startswith("id:")
                        )

            sse_task = asyncio.create_task(read_sse())
            viewers = [Viewer(stub) for _ in range(4)]
            await until(lambda: sse and all(v.events for v in viewers), "snapshots")
            await asyncio.sleep(0.3)  # a quiet spell: the next change goes out at once
            start = time.monotonic()
            for i in range(60):
                stock.add("LIP-RED" if i % 3 else "LIP-NUDE", -1)
                await asyncio.sleep(0.005)
            want = {"LIP-RED": 60, "LIP-NUDE": 80}
            last = stock.rooms.room(ROOM).position
            await until(lambda: all(v.values() == want for v in viewers), "the end")
            await until(lambda: sse[-1]["position"] == str(last), "the end over SSE")
            elapsed = time.monotonic() - start
            paced = 2 + elapsed / (4 / 20.0)  # the first at once, then one per 0.2 s
            for v in viewers:
                assert v.events[-1].position == last  # merged, nothing lost
                if bound:
                    assert len(v.events) - 1 <= paced
                else:
                    assert len(v.events) - 1 > paced
            assert len(sse) - 1 > paced
            sse_task.cancel()
            for v in viewers:
                await v.close()

    run(go)


def test_a_viewer_resumes_at_the_edge_from_a_position_it_had_at_the_hub() -> None:
    async def go() -> None:
        stock = Stock()
        exact_room(stock, ["LIP-RED"])
        async with hub_and_edge(stock) as (_hub, _edge, stub):
            keeper = Viewer(stub)  # keeps the room mirrored
            await until(lambda: keeper.events, "a snapshot")
            stock.add("LIP-RED", -1)
            mark = stock.rooms.room(ROOM).position
            for n in range(3):
                stock.add("LIP-RED", -1)
                # Taken by the edge one by one (else they merge at the hub,
                # as for any watcher that has not taken the last one yet).
                await until(lambda n=n: keeper.values() == {"LIP-RED": 98 - n}, "the change")
            await until(lambda: keeper.values() == {"LIP-RED": 96}, "the changes at the edge")
            resumed = Viewer(stub, str(mark))
            await until(lambda: len(resumed.events) == 3, "the missed messages")
            assert all(isinstance(e, Update) for e in resumed.events)
            assert [e.position.offset for e in resumed.events] == [
                mark.offset + 1,
                mark.offset + 2,
                mark.offset + 3,
            ]
            # Another hub start's position: a snapshot saying so.
            other = Viewer(stub, "0123456789abcdef:1")
            await until(lambda: other.events, "a snapshot")
            assert isinstance(other.events[0], Snapshot)
            assert other.events[0].reason is SnapshotReason.NEW_EPOCH
            # Older than what the edge has seen of the room: a snapshot saying so.
            old = Viewer(stub, str(Position(mark.epoch, 1)))
            await until(lambda: old.events, "a snapshot")
            assert isinstance(old.events[0], Snapshot)
            assert old.events[0].reason is SnapshotReason.HISTORY_GONE
            # Ahead of the room: refused, naming the position.
            ahead = stub.Watch(
                rooms_pb2.WatchRequest(room_id=ROOM, from_position=f"{mark.epoch}:999")
            )
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await ahead.read()
            assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "ahead of room" in (e.value.details() or "")
            for v in (keeper, resumed, other, old):
                await v.close()

    run(go)


def test_bad_requests_get_a_status_and_setup_is_the_hubs() -> None:
    async def go() -> None:
        stock = Stock()
        exact_room(stock, ["LIP-RED"])
        async with hub_and_edge(stock) as (_, _edge, stub):
            for room, code, words in (
                ("no-such-room", grpc.StatusCode.NOT_FOUND, "no live room 'no-such-room'"),
                ("bad room!", grpc.StatusCode.INVALID_ARGUMENT, "room_id"),
            ):
                call = stub.Watch(rooms_pb2.WatchRequest(room_id=room))
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call.read()
                assert e.value.code() is code, e.value
                assert words in (e.value.details() or "")
            call = stub.Watch(rooms_pb2.WatchRequest(room_id=ROOM, from_position="garbage"))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call.read()
            assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.SetFeatured(rooms_pb2.SetFeaturedRequest(room_id=ROOM, skus=["X"]))
            assert e.value.code() is grpc.StatusCode.UNIMPLEMENTED
            assert "call SetFeatured at the hub" in (e.value.details() or "")
            assert stock.rooms.room(ROOM).featured == ("LIP-RED",)  # nothing changed

    run(go)


def test_a_room_that_ends_at_the_hub_ends_at_the_edge() -> None:
    async def go() -> None:
        stock = Stock()
        exact_room(stock, ["LIP-RED"])
        async with hub_and_edge(stock) as (_, edge, stub):
            viewers = [Viewer(stub) for _ in range(3)]
            await until(lambda: all(v.events for v in viewers), "snapshots")
            stock.add("LIP-RED", -5)
            stock.rooms.end_room(ROOM)
            for v in viewers:
                await asyncio.wait_for(v.task, 10)  # ended without an error
                assert v.values() == {"LIP-RED": 95}
            assert edge.rooms is not None and edge.rooms.mirrored() == []
            call = stub.Watch(rooms_pb2.WatchRequest(room_id=ROOM))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call.read()
            assert e.value.code() is grpc.StatusCode.NOT_FOUND

    run(go)


def test_viewers_keep_their_stream_across_a_hub_restart() -> None:
    async def go() -> None:
        stock = Stock()
        exact_room(stock, ["LIP-RED"])
        async with hub_and_edge(stock) as (hub, _edge, stub):
            viewer = Viewer(stub)
            await until(lambda: viewer.events, "a snapshot")
            old_epoch = stock.rooms.epoch
            await hub.stop()
            stock.book.add_on_hand(WH, "LIP-RED", -7)  # changed while the hub was away
            hub.stock = stock = stock.restart()
            await asyncio.sleep(0.3)
            await hub.start()  # same port, new epoch
            await until(
                lambda: any(
                    isinstance(e, Snapshot) and e.reason is SnapshotReason.NEW_EPOCH
                    for e in viewer.events
                ),
                "the new epoch's snapshot",
            )
            assert not viewer.task.done()  # the same stream
            assert viewer.events[-1].position.epoch == stock.rooms.epoch != old_epoch
            assert viewer.values() == {"LIP-RED": 93}
            stock.add("LIP-RED", -3)
            await until(lambda: viewer.values() == {"LIP-RED": 90}, "a change after the restart")
            await viewer.close()

    run(go)


def test_a_quiet_room_resumed_with_nothing_missed_counts_as_connected() -> None:
    """The link drops while the hub stays up: the edge resumes at its own
    position, the hub has nothing to send, and the room is connected again
    all the same (the hub's headers say so), not until its next change."""

    async def go() -> None:
        stock = Stock()
        exact_room(stock, ["LIP-RED"])
        hub = await FakeHubServer(stock).start()
        async with FaultProxy("127.0.0.1", hub.port) as proxy:
            edge = Edge(f"127.0.0.1:{proxy.port}", "127.0.0.1:0")
            await edge.start()
            rooms = edge.rooms
            assert rooms is not None
            async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
                viewer = Viewer(rooms_pb2_grpc.LiveRoomServiceStub(channel))
                await until(lambda: viewer.events, "a snapshot")
                assert rooms.disconnected() == 0
                proxy.reset()  # every connection through the proxy: an RST
                await until(lambda: rooms.reconnects >= 1, "the edge to lose the stream")
                await until(lambda: rooms.disconnected() == 0, "the room connected again")
                assert len(viewer.events) == 1  # nothing was sent: nothing was missed
                stock.add("LIP-RED", -2)
                await until(lambda: viewer.values() == {"LIP-RED": 98}, "the next change")
                await viewer.close()
            await edge.stop(0)
        await hub.stop()

    run(go)


def test_a_silent_hub_is_a_clear_unavailable_and_the_stream_closes_after_the_last_viewer() -> None:
    async def go() -> None:
        # Nothing listens at the hub's address.
        edge = Edge("127.0.0.1:9", "127.0.0.1:0")
        await edge.start()
        assert edge.rooms is not None
        edge.rooms.first_message_s = 0.5
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            call = rooms_pb2_grpc.LiveRoomServiceStub(channel).Watch(
                rooms_pb2.WatchRequest(room_id=ROOM)
            )
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call.read()
            assert e.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "the hub did not show room 'room-1'" in (e.value.details() or "")
        await edge.stop(0)

        stock = Stock()
        exact_room(stock, ["LIP-RED"])
        async with hub_and_edge(stock, linger_s=0.2) as (_, edge, stub):
            viewer = Viewer(stub)
            await until(lambda: viewer.events, "a snapshot")
            assert len(stock.rooms.watchers(ROOM)) == 1
            await viewer.close()
            await until(lambda: not stock.rooms.watchers(ROOM), "the edge's stream to close")
            assert edge.rooms is not None and edge.rooms.mirrored() == []

    run(go)


# -- the command ------------------------------------------------------------------------


def edge_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command("stocksync-hub"), "edge", *args], capture_output=True, text=True, timeout=timeout
    )


def test_the_command_refuses_what_cannot_work_in_one_line(tmp_path: Path) -> None:
    r = edge_cli("--hub", "nowhere")
    assert r.returncode == 2 and "hub: expected HOST:PORT" in r.stderr
    r = edge_cli("--hub", "127.0.0.1:1")
    assert r.returncode == 2 and "--tls DIR" in r.stderr and "--insecure" in r.stderr
    r = edge_cli("--insecure", "--tls", str(tmp_path))
    assert r.returncode == 2 and "plaintext" in r.stderr
    r = edge_cli("--insecure", "--max-requests-per-s", "0")
    assert r.returncode == 2 and "--max-requests-per-s" in r.stderr
    r = edge_cli("--insecure", "--request-burst", "lots")
    assert r.returncode == 2 and "--request-burst" in r.stderr
    r = edge_cli("--insecure", "--room-max-writes-per-s", "-1")
    assert r.returncode == 2 and "--room-max-writes-per-s" in r.stderr
    # Per-token quotas on an edge that takes no tokens would be ignored: refused instead.
    r = edge_cli("--insecure", "--max-requests-per-s", "5", "--request-burst", "10")
    assert r.returncode == 2, r.stderr
    assert "--max-requests-per-s, --request-burst: quotas are per viewer token" in r.stderr
    assert r.stderr.count("Error:") == 1 and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("")
    (tmp_path / "ca.pem").write_text("")
    (tmp_path / "tokens.toml").write_text("")
    r = edge_cli(
        "--tls", str(tmp_path), "--hub-tls", str(tmp_path), "--tokens-file", str(tmp_path / "t")
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = edge_cli("--insecure", "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1 and "address already in use" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def tls_edge(pki: Pki, hub: str, client: Path, ready: Path, *extra: str) -> subprocess.Popen[str]:
    """``stocksync-hub edge`` with TLS both ways: the hub's server certificate
    (it names localhost), ``client`` to reach the hub, the viewers' tokens;
    ``extra`` options after them."""
    ready.unlink(missing_ok=True)
    return subprocess.Popen(
        [
            *command("stocksync-hub"),
            "edge",
            "--hub",
            f"localhost:{hub.rpartition(':')[2]}",
            "--listen",
            "127.0.0.1:0",
            "--tls",
            str(pki.root / "hub"),
            "--hub-tls",
            str(client),
            "--tokens-file",
            str(pki.tokens_file),
            "--http",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            *extra,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_tls_edge_takes_the_viewers_room_tokens(tmp_path: Path) -> None:
    pki = Pki.make(tmp_path / "pki")
    admin = pki.client("admin", "admin")
    edge_client = pki.client("edge-1", "rooms:watch")
    token_a = pki.token("viewer-a", "rooms:watch:room-a")
    token_shop = pki.token("shop", "inventory:reserve")
    with hub_thread(pki, tmp_path / "hub.db") as hub:
        with grpc.secure_channel(hub.mtls, cert_creds(admin)) as ch:
            stub = rooms_pb2_grpc.LiveRoomServiceStub(ch)
            for room in ("room-a", "room-b"):
                stub.SetFeatured(rooms_pb2.SetFeaturedRequest(room_id=room, skus=["LIP"]))
        ready = tmp_path / "edge.json"
        # A token's quota (gRPC and HTTP together): four calls, then slow down.
        proc = tls_edge(
            pki,
            hub.mtls,
            edge_client,
            ready,
            "--request-burst",
            "4",
            "--max-requests-per-s",
            "0.01",
        )
        try:
            wait_until(lambda: ready.exists() or proc.poll() is not None, 60, "the edge")
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            target = f"localhost:{json.loads(ready.read_text())['port']}"

            def first(token: str | None, room: str) -> Any:
                with grpc.secure_channel(target, token_creds(pki, token)) as ch:
                    call = rooms_pb2_grpc.LiveRoomServiceStub(ch).Watch(
                        rooms_pb2.WatchRequest(room_id=room), timeout=20
                    )
                    try:
                        return next(iter(call)).WhichOneof("message")
                    except grpc.RpcError as e:
                        return e.code()

            assert first(token_a, "room-a") == "snapshot"
            assert first(token_a, "room-a") == "snapshot"  # the room's stream is shared
            assert first(token_a, "room-b") is grpc.StatusCode.PERMISSION_DENIED
            assert first(token_shop, "room-a") is grpc.StatusCode.PERMISSION_DENIED
            assert first(None, "room-a") is grpc.StatusCode.UNAUTHENTICATED
            assert first("not-a-token", "room-a") is grpc.StatusCode.UNAUTHENTICATED
            # Its Server-Sent Events take the same tokens.
            http_port = json.loads(ready.read_text())["http_port"]

            def sse(token: str | None, room: str) -> int:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{http_port}/rooms/{room}/events"
                )
                if token is not None:
                    request.add_header("Authorization", f"Bearer {token}")
                try:
                    with urllib.request.urlopen(request, timeout=20) as response:
                        assert response.readline().startswith(b"retry:")
                        return int(response.status)
                except urllib.error.HTTPError as e:
                    return e.code

            assert sse(token_a, "room-a") == 200
            assert sse(token_a, "room-b") == 403
            assert sse(None, "room-a") == 401
            # viewer-a has made three calls that got in (refused ones cost
            # nothing): one more, then its burst is spent on both protocols.
            assert first(token_a, "room-a") == "snapshot"
            assert sse(token_a, "room-a") == 429
            assert first(token_a, "room-a") is grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            proc.terminate()
            proc.wait(30)
        assert proc.returncode == 0
        # An edge whose certificate may not watch rooms: its viewers are told
        # why, the edge says it once, and counts it for Prometheus.
        shop = pki.client("shop", "inventory:reserve")
        misconfigured = tls_edge(pki, hub.mtls, shop, ready)
        try:
            wait_until(lambda: ready.exists(), 60, "the second edge")
            target = f"localhost:{json.loads(ready.read_text())['port']}"
            with grpc.secure_channel(target, token_creds(pki, token_a)) as ch:
                call = rooms_pb2_grpc.LiveRoomServiceStub(ch).Watch(
                    rooms_pb2.WatchRequest(room_id="room-a"), timeout=20
                )
                with pytest.raises(grpc.RpcError) as e:
                    next(iter(call))
            assert e.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "the hub refused this edge room 'room-a': PERMISSION_DENIED" in (
                e.value.details() or ""
            )
            from metrics_scrape import Scrape

            http_port = json.loads(ready.read_text())["http_port"]
            scrape = Scrape(f"http://127.0.0.1:{http_port}/metrics")
            refusals = "stocksync_edge_hub_refusals_total"
            assert scrape.get(refusals, code="PERMISSION_DENIED") == 1
            assert scrape.get(refusals, code="UNAUTHENTICATED") == 0
            # Refused is not disconnected: the room is not followed, nor retried.
            assert scrape.get("stocksync_edge_rooms") == 0
            assert scrape.get("stocksync_edge_rooms_disconnected") == 0
            assert scrape.get("stocksync_edge_hub_reconnects_total") == 0
        finally:
            misconfigured.terminate()
            _, err = misconfigured.communicate(timeout=30)
        assert "the hub refuses room room-a to this edge: PERMISSION_DENIED" in err, err


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))


def test_an_edge_serves_the_rooms_server_sent_events_and_overlay() -> None:
    import aiohttp

    async def go() -> None:
        stock = Stock()
        exact_room(stock, ["LIP-RED"])
        async with (
            hub_and_edge(stock, http="127.0.0.1:0") as (_, edge, _stub),
            aiohttp.ClientSession() as session,
        ):
            base = f"http://127.0.0.1:{edge.http_port}"
            async with session.get(f"{base}/rooms/{ROOM}/events") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "text/event-stream"
                frames: list[str] = []
                buffer = ""
                async for chunk in response.content.iter_any():
                    buffer += chunk.decode()
                    *done, buffer = buffer.split("\n\n")
                    frames += [f for f in done if f.startswith("id:")]
                    if len(frames) == 1:
                        stock.add("LIP-RED", -4)
                    if len(frames) == 2:
                        break
            snapshot, update = (json.loads(f.split("data: ", 1)[1]) for f in frames)
            assert snapshot["type"] == "snapshot" and snapshot["skus"][0]["sellable"] == 100
            assert update["type"] == "update" and update["skus"][0]["sellable"] == 96
            assert update["position"] == str(stock.rooms.room(ROOM).position)
            async with session.get(f"{base}/rooms/no-such-room/events") as response:
                assert response.status == 404
                assert "no live room" in (await response.json())["error"]
            async with session.get(f"{base}/rooms/{ROOM}/overlay") as response:
                assert response.status == 200 and "text/html" in response.headers["Content-Type"]

    run(go)


def test_an_edge_exports_its_viewers_rooms_and_hub_link_to_prometheus() -> None:
    from metrics_scrape import Scrape, check_spec

    from stocksync.hub import edge_metrics
    from stocksync.hub.edge import REFUSAL_CODES

    async def go() -> None:
        stock = Stock()
        exact_room(stock, ["LIP-RED"])
        async with hub_and_edge(stock, http="127.0.0.1:0") as (hub, edge, stub):
            url = f"http://127.0.0.1:{edge.http_port}/metrics"

            async def scrape() -> Scrape:
                return await asyncio.to_thread(Scrape, url)

            first = await scrape()
            for spec in edge_metrics.SPECS:
                check_spec(first, spec)
            assert first.get("stocksync_edge_watchers") == 0
            for code in REFUSAL_CODES:  # each at 0 from the start, and explained
                assert first.get("stocksync_edge_hub_refusals_total", code=code) == 0
                assert code in edge_metrics.REFUSALS.help
            last_connected = "stocksync_edge_hub_last_connected_timestamp_seconds"
            # No room followed yet: none is missing, so the scrape's time.
            assert time.time() - 5 < first.get(last_connected) <= time.time()
            info = first.families["stocksync_build_info"].samples[0]
            assert (info.labels["role"], info.value) == ("edge", 1)
            viewers = [Viewer(stub) for _ in range(3)]
            await until(lambda: all(v.events for v in viewers), "snapshots")
            stock.add("LIP-RED", -1)
            await until(lambda: all(v.values() == {"LIP-RED": 99} for v in viewers), "a change")
            now = await scrape()
            assert now.get("stocksync_edge_watchers") == 3
            assert now.get("stocksync_edge_rooms") == 1
            assert now.get("stocksync_edge_rooms_disconnected") == 0
            assert now.get("stocksync_edge_messages_received_total") == 2  # snapshot, update
            assert now.get("stocksync_edge_messages_delivered_total") == 6
            assert time.time() - 5 < now.get(last_connected) <= time.time()
            rooms = edge.rooms
            assert rooms is not None
            up_until = time.time()
            await hub.stop()
            await until(lambda: rooms.reconnects >= 3, "three reconnects")
            down = await scrape()
            assert down.get("stocksync_edge_rooms_disconnected") == 1
            assert down.get("stocksync_edge_hub_reconnects_total") >= 3
            assert down.get("stocksync_edge_watchers") == 3  # their streams stay open
            # Every retry counts a reconnect; the last working stream stays
            # where the hub went away.
            lost_at = down.get(last_connected)
            assert up_until <= lost_at < time.time()
            await until(lambda: rooms.reconnects >= 5, "more reconnects")
            assert (await scrape()).get(last_connected) == lost_at
            hub.stock = stock = stock.restart()
            await hub.start()
            await until(lambda: rooms.disconnected() == 0, "the room's stream back")
            back = await scrape()
            assert back.get("stocksync_edge_rooms_disconnected") == 0
            back_at = back.get(last_connected)
            assert lost_at < back_at and time.time() - 5 < back_at <= time.time()
            for v in viewers:
                await v.close()

    run(go)
