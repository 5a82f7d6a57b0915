"""``stocksync-hub bench``: catch-up throughput against raw SQLite.

One run measures, on this machine and in this order:

(a) **raw limit**: plain ``sqlite3`` applying the hub's event rows to a fresh
    file with the hub's schema (WAL, ``synchronous=FULL``) in batches of
    ``--batch`` events, one transaction each: ``executemany`` of the log
    insert, then ``executemany`` of one stock upsert *per event*. For
    reference it also times the hub's own :func:`apply_rows`, which nets the
    deltas per SKU first (one upsert per distinct SKU per batch).
(b) **catch-up**: an agent store holding ``--events`` events recorded while
    offline (setup, not timed); a real ``stocksync-hub serve`` and a real
    ``stocksync-agent run`` subprocess; timed from starting the agent until
    the hub's watermark (read from its SQLite file) reaches the last seq.
(c) **RSS** of the agent and the hub after ~3 s idle (``/proc/<pid>/status``).
(d) **latency**: with the agent connected and idle, single events recorded
    with :meth:`AgentStore.record` from this process, timed until the hub's
    watermark covers them (polled every 1 ms).

Every file lives in one temporary directory made for the run and removed
afterwards; the subprocesses are stopped on exit, error, SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import click

from stocksync.agent.store import AgentStore
from stocksync.config import AgentConfig, load
from stocksync.events import Kind, NewEvent
from stocksync.hub.sqlite_store import INSERT_EVENT, SCHEMA, UPSERT_STOCK, apply_rows
from stocksync.hub.storage import DELTA_COLUMN, SKU_COLUMN, HubRow

__all__ = ["bench", "run_bench"]

WAREHOUSE = "WH-BENCH"
RATIO_TARGET = 0.5
IDLE_RSS_TARGET_MB = 60.0
LATENCY_TARGET_MS = 50.0
IDLE_SECONDS = 3.0
LATENCY_SAMPLES = 50
CATCHUP_POLL_S = 0.002
"""Watermark polling while catching up (coarser than the probe's 1 ms, so the
poller takes little CPU from the two processes it measures)."""

_WATERMARK_SQL = (
    "SELECT s.watermark FROM sources s JOIN warehouses w ON w.source_id = s.id "
    "WHERE w.warehouse = ?"
)


class BenchError(click.ClickException):
    """The benchmark could not run to the end (a subprocess died, a timeout)."""


# -- workload ----------------------------------------------------------------


def make_events(count: int, skus: int, seed: int = 7) -> list[NewEvent]:
    """A deterministic mix: 45 % receive, 45 % ship, 10 % adjust, uniform SKUs."""
    rng = random.Random(seed)
    names = [f"SKU-{i:06d}" for i in range(skus)]
    events = []
    for _ in range(count):
        sku = names[rng.randrange(skus)]
        roll = rng.random()
        if roll < 0.45:
            events.append(NewEvent(sku, Kind.RECEIVE, rng.randint(1, 24)))
        elif roll < 0.90:
            events.append(NewEvent(sku, Kind.SHIP, rng.randint(1, 6)))
        else:
            qty = rng.choice((-3, -2, -1, 1, 2, 3))
            events.append(NewEvent(sku, Kind.ADJUST, qty, reason="bench"))
    return events


def hub_rows(store: AgentStore, last_seq: int, source_id: int = 1) -> list[HubRow]:
    """The rows the hub stores for the agent's events 1..last_seq."""
    return [(source_id, *row) for row in store.events(1, last_seq)]


# -- (a) the raw SQLite limit -------------------------------------------------


def _fresh_hub_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(SCHEMA)
    return conn


def raw_apply(path: Path, rows: Sequence[HubRow], batch: int, netted: bool = False) -> float:
    """Apply ``rows`` to a fresh hub-schema file in batches; returns seconds.

    ``netted=False`` is the plain limit: one upsert per event. ``netted=True``
    calls the hub's :func:`apply_rows` (deltas summed per SKU per batch).
    """
    conn = _fresh_hub_db(path)
    chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    upserts = [[(WAREHOUSE, r[SKU_COLUMN], r[DELTA_COLUMN]) for r in c] for c in chunks]
    try:
        started = time.perf_counter()
        for chunk, upsert in zip(chunks, upserts, strict=True):
            conn.execute("BEGIN IMMEDIATE")
            if netted:
                apply_rows(conn, WAREHOUSE, chunk)
            else:
                conn.executemany(INSERT_EVENT, chunk)
                conn.executemany(UPSERT_STOCK, upsert)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
        (stored,) = conn.execute("SELECT count(*) FROM events").fetchone()
        if stored != len(rows):
            raise BenchError(f"raw apply stored {stored} of {len(rows)} events")
        return elapsed
    finally:
        conn.close()


