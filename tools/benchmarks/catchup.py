"""Catch-up throughput against raw SQLite (``stocksync-bench catch-up``, ``stocksync-hub bench``).

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
import shutil
import signal
import sqlite3
import statistics
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
from stocksync.events import EventRow, Kind, NewEvent
from stocksync.hub.sqlite_schema import MIGRATIONS
from stocksync.hub.sqlite_store import UPSERT_STOCK, apply_rows, insert_event_sql
from stocksync.tools.benchmarks.common import Against, Row, Scenario, cpu_s, ram_gib, rss_kb
from stocksync.tools.procs import AgentChild, Child, ChildDied, HubChild

__all__ = ["bench", "run_bench", "scenario"]

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


def hub_rows(store: AgentStore, last_seq: int) -> list[EventRow]:
    """The rows the hub stores for the agent's events 1..last_seq."""
    return store.events(1, last_seq)


# -- (a) the raw SQLite limit -------------------------------------------------


def _fresh_hub_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    for script in MIGRATIONS:  # the hub's tables as they are now
        conn.executescript(script)
    return conn


def raw_apply(path: Path, rows: Sequence[EventRow], batch: int, netted: bool = False) -> float:
    """Apply ``rows`` to a fresh hub-schema file in batches; returns seconds.

    ``netted=False`` is the plain limit: one upsert per event. ``netted=True``
    calls the hub's :func:`apply_rows` (deltas summed per SKU per batch).
    """
    conn = _fresh_hub_db(path)
    chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    upserts = [[(WAREHOUSE, r.sku, r.delta) for r in c] for c in chunks]
    # The raw limit binds plain tuples: sqlite3's fastest path, untimed conversion.
    plain = [[tuple(r) for r in c] for c in chunks]
    insert = insert_event_sql(1)
    try:
        started = time.perf_counter()
        for chunk, rows_of_chunk, upsert in zip(chunks, plain, upserts, strict=True):
            conn.execute("BEGIN IMMEDIATE")
            if netted:
                apply_rows(conn, 1, WAREHOUSE, chunk)
            else:
                conn.executemany(insert, rows_of_chunk)
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


def start_hub(tmp: Path) -> tuple[Child, int]:
    """``stocksync-hub serve`` on 127.0.0.1 port 0; returns it and its port."""
    hub = HubChild(tmp / "hub.db", tmp / "hub.log")
    try:
        return hub, hub.wait_ready(60)
    except (ChildDied, TimeoutError) as e:
        hub.stop()
        raise BenchError(str(e)) from None


def start_agent(tmp: Path, db: Path, port: int) -> Child:
    """``stocksync-agent run`` against the hub on ``port``."""
    return AgentChild(WAREHOUSE, db, f"127.0.0.1:{port}", tmp / "agent.log")


