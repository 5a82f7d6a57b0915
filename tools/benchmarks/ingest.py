"""1, 10 or 50 agent processes streaming into one durable hub.

**With a backlog**: each agent's store holds its share of ``events``
(recorded first, not timed); a fresh hub, then every agent spawned at once —
warehouses coming back after an outage. Timed from the first spawn until
every warehouse's watermark is at its last seq (agent start-ups included);
*streaming* counts from the first applied batch to the last.

**Live**: a real hub and N real agents (``stocksync-agent run``), each on a store of
its own warehouse, connected before the clock starts. This process then
records ``events`` in all, split evenly over the warehouses, as fast as it
can: ``record_many`` of :data:`CHUNK` events on each store in turn (each
durable on return; the store wakes its daemon). A thread reads every
warehouse's watermark from the hub's SQLite file every 2 ms.

- **applied events/s**: events ÷ (first record → the hub's watermark of every
  warehouse at its last seq);
- **record → applied** of each chunk: from its ``record_many`` returning to
  the hub's watermark covering its last seq — the hub's ack as the producer
  would feel it;
- **recorded by the producer**: how fast this process recorded (when it is
  near the applied rate, the producer, not stocksync, set the pace);
- **CPU**: the hub's, and the agents' average, as % of one core over the run.

Held against the raw sqlite3 batched apply of the same number of events and
the same batches over one bare grpc.aio bidi stream.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stocksync.agent.store import AgentStore
from stocksync.events import NewEvent
from stocksync.tools.benchmarks.catchup import make_events, raw_apply
from stocksync.tools.benchmarks.common import Against, Row, Scenario, cpu_s, latency_summary
from stocksync.tools.benchmarks.limits import bidi_stream, sync_batches
from stocksync.tools.procs import AgentChild, HubChild

__all__ = ["run", "scenario"]

CHUNK = 500
"""Events per ``record_many`` call: a warehouse system's group commit."""
SKUS = 2000
_WATERMARKS = (
    "SELECT w.warehouse, s.watermark FROM sources s JOIN warehouses w ON w.source_id = s.id"
)


