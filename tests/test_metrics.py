"""Every metric of the catalogue, scraped from a real hub and real agents.

A hub subprocess (``serve --http``, a webhook subscription to a receiver
that is down) and agent subprocesses (``run --metrics``) are driven like an
operator's day: events recorded, reservations made, committed, released,
expired, refused; a room watched; an oversold sale; duplicates, a gap, a lag
and a skewed clock spoken by hand (a raw gRPC stream). Each metric is read
from the real ``/metrics`` text through prometheus_client's parser: it
exists with its type and labels, and it moves when what it counts happens.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import run_cli, wait_until
from metrics_scrape import Scrape, check_spec
from test_sync_grpc import RawStream, batch, establish, event, hello

from stocksync.agent import metrics as agent_metrics
from stocksync.hub import edge_metrics
from stocksync.hub import metrics as hub_metrics
from stocksync.tools.procs import AgentChild, HubChild, command
from stocksync.v1 import sync_pb2

WH = "WH-LAX"
HOOK = "shop"


@dataclass
class Stack:
    hub: HubChild
    agent: AgentChild
    tmp: Path

    @property
    def hub_metrics(self) -> str:
        return f"http://127.0.0.1:{self.hub.http_port}/metrics"

    @property
    def agent_metrics(self) -> str:
        address = wait_until(lambda: self.agent.status().get("metrics"), 30, "agent metrics")
        return f"http://{address}/metrics"

    def hub_scrape(self) -> Scrape:
        return Scrape(self.hub_metrics)

    def agent_scrape(self) -> Scrape:
        return Scrape(self.agent_metrics)

    def record(self, *args: str) -> None:
        run_cli(
            *command("stocksync-agent"), "record", *args, "--db", str(self.agent.db), check=True
        )

    def api(self, method: str, path: str, body: Any = None, key: str = "") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.hub.http_port}{path}", data=data, method=method
        )
        request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Idempotency-Key", key)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("metrics")
    hooks = [{"url": "http://127.0.0.1:9/hook", "events": ["reservation.committed"]}]
    hooks[0].update(secret="whsec-metrics-test", name=HOOK)
    hub = HubChild(
        tmp / "hub.db",
        tmp / "hub.log",
        extra=("--http", "127.0.0.1:0"),
        env={
            "STOCKSYNC_HUB_WEBHOOKS": json.dumps(hooks),
            "STOCKSYNC_HUB_STALE_AFTER_S": "2",
            "STOCKSYNC_HUB_WEBHOOK_BACKOFF_INITIAL_S": "0.05",
            "STOCKSYNC_HUB_WEBHOOK_BACKOFF_MAX_S": "0.2",
        },
    )
    stack: Stack | None = None
    try:
        hub.wait_ready(30)
        agent = AgentChild(
            WH,
            tmp / "lax.db",
            hub.target,
            tmp / "agent.log",
            extra=("--metrics", "127.0.0.1:0"),
            env={"STOCKSYNC_AGENT_BACKOFF_MAX_S": "1", "STOCKSYNC_AGENT_PING_INTERVAL_S": "0.3"},
        )
        stack = Stack(hub, agent, tmp)
        agent.wait_connected(30)
        yield stack
    finally:
        # Tests replace stack.agent (an agent restarted): stop the one running now.
        if stack is not None:
            stack.agent.stop()
        hub.stop()


def test_every_agent_metric_is_exported_with_its_type_and_labels(stack: Stack) -> None:
    scrape = stack.agent_scrape()
    assert scrape.content_type.startswith("text/plain")
    for spec in agent_metrics.SPECS:
        check_spec(scrape, spec)
    for reason in agent_metrics.RECONNECT_REASONS:
        assert scrape.get("stocksync_agent_reconnects_total", warehouse=WH, reason=reason) >= 0
    for code in agent_metrics.ERROR_CODES:
        assert scrape.value("stocksync_agent_errors_total", warehouse=WH, code=code) is not None
    info = scrape.families["stocksync_build_info"].samples[0]
    assert (info.labels["role"], info.value) == ("agent", 1)
    assert {s.labels.get("warehouse") for f in scrape.families.values() for s in f.samples} == {
        WH,
        None,
    }


def test_every_hub_metric_is_exported_with_its_type_and_labels(stack: Stack) -> None:
    scrape = stack.hub_scrape()
    for spec in hub_metrics.SPECS:
        check_spec(scrape, spec)
    for result in hub_metrics.RESERVATION_RESULTS:
        assert scrape.value("stocksync_hub_reservations_total", result=result) is not None
    for kind in ("oversold", "reallocated", "negative_on_hand", "two_stores"):
        assert scrape.value("stocksync_hub_conflicts_total", kind=kind) is not None
    info = scrape.families["stocksync_build_info"].samples[0]
    assert (info.labels["role"], info.value) == ("hub", 1)


def test_events_move_the_agent_and_hub_counters(stack: Stack) -> None:
    before_agent, before_hub = stack.agent_scrape(), stack.hub_scrape()
    sent0 = before_agent.get("stocksync_agent_events_sent_total", warehouse=WH)
    acked0 = before_agent.get("stocksync_agent_events_acknowledged_total", warehouse=WH)
    applied0 = before_hub.get("stocksync_hub_events_applied_total", warehouse=WH)
    latency0 = before_agent.get("stocksync_agent_ack_latency_seconds_count", warehouse=WH)
    stack.record("receive", "SKU-M1", "40")
    stack.record("receive", "SKU-M2", "5")
    stack.record("adjust", "SKU-M2", "-1", "--reason", "damage")
    high = int(stack.agent.status()["high_seq"])

    def caught_up() -> Scrape | None:
        s = stack.agent_scrape()
        acked = s.get("stocksync_agent_events_acknowledged_total", warehouse=WH)
        return s if acked >= acked0 + 3 else None

    agent = wait_until(caught_up, 30, "the hub to acknowledge the events")
    assert agent.get("stocksync_agent_events_recorded_total", warehouse=WH) == high
    assert agent.get("stocksync_agent_events_sent_total", warehouse=WH) >= sent0 + 3
    assert agent.get("stocksync_agent_ack_latency_seconds_count", warehouse=WH) > latency0
    assert agent.get("stocksync_agent_pending_events", warehouse=WH) == 0
    assert agent.get("stocksync_agent_oldest_pending_age_seconds", warehouse=WH) == 0
    assert agent.get("stocksync_agent_connected", warehouse=WH) == 1
    assert agent.get("stocksync_agent_store_size_bytes", warehouse=WH) > 0
    hub = stack.hub_scrape()
    assert hub.get("stocksync_hub_events_applied_total", warehouse=WH) == applied0 + 3
    assert hub.get("stocksync_hub_watermark_seq", warehouse=WH) == high
    assert hub.get("stocksync_hub_connected_agents") == 1
    assert hub.get("stocksync_hub_warehouse_connected", warehouse=WH) == 1
    assert hub.get("stocksync_hub_lag_events", warehouse=WH) == 0
    assert hub.get("stocksync_hub_snapshots_total", warehouse=WH) == 1  # its first stream
    assert hub.get("stocksync_hub_last_seen_timestamp_seconds", warehouse=WH) > time.time() - 60
    assert hub.get("stocksync_hub_warehouse_stale", warehouse=WH) == 0


def test_reservations_conflicts_picks_and_webhooks_move_the_hub_metrics(stack: Stack) -> None:
    stack.record("receive", "SKU-R1", "10")
    wait_until(lambda: stack.agent.status()["pending"] == 0, 30, "the receive to reach the hub")
    before = stack.hub_scrape()

    def moved(result: str) -> float:
        now = stack.hub_scrape().get("stocksync_hub_reservations_total", result=result)
        return now - before.get("stocksync_hub_reservations_total", result=result)

    status, held = stack.api(
        "POST", "/v1/reservations", {"lines": [{"sku": "SKU-R1", "qty": 2}]}, "k1"
    )
    assert status == 201, held
    assert (
        stack.api("POST", "/v1/reservations", {"lines": [{"sku": "SKU-R1", "qty": 2}]}, "k1")[0]
        == 201
    )
    assert (
        stack.api("POST", "/v1/reservations", {"lines": [{"sku": "SKU-R1", "qty": 99}]}, "k2")[0]
        == 429
    )
    assert (
        stack.api("POST", "/v1/reservations", {"lines": [{"sku": "SKU-R1", "qty": 0}]}, "k3")[0]
        == 400
    )
    short_lived = {"lines": [{"sku": "SKU-R1", "qty": 1}], "ttl_seconds": 1}
    assert stack.api("POST", "/v1/reservations", short_lived, "k4")[0] == 201
    status, other = stack.api(
        "POST", "/v1/reservations", {"lines": [{"sku": "SKU-R1", "qty": 1}]}, "k5"
    )
    assert stack.api("POST", f"/v1/reservations/{other['id']}/release")[0] == 200
    assert stack.api("POST", "/v1/reservations/R-nope/commit")[0] == 404
    assert (moved("granted"), moved("duplicate"), moved("short"), moved("invalid")) == (3, 1, 1, 1)
    assert (moved("released"), moved("refused")) == (1, 1)
    wait_until(lambda: moved("expired") == 1, 30, "the 1 s hold to expire")

    # Paid while the warehouse's agent is away: its pick command waits.
    stack.agent.stop()
    assert stack.api("POST", f"/v1/reservations/{held['id']}/commit")[0] == 200
    assert moved("committed") == 1
    hub = wait_until(
        lambda: (s := stack.hub_scrape()).get("stocksync_hub_connected_agents") == 0 and s,
        30,
        "the hub to see the agent gone",
    )
    assert hub.get("stocksync_hub_pick_commands_pending", warehouse=WH) == 1
    assert hub.get("stocksync_hub_warehouse_connected", warehouse=WH) == 0

    # The webhook receiver is down: attempts fail, the delivery waits, it is failing.
    hub = wait_until(
        lambda: (
            (s := stack.hub_scrape()).get(
                "stocksync_webhook_deliveries_total", subscription=HOOK, result="failed"
            )
            >= 2
            and s
        ),
        30,
        "failed webhook attempts",
    )
    assert hub.get("stocksync_webhook_failing", subscription=HOOK) == 1
    assert hub.get("stocksync_webhook_pending_deliveries", subscription=HOOK) == 1
    assert hub.get("stocksync_webhook_deliveries_total", subscription=HOOK, result="delivered") == 0
    assert "webhook shop" in stack.hub.text() and "failed" in stack.hub.text()

    # Back: the pick is delivered; then the warehouse loses units reserved: oversold.
    stack.agent = AgentChild(
        WH,
        stack.agent.db,
        stack.hub.target,
        stack.tmp / "agent.log",
        extra=("--metrics", "127.0.0.1:0"),
        env={"STOCKSYNC_AGENT_BACKOFF_MAX_S": "1", "STOCKSYNC_AGENT_PING_INTERVAL_S": "0.3"},
    )
    stack.agent.wait_connected(30)
    wait_until(
        lambda: stack.hub_scrape().get("stocksync_hub_pick_commands_pending", warehouse=WH) == 0,
        30,
        "the pick command to be acknowledged",
    )
    conflicts0 = stack.hub_scrape().get("stocksync_hub_conflicts_total", kind="oversold")
    assert (
        stack.api("POST", "/v1/reservations", {"lines": [{"sku": "SKU-R1", "qty": 8}]}, "k6")[0]
        == 201
    )
    stack.record("adjust", "SKU-R1", "-5", "--reason", "damage")
    hub = wait_until(
        lambda: (s := stack.hub_scrape()).get("stocksync_hub_oversold_units") > 0 and s,
        30,
        "the oversold conflict",
    )
    assert hub.get("stocksync_hub_conflicts_total", kind="oversold") == conflicts0 + 1
    assert hub.get("stocksync_hub_oversold_units") == 5


def test_a_watched_room_moves_subscribers_deliveries_and_latency(stack: Stack) -> None:
    run_cli(
        *command("stocksync-hub"),
        "rooms",
        "feature",
        "live-m",
        "SKU-ROOM",
        "--hub",
        stack.hub.target,
        "--insecure",
        check=True,
    )
    url = f"http://127.0.0.1:{stack.hub.http_port}/rooms/live-m/events"
    frames: list[bytes] = []
    stop = threading.Event()

    def watch() -> None:
        with urllib.request.urlopen(url, timeout=30) as response:
            while not stop.is_set():
                line = response.readline()
                if not line:
                    return
                if line.startswith(b"event:"):
                    frames.append(line)

    before = stack.hub_scrape()
    delivered0 = before.get("stocksync_hub_room_updates_delivered_total")
    latency0 = before.get("stocksync_hub_delivery_latency_seconds_count")
    viewer = threading.Thread(target=watch, daemon=True)
    viewer.start()
    wait_until(
        lambda: stack.hub_scrape().get("stocksync_hub_room_subscribers") == 1, 30, "the viewer"
    )
    stack.record("receive", "SKU-ROOM", "3")  # sold out -> 3: a visible change
    hub = wait_until(
        lambda: (
            (s := stack.hub_scrape()).get("stocksync_hub_delivery_latency_seconds_count") > latency0
            and s
        ),
        30,
        "the update to reach the viewer",
    )
    assert (
        hub.get("stocksync_hub_room_updates_delivered_total") >= delivered0 + 2
    )  # snapshot, update
    assert b"event: update\n" in frames
    stop.set()


def test_duplicates_gaps_snapshots_lag_skew_and_staleness_move_the_hub_metrics(
    stack: Stack,
) -> None:
    raw = "WH-RAW"
    with grpc.insecure_channel(stack.hub.target) as channel:
        s = establish(channel, raw)  # a snapshot, then events 4 and 5
        s.send(batch=batch(event(4), event(5, sku="SKU-B", kind=2, quantity=2)))
        assert s.ack() == 5
        s.send(batch=batch(event(5, sku="SKU-B", kind=2, quantity=2), event(6)))
        assert s.ack() == 6
        # The agent says it holds 50 events, the oldest 30 s old, by a clock an hour ahead.
        ahead = time.time_ns() // 1_000_000 + 3_600_000
        backlog = sync_pb2.Backlog(high_seq=50, pending_events=44, oldest_pending_age_ms=30_000)
        s.send(ping=sync_pb2.Ping(sent_at_unix_ms=ahead, backlog=backlog))
        hub = wait_until(
            lambda: (
                (m := stack.hub_scrape()).get("stocksync_hub_lag_events", warehouse=raw) == 44 and m
            ),
            30,
            "the reported backlog",
        )
        assert hub.get("stocksync_hub_lag_seconds", warehouse=raw) >= 30
        assert 3590 < hub.get("stocksync_hub_agent_clock_skew_seconds", warehouse=raw) < 3610
        assert hub.get("stocksync_hub_duplicate_events_total", warehouse=raw) == 3
        assert hub.get("stocksync_hub_snapshots_total", warehouse=raw) == 1
        assert hub.get("stocksync_hub_events_applied_total", warehouse=raw) == 3
        s.send(batch=batch(event(9)))
        assert s.error().code() == grpc.StatusCode.FAILED_PRECONDITION
        again = RawStream(channel)
        again.send(hello=hello(raw, high_seq=6, acked_seq=6))
        assert again.welcome().watermark == 6
        again.close()
    hub = stack.hub_scrape()
    assert hub.get("stocksync_hub_gaps_total", warehouse=raw) == 1
    # Silent past stale_after_s (2 s here): stale; the live agent is not.
    hub = wait_until(
        lambda: (
            (m := stack.hub_scrape()).get("stocksync_hub_warehouse_stale", warehouse=raw) == 1 and m
        ),
        30,
        "the silent warehouse to go stale",
    )
    assert hub.get("stocksync_hub_warehouse_stale", warehouse=WH) == 0


def test_an_agent_without_its_hub_counts_pending_errors_and_reconnects(tmp_path: Path) -> None:
    db = tmp_path / "sfo.db"
    run_cli(
        *command("stocksync-agent"), "record", "receive", "SKU-1", "4", "--db", str(db), check=True
    )
    run_cli(
        *command("stocksync-agent"), "record", "receive", "SKU-2", "4", "--db", str(db), check=True
    )
    agent = AgentChild(
        "WH-SFO",
        db,
        "127.0.0.1:9",  # nothing listens there
        tmp_path / "sfo.log",
        extra=("--metrics", "127.0.0.1:0"),
        env={"STOCKSYNC_AGENT_BACKOFF_MAX_S": "0.2", "STOCKSYNC_AGENT_BACKOFF_INITIAL_S": "0.05"},
    )
    try:
        address = wait_until(lambda: agent.status().get("metrics"), 30, "agent metrics")
        scrape = wait_until(
            lambda: (
                (s := Scrape(f"http://{address}/metrics")).get(
                    "stocksync_agent_reconnects_total", warehouse="WH-SFO", reason="unreachable"
                )
                >= 2
                and s
            ),
            30,
            "reconnect attempts",
        )
        assert scrape.get("stocksync_agent_pending_events", warehouse="WH-SFO") == 2
        assert scrape.get("stocksync_agent_oldest_pending_age_seconds", warehouse="WH-SFO") > 0
        assert scrape.get("stocksync_agent_connected", warehouse="WH-SFO") == 0
        assert (
            scrape.get("stocksync_agent_errors_total", warehouse="WH-SFO", code="UNAVAILABLE") > 0
        )
        last = scrape.get("stocksync_agent_last_error_timestamp_seconds", warehouse="WH-SFO")
        assert time.time() - 60 < last <= time.time() + 1
        assert scrape.get("stocksync_agent_events_sent_total", warehouse="WH-SFO") == 0
    finally:
        agent.stop()


AGENT_REPORTING_ITS_MODULES = """
import atexit, json, sys
from pathlib import Path

