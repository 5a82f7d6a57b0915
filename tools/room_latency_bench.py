"""Time from an event recorded at a warehouse to a live room's watchers seeing it.

    python -m stocksync.tools.room_latency_bench                      # 100 watchers
    python -m stocksync.tools.room_latency_bench --watchers 1000 --rate 100 --json

A real hub (``stocksync-hub serve``, durable SQLite store) and a real agent
(``stocksync-agent run``) on loopback; one room features the SKU in exact
mode and ``--watchers`` gRPC ``Watch`` streams (in a process of their own,
so they do not share a core with the producer) follow it. This process
records ``--events`` RECEIVEs of one unit into the agent's store, at
``--rate`` per second, as a warehouse system would (each durable when
``record`` returns). Event k makes sellable ``base + k``; its latency at a
watcher is from the moment its ``record`` returned to the moment that
watcher first received a sellable of at least ``base + k`` (a merged update
counts for every event it covers). Both processes read the same
``CLOCK_MONOTONIC``.

The path measured: agent store → agent daemon (wakes by polling the store)
→ batch on the sync stream → hub apply, durable → inventory change → room
fan-out → every watcher.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import grpc

from stocksync.tools.procs import AgentChild, HubChild, wait_for
from stocksync.v1 import inventory_pb2, inventory_pb2_grpc, rooms_pb2, rooms_pb2_grpc

__all__ = ["main", "run"]

SKU = "LIVE-LIP-01"
ROOM = "latency-bench"
WAREHOUSE = "WH-LAX"
BASE = 1000
STREAMS_PER_CHANNEL = 100


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


async def _watchers_child(target: str, watchers: int) -> None:
    """Open the watchers; print ``ready``; read the last value expected from
    stdin; once every watcher has it, print each one's (value, time) pairs."""
    channels = [
        grpc.aio.insecure_channel(target)
        for _ in range((watchers + STREAMS_PER_CHANNEL - 1) // STREAMS_PER_CHANNEL)
    ]
    seen: list[list[tuple[int, float]]] = [[] for _ in range(watchers)]
    have_snapshot = [asyncio.Event() for _ in range(watchers)]
    last_value = [0] * watchers
    target_value = asyncio.get_running_loop().create_future()

    async def watch(i: int) -> None:
        stub = rooms_pb2_grpc.LiveRoomServiceStub(channels[i // STREAMS_PER_CHANNEL])
        async for message in stub.Watch(rooms_pb2.WatchRequest(room_id=ROOM)):
            now = time.monotonic()
            part = message.snapshot if message.HasField("snapshot") else message.update
            for entry in part.skus:
                if entry.sku == SKU and entry.HasField("sellable"):
                    seen[i].append((entry.sellable, now))
                    last_value[i] = entry.sellable
            have_snapshot[i].set()
            if target_value.done() and last_value[i] >= target_value.result():
                return

    tasks = [asyncio.create_task(watch(i)) for i in range(watchers)]
    await asyncio.gather(*(e.wait() for e in have_snapshot))
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    target_value.set_result(int(line))
    # A watcher already past the value returns at its next message: wait for values.
    while not all(v >= target_value.result() for v in last_value):
        await asyncio.sleep(0.01)
    for t in tasks:
        t.cancel()
    print(json.dumps(seen), flush=True)
    for ch in channels:
        await ch.close()


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


def run(watchers: int, events: int, rate: float, workdir: Path) -> dict[str, Any]:
    """One run; the latency figures and what was measured."""
    from stocksync.agent.store import AgentStore
    from stocksync.events import Kind, NewEvent

    db = workdir / "agent.db"
    with AgentStore(db) as store:
        store.claim(WAREHOUSE)
        store.record(NewEvent(SKU, Kind.RECEIVE, BASE))
    hub = HubChild(workdir / "hub.db", workdir / "hub.log")
    agent: AgentChild | None = None
    child: subprocess.Popen[str] | None = None
    try:
        hub.wait_ready()
        agent = AgentChild(WAREHOUSE, db, hub.target, workdir / "agent.log")
        wait_for(lambda: _sellable(hub.target) == BASE, 60, "the hub to hold the stock")
        _room(hub.target)
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stocksync.tools.room_latency_bench",
                "--watchers-child",
                hub.target,
                "--watchers",
                str(watchers),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise click.ClickException("the watchers' process failed to start")
        recorded: list[float] = []
        with AgentStore(db) as store:
            started = time.monotonic()
            for k in range(events):
                store.record(NewEvent(SKU, Kind.RECEIVE, 1))
                recorded.append(time.monotonic())
                pause = started + (k + 1) / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        child.stdin.write(f"{BASE + events}\n")
        child.stdin.flush()
        seen: list[list[tuple[int, float]]] = json.loads(child.stdout.readline())
        child.wait(30)
    finally:
        if child is not None and child.poll() is None:
            child.kill()
        if agent is not None:
            agent.stop()
        hub.stop()
    latencies: list[float] = []
    for pairs in seen:
        i = 0
        for value, at in pairs:
            # Every event up to this value is now seen by this watcher.
            while i < events and BASE + i + 1 <= value:
                latencies.append(at - recorded[i])
                i += 1
        if i != events:
            raise click.ClickException(f"a watcher saw {i} of {events} events")
    latencies.sort()
    return {
        "watchers": watchers,
        "events": events,
        "rate": rate,
        "samples": len(latencies),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p90_ms": round(_percentile(latencies, 0.90) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2),
    }


@click.command()
@click.option("--watchers", default=100, show_default=True, help="Watch streams on the room.")
@click.option("--events", default=2000, show_default=True, help="Events recorded.")
@click.option("--rate", default=200.0, show_default=True, help="Events recorded per second.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--watchers-child", "child_target", hidden=True)
def main(watchers: int, events: int, rate: float, as_json: bool, child_target: str | None) -> None:
    """Agent record → room watcher latency over a real hub and agent."""
    if child_target:
        asyncio.run(_watchers_child(child_target, watchers))
        return
    with tempfile.TemporaryDirectory(prefix="room-latency-") as tmp:
        figures = run(watchers, events, rate, Path(tmp))
    if as_json:
        click.echo(json.dumps(figures))
        return
    click.echo(
        f"{events} events at {rate:g}/s, {watchers} watchers, {figures['samples']} samples "
        f"(machine: {os.cpu_count()} cores)"
    )
    click.echo(
        f"recorded at agent → received by watcher: p50 {figures['p50_ms']} ms, "
        f"p90 {figures['p90_ms']} ms, p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms"
    )


if __name__ == "__main__":
    main()
