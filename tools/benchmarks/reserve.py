"""Reserves on one hot SKU from many concurrent callers, against a plain
grpc.aio unary echo, in one run.

    stocksync-bench reserve                  # 1,000 callers
    stocksync-bench reserve --callers 50 --attempts 2000 --json

One run, over loopback:

- **reserve**: a real hub (``stocksync-hub serve``, its own process, durable
  SQLite store) holding ``--units`` of one SKU spread over three warehouses,
  synced by three real agents; ``--callers`` concurrent callers send
  ``Reserve`` (one unit, a fresh idempotency key each) until ``--attempts``
  calls have been made. When the units run out the rest are refused
  (``RESOURCE_EXHAUSTED``), as in a sell-out.
- **echo**: the same callers, the same number of calls with the same request
  bytes, against a bare grpc.aio unary method in a process of its own that
  returns what it gets: what gRPC on this machine can do at best. The target
  is held against it.
- **durable echo**: the same again, each request answered only once it is
  committed to a raw sqlite3 table, the waiting ones together (as the hub's
  writer commits a group): what answering once durable costs at its rawest.

Each is timed from the first call until every caller is done; the latency of
each call is taken around the call. The server's CPU per call (the hub's
process, or the echo server's; user + system over the same span) says how
much of the difference is the server's own work: on two cores the callers'
process shares the machine, so calls/s alone moves with everything else.
The callers share ``CHANNELS`` TCP connections, as a shop's checkout servers
behind a few proxies would.
Afterwards the hub's ``GetStock`` and ``stocksync-hub check`` say whether
anything was oversold: granted units beyond the units there were (must be 0).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc

from stocksync.tools.benchmarks.common import Against, Row, Scenario, cpu_s
from stocksync.tools.benchmarks.limits import DURABLE_METHOD, ECHO_METHOD, echo_server
from stocksync.tools.procs import AgentChild, HubChild, command, wait_for
from stocksync.v1 import inventory_pb2, inventory_pb2_grpc

__all__ = ["run", "scenario"]

SKU = "HOT-LIP-01"
WAREHOUSES = ("WH-LAX", "WH-FRA", "WH-CGK")
CHANNELS = 10


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


async def _callers(
    target: str, method: str, callers: int, attempts: int, payload: bytes
) -> dict[str, Any]:
    """``callers`` tasks making ``attempts`` calls in all; figures of the run."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]
    for ch in channels:
        await ch.channel_ready()
    calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
        ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        for ch in channels
    ]
    latencies: list[float] = []
    codes: dict[str, int] = {}
    left = attempts

    async def caller(i: int) -> None:
        nonlocal left
        call = calls[i % len(calls)]
        while left > 0:
            left -= 1
            key = f"k{left}".encode()
            # Field 3 (idempotency_key) appended last: a fresh key each call.
            request = payload + b"\x1a" + bytes([len(key)]) + key
            started = time.perf_counter()
            try:
                await call(request)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            latencies.append(time.perf_counter() - started)
            codes[code] = codes.get(code, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    elapsed = time.perf_counter() - started
    for ch in channels:
        await ch.close()
    latencies.sort()
    return {
        "calls": len(latencies),
        "elapsed_s": round(elapsed, 3),
        "calls_per_s": round(len(latencies) / elapsed),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "codes": codes,
    }


def _per_call(cpu_seconds: float, figures: dict[str, Any]) -> float:
    """Microseconds of a server's CPU per call made."""
    return round(1e6 * cpu_seconds / int(figures["calls"]), 1)


def _payload(room: str) -> bytes:
    """A ReserveRequest for one unit of SKU in ``room``, without its key."""
    request = inventory_pb2.ReserveRequest(room_id=room)
    request.lines.add(sku=SKU, qty=1)
    return request.SerializeToString()


def _stock(target: str) -> inventory_pb2.SkuSummary:
    with grpc.insecure_channel(target) as ch:
        stub = inventory_pb2_grpc.InventoryServiceStub(ch)
        [stock] = stub.GetStock(inventory_pb2.GetStockRequest(skus=[SKU]), timeout=10).skus
    summary: inventory_pb2.SkuSummary = stock
    return summary


def _seed(workdir: Path, units: int) -> list[Path]:
    from stocksync.agent.store import AgentStore
    from stocksync.events import Kind, NewEvent

    dbs = []
    for i, warehouse in enumerate(WAREHOUSES):
        share = units // len(WAREHOUSES) + (1 if i < units % len(WAREHOUSES) else 0)
        db = workdir / f"{warehouse.lower()}.db"
        with AgentStore(db) as store:
            store.claim(warehouse)
            store.record(NewEvent(SKU, Kind.RECEIVE, share))
        dbs.append(db)
    return dbs


def run(callers: int, attempts: int, units: int, workdir: Path) -> dict[str, Any]:
    """The echo, the durable echo, then reserve, with the same callers; the
    figures of each and the outcome."""
    payload = _payload("live-bench")
    with echo_server(workdir / "durable-echo.db") as server:
        cpu0 = cpu_s(server.pid)
        echo = asyncio.run(_callers(server.target, ECHO_METHOD, callers, attempts, payload))
        cpu1 = cpu_s(server.pid)
        echo["server_cpu_us_per_call"] = _per_call(cpu1 - cpu0, echo)
        durable = asyncio.run(_callers(server.target, DURABLE_METHOD, callers, attempts, payload))
        durable["server_cpu_us_per_call"] = _per_call(cpu_s(server.pid) - cpu1, durable)

    dbs = _seed(workdir, units)
    hub = HubChild(workdir / "hub.db", workdir / "hub.log")
    agents: list[AgentChild] = []
    try:
        hub.wait_ready()
        for warehouse, db in zip(WAREHOUSES, dbs, strict=True):
            agents.append(AgentChild(warehouse, db, hub.target, workdir / f"{warehouse}.log"))
        wait_for(lambda: _stock(hub.target).sellable == units, 60, "the hub to hold the units")
        cpu0 = cpu_s(hub.pid)
        reserve = asyncio.run(
            _callers(
                hub.target,
                "/stocksync.v1.InventoryService/Reserve",
                callers,
                attempts,
                payload,
            )
        )
        reserve["server_cpu_us_per_call"] = _per_call(cpu_s(hub.pid) - cpu0, reserve)
        after = _stock(hub.target)
        check = subprocess.run(
            [*command("stocksync-hub"), "check", "--db", str(hub.db)],
            capture_output=True,
            text=True,
        )
    finally:
        for a in agents:
            a.stop()
        hub.stop()
    granted = reserve["codes"].get("OK", 0)
    return {
        "callers": callers,
        "attempts": attempts,
        "units": units,
        "echo": echo,
        "durable_echo": durable,
        "reserve": reserve,
        "ratio": round(reserve["calls_per_s"] / echo["calls_per_s"], 2),
        "granted_units": granted,
        "held_at_hub": after.held,
        "sellable_after": after.sellable,
        "oversold": max(0, granted - units),
        "check": "ok" if check.returncode == 0 else check.stdout.strip() or check.stderr.strip(),
    }


def scenario(callers: int, attempts: int, units: int, workdir: Path, rounds: int = 3) -> Scenario:
    """The ``reserve`` scenario: :func:`run` ``rounds`` times (echo, then a
    fresh hub, each time), the medians as rows against the unary echo; the
    oversold row is the worst round's."""
    runs = []
    for k in range(rounds):
        folder = workdir / f"round-{k + 1}"
        folder.mkdir()
        runs.append(run(callers, attempts, units, folder))

    def median(side: str, figure: str) -> float:
        return float(statistics.median(f[side][figure] for f in runs))

    size = f"{callers:,} callers, 1 hot SKU"
    checks = sorted({f["check"] for f in runs})
    check = "ok" if checks == ["ok"] else "; ".join(c for c in checks if c != "ok")
    of = f" (median of {rounds})" if rounds > 1 else ""
    return Scenario(
        "reserve",
        {"callers": callers, "attempts": attempts, "units": units, "rounds": rounds},
        [
            Row(
                f"{size}: reserves/s{of}",
                median("reserve", "calls_per_s"),
                "calls/s",
                [
                    Against("grpc.aio unary echo, same callers", median("echo", "calls_per_s")),
                    Against(
                        "the same, answered once group-committed to sqlite3",
                        median("durable_echo", "calls_per_s"),
                    ),
                ],
                ">= 0.6 x unary echo",
            ),
            Row(
                f"{size}: p99 per call{of}",
                median("reserve", "p99_ms"),
                "ms",
                [
                    Against("grpc.aio unary echo p99", median("echo", "p99_ms")),
                    Against("durable echo p99", median("durable_echo", "p99_ms")),
                ],
            ),
            Row(
                f"{size}: server CPU per call{of}",
                median("reserve", "server_cpu_us_per_call"),
                "us",
                [
                    Against("grpc.aio unary echo server", median("echo", "server_cpu_us_per_call")),
                    Against(
                        "durable echo server", median("durable_echo", "server_cpu_us_per_call")
                    ),
                ],
            ),
            Row(
                f"oversold units (check: {check})",
                max(f["oversold"] for f in runs),
                "units",
                [],
                "0",
            ),
        ],
        {"rounds": runs, "ratios": [f["ratio"] for f in runs]},
    )
