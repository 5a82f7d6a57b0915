"""``LiveRoomService`` over a real gRPC server on port 0 (DESIGN §7).

The servicer runs over a RoomHub backed by a real StockBook (see
test_rooms.Stock); clients are real grpc.aio channels, and the CLI runs as a
subprocess. Each test runs its own event loop with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
import pytest
from conftest import ctrl_c_reaches_it
from test_rooms import Stock

from stocksync.grpc_edge import Wrapped, guard_decoding
from stocksync.hub.room_service import RoomServicer, event_from_proto
from stocksync.hub.rooms import (
    DisplayMode,
    DisplayPolicy,
    RoomEvent,
    SkuDisplay,
    Snapshot,
    SnapshotReason,
    Update,
)
from stocksync.v1 import rooms_pb2, rooms_pb2_grpc

EXACT = rooms_pb2.ROOM_DISPLAY_MODE_EXACT
BUCKETS = rooms_pb2.ROOM_DISPLAY_MODE_BUCKETS

# A receive window this small (no BDP probing to grow it) fills within a few
# hundred messages, so a watcher that stops reading stalls the hub's side of
# its stream quickly (by default gRPC would absorb megabytes first).
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024)]


class Client(rooms_pb2_grpc.LiveRoomServiceStub):
    """A stub that knows the HOST:PORT it talks to."""

    def __init__(self, channel: grpc.aio.Channel, target: str) -> None:
        super().__init__(channel)
        self.target = target


@contextlib.asynccontextmanager
async def serving(stock: Stock) -> AsyncIterator[Client]:
    """A gRPC server on port 0 hosting the servicer over ``stock.rooms``; yields a client."""
    server = Wrapped(grpc.aio.server(), guard_decoding)
    rooms_pb2_grpc.add_LiveRoomServiceServicer_to_server(RoomServicer(stock.rooms), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    try:
        yield Client(channel, target)
    finally:
        await channel.close()
        await server.stop(0)


async def until(
    predicate: Callable[[], Any], what: str, timeout: float = 60.0, poll: float = 0.005
) -> Any:
    """Poll ``predicate`` on the loop until it is truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(poll)
    return value


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


