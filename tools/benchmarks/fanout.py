"""Room fan-out over gRPC, against a plain grpc.aio server-stream fan-out.

One run serves, in this process, the real ``LiveRoomService.Watch``
servicer over a RoomHub on a StockBook (**rooms**) and a bare grpc.aio
server stream (**plain**, :class:`PlainFanout`: each change's message — the
very message the room published — put on every stream's own unbounded
queue). The watchers run in a child process (a core of their own on a
2-core machine), ``STREAMS_PER_CHANNEL`` streams per TCP connection.

``rooms`` rooms share ``watchers`` watchers evenly; room i features between
20 and 200 SKUs (spread evenly over the rooms; one room: 200) in exact
mode. ``updates`` stock changes go round-robin over the rooms at ``rate``
per second in all; half of a room's changes hit its first SKU (the hot one),
the rest one of its other SKUs at random (seeded). Each change is one new
position in its room. This process collects garbage as the hub daemon does
(:func:`~stocksync.tools.benchmarks.common.collecting_as_a_daemon`); the
watchers' process collects none while it measures.

A change's latency at a watcher runs from its publication to the watcher
first receiving a message at or past its position (a merged message counts
for every change it covers). **delivered updates/s** is (watcher, change)
pairs delivered ÷ (first publication → every watcher has its room's last
change). Slow watchers (``slow_share`` of each room) sleep after each
message so they read at a tenth of their room's rate; the figures are the
others'.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from stocksync.hub.room_service import RoomServicer, event_to_proto
from stocksync.hub.rooms import (
    BookStockSource,
    DisplayMode,
    DisplayPolicy,
    MemoryRoomStore,
    RoomHub,
)
from stocksync.hub.stock import StockBook
from stocksync.tools.benchmarks.common import (
    Against,
    CpuMeter,
    Row,
    Scenario,
    collecting_as_a_daemon,
    cpu_rows,
    latency_summary,
)
from stocksync.v1 import rooms_pb2, rooms_pb2_grpc

__all__ = ["PlainFanout", "run", "scenario", "slow_scenario"]

WAREHOUSE = "WH-BENCH"
PLAIN_SERVICE = "stocksync.bench.PlainFanout"
ROOMS_METHOD = "/stocksync.v1.LiveRoomService/Watch"
PLAIN_METHOD = f"/{PLAIN_SERVICE}/Watch"
STREAMS_PER_CHANNEL = 100
"""Watchers share a TCP connection per this many streams, as browsers and
backends behind a few proxies would."""
SLOW_FACTOR = 10
HOT_SHARE = 0.5


class PlainFanout:
    """A bare server-stream fan-out: one unbounded queue per stream, per room.

    Args:
        starts: each room's position, carried by its first (empty) message.
    """

    def __init__(self, starts: dict[str, str]) -> None:
        self.starts = starts
        self.queues: dict[str, set[asyncio.Queue[rooms_pb2.WatchResponse]]] = {
            room: set() for room in starts
        }

    async def watch(
        self, request: rooms_pb2.WatchRequest, context: Any
    ) -> AsyncIterator[rooms_pb2.WatchResponse]:
        """One stream: an empty snapshot, then every message published to its room."""
        queue: asyncio.Queue[rooms_pb2.WatchResponse] = asyncio.Queue()
        queues = self.queues[request.room_id]
        queues.add(queue)
        try:
            yield rooms_pb2.WatchResponse(
                position=self.starts[request.room_id], snapshot=rooms_pb2.RoomSnapshot()
            )
            while True:
                yield await queue.get()
        finally:
            queues.discard(queue)

    def publish(self, room: str, message: rooms_pb2.WatchResponse) -> None:
        """Put ``message`` on every stream's queue of ``room``."""
        for queue in self.queues[room]:
            queue.put_nowait(message)

    def handler(self) -> grpc.GenericRpcHandler:
        """The service, for ``server.add_generic_rpc_handlers``."""
        return grpc.method_handlers_generic_handler(
            PLAIN_SERVICE,
            {
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self.watch,
                    request_deserializer=rooms_pb2.WatchRequest.FromString,
                    response_serializer=rooms_pb2.WatchResponse.SerializeToString,
                )
            },
        )