class HubWatermark:
    """Reads the warehouse's current watermark from the hub's file, read-only."""

    def __init__(self, path: Path, warehouse: str = WAREHOUSE) -> None:
        self.conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False
        )
        self.warehouse = warehouse

    def __call__(self) -> int:
        try:
            row = self.conn.execute(_WATERMARK_SQL, (self.warehouse,)).fetchone()
        except sqlite3.OperationalError:  # tables not created yet
            return 0
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.conn.close()


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
    return {
        "cpus": os.cpu_count(),
        "memory_gib": ram_gib(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _setup(agent_db: Path, events: int, skus: int) -> list[EventRow]:
    """Record the events offline in a fresh agent store; returns the hub's rows."""
    with AgentStore(agent_db) as store:
        seqs = store.record_many(make_events(events, skus))
        return hub_rows(store, seqs[-1])


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of ``runs``, with every run's rate under ``runs_events_per_s``."""
    best = dict(max(runs, key=lambda r: float(r["events_per_s"])))
    best["runs_events_per_s"] = [r["events_per_s"] for r in runs]
    return best


def measure_raw(tmp: Path, rows: Sequence[EventRow], batch: int, repeat: int) -> dict[str, Any]:
    """(a): the plain limit, and the hub's netted apply_rows for reference; best of ``repeat``."""
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "raw_netted": []}
    for _ in range(repeat):
        for key, netted, upsert in (
            ("raw", False, "per event"),
            ("raw_netted", True, "per distinct SKU per batch (hub apply_rows)"),
        ):
            path = tmp / f"{key}.db"
            seconds = raw_apply(path, rows, batch, netted=netted)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            runs[key].append(
                {
                    "events_per_s": len(rows) / seconds,
                    "seconds": seconds,
                    "batch": batch,
                    "upsert": upsert,
                    "journal_mode": "wal",
                    "synchronous": "FULL",
                }
            )
    return {key: _best(results) for key, results in runs.items()}


def measure_catchup(
    hub: Child, agent: Child, watermark: HubWatermark, events: int
) -> dict[str, Any]:
    """(b): poll the hub's watermark from the agent's start until it reaches ``events``."""
    first_apply: float | None = None
    first_wm = 0
    deadline = agent.started + max(120.0, events / 1000)
    while True:
        wm = watermark()
        now = time.perf_counter()
        if wm and first_apply is None:
            first_apply, first_wm = now, wm
        if wm >= events:
            break
        if now > deadline:
            raise BenchError(f"catch-up timed out at watermark {wm} of {events}")
        agent.check_alive()
        hub.check_alive()
        time.sleep(CATCHUP_POLL_S)
    agent_cpu, hub_cpu = cpu_s(agent.pid), cpu_s(hub.pid)
    assert first_apply is not None
    seconds = now - agent.started
    log = agent.text()
    connected = _logged_at(log, "connected to")
    snapshot_sent = _logged_at(log, "sent snapshot of")
    stream_s = now - first_apply
    return {
        "events_per_s": events / seconds,
        "seconds": seconds,
        "connect_s": None if connected is None else connected - agent.started_wall,
        "snapshot_s": (
            None if connected is None or snapshot_sent is None else snapshot_sent - connected
        ),
        "first_apply_s": first_apply - agent.started,
        "first_apply_watermark": first_wm,
        "stream_events_per_s": (events - first_wm) / stream_s if stream_s > 0 else None,
        "agent_cpu_s": agent_cpu,
        "hub_cpu_s": hub_cpu,
    }


def measure_rss(agent: Child, hub: Child) -> dict[str, float]:
    """(c): both processes' RSS after :data:`IDLE_SECONDS` of idling."""
    time.sleep(IDLE_SECONDS)
    agent.check_alive()
    hub.check_alive()
    agent_rss, agent_hwm = rss_kb(agent.pid)
    hub_rss, hub_hwm = rss_kb(hub.pid)
    return {
        "agent_idle": _mb(agent_rss),
        "agent_peak": _mb(agent_hwm),
        "hub_idle": _mb(hub_rss),
        "hub_peak": _mb(hub_hwm),
    }


def _catchup_once(
    run_dir: Path, base_db: Path, events: int, children: list[Child]
) -> tuple[dict[str, Any], Child, Child, HubWatermark]:
    """(b) once, in ``run_dir``: a fresh hub, and an agent on a copy of the store.

    The hub and agent are left running (and appended to ``children``).
    """
    run_dir.mkdir()
    agent_db = run_dir / "agent.db"
    shutil.copyfile(base_db, agent_db)
    hub, port = start_hub(run_dir)
    children.append(hub)
    watermark = HubWatermark(run_dir / "hub.db")
    try:
        hub_cpu_before = cpu_s(hub.pid)
        agent = start_agent(run_dir, agent_db, port)
        children.append(agent)
        catchup = measure_catchup(hub, agent, watermark, events)
    except BaseException:
        watermark.close()
        raise
    catchup["hub_cpu_s"] -= hub_cpu_before
    return catchup, hub, agent, watermark


def run_bench(
    events: int,
    skus: int,
    batch: int,
    tmp: Path,
    say: Callable[[str], None],
    repeat: int = 1,
    with_rows: Callable[[list[EventRow]], None] | None = None,
) -> dict[str, Any]:
    """Run all four measurements in ``tmp``; returns the result as plain data.

    With ``repeat`` > 1, (a) and (b) run that many times each and the fastest
    run of each is reported (every run's rate is kept); (c) and (d) use the
    hub and agent of the last catch-up.
    """
    result: dict[str, Any] = {
        "events": events,
        "skus": skus,
        "repeat": repeat,
        "machine": _machine(),
    }
    base_db = tmp / "agent-offline.db"

    say(f"setup: recording {events:,} events offline in an agent store (not timed)")
    started = time.perf_counter()
    rows = _setup(base_db, events, skus)
    result["setup_s"] = time.perf_counter() - started

    say(f"(a) raw sqlite3: {events:,} events in batches of {batch}, {repeat}x")
    result.update(measure_raw(tmp, rows, batch, repeat))
    if with_rows is not None:
        with_rows(rows)
    del rows

    children: list[Child] = []
    watermark: HubWatermark | None = None
    try:
        runs = []
        for i in range(repeat):
            say(f"(b) catch-up {i + 1}/{repeat}: a fresh hub, then the agent")
            if watermark is not None:  # the previous catch-up: stop it, free its disk
                watermark.close()
                for child in reversed(children):
                    child.stop()
                children.clear()
                shutil.rmtree(tmp / f"catchup-{i - 1}")
            catchup, hub, agent, watermark = _catchup_once(
                tmp / f"catchup-{i}", base_db, events, children
            )
            runs.append(catchup)
        catchup = _best(runs)
        config = load(AgentConfig, flags={"warehouse": WAREHOUSE, "insecure": True})
        catchup["agent_max_batch_events"] = config.max_batch_events
        catchup["agent_window_events"] = config.window_events
        result["catchup"] = catchup
        raw_rate = result["raw"]["events_per_s"]
        result["ratio"] = catchup["events_per_s"] / raw_rate
        if catchup["stream_events_per_s"] is not None:
            result["stream_ratio"] = catchup["stream_events_per_s"] / raw_rate

        say(f"(c) idle RSS: letting the agent idle {IDLE_SECONDS:.0f} s")
        result["rss_mib"] = measure_rss(agent, hub)

        say(f"(d) latency: {LATENCY_SAMPLES} single events, record -> applied at the hub")
        assert watermark is not None
        agent_db = tmp / f"catchup-{repeat - 1}" / "agent.db"
        result["latency_ms"] = _latency_probe(agent_db, watermark, agent, hub)

        result["verified"] = _verify(agent_db, tmp / f"catchup-{repeat - 1}" / "hub.db")
        if not result["verified"]:
            raise BenchError("the hub's on_hand differs from the agent's after the run")
    finally:
        if watermark is not None:
            watermark.close()
        for child in reversed(children):
            child.stop()
    result["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
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
    synced = [t - r for t, r in zip(total, recording, strict=True)]
    return {
        "count": len(total),
        "p50": _percentile(total, 50),
        "p95": _percentile(total, 95),
        "max": max(total),
        "record_p50": _percentile(recording, 50),
        "record_p95": _percentile(recording, 95),
        "record_max": max(recording),
        "sync_p50": _percentile(synced, 50),
        "sync_p95": _percentile(synced, 95),
        "sync_max": max(synced),
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


def _rs(entry: dict[str, Any]) -> tuple[float, float]:
    return float(entry["events_per_s"]), float(entry["seconds"])


def _row(label: str, rate: float | None = None, seconds: float | None = None) -> str:
    return (
        f"{label:<60}{'' if rate is None else f'{rate:,.0f}':>11}"
        f"{'' if seconds is None else f'{seconds:.3f}':>9}"
    )


def _runs(entry: dict[str, Any]) -> str | None:
    rates = entry.get("runs_events_per_s", [])
    if len(rates) < 2:
        return None
    return "    runs: " + ", ".join(f"{x:,.0f}" for x in rates) + " events/s; the best is shown"


def format_table(r: dict[str, Any]) -> str:
    """The human report."""
    m, raw, net, cu = r["machine"], r["raw"], r["raw_netted"], r["catchup"]
    rss, lat = r["rss_mib"], r["latency_ms"]
    events = r["events"]
    best = f", best of {r['repeat']} runs each" if r.get("repeat", 1) > 1 else ""
    lines: list[str | None] = [
        f"stocksync bench: {events:,} events over {r['skus']:,} SKUs, one agent -> one hub{best}",
        f"machine: {m['cpus']} CPUs, {m['memory_gib']} GiB, Python {m['python']}, "
        f"SQLite {m['sqlite']}; load avg {m['load_avg_at_start']} at start, "
        f"{r.get('load_avg_at_end')} at end",
        "",
        _row("measurement", None, None)[:60] + f"{'events/s':>11}{'seconds':>9}",
        _row("(a) raw sqlite3 limit: log insert + one upsert PER EVENT,", *_rs(raw)),
        f"    batches of {raw['batch']}, one transaction each, WAL, synchronous=FULL",
        _runs(raw),
        _row("    for reference: hub apply_rows (nets deltas per SKU/batch)", *_rs(net)),
        _row("(b) catch-up: agent start -> hub applied the last event", *_rs(cu)),
        _runs(cu),
    ]
    if cu["connect_s"] is not None:
        lines.append(
            _row("    agent start -> connected (Welcome; from its log)", None, cu["connect_s"])
        )
    if cu["snapshot_s"] is not None:
        lines.append(
            _row(
                "    then first-contact snapshot computed and sent (its log)",
                None,
                cu["snapshot_s"],
            )
        )
    lines.append(
        _row("    agent start -> first batch applied at the hub", None, cu["first_apply_s"])
    )
    if cu["stream_events_per_s"] is not None:
        lines.append(
            _row(
                "    streaming rate after the first applied batch",
                cu["stream_events_per_s"],
                cu["seconds"] - cu["first_apply_s"],
            )
        )
    lines += [
        f"    CPU meanwhile: agent {cu['agent_cpu_s']:.2f} s (incl. its startup), "
        f"hub {cu['hub_cpu_s']:.2f} s = {cu['hub_cpu_s'] / events * 1e6:.1f} us/event",
        f"    agent settings: max_batch_events={cu['agent_max_batch_events']}, "
        f"window_events={cu['agent_window_events']}",
        "",
        f"ratio catch-up / raw: {r['ratio']:.3f}   target >= {RATIO_TARGET}: "
        f"{_verdict(r['ratio'] >= RATIO_TARGET)}",
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
        f"  AgentStore.record alone (local commit + fsync): p50 {lat['record_p50']:.1f}"
        f"   p95 {lat['record_p95']:.1f}   max {lat['record_max']:.1f} ms",
        f"  record returned -> applied at the hub:           p50 {lat['sync_p50']:.1f}"
        f"   p95 {lat['sync_p95']:.1f}   max {lat['sync_max']:.1f} ms",
        "",
        f"hub on_hand equals the agent's: {'yes' if r['verified'] else 'NO'}",
        f"setup (recording offline, not timed): {r['setup_s']:.1f} s",
    ]
    return "\n".join(line.rstrip() for line in lines if line is not None)


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
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run (a) and (b) this many times each and report the fastest of each.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(events: int, skus: int, batch: int, repeat: int, as_json: bool) -> None:
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
        try:
            result = run_bench(events, skus, batch, Path(tmp), say, repeat)
        except (ChildDied, TimeoutError) as e:
            raise BenchError(str(e)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_table(result))


def scenario(
    events: int,
    skus: int,
    tmp: Path,
    say: Callable[[str], None],
    peer_reason: str,
    peer_events: int | None = None,
) -> Scenario:
    """The ``catch-up`` scenario: :func:`run_bench` with the bidi limit and the peer.

    Args:
        peer_reason: '' to run the peer too, else why it is skipped.
        peer_events: the peer catches up on the first this many events (its
            rate barely depends on the backlog; a million takes it minutes).
    """
    from stocksync.tools.benchmarks import peer
    from stocksync.tools.benchmarks.limits import bidi_stream, sync_batches

    config = load(AgentConfig, flags={"warehouse": WAREHOUSE, "insecure": True})
    extra: dict[str, Any] = {}

    def limits(rows: list[EventRow]) -> None:
        say("catch-up: the same batches over a bare grpc.aio bidi stream")
        window = max(1, config.window_events // config.max_batch_events)
        extra["bidi"] = bidi_stream(sync_batches(rows, config.max_batch_events), window)
        if not peer_reason:
            share = rows[: peer_events or len(rows)]
            say(f"catch-up: the peer (outbox -> JetStream -> SQLite) on {len(share):,} of them")
            (tmp / "peer").mkdir()
            extra["peer"] = peer.catchup(share, tmp / "peer")

    r = run_bench(events, skus, 500, tmp, say, 1, with_rows=limits)
    r.update(extra)
    cu = r["catchup"]
    against = [
        Against("raw sqlite3 batched apply", r["raw"]["events_per_s"]),
        Against("grpc.aio bidi stream, same batches", extra["bidi"]["events_per_s"]),
    ]
    if "peer" in extra:
        peer_label = f"outbox->JetStream->SQLite, {extra['peer']['events']:,} ev"
        against.append(Against(peer_label, extra["peer"]["events_per_s"], "peer"))
    rows = [
        Row(
            f"{events:,} events: agent start -> applied",
            cu["events_per_s"],
            "ev/s",
            against,
            ">= 0.7 x raw sqlite3, >= 1.5 x peer",
        )
    ]
    if cu["stream_events_per_s"] is not None:
        rows.append(
            Row(
                "  streaming, after the first batch",
                cu["stream_events_per_s"],
                "ev/s",
                [Against("raw sqlite3 batched apply", r["raw"]["events_per_s"])],
            )
        )
    rows.append(Row("  hub CPU per event", cu["hub_cpu_s"] / events * 1e6, "us", []))
    return Scenario(
        "catch-up",
        {"events": events, "skus": skus, "batch": config.max_batch_events},
        rows,
        r,
        skipped=peer_reason and f"peer: {peer_reason}",
    )