class Watcher:
    """A Watch stream read into a list by a task of its own."""

    def __init__(self, stub: Any, room: str, from_position: str = "") -> None:
        self.call = stub.Watch(rooms_pb2.WatchRequest(room_id=room, from_position=from_position))
        self.events: list[RoomEvent] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.call:
            self.events.append(event_from_proto(message))

    def shown(self) -> dict[str, SkuDisplay]:
        state: dict[str, SkuDisplay] = {}
        for event in self.events:
            if isinstance(event, Snapshot):
                state = {}
            state.update({s.sku: s for s in event.skus})
        return state

    async def wait_for(self, offset: int) -> list[RoomEvent]:
        await until(
            lambda: self.events and self.events[-1].position.offset >= offset,
            f"position {offset}",
        )
        return self.events

    async def stop(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def expected(stock: Stock, room: str) -> dict[str, SkuDisplay]:
    """What ``room`` must show now, straight from the StockSource."""
    info = stock.rooms.room(room)
    return {v.sku: info.policy.show(v) for v in stock.source.views(info.featured, room)}


def test_rooms_are_set_up_described_and_ended() -> None:
    stock = Stock()

    async def scenario() -> None:
        async with serving(stock) as stub:
            reply = await stub.SetFeatured(
                rooms_pb2.SetFeaturedRequest(room_id="live-1", skus=["B", "A"])
            )
            assert reply.room.featured == ["B", "A"] and reply.room.policy.mode == BUCKETS
            assert reply.room.policy.low_threshold == 10
            reply = await stub.SetDisplayPolicy(
                rooms_pb2.SetDisplayPolicyRequest(room_id="live-1", mode=EXACT, low_threshold=3)
            )
            assert (reply.room.policy.mode, reply.room.policy.low_threshold) == (EXACT, 3)
            await stub.SetFeatured(rooms_pb2.SetFeaturedRequest(room_id="live-0", skus=["C"]))
            listed = await stub.ListRooms(rooms_pb2.ListRoomsRequest())
            assert [r.room_id for r in listed.rooms] == ["live-0", "live-1"]
            got = await stub.GetRoom(rooms_pb2.GetRoomRequest(room_id="live-1"))
            assert got.room == reply.room
            assert got.room.position == f"{stock.rooms.epoch}:2"
            await stub.EndRoom(rooms_pb2.EndRoomRequest(room_id="live-0"))
            listed = await stub.ListRooms(rooms_pb2.ListRoomsRequest())
            assert [r.room_id for r in listed.rooms] == ["live-1"]

    run(scenario)


@pytest.mark.parametrize(
    ("method", "request_", "code", "detail"),
    [
        ("GetRoom", rooms_pb2.GetRoomRequest(room_id="nope"), "NOT_FOUND", "no live room 'nope'"),
        ("EndRoom", rooms_pb2.EndRoomRequest(room_id="nope"), "NOT_FOUND", "no live room"),
        ("Watch", rooms_pb2.WatchRequest(room_id="nope"), "NOT_FOUND", "no live room"),
        (
            "SetDisplayPolicy",
            rooms_pb2.SetDisplayPolicyRequest(room_id="nope", mode=EXACT),
            "NOT_FOUND",
            "no live room",
        ),
        ("GetRoom", rooms_pb2.GetRoomRequest(room_id=""), "INVALID_ARGUMENT", "room_id '' must"),
        (
            "SetFeatured",
            rooms_pb2.SetFeaturedRequest(room_id="r/1", skus=["A"]),
            "INVALID_ARGUMENT",
            "room_id 'r/1' must",
        ),
        (
            "SetFeatured",
            rooms_pb2.SetFeaturedRequest(room_id="r", skus=["A", "bad sku"]),
            "INVALID_ARGUMENT",
            "skus[1]: sku 'bad sku' may only",
        ),
        (
            "SetFeatured",
            rooms_pb2.SetFeaturedRequest(room_id="r", skus=[f"S{i}" for i in range(201)]),
            "INVALID_ARGUMENT",
            "skus: at most 200 featured SKUs, got 201",
        ),
        (
            "SetDisplayPolicy",
            rooms_pb2.SetDisplayPolicyRequest(room_id="r"),
            "INVALID_ARGUMENT",
            "mode must be ROOM_DISPLAY_MODE_EXACT or ROOM_DISPLAY_MODE_BUCKETS",
        ),
        (
            "SetDisplayPolicy",
            rooms_pb2.SetDisplayPolicyRequest(room_id="r", mode=EXACT, low_threshold=2_000_000),
            "INVALID_ARGUMENT",
            "low_threshold must be 0 to 1000000",
        ),
        (
            "Watch",
            rooms_pb2.WatchRequest(room_id="r", from_position="12"),
            "INVALID_ARGUMENT",
            "from_position '12' is not a position",
        ),
    ],
)
def test_bad_requests_get_a_status_naming_the_field(
    method: str, request_: Any, code: str, detail: str
) -> None:
    stock = Stock()
    stock.rooms.set_featured("r", ["A"])

    async def scenario() -> None:
        async with serving(stock) as stub:
            call = getattr(stub, method)(request_)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                if method == "Watch":
                    await call.read()
                else:
                    await call
            assert failed.value.code().name == code
            assert detail in (failed.value.details() or "")
            assert stock.rooms.room("r").featured == ("A",)
            assert stock.rooms.room("r").policy == DisplayPolicy()

    run(scenario)


def test_resume_after_a_disconnect_gets_only_what_was_missed() -> None:
    stock = Stock()
    stock.rooms.set_featured("r", ["A", "B"])
    stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT))

    async def scenario() -> None:
        async with serving(stock) as stub:
            first = Watcher(stub, "r")
            [snap] = await first.wait_for(2)
            await first.stop()
            # A watcher that disconnects is cleaned up on the hub.
            await until(lambda: stock.rooms.room("r").watchers == 0, "the watcher to leave")
            for sku, delta in (("A", 5), ("B", 2), ("A", -1)):
                stock.add(sku, delta)
            again = Watcher(stub, "r", str(snap.position))
            missed = await again.wait_for(5)
            assert [(e.position.offset, type(e)) for e in missed] == [
                (3, Update),
                (4, Update),
                (5, Update),
            ]
            assert [(s.sku, s.sellable) for e in missed for s in e.skus] == [
                ("A", 5),
                ("B", 2),
                ("A", 4),
            ]
            assert again.shown() == expected(stock, "r")
            await again.stop()

    run(scenario)


