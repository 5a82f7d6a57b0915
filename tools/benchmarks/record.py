"""How a producer records: single events through the agent's local API and
through one ``stocksync-agent record`` process each, and a CSV ``import`` —
next to raw sqlite3 writing the same rows with the same durability.

- **local API**: a real agent (``stocksync-agent run --local-api
  unix:…``), connected to a real hub; ``singles`` ``Record`` calls of one
  event each, one after another, from this process over the Unix socket.
  Held against raw sqlite3 committing one event per transaction (WAL,
  ``synchronous=FULL``, an event row and a stock upsert each) and, for the
  call alone, a bare grpc.aio unary echo on loopback.
- **CLI**: ``processes`` runs of ``stocksync-agent record receive``, one
  after another. Held against a bare ``python -c`` process that opens
  sqlite3 and commits the same row the same way (interpreter start-up
  included on both sides).
- **import**: a CSV of ``rows`` events, ``stocksync-agent import`` into a
  fresh store, the process timed from start to exit. Held against raw
  sqlite3 in this process reading the same CSV with the ``csv`` module and
  inserting every row (event and stock upsert) in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from stocksync.tools.benchmarks.catchup import make_events
from stocksync.tools.benchmarks.common import Against, Row, Scenario, latency_summary
from stocksync.tools.benchmarks.limits import ECHO_METHOD, echo_server
from stocksync.tools.procs import AgentChild, HubChild, command, wait_for
from stocksync.v1 import agent_pb2, agent_pb2_grpc, sync_pb2

__all__ = ["raw_insert", "scenario"]

WAREHOUSE = "WH-REC"
RAW_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE,
  sku TEXT NOT NULL, kind INTEGER NOT NULL, quantity INTEGER NOT NULL, delta INTEGER NOT NULL,
  reason TEXT NOT NULL, reservation_id TEXT NOT NULL, as_of_seq INTEGER NOT NULL,
  recorded_at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, on_hand INTEGER NOT NULL);
"""
RAW_INSERT = "INSERT INTO events VALUES (NULL,?,?,?,?,?,'','',0,?)"
RAW_UPSERT = (
    "INSERT INTO stock VALUES (?, ?) "
    "ON CONFLICT(sku) DO UPDATE SET on_hand = on_hand + excluded.on_hand"
)
_KINDS = {"receive": (1, 1), "ship": (2, -1), "adjust": (3, 1)}
_RAW_PROCESS = """
import sqlite3, sys, time, uuid
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA journal_mode = WAL"); c.execute("PRAGMA synchronous = FULL")
c.executescript(sys.argv[2])
c.execute("BEGIN IMMEDIATE")
c.execute(sys.argv[3], (str(uuid.uuid4()), "SKU-1", 1, 1, 1, int(time.time() * 1000)))
c.execute(sys.argv[4], ("SKU-1", 1))
c.execute("COMMIT")
"""


def _raw_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(RAW_SCHEMA)
    return conn


def raw_singles(path: Path, count: int) -> dict[str, Any]:
    """``count`` events, one transaction (and fsync) each."""
    conn = _raw_db(path)
    times = []
    started = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(RAW_INSERT, (str(uuid.uuid4()), f"SKU-{i % 50}", 1, 1, 1, 0))
        conn.execute(RAW_UPSERT, (f"SKU-{i % 50}", 1))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    conn.close()
    return {"events_per_s": count / elapsed, "call": latency_summary(times)}


def raw_insert(path: Path, csv_file: Path) -> dict[str, Any]:
    """Read ``csv_file`` and insert every row in one transaction; the figures."""
    started = time.perf_counter()
    conn = _raw_db(path)
    stamp = int(time.time() * 1000)
    rows = []
    upserts = []
    with csv_file.open(newline="") as f:
        for sku, kind, qty in csv.reader(f):
            code, sign = _KINDS[kind]
            n = int(qty)
            rows.append((str(uuid.uuid4()), sku, code, n, sign * n, stamp))
            upserts.append((sku, sign * n))
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(RAW_INSERT, rows)
    conn.executemany(RAW_UPSERT, upserts)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    (stored,) = conn.execute("SELECT count(*) FROM events").fetchone()
    conn.close()
    if stored != len(rows):
        raise RuntimeError(f"raw insert stored {stored} of {len(rows)}")
    return {"rows": len(rows), "seconds": elapsed, "events_per_s": len(rows) / elapsed}


def _write_csv(path: Path, rows: int) -> None:
    names = {1: "receive", 2: "ship", 3: "adjust"}
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        for e in make_events(rows, 2000):
            qty = abs(e.quantity) if e.kind != 3 else 1  # adjust +1: the raw side's sign is +
            out.writerow([e.sku, names[int(e.kind)], qty])