def _offset(position: str) -> int:
    return int(position.rsplit(":", 1)[1])


def _room_skus(rooms: int) -> list[int]:
    if rooms == 1:
        return [200]
    return [20 + (180 * i) // (rooms - 1) for i in range(rooms)]


def _changes(rooms: int, skus: list[int], updates: int, seed: int = 5) -> list[tuple[int, int]]:
    """(room, SKU index) of each change: round-robin rooms, a hot first SKU."""
    rng = random.Random(seed)
    out = []
    for i in range(updates):
        room = i % rooms
        hot = rng.random() < HOT_SHARE or skus[room] == 1
        out.append((room, 0 if hot else rng.randrange(1, skus[room])))
    return out


# -- the watchers' process --------------------------------------------------------------


async def _watch(spec: dict[str, Any]) -> None:
    """The child: watchers per ``spec``; ``ready``; then the figures once done."""
    method = ROOMS_METHOD if spec["mode"] == "rooms" else PLAIN_METHOD
    rooms: list[str] = spec["rooms"]
    per_room: int = spec["per_room"]
    slow_every: int = spec["slow_every"]
    gap: float = spec["slow_sleep"]
    total = len(rooms) * per_room
    channels = [
        grpc.aio.insecure_channel(spec["target"], options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(-(-total // STREAMS_PER_CHANNEL))
    ]
    calls: list[Any] = [
        channels[i // STREAMS_PER_CHANNEL].unary_stream(
            method,
            request_serializer=rooms_pb2.WatchRequest.SerializeToString,
            response_deserializer=rooms_pb2.WatchResponse.FromString,
        )(rooms_pb2.WatchRequest(room_id=rooms[i % len(rooms)]))
        for i in range(total)
    ]
    firsts = [await call.read() for call in calls]
    seen: list[list[tuple[int, float]]] = [[] for _ in range(total)]
    slow = [
        bool(slow_every) and (i // len(rooms)) % slow_every == slow_every - 1 for i in range(total)
    ]
    counts = {"messages": 0, "sku_values": 0}
    last = asyncio.get_running_loop().create_future()

    async def read(i: int) -> None:
        call = calls[i]
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            seen[i].append((_offset(message.position), time.monotonic()))
            counts["messages"] += 1
            counts["sku_values"] += len(message.update.skus)
            if last.done() and seen[i][-1][0] >= last.result()[i % len(rooms)]:
                return
            if slow[i]:
                await asyncio.sleep(gap)

    readers = [asyncio.ensure_future(read(i)) for i in range(total)]
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    published: list[list[float]] = json.loads(line)  # per room: each change's time
    ends = [
        _offset(firsts[r].position) + len(published[r]) for r in range(len(rooms))
    ]  # room r's last offset
    last.set_result(ends)
    fast = [i for i in range(total) if not slow[i]]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(
        seen[i] and seen[i][-1][0] >= ends[i % len(rooms)] for i in fast
    ):
        await asyncio.sleep(0.005)
    done_at = max((seen[i][-1][1] for i in fast if seen[i]), default=time.monotonic())
    for r in readers:
        r.cancel()
    for call in calls:
        call.cancel()
    latencies: list[float] = []
    for i in fast:
        room = i % len(rooms)
        start = _offset(firsts[i].position)
        j = 0
        pairs = seen[i]
        for k, at in enumerate(published[room]):
            while j < len(pairs) and pairs[j][0] < start + k + 1:
                j += 1
            if j == len(pairs):
                break
            latencies.append(pairs[j][1] - at)
    print(
        json.dumps(
            {
                **counts,
                "pairs": len(latencies),
                "expected_pairs": sum(len(published[i % len(rooms)]) for i in fast),
                "done_at": done_at,
                "latency": latency_summary(latencies),
            }
        ),
        flush=True,
    )
    for channel in channels:
        await channel.close()


# -- the server side -----------------------------------------------------------------------


async def _measure(
    spec: dict[str, Any],
    changes: list[tuple[int, int]],
    rate: float,
    publish: Callable[[int], None],
) -> dict[str, Any]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stocksync.tools.benchmarks.fanout",
        json.dumps(spec),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdin is not None
    line = await child.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"the watchers' process failed to start: {line!r}")
    published: list[list[float]] = [[] for _ in spec["rooms"]]
    pids = {"servicer (this process)": os.getpid(), "watchers' process": child.pid}
    with CpuMeter(pids) as cpu:
        started = time.monotonic()
        for i, (room, _) in enumerate(changes):
            publish(i)
            published[room].append(time.monotonic())
            if rate:
                await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
            else:
                await asyncio.sleep(0)
    child.stdin.write((json.dumps(published) + "\n").encode())
    await child.stdin.drain()
    report: dict[str, Any] = json.loads(await child.stdout.readline())
    await child.wait()
    elapsed = report["done_at"] - started
    report.update(
        mode=spec["mode"],
        elapsed_s=round(elapsed, 3),
        updates_per_s=report["pairs"] / elapsed,
        cpu=cpu.figures,
    )
    return report


async def _run_all(
    rooms: int, watchers: int, updates: int, rate: float, modes: list[tuple[str, float]]
) -> list[dict[str, Any]]:
    """Rooms first (their messages feed plain), then plain on its own server."""
    rooms_modes = [m for m in modes if m[0] == "rooms"]
    plain_modes = [m for m in modes if m[0] == "plain"]
    return await _run_pair(rooms, watchers, updates, rate, rooms_modes, plain_modes)


async def _run_pair(
    rooms: int,
    watchers: int,
    updates: int,
    rate: float,
    rooms_modes: list[tuple[str, float]],
    plain_modes: list[tuple[str, float]],
) -> list[dict[str, Any]]:
    book = StockBook()
    book.seen(WAREHOUSE, 0)
    counts = _room_skus(rooms)
    names = [f"room-{r}" for r in range(rooms)]
    skus = [[f"R{r}-SKU-{i}" for i in range(counts[r])] for r in range(rooms)]
    for room_skus in skus:
        for sku in room_skus:
            book.add_on_hand(WAREHOUSE, sku, 1_000_000)
    history = max(updates * (len(rooms_modes) + 1), 1000)
    hub = RoomHub(BookStockSource(book, lambda: 0), MemoryRoomStore(), history=history)
    for name, room_skus in zip(names, skus, strict=True):
        hub.set_featured(name, room_skus)
        hub.set_policy(name, DisplayPolicy(DisplayMode.EXACT))
    changes = _changes(rooms, counts, updates)
    per_room = max(1, watchers // rooms)
    starts = {n: hub.room(n).position for n in names}
    plain = PlainFanout({n: str(starts[n]) for n in names})
    server = grpc.aio.server()
    rooms_pb2_grpc.add_LiveRoomServiceServicer_to_server(RoomServicer(hub), server)
    server.add_generic_rpc_handlers((plain.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    results = []

    def spec(mode: str, slow_share: float) -> dict[str, Any]:
        return {
            "mode": mode,
            "target": f"127.0.0.1:{port}",
            "rooms": names,
            "per_room": per_room,
            "slow_every": round(1 / slow_share) if slow_share else 0,
            "slow_sleep": (SLOW_FACTOR - 1) * rooms / rate if rate else 0.01,
        }

    try:
        # The messages plain sends: the ones the rooms publish for these changes.
        first_round = True
        messages: list[rooms_pb2.WatchResponse] = []
        for mode, slow_share in rooms_modes:
            begin = {n: hub.room(n).position for n in names}

            def change(i: int) -> None:
                room, sku = changes[i]
                book.add_on_hand(WAREHOUSE, skus[room][sku], -1)
                hub.stock_changed((skus[room][sku],), time.monotonic())

            results.append(await _measure(spec(mode, slow_share), changes, rate, change))
            if first_round:
                cursors = {n: hub.subscribe(n, begin[n]) for n in names}
                for room, _ in changes:
                    event = cursors[names[room]].take()
                    assert event is not None
                    messages.append(event_to_proto(event))
                for c in cursors.values():
                    c.close()
                first_round = False
        for mode, slow_share in plain_modes:
            plain.starts = {n: messages_start(messages, changes, names, n) for n in names}

            def send(i: int) -> None:
                plain.publish(names[changes[i][0]], messages[i])

            results.append(await _measure(spec(mode, slow_share), changes, rate, send))
    finally:
        await server.stop(0)
    return results


def messages_start(
    messages: list[rooms_pb2.WatchResponse],
    changes: list[tuple[int, int]],
    names: list[str],
    room: str,
) -> str:
    """The position just before ``room``'s first replayed message."""
    for message, (r, _) in zip(messages, changes, strict=True):
        if names[r] == room:
            epoch, _, offset = message.position.rpartition(":")
            return f"{epoch}:{int(offset) - 1}"
    return "0:0"


def run(
    rooms: int, watchers: int, updates: int, rate: float, slow_share: float = 0.0
) -> list[dict[str, Any]]:
    """rooms, then plain, with the same watchers and changes; their figures."""
    modes = [("rooms", slow_share), ("plain", slow_share)]
    with collecting_as_a_daemon():
        return asyncio.run(_run_all(rooms, watchers, updates, rate, modes))


def scenario(
    room_counts: list[int], watchers: int, updates: int, rate: float, say: Callable[[str], None]
) -> Scenario:
    """The ``fanout`` scenario: each room count, rooms against plain."""
    out: list[Row] = []
    details = []
    for n in room_counts:
        say(f"fanout: {n} rooms x {watchers // n} watchers, {updates} changes at {rate:g}/s")
        ours, limit = run(n, watchers, updates, rate)
        details.append({"rooms": n, "rooms_servicer": ours, "plain": limit})
        label = f"{n} room{'s' if n > 1 else ''} x {watchers // n} watchers"
        out += [
            Row(
                f"{label}: delivered",
                ours["updates_per_s"],
                "upd/s",
                [Against("grpc.aio server-stream fan-out", limit["updates_per_s"])],
                ">= 0.75 x plain" if n == 1 else "",
            ),
            Row(
                "  change -> watcher p50",
                ours["latency"]["p50_ms"],
                "ms",
                [Against("plain fan-out p50", limit["latency"]["p50_ms"])],
            ),
            Row(
                "  change -> watcher p99",
                ours["latency"]["p99_ms"],
                "ms",
                [Against("plain fan-out p99", limit["latency"]["p99_ms"])],
                "<= 100 ms" if n == 1 else "",
            ),
            *cpu_rows(ours["cpu"], "CPU while publishing"),
        ]
    return Scenario(
        "fanout",
        {"rooms": room_counts, "watchers": watchers, "updates": updates, "rate": rate},
        out,
        {"runs": details},
    )


def slow_scenario(
    watchers: int,
    updates: int,
    rate: float,
    slow_share: float,
    say: Callable[[str], None],
    rounds: int = 3,
) -> Scenario:
    """The ``slow-watchers`` scenario: one room, without and with slow watchers,
    ``rounds`` times in turn; the medians are compared (one pair of runs
    seconds apart swings either way with the machine's load)."""
    say(f"slow-watchers: 1 room x {watchers} watchers, {slow_share:.0%} slow, {rounds} rounds")
    modes = [("rooms", 0.0), ("rooms", slow_share)] * rounds
    with collecting_as_a_daemon():
        results = asyncio.run(_run_all(1, watchers, updates, rate, modes))
    without, with_slow = results[0::2], results[1::2]

    def median(runs: list[dict[str, Any]], q: str) -> float:
        return float(statistics.median(r["latency"][f"{q}_ms"] for r in runs))

    return Scenario(
        "slow-watchers",
        {
            "watchers": watchers,
            "updates": updates,
            "rate": rate,
            "slow_share": slow_share,
            "rounds": rounds,
        },
        [
            Row(
                f"others' p99, {slow_share:.0%} at 1/{SLOW_FACTOR} speed (median of {rounds})",
                median(with_slow, "p99"),
                "ms",
                [Against("no slow watchers", median(without, "p99"), "baseline")],
                "<= 1.1 x without",
            ),
            Row(
                "  others' p50",
                median(with_slow, "p50"),
                "ms",
                [Against("no slow watchers", median(without, "p50"), "baseline")],
            ),
        ],
        {"without": without, "with_slow": with_slow},
    )


if __name__ == "__main__":
    # The measuring process collects no garbage while it measures: its own
    # pauses would be counted as the watchers' latency.
    gc.disable()
    asyncio.run(_watch(json.loads(sys.argv[1])))