def test_a_position_past_the_history_or_from_another_start_gets_a_flagged_snapshot() -> None:
    stock = Stock(history=2)
    stock.rooms.set_featured("r", ["A"])

    async def scenario(stock: Stock) -> str:
        async with serving(stock) as stub:
            first = Watcher(stub, "r")
            [snap] = await first.wait_for(1)
            await first.stop()
            for _ in range(3):
                stock.add("A", 1)
            gone = Watcher(stub, "r", str(snap.position))
            [fresh] = await gone.wait_for(4)
            assert isinstance(fresh, Snapshot) and fresh.reason is SnapshotReason.HISTORY_GONE
            assert fresh.skus[0].label == "Only 3 left!"
            await gone.stop()
            return str(fresh.position)

    last = asyncio.run(scenario(stock))

    async def after_restart(stock: Stock) -> None:
        async with serving(stock) as stub:
            watcher = Watcher(stub, "r", last)
            [fresh] = await watcher.wait_for(0)
            assert isinstance(fresh, Snapshot) and fresh.reason is SnapshotReason.NEW_EPOCH
            assert str(fresh.position) == f"{stock.rooms.epoch}:0"
            assert fresh.skus[0].label == "Only 3 left!"
            await watcher.stop()

    asyncio.run(after_restart(stock.restart()))


