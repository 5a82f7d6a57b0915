"""``stocksync-bench`` and ``stocksync-hub bench`` (tools/benchmarks/): it runs end to end and reports sanely.

One small run of the real command (3,000 events, 50 SKUs, each measurement
twice) as a subprocess;
the tests check the JSON it prints is complete and self-consistent, that the
human table renders it, and that SIGTERM or Ctrl-C stops its hub and agent
subprocesses. No test asserts speed: this machine is shared.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import HUB, run_cli, wait_until

from stocksync.events import EventRow, validate_new_event
from stocksync.tools.benchmarks.catchup import format_table, make_events, raw_apply


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    """The JSON of one small real run."""
    proc = run_cli(HUB, "bench", "--events", "3000", "--skus", "50", "--repeat", "2", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return dict(json.loads(proc.stdout))


def test_rates_are_positive_and_the_ratio_is_catchup_over_raw(result: dict[str, Any]) -> None:
    assert result["events"] == 3000
    assert result["skus"] == 50
    raw, catchup = result["raw"], result["catchup"]
    assert raw["events_per_s"] > 0
    assert result["raw_netted"]["events_per_s"] > 0
    assert catchup["events_per_s"] > 0
    assert math.isclose(result["ratio"], catchup["events_per_s"] / raw["events_per_s"])
    # Each rate is the event count over its own seconds.
    assert math.isclose(raw["events_per_s"], 3000 / raw["seconds"])
    assert math.isclose(catchup["events_per_s"], 3000 / catchup["seconds"])


def test_the_best_of_the_repeated_runs_is_reported(result: dict[str, Any]) -> None:
    assert result["repeat"] == 2
    for key in ("raw", "raw_netted", "catchup"):
        runs = result[key]["runs_events_per_s"]
        assert len(runs) == 2
        assert all(rate > 0 for rate in runs)
        assert result[key]["events_per_s"] == max(runs)


def test_the_raw_side_says_it_upserts_per_event(result: dict[str, Any]) -> None:
    assert result["raw"]["upsert"] == "per event"
    assert result["raw"]["batch"] == 500
    assert result["raw"]["synchronous"] == "FULL"
    assert result["raw"]["journal_mode"] == "wal"


def test_catchup_overheads_are_within_the_catchup(result: dict[str, Any]) -> None:
    catchup = result["catchup"]
    assert 0 < catchup["first_apply_s"] <= catchup["seconds"]
    assert 0 < catchup["first_apply_watermark"] <= 3000
    if catchup["connect_s"] is not None:
        assert 0 < catchup["connect_s"] <= catchup["first_apply_s"]
    assert catchup["agent_cpu_s"] > 0
    assert catchup["hub_cpu_s"] >= 0


def test_rss_numbers_are_positive(result: dict[str, Any]) -> None:
    rss = result["rss_mib"]
    for key in ("agent_idle", "agent_peak", "hub_idle", "hub_peak"):
        assert rss[key] > 0, key
    assert rss["agent_peak"] >= rss["agent_idle"]
    assert rss["hub_peak"] >= rss["hub_idle"]


def test_every_latency_sample_is_recorded(result: dict[str, Any]) -> None:
    latency = result["latency_ms"]
    samples = latency["samples"]
    assert latency["count"] == len(samples) == 50
    assert all(s > 0 for s in samples)
    assert latency["max"] == max(samples)
    assert 0 < latency["p50"] <= latency["p95"] <= latency["max"]
    assert 0 < latency["record_p50"] <= latency["record_max"] <= latency["max"]
    assert 0 <= latency["sync_p50"] <= latency["sync_max"] <= latency["max"]


def test_the_hub_ends_with_the_agents_stock(result: dict[str, Any]) -> None:
    assert result["verified"] is True


def test_the_table_renders_the_result(result: dict[str, Any]) -> None:
    table = format_table(result)
    assert "raw sqlite3 limit" in table
    assert "PER EVENT" in table
    assert "ratio catch-up / raw" in table
    assert f"{result['ratio']:.3f}" in table
    assert "best of 2 runs" in table
    assert "agent" in table and "hub" in table
    assert "p95" in table


def test_the_workload_is_deterministic_and_valid() -> None:
    events = make_events(500, 20)
    assert events == make_events(500, 20)
    for event in events:
        validate_new_event(event)
    assert len({e.sku for e in events}) <= 20


def test_raw_apply_stores_every_event(tmp_path: Path) -> None:
    rows = [
        EventRow(seq, f"id-{seq}", f"SKU-{seq % 3}", 1, 2, 2, "", "", 0, 0)
        for seq in range(1, 1201)
    ]
    for netted in (False, True):
        db = tmp_path / f"raw-{netted}.db"
        assert raw_apply(db, rows, 500, netted=netted) > 0
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1200
            stock = dict(conn.execute("SELECT sku, on_hand FROM stock"))
        assert stock == {"SKU-0": 800, "SKU-1": 800, "SKU-2": 800}


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_hub_and_agent(sig: signal.Signals) -> None:
    bench = subprocess.Popen(
        [HUB, "bench", "--events", "2000", "--skus", "20"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert bench.stderr is not None
        for line in bench.stderr:  # progress lines; the RSS step idles 3 s
            if line.startswith("(c)"):
                break
        children = wait_until(lambda: len(_children(bench.pid)) == 2 and _children(bench.pid))
        bench.send_signal(sig)
        assert bench.wait(60) != 0
        deadline = time.monotonic() + 10
        while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(pid) for pid in children), "hub or agent left running"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(10)


def test_reserve_bench_sells_out_exactly_and_compares_with_echo(tmp_path: Path) -> None:
    from stocksync.tools.benchmarks import reserve as reserve_bench

    figures = reserve_bench.run(callers=20, attempts=300, units=100, workdir=tmp_path)
    assert figures["echo"]["codes"] == {"OK": 300}
    assert figures["reserve"]["codes"] == {"OK": 100, "RESOURCE_EXHAUSTED": 200}
    assert (figures["granted_units"], figures["held_at_hub"], figures["sellable_after"]) == (
        100,
        100,
        0,
    )
    assert figures["oversold"] == 0 and figures["check"] == "ok"
    assert figures["ratio"] > 0


def test_room_latency_bench_times_every_event_at_every_watcher(tmp_path: Path) -> None:
    from stocksync.tools.benchmarks import latency

    figures = room_latency_bench.run(watchers=3, events=30, rate=100, workdir=tmp_path)
    assert figures["samples"] == 90
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