# -- subprocesses ---------------------------------------------------------------


def _command(name: str, module: str) -> list[str]:
    """The console script beside this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]


class Child:
    """A subprocess whose stdout and stderr go to a log file."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self.started = time.perf_counter()
        self.started_wall = time.time()
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def check_alive(self) -> None:
        """Raise with the log's tail if the process has exited."""
        if self.proc.poll() is not None:
            tail = self.text()[-2000:]
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float) -> Any:
    deadline = time.perf_counter() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.perf_counter() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def start_hub(tmp: Path) -> tuple[Child, int]:
    """``stocksync-hub serve`` on 127.0.0.1 port 0; returns it and its port."""
    hub = Child(
        "hub",
        [
            *_command("stocksync-hub", "stocksync.hub.cli"),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(tmp / "hub.db"),
            "--insecure",
        ],
        tmp / "hub.log",
    )

    def port() -> int | None:
        hub.check_alive()
        m = re.search(r"serving on port (\d+)", hub.text())
        return int(m.group(1)) if m else None

    return hub, int(_wait_for(port, 60, "the hub to listen", 0.02))


def start_agent(tmp: Path, db: Path, port: int) -> Child:
    """``stocksync-agent run`` against the hub on ``port``."""
    return Child(
        "agent",
        [
            *_command("stocksync-agent", "stocksync.agent.cli"),
            "run",
            "--warehouse",
            WAREHOUSE,
            "--hub",
            f"127.0.0.1:{port}",
            "--db",
            str(db),
            "--insecure",
        ],
        tmp / "agent.log",
    )


class HubWatermark:
    """Reads the warehouse's current watermark from the hub's file, read-only."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)

    def __call__(self) -> int:
        try:
            row = self.conn.execute(_WATERMARK_SQL, (WAREHOUSE,)).fetchone()
        except sqlite3.OperationalError:  # tables not created yet
            return 0
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.conn.close()


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB, from /proc/<pid>/status."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def _logged_at(log_text: str, needle: str) -> float | None:
    """Wall-clock time of the first log line containing ``needle`` (ms resolution)."""
    for line in log_text.splitlines():
        if needle in line:
            try:
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            except ValueError:
                return None
            return stamp.timestamp()
    return None


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """Turn SIGTERM into SystemExit, so ``finally`` stops the subprocesses."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the run ------------------------------------------------------------------------


@dataclass
class _Progress:
    quiet: bool

    def __call__(self, message: str) -> None:
        if not self.quiet:
            click.echo(message, err=True)