def test_a_stalled_watcher_costs_bounded_memory_and_slows_no_one() -> None:
    stock = Stock()
    skus = [f"SKU-{i}" for i in range(10)]
    stock.rooms.set_featured("r", skus)
    stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT))
    total = 20_000

    async def scenario() -> None:
        async with serving(stock) as stub:
            stalled_channel = grpc.aio.insecure_channel(stub.target, options=SMALL_WINDOW)
            stalled = rooms_pb2_grpc.LiveRoomServiceStub(stalled_channel).Watch(
                rooms_pb2.WatchRequest(room_id="r")
            )
            await stalled.read()  # the snapshot; then it stops reading
            [stalled_sub] = stock.rooms.watchers("r")
            fast = [Watcher(stub, "r") for _ in range(2)]
            fast_subs = await until(
                lambda: len(stock.rooms.watchers("r")) == 3 and stock.rooms.watchers("r"),
                "the watchers",
            )
            fast_subs = [s for s in fast_subs if s is not stalled_sub]
            most_pending = 0
            for i in range(total):
                stock.add(skus[i % len(skus)], 1)
                most_pending = max(most_pending, stalled_sub.pending)
                # Let the fast watchers take each one before the next (on the
                # hub's side), so none of theirs merge.
                await until(lambda: not any(s.pending for s in fast_subs), "fast ones", poll=0)
            last = stock.rooms.room("r").position.offset
            for watcher in fast:
                events = await watcher.wait_for(last)
                assert [e.position.offset for e in events] == list(range(2, last + 1))
                assert all(isinstance(e, Update) and len(e.skus) == 1 for e in events[1:])
                assert watcher.shown() == expected(stock, "r")
            # The stalled one holds at most the featured SKUs, merged.
            assert 0 < stalled_sub.pending <= len(skus) and most_pending <= len(skus)
            received = [event_from_proto(await stalled.read())]
            while received[-1].position.offset < last:
                received.append(event_from_proto(await stalled.read()))
            assert len(received) < total // 2
            # Counted as they go out merged.
            assert stock.rooms.coalesced > total // 2
            state = {s.sku: s for e in received for s in e.skus}
            assert state == expected(stock, "r")
            assert all(s.sellable == total // len(skus) for s in state.values())
            stalled.cancel()
            await stalled_channel.close()
            for watcher in fast:
                await watcher.stop()

    run(scenario)


def test_a_featured_change_mid_stream_sends_a_snapshot_of_only_the_new_skus() -> None:
    stock = Stock()
    stock.add("A", 3)
    stock.add("C", 30)
    stock.rooms.set_featured("r", ["A", "B"])

    async def scenario() -> None:
        async with serving(stock) as stub:
            watcher = Watcher(stub, "r")
            await watcher.wait_for(1)
            await stub.SetFeatured(rooms_pb2.SetFeaturedRequest(room_id="r", skus=["C", "B"]))
            events = await watcher.wait_for(2)
            snap = events[-1]
            assert isinstance(snap, Snapshot) and snap.reason is SnapshotReason.FEATURED_CHANGED
            assert [(s.sku, s.label) for s in snap.skus] == [("C", "In stock"), ("B", "Sold out")]
            stock.add("A", 1)  # no longer featured
            stock.add("C", -25)
            events = await watcher.wait_for(3)
            assert [(s.sku, s.label) for s in events[-1].skus] == [("C", "Only 5 left!")]
            await watcher.stop()

    run(scenario)


def test_buckets_hide_numbers_and_an_unchanged_bucket_sends_nothing() -> None:
    stock = Stock()
    stock.add("A", 40)
    stock.rooms.set_featured("r", ["A"])

    async def scenario() -> None:
        async with serving(stock) as stub:
            await stub.SetDisplayPolicy(
                rooms_pb2.SetDisplayPolicyRequest(room_id="r", mode=BUCKETS, low_threshold=5)
            )
            call = stub.Watch(rooms_pb2.WatchRequest(room_id="r"))
            snap = await call.read()
            [sku] = snap.snapshot.skus
            assert not sku.HasField("sellable") and sku.label == "In stock"
            assert sku.state == rooms_pb2.ROOM_DISPLAY_STATE_IN_STOCK
            for delta in (-1, -10, -20):  # 39, 29, 9: "In stock" throughout
                stock.add("A", delta)
            stock.add("A", -5)  # 4: low
            low = await call.read()
            # The next message is the bucket change: nothing was published before it.
            assert low.position == f"{stock.rooms.epoch}:{snap_offset(snap) + 1}"
            [sku] = low.update.skus
            assert sku.HasField("sellable") and sku.sellable == 4 and sku.label == "Only 4 left!"
            stock.add("A", -4)
            gone = await call.read()
            [sku] = gone.update.skus
            assert not sku.HasField("sellable") and sku.label == "Sold out"
            assert sku.state == rooms_pb2.ROOM_DISPLAY_STATE_SOLD_OUT
            call.cancel()

    run(scenario)


def snap_offset(message: rooms_pb2.WatchResponse) -> int:
    return int(message.position.rsplit(":", 1)[1])


def test_fifty_watchers_on_five_rooms_end_with_what_the_stock_says() -> None:
    stock = Stock()
    skus = [f"SKU-{i}" for i in range(12)]
    rooms = [f"room-{r}" for r in range(5)]
    for r, room in enumerate(rooms):
        # Overlapping featured sets; two rooms in buckets mode, one with a quota.
        stock.rooms.set_featured(room, skus[r * 2 : r * 2 + 5])
        mode = DisplayMode.EXACT if r % 2 == 0 else DisplayMode.BUCKETS
        stock.rooms.set_policy(room, DisplayPolicy(mode, low_threshold=r + 2))
    stock.add("SKU-4", 50)
    stock.book.set_quota_free("SKU-4", "room-2", 20)

    async def change(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            sku = rng.choice(skus)
            held = stock.book.on_hand(sku, "WH-1")
            stock.add(sku, rng.randint(-min(held, 6), 6))
            await asyncio.sleep(0)

    async def scenario() -> None:
        async with serving(stock) as stub:
            watchers = [Watcher(stub, rooms[i % 5]) for i in range(50)]
            await until(
                lambda: sum(stock.rooms.room(r).watchers for r in rooms) == 50, "the watchers"
            )
            await asyncio.gather(*(change(seed) for seed in range(4)))
            for i, watcher in enumerate(watchers):
                room = rooms[i % 5]
                events = await watcher.wait_for(stock.rooms.room(room).position.offset)
                offsets = [e.position.offset for e in events]
                assert offsets == sorted(set(offsets))
                assert watcher.shown() == expected(stock, room), room
            for watcher in watchers:
                await watcher.stop()

    run(scenario)


# -- the CLI, as a subprocess against the served rooms ---------------------------


async def cli(port: int, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stocksync.hub.rooms_cli",
        *args,
        "--hub",
        f"127.0.0.1:{port}",
        "--insecure",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


def test_the_cli_sets_up_lists_watches_and_ends_a_room() -> None:
    stock = Stock()
    stock.add("SKU-1", 3)

    async def scenario() -> None:
        async with serving(stock) as stub:
            port = int(stub.target.rsplit(":", 1)[1])
            code, out, _ = await cli(port, "feature", "live-1", "SKU-1", "SKU-2")
            assert code == 0 and "live-1: 2 featured (SKU-1 SKU-2); buckets" in out
            code, out, _ = await cli(port, "display", "live-1", "--mode", "exact", "--low", "2")
            assert code == 0 and "exact, low at 2" in out
            code, out, _ = await cli(port, "list", "--json")
            [room] = json.loads(out)
            assert room["room_id"] == "live-1" and room["policy"] == {
                "mode": "exact",
                "low_threshold": 2,
            }
            watch = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "stocksync.hub.rooms_cli",
                "watch",
                "live-1",
                "--json",
                "--hub",
                f"127.0.0.1:{port}",
                "--insecure",
                stdout=asyncio.subprocess.PIPE,
                preexec_fn=ctrl_c_reaches_it,
            )
            assert watch.stdout is not None
            first = json.loads(await asyncio.wait_for(watch.stdout.readline(), 60))
            assert first["type"] == "snapshot" and first["skus"][0]["label"] == "3 in stock"
            stock.add("SKU-1", -1)
            second = json.loads(await asyncio.wait_for(watch.stdout.readline(), 60))
            assert second["type"] == "update"
            assert second["skus"] == [
                {
                    "sku": "SKU-1",
                    "state": "low",
                    "sellable": 2,
                    "label": "Only 2 left!",
                    "stale_warehouses": [],
                }
            ]
            watch.send_signal(signal.SIGINT)  # Ctrl-C
            assert await asyncio.wait_for(watch.wait(), 60) == 0
            code, out, _ = await cli(port, "end", "live-1")
            assert code == 0 and "room live-1 ended" in out
            code, _, err = await cli(port, "watch", "live-1")
            assert code == 1 and err.strip() == "Error: NOT_FOUND: no live room 'live-1'"
            code, _, err = await cli(port, "feature", "live 2", "SKU-1")
            assert code == 1 and "INVALID_ARGUMENT: room_id 'live 2' must be" in err
            assert "Traceback" not in err

    run(scenario)


def test_the_cli_says_when_no_hub_answers(unused_port: int) -> None:
    async def scenario() -> None:
        code, _, err = await cli(unused_port, "list")
        assert code == 1 and err.strip() == f"Error: no hub answering at 127.0.0.1:{unused_port}"

    run(scenario)


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