def _local_api(socket: str, singles: int) -> dict[str, Any]:
    times = []
    with grpc.insecure_channel(socket) as channel:
        api = agent_pb2_grpc.AgentServiceStub(channel)
        event = agent_pb2.NewEvent(sku="SKU-1", kind=sync_pb2.EVENT_KIND_RECEIVE, quantity=1)
        request = agent_pb2.RecordRequest(events=[event])
        api.Record(request, timeout=10)  # the connection, before the clock
        started = time.perf_counter()
        for _ in range(singles):
            t0 = time.perf_counter()
            api.Record(request, timeout=10)
            times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    return {"events_per_s": singles / elapsed, "call": latency_summary(times)}


async def _echo_calls(target: str, count: int, payload: bytes) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        call: Any = channel.unary_unary(ECHO_METHOD)
        await call(payload)
        times = []
        started = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            await call(payload)
            times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    return {"calls_per_s": count / elapsed, "call": latency_summary(times)}


def _processes(args: list[str], count: int) -> dict[str, Any]:
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return {"events_per_s": count / sum(times), "call": latency_summary(times)}


def run(
    singles: int, processes: int, rows: int, workdir: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Every measurement of the scenario; the figures."""
    out: dict[str, Any] = {}
    say(f"record: raw sqlite3, {singles} single-event transactions")
    out["raw_singles"] = raw_singles(workdir / "raw-singles.db", singles)
    with echo_server() as server:
        request = agent_pb2.RecordRequest(
            events=[agent_pb2.NewEvent(sku="SKU-1", kind=sync_pb2.EVENT_KIND_RECEIVE, quantity=1)]
        ).SerializeToString()
        out["echo"] = asyncio.run(_echo_calls(server.target, singles, request))

    db = workdir / "agent.db"
    sock = workdir / "api.sock"
    hub = HubChild(workdir / "hub.db", workdir / "hub.log")
    agent: AgentChild | None = None
    try:
        hub.wait_ready()
        agent = AgentChild(
            WAREHOUSE, db, hub.target, workdir / "agent.log", extra=["--local-api", f"unix:{sock}"]
        )
        agent.wait_connected(60)
        wait_for(sock.exists, 30, "the local API socket")
        say(f"record: {singles} single events through the local API")
        out["local_api"] = _local_api(f"unix:{sock}", singles)
        say(f"record: {processes} `stocksync-agent record` processes")
        out["cli"] = _processes(
            [*command("stocksync-agent"), "record", "receive", "SKU-1", "1", "--db", str(db)],
            processes,
        )
    finally:
        if agent is not None:
            agent.stop()
        hub.stop()
    raw_db = workdir / "raw-process.db"
    out["raw_process"] = _processes(
        [sys.executable, "-c", _RAW_PROCESS, str(raw_db), RAW_SCHEMA, RAW_INSERT, RAW_UPSERT],
        processes,
    )

    say(f"record: a {rows:,}-row CSV, `stocksync-agent import` and raw sqlite3")
    csv_file = workdir / "rows.csv"
    _write_csv(csv_file, rows)
    out["raw_import"] = raw_insert(workdir / "raw-import.db", csv_file)
    t0 = time.perf_counter()
    subprocess.run(
        [*command("stocksync-agent"), "import", str(csv_file), "--db", str(workdir / "import.db")],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - t0
    out["import"] = {"rows": rows, "seconds": seconds, "events_per_s": rows / seconds}
    with contextlib.closing(sqlite3.connect(workdir / "import.db")) as c:
        out["import"]["stored"] = c.execute("SELECT count(*) FROM events").fetchone()[0]
    return out


def scenario(
    singles: int, processes: int, rows: int, workdir: Path, say: Callable[[str], None]
) -> Scenario:
    """The ``record`` scenario."""
    r = run(singles, processes, rows, workdir, say)
    raw1 = r["raw_singles"]
    return Scenario(
        "record",
        {"singles": singles, "processes": processes, "rows": rows},
        [
            Row(
                "local API, 1 event per call",
                r["local_api"]["events_per_s"],
                "ev/s",
                [Against("raw sqlite3, 1 event per commit", raw1["events_per_s"])],
            ),
            Row(
                "  per call p50",
                r["local_api"]["call"]["p50_ms"],
                "ms",
                [
                    Against("raw sqlite3 commit p50", raw1["call"]["p50_ms"]),
                    Against("grpc.aio unary echo p50", r["echo"]["call"]["p50_ms"]),
                ],
            ),
            Row(
                "  per call p99",
                r["local_api"]["call"]["p99_ms"],
                "ms",
                [Against("raw sqlite3 commit p99", raw1["call"]["p99_ms"])],
            ),
            Row(
                "CLI, 1 process per event",
                r["cli"]["events_per_s"],
                "ev/s",
                [
                    Against(
                        "python -c sqlite3, 1 process per event", r["raw_process"]["events_per_s"]
                    )
                ],
            ),
            Row(
                f"import of a {rows:,}-row CSV",
                r["import"]["events_per_s"],
                "ev/s",
                [Against("raw sqlite3: csv + insert, 1 commit", r["raw_import"]["events_per_s"])],
                ">= 0.5 x raw sqlite3",
            ),
        ],
        r,
    )