def _percentile(values: Sequence[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _mb(kb: int) -> float:
    return kb / 1024


def _machine() -> dict[str, Any]:
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def run_bench(
    events: int, skus: int, batch: int, tmp: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Run all four measurements in ``tmp``; returns the result as plain data."""
    result: dict[str, Any] = {
        "events": events,
        "skus": skus,
        "machine": _machine(),
    }
    agent_db = tmp / "agent.db"

    say(f"setup: recording {events:,} events offline in the agent store (not timed)")
    started = time.perf_counter()
    with AgentStore(agent_db) as store:
        seqs = store.record_many(make_events(events, skus))
        rows = hub_rows(store, seqs[-1])
    result["setup_s"] = time.perf_counter() - started

    say(f"(a) raw sqlite3: {events:,} events in batches of {batch}")
    raw_s = raw_apply(tmp / "raw.db", rows, batch)
    netted_s = raw_apply(tmp / "raw-netted.db", rows, batch, netted=True)
    del rows
    for name in ("raw.db", "raw-netted.db"):
        for suffix in ("", "-wal", "-shm"):
            (tmp / (name + suffix)).unlink(missing_ok=True)
    result["raw"] = {
        "events_per_s": events / raw_s,
        "seconds": raw_s,
        "batch": batch,
        "upsert": "per event",
        "journal_mode": "wal",
        "synchronous": "FULL",
    }
    result["raw_netted"] = {
        "events_per_s": events / netted_s,
        "seconds": netted_s,
        "batch": batch,
        "upsert": "per distinct SKU per batch (hub apply_rows)",
    }

    agent_config = load(
        AgentConfig,
        flags={"warehouse": WAREHOUSE, "hub": "127.0.0.1:1", "db": str(agent_db), "insecure": True},
    )
    children: list[Child] = []
    watermark: HubWatermark | None = None
    try:
        say("(b) catch-up: starting the hub, then the agent")
        hub, port = start_hub(tmp)
        children.append(hub)
        watermark = HubWatermark(tmp / "hub.db")
        agent = start_agent(tmp, agent_db, port)
        children.append(agent)
        first_apply: float | None = None
        first_wm = 0
        deadline = agent.started + max(120.0, events / 1000)
        while True:
            wm = watermark()
            now = time.perf_counter()
            if wm and first_apply is None:
                first_apply, first_wm = now, wm
            if wm >= events:
                done = now
                break
            if now > deadline:
                raise BenchError(f"catch-up timed out at watermark {wm} of {events}")
            agent.check_alive()
            hub.check_alive()
            time.sleep(CATCHUP_POLL_S)
        assert first_apply is not None
        catchup_s = done - agent.started
        connected = _logged_at(agent.text(), "connected to")
        stream_s = done - first_apply
        result["catchup"] = {
            "events_per_s": events / catchup_s,
            "seconds": catchup_s,
            "connect_s": None if connected is None else connected - agent.started_wall,
            "first_apply_s": first_apply - agent.started,
            "first_apply_watermark": first_wm,
            "stream_events_per_s": (events - first_wm) / stream_s if stream_s > 0 else None,
            "agent_batch_max_events": agent_config.batch_max_events,
            "agent_window_events": agent_config.window_events,
        }
        result["ratio"] = result["catchup"]["events_per_s"] / result["raw"]["events_per_s"]
        if result["catchup"]["stream_events_per_s"] is not None:
            result["stream_ratio"] = (
                result["catchup"]["stream_events_per_s"] / result["raw"]["events_per_s"]
            )

        say(f"(c) idle RSS: letting the agent idle {IDLE_SECONDS:.0f} s")
        time.sleep(IDLE_SECONDS)
        agent.check_alive()
        agent_rss, agent_hwm = rss_kb(agent.pid)
        hub_rss, hub_hwm = rss_kb(hub.pid)
        result["rss_mib"] = {
            "agent_idle": _mb(agent_rss),
            "agent_peak": _mb(agent_hwm),
            "hub_idle": _mb(hub_rss),
            "hub_peak": _mb(hub_hwm),
        }

        say(f"(d) latency: {LATENCY_SAMPLES} single events, record -> applied at the hub")
        result["latency_ms"] = _latency_probe(agent_db, watermark, agent, hub)

        verified = _verify(agent_db, tmp / "hub.db")
        result["verified"] = verified
        if not verified:
            raise BenchError("the hub's on_hand differs from the agent's after the run")
    finally:
        if watermark is not None:
            watermark.close()
        for child in reversed(children):
            child.stop()
    result["targets"] = {
        "ratio": RATIO_TARGET,
        "agent_idle_rss_mb": IDLE_RSS_TARGET_MB,
        "latency_max_ms": LATENCY_TARGET_MS,
    }
    return result


def _latency_probe(
    agent_db: Path, watermark: HubWatermark, agent: Child, hub: Child
) -> dict[str, Any]:
    rng = random.Random(11)
    total: list[float] = []
    recording: list[float] = []
    with AgentStore(agent_db) as store:
        for i in range(LATENCY_SAMPLES):
            time.sleep(rng.uniform(0.02, 0.05))  # each event alone, never two in one batch
            event = NewEvent(f"SKU-{i % 7:06d}", Kind.RECEIVE, 1)
            t0 = time.perf_counter()
            seq = store.record(event)
            t1 = time.perf_counter()
            deadline = t0 + 10
            while watermark() < seq:
                if time.perf_counter() > deadline:
                    agent.check_alive()
                    hub.check_alive()
                    raise BenchError(f"event seq {seq} not applied at the hub within 10 s")
                time.sleep(0.001)
            t2 = time.perf_counter()
            recording.append((t1 - t0) * 1000)
            total.append((t2 - t0) * 1000)
    return {
        "count": len(total),
        "p50": _percentile(total, 50),
        "p95": _percentile(total, 95),
        "max": max(total),
        "record_p50": _percentile(recording, 50),
        "record_max": max(recording),
        "samples": total,
    }


def _verify(agent_db: Path, hub_db: Path) -> bool:
    """The hub's on_hand for the warehouse equals the agent's, SKU by SKU."""
    with contextlib.closing(sqlite3.connect(f"file:{agent_db}?mode=ro", uri=True)) as a:
        mine = {s: q for s, q in a.execute("SELECT sku, on_hand FROM stock") if q}
    with contextlib.closing(sqlite3.connect(f"file:{hub_db}?mode=ro", uri=True)) as h:
        theirs = {
            s: q
            for s, q in h.execute(
                "SELECT sku, on_hand FROM stock WHERE warehouse = ?", (WAREHOUSE,)
            )
            if q
        }
    return mine == theirs


# -- output -----------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def format_table(r: dict[str, Any]) -> str:
    """The human report."""
    m, raw, net, cu = r["machine"], r["raw"], r["raw_netted"], r["catchup"]
    rss, lat = r["rss_mib"], r["latency_ms"]
    lines = [
        f"stocksync bench: {r['events']:,} events over {r['skus']:,} SKUs, one agent -> one hub",
        f"machine: {m['cpus']} CPUs, {m['memory_gib']} GiB, Python {m['python']}, "
        f"SQLite {m['sqlite']}, load avg at start {m['load_avg_at_start']}",
        "",
        f"{'measurement':<58}{'events/s':>12}{'seconds':>10}",
        f"{'(a) raw sqlite3 limit: log insert + upsert PER EVENT,':<58}"
        f"{raw['events_per_s']:>12,.0f}{raw['seconds']:>10.3f}",
        f"{'    batches of ' + str(raw['batch']) + ', one tx each, WAL, synchronous=FULL':<58}",
        f"{'    for reference: the hub apply_rows (nets deltas per SKU)':<58}"
        f"{net['events_per_s']:>12,.0f}{net['seconds']:>10.3f}",
        f"{'(b) catch-up: agent start -> hub applied the last event':<58}"
        f"{cu['events_per_s']:>12,.0f}{cu['seconds']:>10.3f}",
    ]
    if cu["connect_s"] is not None:
        lines.append(
            f"{'    agent start -> connected (Welcome, from its log)':<58}{'':>12}"
            f"{cu['connect_s']:>10.3f}"
        )
    lines.append(
        f"{'    agent start -> first batch applied at the hub':<58}{'':>12}"
        f"{cu['first_apply_s']:>10.3f}"
    )
    if cu["stream_events_per_s"] is not None:
        lines.append(
            f"{'    streaming rate after the first applied batch':<58}"
            f"{cu['stream_events_per_s']:>12,.0f}{cu['seconds'] - cu['first_apply_s']:>10.3f}"
        )
    lines.append(
        f"    (agent batch_max_events={cu['agent_batch_max_events']}, "
        f"window_events={cu['agent_window_events']})"
    )
    ratio = r["ratio"]
    lines += [
        "",
        f"ratio catch-up / raw: {ratio:.3f}   target >= {RATIO_TARGET}: "
        f"{_verdict(ratio >= RATIO_TARGET)}",
    ]
    if "stream_ratio" in r:
        lines.append(f"  (streaming rate / raw, agent startup excluded: {r['stream_ratio']:.3f})")
    agent_ok = rss["agent_idle"] <= IDLE_RSS_TARGET_MB
    lat_ok = lat["max"] < LATENCY_TARGET_MS
    lines += [
        "",
        f"{'RSS (MiB)':<22}{'idle':>8}{'peak':>8}",
        f"{'agent':<22}{rss['agent_idle']:>8.1f}{rss['agent_peak']:>8.1f}"
        f"   idle target <= {IDLE_RSS_TARGET_MB:.0f} MB: {_verdict(agent_ok)}",
        f"{'hub':<22}{rss['hub_idle']:>8.1f}{rss['hub_peak']:>8.1f}",
        "",
        f"latency record -> applied at the hub ({lat['count']} events, 1 ms polling):",
        f"  p50 {lat['p50']:.1f} ms   p95 {lat['p95']:.1f} ms   max {lat['max']:.1f} ms"
        f"   target < {LATENCY_TARGET_MS:.0f} ms: {_verdict(lat_ok)}",
        f"  of which AgentStore.record (fsync): p50 {lat['record_p50']:.1f} ms, "
        f"max {lat['record_max']:.1f} ms",
        "",
        f"hub on_hand equals the agent's: {'yes' if r['verified'] else 'NO'}",
        f"setup (recording offline, not timed): {r['setup_s']:.1f} s",
    ]
    return "\n".join(lines)


@click.command()
@click.option(
    "--events",
    type=click.IntRange(min=1),
    default=300_000,
    show_default=True,
    help="Events the agent catches up on.",
)
@click.option(
    "--skus",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Distinct SKUs the events spread over.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Events per transaction in the raw sqlite3 limit.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(events: int, skus: int, batch: int, as_json: bool) -> None:
    """Measure catch-up throughput against the raw SQLite limit.

    Runs, on this machine: (a) plain sqlite3 applying the events in batches
    (WAL, synchronous=FULL, one upsert per event); (b) a real hub and agent
    subprocess catching up EVENTS recorded offline; (c) the idle agent's and
    hub's RSS; (d) record -> applied latency of single events. Prints events/s
    of (a) and (b) and their ratio (target >= 0.5).

    The agent runs with its usual settings; STOCKSYNC_AGENT_* variables in
    the environment reach it.

    Example:

        stocksync-hub bench --events 300000
    """
    say = _Progress(quiet=as_json)
    with (
        _sigterm_exits(),
        tempfile.TemporaryDirectory(prefix="stocksync-bench-") as tmp,
    ):
        result = run_bench(events, skus, batch, Path(tmp), say)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_table(result))
