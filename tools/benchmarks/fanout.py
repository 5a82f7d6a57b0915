"""Room fan-out over gRPC, against a plain grpc.aio server-stream fan-out.

    python -m stocksync.tools.benchmarks.fanout                     # 1,000 watchers
    python -m stocksync.tools.benchmarks.fanout --watchers 50 --updates 100 --json

One run measures, in this process (the server) with the watchers in a child
process (so each gets a core of its own on a 2-core machine), over loopback:

- **rooms**: ``LiveRoomService.Watch`` (the real servicer over a RoomHub on a
  StockBook) to ``--watchers`` watchers of one room featuring ``--skus``
  SKUs in exact mode; ``--updates`` stock changes, each to one SKU, each
  shown as a new number, published one per event-loop turn.
- **plain**: the same watchers on a bare grpc.aio server stream; each
  change's WatchResponse — the very message the rooms servicer sends — is put
  on every stream's own unbounded asyncio.Queue, which the stream yields.

Timed from the first change published until the child reports that every
watcher has received the last one (for rooms: a message at or past the last
position, a merged one counting). "messages/s" is messages received by all
watchers per second; "SKU values/s" counts each SKU entry in them, so a
merged message of 10 SKUs counts 10. Plain delivers every message; rooms
merges what a watcher has not taken yet, so it sends fewer, fuller ones when
watchers fall behind.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import click
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
from stocksync.v1 import rooms_pb2, rooms_pb2_grpc

__all__ = ["main", "run"]

ROOM = "bench"
WAREHOUSE = "WH-BENCH"
PLAIN_SERVICE = "stocksync.bench.PlainFanout"
ROOMS_METHOD = "/stocksync.v1.LiveRoomService/Watch"
PLAIN_METHOD = f"/{PLAIN_SERVICE}/Watch"
STREAMS_PER_CHANNEL = 100
"""Watchers share a TCP connection per this many streams, as browsers and
backends behind a few proxies would."""


class PlainFanout:
    """A bare server-stream fan-out: one unbounded queue per stream.

    Args:
        start: the position its first (empty) message carries.
    """

    def __init__(self, start: str) -> None:
        self.start = start
        self.queues: set[asyncio.Queue[rooms_pb2.WatchResponse]] = set()

    async def watch(
        self, request: rooms_pb2.WatchRequest, context: Any
    ) -> AsyncIterator[rooms_pb2.WatchResponse]:
        """One stream: an empty snapshot, then every message published."""
        queue: asyncio.Queue[rooms_pb2.WatchResponse] = asyncio.Queue()
        self.queues.add(queue)
        try:
            yield rooms_pb2.WatchResponse(position=self.start, snapshot=rooms_pb2.RoomSnapshot())
            while True:
                yield await queue.get()
        finally:
            self.queues.discard(queue)

    def publish(self, message: rooms_pb2.WatchResponse) -> None:
        """Put ``message`` on every stream's queue."""
        for queue in self.queues:
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