out = Path(sys.argv.pop(1))
atexit.register(
    lambda: out.write_text(json.dumps(sorted(m for m in sys.modules if m.startswith("prometheus"))))
)
from stocksync.agent.cli import main

main(prog_name="stocksync-agent")
"""


@pytest.mark.parametrize("served", [False, True], ids=["without-metrics", "with-metrics"])
def test_an_agent_loads_prometheus_client_only_to_serve_metrics(
    tmp_path: Path, served: bool
) -> None:
    """Without --metrics no count could ever be read: the daemon streams as
    ever and leaves prometheus_client (~70 ms of its start-up) unloaded."""
    db = tmp_path / "lax.db"
    for sku in ("SKU-1", "SKU-2"):
        run_cli(
            *command("stocksync-agent"), "record", "receive", sku, "4", "--db", str(db), check=True
        )

    def pending() -> int:
        status = run_cli(*command("stocksync-agent"), "status", "--db", str(db), "--json")
        return int(json.loads(status.stdout)["pending"])

    modules = tmp_path / "modules.json"
    hub = HubChild(tmp_path / "hub.db", tmp_path / "hub.log")
    try:
        port = hub.wait_ready(30)
        args = ["run", "--warehouse", WH, "--hub", f"127.0.0.1:{port}", "--db", str(db)]
        args += ["--insecure", *(["--metrics", "127.0.0.1:0"] if served else [])]
        with (tmp_path / "agent.log").open("wb") as log:
            agent = subprocess.Popen(
                [sys.executable, "-c", AGENT_REPORTING_ITS_MODULES, str(modules), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(lambda: pending() == 0, 30, "the hub to acknowledge both events")
        finally:
            agent.terminate()
            try:
                code = agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                raise
    finally:
        hub.kill()
    assert code == 0, (tmp_path / "agent.log").read_text()
    loaded = json.loads(modules.read_text())
    if served:
        assert "prometheus_client" in loaded
    else:
        assert loaded == []


def test_the_readme_metrics_table_is_current() -> None:
    root = Path(__file__).resolve().parent.parent
    table = run_cli(sys.executable, str(root / "scripts" / "metrics_table.py"), check=True)
    readme = (root / "README.md").read_text()
    assert table.stdout.strip() in readme, "run `python scripts/metrics_table.py` into README.md"
    for spec in (*agent_metrics.SPECS, *hub_metrics.SPECS, *edge_metrics.SPECS):
        assert f"| `{spec.name}` |" in readme


def test_a_restarted_hub_exports_every_known_warehouse_from_its_first_scrape(
    tmp_path: Path,
) -> None:
    def start() -> HubChild:
        hub = HubChild(tmp_path / "hub.db", tmp_path / "hub.log", extra=("--http", "127.0.0.1:0"))
        hub.wait_ready(30)
        return hub

    hub = start()
    try:
        with grpc.insecure_channel(hub.target) as channel:
            establish(channel, "WH-OLD").close()  # snapshot, then events 4 and 5
        seen = wait_until(
            lambda: Scrape(f"http://127.0.0.1:{hub.http_port}/metrics").get(
                "stocksync_hub_last_seen_timestamp_seconds", warehouse="WH-OLD"
            ),
            30,
            "last seen",
        )
    finally:
        hub.stop()
    hub = start()
    try:
        scrape = Scrape(f"http://127.0.0.1:{hub.http_port}/metrics")
    finally:
        hub.stop()
    # No stream since the restart: every child is there, at 0 for the counters.
    for name in (
        "stocksync_hub_events_applied_total",
        "stocksync_hub_duplicate_events_total",
        "stocksync_hub_gaps_total",
        "stocksync_hub_snapshots_total",
        "stocksync_hub_stalls_total",
        "stocksync_hub_warehouse_connected",
        "stocksync_hub_lag_events",
    ):
        assert scrape.get(name, warehouse="WH-OLD") == 0, name
    assert scrape.get("stocksync_hub_watermark_seq", warehouse="WH-OLD") == 5
    assert scrape.get("stocksync_hub_last_seen_timestamp_seconds", warehouse="WH-OLD") >= seen - 1
    assert scrape.get("stocksync_hub_connected_agents") == 0
