"""Recorded at the warehouse → applied at the hub, and → seen by a room's watchers.

stocksync: a real hub (``stocksync-hub serve``, durable store) and a real
agent (``stocksync-agent run``) on loopback; one room features the SKU in
exact mode and ``watchers`` gRPC ``Watch`` streams follow it from a process of
their own. This process records RECEIVEs of one unit in the agent's store at
``rate`` per second for ``seconds``: every millisecond it commits the events
due by then in one transaction (``AgentStore.record_many``, durable on
return; a warehouse system recording 5,000 events a second groups them so).

The limit for **→ applied**: the same per-millisecond batches, at the same
pace, over a bare grpc.aio bidi stream answering each with an ack: the
transport's own round trip, without a commit on either side.

The peer (:mod:`.peer`): the same events committed to its SQLite outbox the
same way and published to JetStream; its consumer applies and publishes the
room's value on a NATS core subject; the same number of watchers subscribe.

Event k makes the SKU's value ``BASE + k``. Its latency:

- **→ applied**: from its commit returning to the hub's (or the peer
  consumer's) watermark, read from the SQLite file every millisecond by a
  thread, first covering its seq;
- **→ watcher**: from its commit returning to each watcher first receiving a
  value of at least ``BASE + k`` (a merged update counts for every event it
  covers), for up to ``SAMPLE_EVENTS`` events spread over the run, at every
  watcher. Every process reads the same ``CLOCK_MONOTONIC``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from stocksync.events import EventRow, Kind, NewEvent
from stocksync.tools.benchmarks.common import (
    Against,
    CpuMeter,
    Row,
    Scenario,
    cpu_rows,
    latency_summary,
)
from stocksync.tools.procs import AgentChild, EdgeChild, HubChild, wait_for
from stocksync.v1 import inventory_pb2, inventory_pb2_grpc, rooms_pb2, rooms_pb2_grpc

__all__ = ["WatermarkPoller", "record_at_rate", "run", "run_peer", "scenario"]

SKU = "LIVE-LIP-01"
ROOM = "latency-bench"
WAREHOUSE = "WH-LAX"
BASE = 1000
STREAMS_PER_CHANNEL = 100
SAMPLE_EVENTS = 2000
"""Events whose latency is taken at every watcher (spread evenly over the run)."""
TICK_S = 0.001


# -- measuring ------------------------------------------------------------------------


class WatermarkPoller:
    """A thread reading a watermark every millisecond, noting when it rises.

    Args:
        read: returns the watermark now.
    """

    def __init__(self, read: Callable[[], int], interval: float = 0.001) -> None:
        self.read = read
        self.interval = interval
        self.rises: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WatermarkPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last = 0
        while not self._stop.is_set():
            wm = self.read()
            if wm > last:
                self.rises.append((wm, time.monotonic()))
                last = wm
            time.sleep(self.interval)

    def wait(self, seq: int, timeout: float) -> None:
        """Until the watermark covers ``seq``."""
        wait_for(lambda: self.rises and self.rises[-1][0] >= seq, timeout, f"seq {seq} applied")

    def latencies(self, first_seq: int, recorded: Sequence[float]) -> list[float]:
        """Seconds from ``recorded[k]`` to the watermark covering ``first_seq + k``."""
        out: list[float] = []
        i = 0
        for k, at in enumerate(recorded):
            seq = first_seq + k
            while i < len(self.rises) and self.rises[i][0] < seq:
                i += 1
            if i == len(self.rises):
                raise RuntimeError(f"seq {seq} was never applied")
            out.append(self.rises[i][1] - at)
        return out


def record_at_rate(commit: Callable[[int], object], rate: float, seconds: float) -> list[float]:
    """Every :data:`TICK_S`, ``commit`` the events due at ``rate``; their commit times."""
    total = max(1, round(rate * seconds))
    recorded: list[float] = []
    started = time.monotonic()
    while len(recorded) < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1) - len(recorded)
        if due > 0:
            commit(due)
            recorded.extend([time.monotonic()] * due)
        time.sleep(TICK_S)
    return recorded


# -- the watchers' process ---------------------------------------------------------------------


def _sample(events: int) -> list[int]:
    step = max(1, events // SAMPLE_EVENTS)
    return list(range(0, events, step))


def watcher_latencies(
    seen: Sequence[Sequence[tuple[int, float]]], recorded: Sequence[float], base: int
) -> tuple[list[float], int]:
    """Latencies of the sampled events at every watcher; and how many watchers missed some."""
    picks = _sample(len(recorded))
    out: list[float] = []
    short = 0
    for pairs in seen:
        i = 0
        for k in picks:
            while i < len(pairs) and pairs[i][0] < base + k + 1:
                i += 1
            if i == len(pairs):
                short += 1
                break
            out.append(pairs[i][1] - recorded[k])
    return out, short


async def _grpc_watchers(target: str, watchers: int, seen: list[list[tuple[int, float]]]) -> Any:
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(-(-watchers // STREAMS_PER_CHANNEL))
    ]
    snapshots = [asyncio.Event() for _ in range(watchers)]

    async def watch(i: int) -> None:
        stub = rooms_pb2_grpc.LiveRoomServiceStub(channels[i // STREAMS_PER_CHANNEL])
        async for message in stub.Watch(rooms_pb2.WatchRequest(room_id=ROOM)):
            now = time.monotonic()
            part = message.snapshot if message.HasField("snapshot") else message.update
            for entry in part.skus:
                if entry.sku == SKU and entry.HasField("sellable"):
                    seen[i].append((entry.sellable, now))
            snapshots[i].set()

    tasks = [asyncio.create_task(watch(i)) for i in range(watchers)]
    await asyncio.gather(*(e.wait() for e in snapshots))

    async def close() -> None:
        for t in tasks:
            t.cancel()
        for ch in channels:
            await ch.close()

    return close


class _SseReader(asyncio.Protocol):
    """One viewer's Server-Sent Events stream, read as bytes arrive (no task
    per viewer: the reading process stays out of the measurement's way)."""

    def __init__(self, path: str, seen: list[tuple[int, float]], ready: asyncio.Event) -> None:
        self.request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        self.seen = seen
        self.ready = ready
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        frames = (self.buffer + data).split(b"\n\n")
        self.buffer = frames.pop()
        for frame in frames:
            at = frame.find(_SKU_MARKER)
            if at < 0:
                continue
            start = frame.find(b'"sellable":', at)
            if start >= 0:
                start += len(b'"sellable":')
                end = frame.find(b",", start)
                self.seen.append((int(frame[start:end]), now))
            self.ready.set()


