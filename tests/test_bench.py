"""``stocksync-bench`` and ``stocksync-hub bench`` (tools/benchmarks/): they run and report sanely.

One small run of ``stocksync-hub bench`` (3,000 events, 50 SKUs, each
measurement twice) as a subprocess: the JSON it prints is complete and
self-consistent, the human table renders it, and SIGTERM or Ctrl-C stops its
hub and agent subprocesses. Then every ``stocksync-bench`` scenario at a tiny
size, so the harness cannot rot: the shapes and invariants of what it
reports (every event counted, nothing oversold), never a timing — this
machine is shared. The NATS JetStream peer runs where NATS answers at
127.0.0.1:4222 and is skipped, saying why, where it does not.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import HUB, ctrl_c_reaches_it, run_cli, wait_until

from stocksync.cli_common import GC_GEN0_THRESHOLD
from stocksync.events import EventRow, validate_new_event
from stocksync.tools.benchmarks.catchup import format_table, make_events, raw_apply
from stocksync.tools.benchmarks.common import CpuMeter, collecting_as_a_daemon
from stocksync.tools.benchmarks.limits import DURABLE_METHOD, echo_server


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
        preexec_fn=ctrl_c_reaches_it,
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


# -- stocksync-bench: every scenario, tiny ---------------------------------------------

TINY: dict[str, dict[str, Any]] = {
    "ingest": {"agents": [1, 2], "events": 600},
    "catch-up": {"events": 2000, "skus": 50, "peer_events": 1000},
    "record": {"singles": 20, "processes": 2, "rows": 500},
    "latency": {"watchers": 3, "rate": 200, "seconds": 0.3, "via": ["edge", "edge-sse", "hub"]},
    "wan": {"events": 1000, "delay_ms": 20, "live_events": 5, "live_rate": 50},
    "fanout": {"rooms": [1, 3], "watchers": 6, "updates": 30, "rate": 200},
    "slow-watchers": {"watchers": 20, "updates": 30, "rate": 100, "slow_share": 0.1, "rounds": 2},
    "reserve": {"callers": 20, "attempts": 300, "units": 100, "rounds": 2},
    "footprint": {"skus": 50, "warehouses": 2, "idle_s": 0.5},
}


@pytest.fixture(scope="module")
def peer_reason() -> str:
    """'' where the NATS JetStream peer can run, else why not."""
    from stocksync.tools.benchmarks.peer import unavailable

    return unavailable()


def _scenario(name: str, peer: str = "--no-peer") -> dict[str, Any]:
    from stocksync.tools.benchmarks.cli import run_scenario

    result = run_scenario(name, TINY[name], peer).as_dict()
    assert result["scenario"] == name
    assert result["rows"], result
    for row in result["rows"]:
        assert row["value"] >= 0, row
        for against in row["against"]:
            assert against["value"] > 0 or row["unit"] == "units", row
            assert against["ratio"] == pytest.approx(row["value"] / against["value"])
    json.dumps(result)  # plain data, as --out writes it
    return result


def test_every_scenario_has_tiny_and_quick_and_full_sizes() -> None:
    from stocksync.tools.benchmarks.cli import PRESETS, SCENARIOS

    assert set(TINY) == set(SCENARIOS) == set(PRESETS)
    for name, sizes in PRESETS.items():
        assert set(sizes["quick"]) == set(sizes["full"]) == set(TINY[name]), name


def test_ingest_counts_every_event_from_every_agent() -> None:
    result = _scenario("ingest")
    for run in result["details"]["runs"]:
        assert run["events"] == 600 // run["agents"] * run["agents"]
        assert run["record_to_applied"]["count"] > 0
        assert run["hub_cpu_pct"] >= 0 and run["agent_cpu_pct_avg"] >= 0
    assert [r["agents"] for r in result["details"]["runs"]] == [1, 2]
    for run in result["details"]["backlog"]:
        assert run["events"] == 600 // run["agents"] * run["agents"]
        assert run["streaming_events_per_s"] is None or run["streaming_events_per_s"] > 0
    assert [r["agents"] for r in result["details"]["backlog"]] == [1, 2]


def test_catchup_is_held_against_raw_sqlite_bidi_and_the_peer(peer_reason: str) -> None:
    result = _scenario("catch-up", peer_reason)
    details = result["details"]
    assert details["verified"] is True
    assert details["bidi"]["events"] == 2000
    names = [a["name"] for a in result["rows"][0]["against"]]
    assert names[:2] == ["raw sqlite3 batched apply", "grpc.aio bidi stream, same batches"]
    if not peer_reason:
        assert details["peer"]["events"] == 1000
        assert result["rows"][0]["against"][2]["kind"] == "peer"


def test_record_stores_every_row_on_both_sides() -> None:
    details = _scenario("record")["details"]
    assert details["import"]["stored"] == details["raw_import"]["rows"] == 500
    assert details["local_api"]["call"]["count"] == 20
    assert details["cli"]["call"]["count"] == details["raw_process"]["call"]["count"] == 2


def test_latency_times_every_event_at_the_hub_and_every_watcher(peer_reason: str) -> None:
    result = _scenario("latency", peer_reason)
    # The limit: the same one-event batches, one per 5 ms, over a bare bidi stream.
    assert result["details"]["transport"]["count"] == 60
    ours = result["details"]["stocksync"]
    # Through a room edge (gRPC and Server-Sent Events), and at the hub itself.
    assert sorted(ours) == [
        "SSE watchers at a room edge",
        "gRPC watchers at a room edge",
        "gRPC watchers at the hub",
    ]
    runs = list(ours.values()) + ([] if peer_reason else [result["details"]["peer"]])
    for figures in runs:
        events = figures["events"]
        assert events == 60
        assert figures["applied"]["count"] == events
        assert figures["watchers"]["count"] == 3 * events
        assert figures["watchers"]["watchers_missing_events"] == 0
        for part in ("applied", "watchers"):
            f = figures[part]
            assert 0 < f["p50_ms"] <= f["p99_ms"] <= f["p999_ms"] <= f["max_ms"]
        # What the recording stretch cost: the machine, and every process doing the work.
        cpu = figures["cpu"]
        assert cpu["seconds"] > 0 and cpu["cores"] >= 1
        # Recording, applying and watching keep the machine busy: never nil.
        assert 0 < cpu["machine_busy_pct"] <= 100 and 0 <= cpu["machine_steal_pct"] <= 100
        assert all(pct >= 0 for pct in cpu["processes"].values())
        # Every process's run-queue delay is taken alongside its CPU.
        assert set(cpu["waits"]) == set(cpu["processes"])
        for wait in cpu["waits"].values():
            assert wait["waited_pct"] >= 0 and wait["mean_wait_us"] >= 0
        # The daemons doing the work were woken (stocksync's hub and agent, the peer's consumer).
        daemons = {"hub", "agent", "consumer"} & set(cpu["waits"])
        assert daemons and all(cpu["waits"][name]["runs_per_s"] > 0 for name in daemons)
    for where, figures in ours.items():
        named = set(figures["cpu"]["processes"])
        assert {"hub", "agent", "watchers' process"} <= named
        assert ("edge" in named) == ("edge" in where)
    if not peer_reason:
        assert "consumer" in result["details"]["peer"]["cpu"]["processes"]
    # Each run's CPU is in the table, after its latencies.
    machine_rows = [r for r in result["rows"] if "machine busy" in r["measure"]]
    assert len(machine_rows) == len(runs)


def test_the_peer_pipeline_applies_every_event(peer_reason: str, tmp_path: Path) -> None:
    if peer_reason:
        pytest.skip(f"the NATS peer cannot run here: {peer_reason}")
    from stocksync.tools.benchmarks import peer

    rows = [
        EventRow(seq, f"id-{seq}", f"SKU-{seq % 3}", 1, 2, 2, "", "", 0, 0) for seq in range(1, 301)
    ]
    figures = peer.catchup(rows, tmp_path)
    assert figures["events"] == 300
    with sqlite3.connect(tmp_path / "peer-hub.db") as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 300
        stock = dict(conn.execute("SELECT sku, on_hand FROM stock"))
    assert stock == {"SKU-0": 200, "SKU-1": 200, "SKU-2": 200}
    with sqlite3.connect(tmp_path / "peer-outbox.db") as conn:
        assert conn.execute("SELECT count(*) FROM outbox WHERE published = 0").fetchone()[0] == 0


def test_wan_catches_up_through_the_proxy_and_times_live_events() -> None:
    result = _scenario("wan")
    for side in ("loopback", "wan"):
        assert result["details"][side]["live"]["count"] == 5
    assert result["rows"][1]["against"][0]["value"] == 20


def test_fanout_delivers_every_change_to_every_watcher_both_ways() -> None:
    result = _scenario("fanout")
    runs = result["details"]["runs"]
    assert [r["rooms"] for r in runs] == [1, 3]
    for run in runs:
        for mode in ("rooms_servicer", "plain"):
            figures = run[mode]
            assert figures["pairs"] == figures["expected_pairs"] > 0
            # What publishing cost: the servicer's process and the watchers'.
            cpu = figures["cpu"]
            assert set(cpu["processes"]) == set(cpu["waits"])
            assert set(cpu["processes"]) == {"servicer (this process)", "watchers' process"}
            assert all(w["runs_per_s"] > 0 for w in cpu["waits"].values())
    labels = [row["measure"] for row in result["rows"]]
    assert (
        labels.count("CPU while publishing: machine busy, of " + str(os.cpu_count()) + " cores")
        == 2
    )
    # Plain sends every message: each watcher gets its room's every change.
    one_room = runs[0]["plain"]
    assert one_room["messages"] == 6 * 30


def test_a_servicer_measured_in_the_bench_collects_garbage_as_the_daemons_do() -> None:
    before = gc.get_threshold()
    with collecting_as_a_daemon():
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_cpu_meter_sees_two_processes_wait_for_one_core() -> None:
    """Two busy processes held to one core take turns on it: each is ready
    to run about half the time it is not running, and the meter says so."""
    core = min(os.sched_getaffinity(0))
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for child in busy:
            os.sched_setaffinity(child.pid, {core})
        time.sleep(0.2)
        with CpuMeter({f"busy{i}": child.pid for i, child in enumerate(busy)}) as meter:
            time.sleep(1.0)
    finally:
        for child in busy:
            child.kill()
            child.wait()
    for name in ("busy0", "busy1"):
        # One core between two: neither runs much more than half the time,
        # and each waits for the core while the other has it.
        assert meter.figures["processes"][name] < 75
        wait = meter.figures["waits"][name]
        assert wait["waited_pct"] > 20
        assert wait["mean_wait_us"] > 0 and wait["runs_per_s"] > 0


def test_slow_watchers_leave_the_others_every_change() -> None:
    details = _scenario("slow-watchers")["details"]
    # Two rounds of each, in turn.
    assert len(details["without"]) == len(details["with_slow"]) == 2
    for key in ("without", "with_slow"):
        for run in details[key]:
            assert run["pairs"] == run["expected_pairs"] > 0
    # 2 of 20 watchers are slow: the others' pairs are 18 x 30.
    assert {r["expected_pairs"] for r in details["with_slow"]} == {18 * 30}
    assert {r["expected_pairs"] for r in details["without"]} == {20 * 30}


def test_reserve_sells_out_exactly_and_compares_with_echo() -> None:
    result = _scenario("reserve")
    rounds = result["details"]["rounds"]
    assert len(rounds) == 2  # each on a fresh hub
    for figures in rounds:
        assert figures["echo"]["codes"] == {"OK": 300}
        assert figures["reserve"]["codes"] == {"OK": 100, "RESOURCE_EXHAUSTED": 200}
        assert (figures["granted_units"], figures["held_at_hub"], figures["sellable_after"]) == (
            100,
            100,
            0,
        )
        assert figures["oversold"] == 0 and figures["check"] == "ok"
        assert figures["durable_echo"]["codes"] == {"OK": 300}
        assert figures["echo"]["server_cpu_us_per_call"] > 0
        assert figures["durable_echo"]["server_cpu_us_per_call"] > 0
        assert figures["reserve"]["server_cpu_us_per_call"] > 0
    # The row is the median of the rounds (of two: their mean).
    rates = [f["reserve"]["calls_per_s"] for f in rounds]
    assert result["rows"][0]["value"] == pytest.approx(sum(rates) / 2)


def test_the_durable_echo_answers_each_call_once_it_is_committed(tmp_path: Path) -> None:
    async def calls(target: str) -> list[bytes]:
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_unary(DURABLE_METHOD)
            return list(await asyncio.gather(*(call(f"c{i}".encode()) for i in range(50))))

    db = tmp_path / "durable.db"
    with echo_server(db) as server:
        answers = asyncio.run(calls(server.target))
        with sqlite3.connect(db) as conn:
            committed = sorted(row[0] for row in conn.execute("SELECT body FROM calls"))
    assert sorted(answers) == committed == sorted(f"c{i}".encode() for i in range(50))


def test_footprint_measures_both_daemons() -> None:
    details = _scenario("footprint")["details"]
    assert details["idle"]["agent_rss_mib"] > 0
    assert details["idle"]["agent_cpu_pct"] >= 0
    assert details["loaded"]["stock_rows"] == 100
    assert details["loaded"]["hub_peak_mib"] >= details["loaded"]["hub_rss_mib"] > 0


BENCH = str(Path(HUB).with_name("stocksync-bench"))


def test_the_command_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    params = [f"--param={k}={v}" for k, v in TINY["reserve"].items()]
    proc = subprocess.run(
        [BENCH, "reserve", *params, "--no-peer", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "grpc.aio unary echo" in proc.stdout and "held against" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["machine"]) >= {"nproc", "ram_gib", "cpu_model", "load_avg"}
    assert set(report["versions"]) >= {"python", "grpcio", "sqlite"}
    assert report["versions"]["grpcio"]
    assert [s["scenario"] for s in report["scenarios"]] == ["reserve"]
    assert report["scenarios"][0]["params"]["callers"] == 20


def test_a_size_the_scenario_lacks_is_one_line_error() -> None:
    proc = subprocess.run(
        [BENCH, "reserve", "--param", "watchers=5"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "watchers: not a size of reserve" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_one_value_for_a_list_size_is_a_list_of_one() -> None:
    from stocksync.tools.benchmarks.cli import PRESETS, _like, _parse_param

    key, value = _parse_param("agents=10")
    assert (key, value) == ("agents", 10)
    assert isinstance(PRESETS["ingest"]["full"]["agents"], list | tuple)
    assert _like(PRESETS["ingest"]["full"]["agents"], value) == [10]
    assert _like(PRESETS["ingest"]["full"]["agents"], _parse_param("agents=1,10")[1]) == [1, 10]
    assert _like(PRESETS["reserve"]["full"]["callers"], 5) == 5