class _Watermarks(threading.Thread):
    """Every 2 ms, each warehouse's watermark; rises noted per warehouse."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.rises: dict[str, list[tuple[int, float]]] = {}
        self.now: dict[str, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as conn:
            while not self.stopping.is_set():
                at = time.monotonic()
                with contextlib.suppress(sqlite3.OperationalError):
                    for warehouse, wm in conn.execute(_WATERMARKS):
                        if wm > self.now.get(warehouse, 0):
                            self.now[warehouse] = wm
                            self.rises.setdefault(warehouse, []).append((wm, at))
                time.sleep(0.002)

    def applied_at(self, warehouse: str, seq: int) -> float:
        for wm, at in self.rises[warehouse]:
            if wm >= seq:
                return at
        raise RuntimeError(f"{warehouse} seq {seq} never applied")


def run(agents: int, events: int, workdir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """N agents, ``events`` recorded live in all; the figures."""
    warehouses = [f"WH-I{i:02d}" for i in range(agents)]
    per = events // agents
    work = make_events(per * agents, SKUS)
    dbs = []
    for warehouse in warehouses:
        db = workdir / f"{warehouse.lower()}.db"
        with AgentStore(db) as store:
            store.claim(warehouse)
        dbs.append(db)
    hub = HubChild(workdir / "hub.db", workdir / "hub.log")
    children: list[AgentChild] = []
    try:
        hub.wait_ready()
        for warehouse, db in zip(warehouses, dbs, strict=True):
            children.append(AgentChild(warehouse, db, hub.target, workdir / f"{warehouse}.log"))
        for child in children:
            child.wait_connected(120)
        say(f"ingest: {agents} agents connected; recording {per * agents:,} events")
        stores = [AgentStore(db) for db in dbs]
        poller = _Watermarks(hub.db)
        poller.start()
        hub_cpu0 = cpu_s(hub.pid)
        agents_cpu0 = sum(cpu_s(c.pid) for c in children)
        chunks: list[tuple[str, int, float]] = []
        try:
            started = time.monotonic()
            for offset in range(0, per, CHUNK):
                for i, store in enumerate(stores):
                    part: list[NewEvent] = work[
                        i * per + offset : i * per + min(per, offset + CHUNK)
                    ]
                    seqs = store.record_many(part)
                    chunks.append((warehouses[i], seqs[-1], time.monotonic()))
            recorded = time.monotonic()
            deadline = recorded + max(120.0, events / 2000)
            while not all(poller.now.get(w, 0) >= per for w in warehouses):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ingest timed out: {poller.now}")
                hub.check_alive()
                time.sleep(0.01)
            done = max(poller.applied_at(w, per) for w in warehouses)
            hub_cpu = cpu_s(hub.pid) - hub_cpu0
            agents_cpu = sum(cpu_s(c.pid) for c in children) - agents_cpu0
        finally:
            poller.stopping.set()
            poller.join()
            for store in stores:
                store.close()
        acks = [poller.applied_at(w, seq) - at for w, seq, at in chunks]
    finally:
        for child in children:
            child.stop()
        hub.stop()
    elapsed = done - started
    return {
        "agents": agents,
        "events": per * agents,
        "seconds": elapsed,
        "record_seconds": recorded - started,
        "events_per_s": per * agents / elapsed,
        "record_to_applied": latency_summary(acks),
        "hub_cpu_pct": 100 * hub_cpu / elapsed,
        "agent_cpu_pct_avg": 100 * agents_cpu / agents / elapsed,
    }


def run_backlog(agents: int, events: int, workdir: Path) -> dict[str, Any]:
    """N agents whose stores hold ``events`` in all (recorded first, not timed),
    started together against a fresh hub: warehouses back after an outage."""
    warehouses = [f"WH-B{i:02d}" for i in range(agents)]
    per = events // agents
    work = make_events(per * agents, SKUS, seed=9)
    dbs = []
    for i, warehouse in enumerate(warehouses):
        db = workdir / f"{warehouse.lower()}.db"
        with AgentStore(db) as store:
            store.claim(warehouse)
            store.record_many(work[i * per : (i + 1) * per])
        dbs.append(db)
    hub = HubChild(workdir / "hub.db", workdir / "hub.log")
    children: list[AgentChild] = []
    try:
        hub.wait_ready()
        poller = _Watermarks(hub.db)
        poller.start()
        hub_cpu0 = cpu_s(hub.pid)
        try:
            started = time.monotonic()
            for warehouse, db in zip(warehouses, dbs, strict=True):
                children.append(AgentChild(warehouse, db, hub.target, workdir / f"{warehouse}.log"))
            deadline = started + max(300.0, events / 1000)
            while not all(poller.now.get(w, 0) >= per for w in warehouses):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ingest timed out: {poller.now}")
                hub.check_alive()
                time.sleep(0.01)
            hub_cpu = cpu_s(hub.pid) - hub_cpu0
            agents_cpu = sum(cpu_s(c.pid) for c in children)
        finally:
            poller.stopping.set()
            poller.join()
        rises = sorted((at, w, wm) for w, pairs in poller.rises.items() for wm, at in pairs)
    finally:
        for child in children:
            child.stop()
        hub.stop()
    done = rises[-1][0]
    first_at, _, first_wm = rises[0]
    streaming = done - first_at
    return {
        "agents": agents,
        "events": per * agents,
        "seconds": done - started,
        "events_per_s": per * agents / (done - started),
        "streaming_events_per_s": (per * agents - first_wm) / streaming if streaming else None,
        "hub_cpu_pct": 100 * hub_cpu / (done - started),
        "agent_cpu_pct_avg": 100 * agents_cpu / agents / (done - started),
    }


def scenario(
    agent_counts: list[int], events: int, workdir: Path, say: Callable[[str], None]
) -> Scenario:
    """The ``ingest`` scenario: each agent count in turn, against the two limits."""
    say("ingest: the limits (raw sqlite3 apply, grpc.aio bidi) on the same events")
    with AgentStore(workdir / "limits.db") as store:
        seqs = store.record_many(make_events(events, SKUS))
        rows = store.events(1, seqs[-1])
    raw_s = raw_apply(workdir / "raw.db", rows, 500)
    raw = {"events_per_s": len(rows) / raw_s, "seconds": raw_s}
    bidi = bidi_stream(sync_batches(rows, 1000), 8)
    del rows
    results = []
    backlogs = []
    out: list[Row] = []
    limits = [
        Against("raw sqlite3 batched apply", raw["events_per_s"]),
        Against("grpc.aio bidi stream, same batches", bidi["events_per_s"]),
    ]
    for n in agent_counts:
        d = workdir / f"backlog-{n}"
        d.mkdir()
        say(f"ingest: {n} agents with {events // n:,} events each, started together")
        b = run_backlog(n, events, d)
        backlogs.append(b)
        d = workdir / f"agents-{n}"
        d.mkdir()
        r = run(n, events, d, say)
        results.append(r)
        out += [
            Row(
                f"{n} agent{'s' if n > 1 else ''} with a backlog: applied",
                b["events_per_s"],
                "ev/s",
                limits,
                ">= 0.7 x raw sqlite3" if n == 10 else "",
            ),
            Row(
                "  streaming, first -> last batch",
                b["streaming_events_per_s"] or 0.0,
                "ev/s",
                limits[:1],
            ),
            Row("  CPU: hub", b["hub_cpu_pct"], "%"),
            Row(
                f"{n} agent{'s' if n > 1 else ''} live: applied", r["events_per_s"], "ev/s", limits
            ),
            Row("  recorded by the producer", r["events"] / r["record_seconds"], "ev/s"),
            Row("  record -> applied p50", r["record_to_applied"]["p50_ms"], "ms"),
            Row("  record -> applied p99", r["record_to_applied"]["p99_ms"], "ms"),
            Row("  CPU: hub", r["hub_cpu_pct"], "%"),
            Row("  CPU: each agent (mean)", r["agent_cpu_pct_avg"], "%"),
        ]
    return Scenario(
        "ingest",
        {"agents": agent_counts, "events": events, "chunk": CHUNK},
        out,
        {"runs": results, "backlog": backlogs, "raw": raw, "bidi": bidi},
    )