_SKU_MARKER = f'"sku":"{SKU}"'.encode()


def _same(protocol: _SseReader) -> _SseReader:
    return protocol


async def _sse_watchers(base: str, watchers: int, seen: list[list[tuple[int, float]]]) -> Any:
    """Server-Sent Events streams, one TCP connection each (HTTP/1.1), as browsers."""
    host, _, port = base.removeprefix("http://").rpartition(":")
    loop = asyncio.get_running_loop()
    ready = [asyncio.Event() for _ in range(watchers)]
    transports = []
    for i in range(watchers):
        reader = _SseReader(f"/rooms/{ROOM}/events", seen[i], ready[i])
        transport, _ = await loop.create_connection(
            functools.partial(_same, reader), host, int(port)
        )
        transports.append(transport)
    await asyncio.gather(*(e.wait() for e in ready))

    async def close() -> None:
        for t in transports:
            t.close()

    return close


async def _nats_watchers(subject: str, watchers: int, seen: list[list[tuple[int, float]]]) -> Any:
    import nats

    from stocksync.tools.benchmarks.peer import NATS_URL

    conns = [
        await nats.connect(NATS_URL, pending_size=64 * 1024 * 1024)
        for _ in range(-(-watchers // STREAMS_PER_CHANNEL))
    ]
    for i in range(watchers):

        async def on(msg: Any, i: int = i) -> None:
            now = time.monotonic()
            value = json.loads(msg.data)["skus"].get(SKU)
            if value is not None:
                seen[i].append((value, now))

        await conns[i // STREAMS_PER_CHANNEL].subscribe(
            subject, cb=on, pending_msgs_limit=1_000_000, pending_bytes_limit=256 * 1024 * 1024
        )
    for nc in conns:
        await nc.flush()

    async def close() -> None:
        for nc in conns:
            await nc.close()

    return close


async def _watchers_child(mode: str, target: str, watchers: int) -> None:
    """Open the watchers; print ``ready``; read {final, recorded} as JSON from stdin;
    once every watcher has the final value (or 60 s passed), print the summary."""
    seen: list[list[tuple[int, float]]] = [[] for _ in range(watchers)]
    opener = {"grpc": _grpc_watchers, "sse": _sse_watchers, "nats": _nats_watchers}[mode]
    close = await opener(target, watchers, seen)
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    order = json.loads(line)
    final, recorded = int(order["final"]), order["recorded"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(s and s[-1][0] >= final for s in seen):
        await asyncio.sleep(0.01)
    await close()
    latencies, short = watcher_latencies(seen, recorded, int(order["base"]))
    summary = latency_summary(latencies)
    summary["watchers_missing_events"] = short
    summary["messages"] = sum(len(s) for s in seen)
    print(json.dumps(summary), flush=True)


@contextlib.contextmanager
def watchers_child(mode: str, target: str, watchers: int) -> Iterator[subprocess.Popen[str]]:
    """The watchers' process, once every watcher follows the room."""
    child = subprocess.Popen(
        [sys.executable, "-m", "stocksync.tools.benchmarks.latency", mode, target, str(watchers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the watchers' process failed to start")
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


def _finish(child: subprocess.Popen[str], final: int, recorded: Sequence[float]) -> dict[str, Any]:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(json.dumps({"final": final, "recorded": recorded, "base": BASE}) + "\n")
    child.stdin.flush()
    summary: dict[str, Any] = json.loads(child.stdout.readline())
    child.wait(30)
    return summary


# -- stocksync ------------------------------------------------------------------------------------


def _room(target: str) -> None:
    with grpc.insecure_channel(target) as ch:
        stub = rooms_pb2_grpc.LiveRoomServiceStub(ch)
        stub.SetFeatured(rooms_pb2.SetFeaturedRequest(room_id=ROOM, skus=[SKU]), timeout=10)
        stub.SetDisplayPolicy(
            rooms_pb2.SetDisplayPolicyRequest(room_id=ROOM, mode=rooms_pb2.ROOM_DISPLAY_MODE_EXACT),
            timeout=10,
        )


def _sellable(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        stub = inventory_pb2_grpc.InventoryServiceStub(ch)
        [stock] = stub.GetStock(inventory_pb2.GetStockRequest(skus=[SKU]), timeout=10).skus
    return int(stock.sellable)


def run(
    watchers: int, rate: float, seconds: float, workdir: Path, via: str = "edge"
) -> dict[str, Any]:
    """stocksync: a real hub and agent; the two latencies' figures. ``via``
    (:data:`WHERE`): ``edge``, the watchers follow the room over gRPC through
    a room edge (``stocksync-hub edge``, a process of its own); ``edge-sse``,
    as Server-Sent Events from the edge (as browsers); ``hub``, over gRPC at
    the hub itself."""
    from stocksync.agent.store import AgentStore
    from stocksync.tools.benchmarks.catchup import HubWatermark

    db = workdir / "agent.db"
    with AgentStore(db) as store:
        store.claim(WAREHOUSE)
        first_seq = store.record(NewEvent(SKU, Kind.RECEIVE, BASE)) + 1
    hub = HubChild(workdir / "hub.db", workdir / "hub.log")
    agent: AgentChild | None = None
    edge_child: EdgeChild | None = None
    try:
        hub.wait_ready()
        agent = AgentChild(WAREHOUSE, db, hub.target, workdir / "agent.log")
        wait_for(lambda: _sellable(hub.target) == BASE, 60, "the hub to hold the stock")
        _room(hub.target)
        mode, follow = "grpc", hub.target
        if via != "hub":
            edge_child = EdgeChild(hub.target, workdir / "edge.log")
            edge_child.wait_ready()
            follow = edge_child.target
            if via == "edge-sse":
                mode, follow = "sse", f"http://127.0.0.1:{edge_child.http_port}"
        watermark = HubWatermark(hub.db, WAREHOUSE)
        with (
            watchers_child(mode, follow, watchers) as child,
            WatermarkPoller(watermark) as poller,
            AgentStore(db) as store,
        ):
            one = NewEvent(SKU, Kind.RECEIVE, 1)
            pids = {"hub": hub.pid, "agent": agent.pid}
            if edge_child is not None:
                pids["edge"] = edge_child.pid
            pids |= {"watchers' process": child.pid, "producer (this process)": os.getpid()}
            with CpuMeter(pids) as cpu:
                recorded = record_at_rate(lambda n: store.record_many([one] * n), rate, seconds)
            poller.wait(first_seq + len(recorded) - 1, 60)
            at_watchers = _finish(child, BASE + len(recorded), recorded)
        watermark.close()
        applied = latency_summary(poller.latencies(first_seq, recorded))
    finally:
        if edge_child is not None:
            edge_child.stop()
        if agent is not None:
            agent.stop()
        hub.stop()
    return {
        "events": len(recorded),
        "applied": applied,
        "watchers": at_watchers,
        "cpu": cpu.figures,
    }


# -- the peer --------------------------------------------------------------------------


def run_peer(watchers: int, rate: float, seconds: float, workdir: Path) -> dict[str, Any]:
    """The peer: outbox → JetStream → consumer → NATS subject; the same figures."""
    from stocksync.tools.benchmarks import peer

    names = peer.PeerNames.fresh()
    outbox = peer.Outbox(workdir / "peer-outbox.db")
    hub_db = workdir / "peer-hub.db"
    seq = 0

    def rows(n: int, quantity: int = 1) -> list[EventRow]:
        nonlocal seq
        stamp = int(time.time() * 1000)
        out = []
        for _ in range(n):
            seq += 1
            out.append(
                EventRow(
                    seq,
                    str(uuid.uuid4()),
                    SKU,
                    int(Kind.RECEIVE),
                    quantity,
                    quantity,
                    "",
                    "",
                    0,
                    stamp,
                )
            )
        return out

    async def go() -> dict[str, Any]:
        async with peer.jetstream() as (_, js):
            await peer.make_stream(js, names)
            try:
                with peer.consumer(hub_db, names, [SKU]) as consumer_child:
                    publisher = peer.Publisher(js, outbox, names.subject)
                    await publisher.publish(outbox.commit(rows(1, BASE)))
                    await publisher.settle()
                    reader = peer.WatermarkReader(hub_db)
                    wait_for(lambda: reader() >= 1, 60, "the peer to apply the first event")
                    with (
                        watchers_child("nats", names.room_subject, watchers) as child,
                        WatermarkPoller(reader) as poller,
                    ):
                        pids = {"consumer": consumer_child.pid, **peer.nats_server_pids()}
                        pids |= {"watchers' process": child.pid}
                        pids["producer (this process)"] = os.getpid()
                        with CpuMeter(pids) as cpu:
                            recorded = await _record_peer(publisher, outbox, rows, rate, seconds)
                        await publisher.settle()
                        last = recorded_last = len(recorded) + 1
                        await asyncio.to_thread(poller.wait, recorded_last, 60)
                        at_watchers = await asyncio.to_thread(
                            _finish, child, BASE + len(recorded), recorded
                        )
                    reader.close()
                    applied = latency_summary(poller.latencies(2, recorded))
                    assert last == seq
            finally:
                await peer.drop_stream(js, names)
        return {
            "events": len(recorded),
            "applied": applied,
            "watchers": at_watchers,
            "cpu": cpu.figures,
        }

    try:
        return asyncio.run(go())
    finally:
        outbox.close()


async def _record_peer(
    publisher: Any, outbox: Any, rows: Callable[[int], list[EventRow]], rate: float, seconds: float
) -> list[float]:
    """:func:`record_at_rate` for the peer: commit to the outbox, then publish."""
    total = max(1, round(rate * seconds))
    recorded: list[float] = []
    started = time.monotonic()
    while len(recorded) < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1) - len(recorded)
        if due > 0:
            committed = outbox.commit(rows(due))
            recorded.extend([time.monotonic()] * due)
            await publisher.publish(committed)
            await publisher.settle(keep=50)
        await asyncio.sleep(TICK_S)
    return recorded


# -- the scenario ----------------------------------------------------------------------


def _transport(rate: float, seconds: float) -> dict[str, Any]:
    """The limit: the same per-tick batches over a bare bidi stream, at the same pace."""
    from stocksync.tools.benchmarks.limits import bidi_round_trips, sync_batches

    per_tick = max(1, round(rate * TICK_S))
    ticks = max(1, round(rate * seconds / per_tick))
    rows = [
        EventRow(i + 1, str(uuid.uuid4()), SKU, int(Kind.RECEIVE), 1, 1, "", "", 0, 0)
        for i in range(per_tick * ticks)
    ]
    return bidi_round_trips(sync_batches(rows, per_tick), per_tick / rate)


def _rows(
    ours: dict[str, Any],
    theirs: dict[str, Any] | None,
    target: dict[str, str],
    transport: dict[str, Any],
    where: str,
) -> list[Row]:
    out = []
    for part, label in (("applied", "recorded -> applied at hub"), ("watchers", "-> room watcher")):
        for q in ("p50", "p99", "p999"):
            against = []
            if part == "applied":
                against.append(
                    Against("grpc.aio bidi round trip, same batches", transport[f"{q}_ms"])
                )
            if theirs is not None:
                against.append(
                    Against("outbox->JetStream->SQLite", theirs[part][f"{q}_ms"], "peer")
                )
            out.append(
                Row(
                    f"{label} {q} ({where})",
                    ours[part][f"{q}_ms"],
                    "ms",
                    against,
                    target.get(f"{part}{q}", ""),
                )
            )
    return out


WHERE = {
    "edge": "gRPC watchers at a room edge",
    "edge-sse": "SSE watchers at a room edge",
    "hub": "gRPC watchers at the hub",
}
"""How the stocksync watchers follow the room, by the ``via`` parameter."""


def scenario(
    watchers: int,
    rate: float,
    seconds: float,
    workdir: Path,
    with_peer: str,
    via: Sequence[str] = ("edge",),
) -> Scenario:
    """The ``latency`` scenario; ``with_peer`` is '' or why the peer is skipped;
    ``via``: how the watchers follow the room, one run each (:data:`WHERE`)."""
    unknown = set(via) - set(WHERE)
    if unknown:
        raise ValueError(f"via: {', '.join(sorted(unknown))}; expected {', '.join(WHERE)}")
    transport = _transport(rate, seconds)
    runs = {}
    for where in via:
        runs[where] = run(watchers, rate, seconds, _fresh(workdir / f"stocksync-{where}"), where)
    theirs = None
    if not with_peer:
        theirs = run_peer(watchers, rate, seconds, _fresh(workdir / "peer"))
    targets = {
        "appliedp50": "<= 4 ms and < peer",
        "appliedp99": "<= 8 ms and < peer",
        "watchersp99": "<= 50 ms and < peer",
    }
    rows = []
    for where, ours in runs.items():
        # The targets are read off the first run (the deployment the docs advise).
        rows += _rows(ours, theirs, targets if where == via[0] else {}, transport, WHERE[where])
        rows += cpu_rows(ours["cpu"], f"CPU while recording ({WHERE[where]})")
    if theirs is not None:
        rows += cpu_rows(theirs["cpu"], "CPU while recording (the peer)")
    return Scenario(
        "latency",
        {"watchers": watchers, "rate": rate, "seconds": seconds, "via": list(via)},
        rows,
        {
            "stocksync": {WHERE[e]: r for e, r in runs.items()},
            "peer": theirs,
            "transport": transport,
        },
        skipped=with_peer,
    )


def _fresh(path: Path) -> Path:
    path.mkdir()
    return path


if __name__ == "__main__":
    # The measuring process collects no garbage while it measures: its own
    # pauses would be counted as the watchers' latency.
    gc.disable()
    asyncio.run(_watchers_child(sys.argv[1], sys.argv[2], int(sys.argv[3])))