async def _serve_child(args: list[str]) -> tuple[asyncio.subprocess.Process, float]:
    """Start the watchers' process; returns it once every watcher has its snapshot."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stocksync.tools.benchmarks.fanout",
        "--child",
        *args,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    line = await child.stdout.readline()
    if line.strip() != b"ready":
        raise click.ClickException(f"the watchers' process failed to start: {line!r}")
    return child, time.monotonic()


async def _measure(
    mode: str, target: str, watchers: int, updates: int, rate: float, publish: Any
) -> dict[str, Any]:
    child, _ = await _serve_child([mode, target, str(watchers), str(updates)])
    assert child.stdout is not None
    started = time.monotonic()
    for i in range(updates):
        publish(i)
        if rate:
            await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        else:
            await asyncio.sleep(0)  # one change per loop turn: the streams run in between
    published = time.monotonic()
    report = json.loads(await child.stdout.readline())
    done = time.monotonic()
    await child.wait()
    elapsed = done - started
    return {
        "mode": mode,
        "watchers": watchers,
        "updates": updates,
        "rate": rate or "max",
        "publish_s": round(published - started, 3),
        "elapsed_s": round(elapsed, 3),
        # How long after the last change was published every watcher had it.
        "last_delivered_after_s": round(done - published, 3),
        "messages": report["messages"],
        "sku_values": report["sku_values"],
        "messages_per_s": round(report["messages"] / elapsed),
        "sku_values_per_s": round(report["sku_values"] / elapsed),
    }


async def run(watchers: int, updates: int, skus: int, rate: float = 0) -> list[dict[str, Any]]:
    """Both measurements, rooms first; one dict of figures each."""
    book = StockBook()
    book.seen(WAREHOUSE, 0)
    names = [f"SKU-{i}" for i in range(skus)]
    for sku in names:
        book.add_on_hand(WAREHOUSE, sku, 1_000_000)
    # History enough to replay the whole run for the plain fan-out.
    rooms = RoomHub(BookStockSource(book, lambda: 0), MemoryRoomStore(), history=max(updates, 1000))
    rooms.set_featured(ROOM, names)
    rooms.set_policy(ROOM, DisplayPolicy(DisplayMode.EXACT))
    start = rooms.room(ROOM).position
    plain = PlainFanout(str(start))
    server = grpc.aio.server()
    rooms_pb2_grpc.add_LiveRoomServiceServicer_to_server(RoomServicer(rooms), server)
    server.add_generic_rpc_handlers((plain.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    try:

        def change(i: int) -> None:
            sku = names[i % skus]
            book.add_on_hand(WAREHOUSE, sku, -1)
            rooms.stock_changed((sku,), time.monotonic())

        figures = await _measure("rooms", target, watchers, updates, rate, change)
        figures["coalesced"] = rooms.coalesced
        # The very messages the room published, replayed from its history.
        replay = rooms.subscribe(ROOM, start)
        messages = []
        while (event := replay.take()) is not None:
            messages.append(event_to_proto(event))
        replay.close()
        assert len(messages) == updates
        plain_figures = await _measure(
            "plain", target, watchers, updates, rate, lambda i: plain.publish(messages[i])
        )
        return [figures, plain_figures]
    finally:
        await server.stop(0)


async def _watch(mode: str, target: str, watchers: int, updates: int) -> None:
    """The child: ``watchers`` streams; reports once each has the last update."""
    method = ROOMS_METHOD if mode == "rooms" else PLAIN_METHOD
    channels = [
        # A local subchannel pool: each channel its own TCP connection.
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(-(-watchers // STREAMS_PER_CHANNEL))
    ]
    calls = [
        channels[i // STREAMS_PER_CHANNEL].unary_stream(
            method,
            request_serializer=rooms_pb2.WatchRequest.SerializeToString,
            response_deserializer=rooms_pb2.WatchResponse.FromString,
        )(rooms_pb2.WatchRequest(room_id=ROOM))
        for i in range(watchers)
    ]
    firsts = [await call.read() for call in calls]  # each stream's snapshot
    messages = sku_values = 0

    async def read(call: Any, first: Any) -> None:
        nonlocal messages, sku_values
        last = int(first.position.rsplit(":", 1)[1]) + updates
        while True:
            message = await call.read()
            messages += 1
            sku_values += len(message.update.skus)
            if int(message.position.rsplit(":", 1)[1]) >= last:
                return

    readers = [asyncio.ensure_future(read(c, f)) for c, f in zip(calls, firsts, strict=True)]
    print("ready", flush=True)
    await asyncio.gather(*readers)
    print(json.dumps({"messages": messages, "sku_values": sku_values}), flush=True)
    for call in calls:
        call.cancel()
    for channel in channels:
        await channel.close()


@click.command()
@click.option("--watchers", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--updates", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--skus", type=click.IntRange(1, 200), default=10, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0,
    help="Changes per second; 0 (default): one per event-loop turn, as fast as it goes.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON list on stdout.")
@click.option("--child", nargs=4, hidden=True, default=None)
def main(
    watchers: int,
    updates: int,
    skus: int,
    rate: float,
    as_json: bool,
    child: tuple[str, ...] | None,
) -> None:
    """Updates/s from the rooms servicer to gRPC watchers, next to a plain fan-out.

    Example:

        python -m stocksync.tools.benchmarks.fanout --watchers 1000 --updates 500
    """
    if child:
        mode, target, count, total = child
        asyncio.run(_watch(mode, target, int(count), int(total)))
        return
    results = asyncio.run(run(watchers, updates, skus, rate))
    if as_json:
        click.echo(json.dumps(results))
        return
    click.echo(
        f"{'mode':<6}{'watchers':>9}{'updates':>8}{'rate':>6}{'elapsed_s':>10}{'last_s':>8}"
        f"{'messages':>10}{'msgs/s':>9}{'sku_values/s':>13}{'coalesced':>10}"
    )
    for r in results:
        click.echo(
            f"{r['mode']:<6}{r['watchers']:>9}{r['updates']:>8}{r['rate']:>6}"
            f"{r['elapsed_s']:>10.2f}{r['last_delivered_after_s']:>8.2f}{r['messages']:>10}"
            f"{r['messages_per_s']:>9}{r['sku_values_per_s']:>13}{r.get('coalesced', '-'):>10}"
        )


if __name__ == "__main__":  # pragma: no cover
    main()
