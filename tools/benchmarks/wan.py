"""A warehouse far from the hub: catch-up and live latency through a delay.

The same real hub and agent as ``catch-up``, with the fault proxy
(``python -m stocksync.tools.faultproxy``, a process of its own) between
them adding ``delay_ms`` each way (125 ms: a warehouse in Jakarta, the hub in
Frankfurt). Measured:

- **catch-up**: ``events`` buffered offline, from the agent's start until the
  hub has applied the last one; held against the same catch-up on plain
  loopback, measured just before (the window must cover the
  bandwidth-delay product to keep the ratio near 1);
- **live**: the agent caught up and idle, ``live_events`` single events
  recorded at ``live_rate`` per second, each from its commit to the hub's
  watermark covering it; held against the one-way delay itself (the least
  any design can take).
"""

from __future__ import annotations

import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stocksync.agent.store import AgentStore
from stocksync.events import Kind, NewEvent
from stocksync.tools.benchmarks.catchup import WAREHOUSE, HubWatermark, make_events
from stocksync.tools.benchmarks.common import Against, Row, Scenario, latency_summary
from stocksync.tools.benchmarks.latency import WatermarkPoller, record_at_rate
from stocksync.tools.procs import AgentChild, Child, HubChild, wait_for

__all__ = ["scenario"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _proxy(upstream: int, delay_ms: float, log: Path) -> tuple[Child, int]:
    port = _free_port()
    child = Child(
        "fault proxy",
        [
            sys.executable,
            "-m",
            "stocksync.tools.faultproxy",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"127.0.0.1:{upstream}",
            "--latency-ms",
            str(delay_ms),
        ],
        log,
    )

    def listening() -> bool:
        child.check_alive()
        return _accepts(port)

    wait_for(listening, 30, "the proxy to listen")
    return child, port


def _run(
    base_db: Path, events: int, live: int, rate: float, delay_ms: float, workdir: Path
) -> dict[str, Any]:
    workdir.mkdir()
    db = workdir / "agent.db"
    shutil.copyfile(base_db, db)
    hub = HubChild(workdir / "hub.db", workdir / "hub.log")
    children: list[Child] = [hub]
    try:
        port = hub.wait_ready()
        if delay_ms:
            proxy, port = _proxy(port, delay_ms, workdir / "proxy.log")
            children.append(proxy)
        watermark = HubWatermark(hub.db, WAREHOUSE)
        agent = AgentChild(WAREHOUSE, db, f"127.0.0.1:{port}", workdir / "agent.log")
        children.append(agent)
        deadline = time.perf_counter() + max(300.0, events / 500)
        while watermark() < events:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"catch-up timed out at {watermark()} of {events}")
            agent.check_alive()
            time.sleep(0.002)
        seconds = time.perf_counter() - agent.started
        with WatermarkPoller(watermark) as poller, AgentStore(db) as store:
            one = NewEvent("SKU-000001", Kind.RECEIVE, 1)
            recorded = record_at_rate(lambda n: store.record_many([one] * n), rate, live / rate)
            poller.wait(events + len(recorded), 60)
        watermark.close()
        applied = latency_summary(poller.latencies(events + 1, recorded))
    finally:
        for child in reversed(children):
            child.stop()
    return {"catchup_s": seconds, "catchup_events_per_s": events / seconds, "live": applied}


def scenario(
    events: int,
    delay_ms: float,
    live_events: int,
    live_rate: float,
    workdir: Path,
    say: Callable[[str], None],
) -> Scenario:
    """The ``wan`` scenario: loopback first, then through the delay."""
    base = workdir / "offline.db"
    with AgentStore(base) as store:
        store.claim(WAREHOUSE)
        store.record_many(make_events(events, 2000))
    say(f"wan: {events:,} events on loopback")
    loop = _run(base, events, live_events, live_rate, 0, workdir / "loopback")
    say(f"wan: {events:,} events through {delay_ms:g} ms each way")
    far = _run(base, events, live_events, live_rate, delay_ms, workdir / "wan")
    return Scenario(
        "wan",
        {
            "events": events,
            "delay_ms": delay_ms,
            "live_events": live_events,
            "live_rate": live_rate,
        },
        [
            Row(
                f"{events:,} events catch-up, +{delay_ms:g} ms",
                far["catchup_events_per_s"],
                "ev/s",
                [Against("the same on loopback", loop["catchup_events_per_s"], "baseline")],
                ">= 0.5 x loopback",
            ),
            Row(
                "live: recorded -> applied p50",
                far["live"]["p50_ms"],
                "ms",
                [Against("one-way delay", delay_ms)],
            ),
            Row(
                "live: recorded -> applied p99",
                far["live"]["p99_ms"],
                "ms",
                [Against("one-way delay", delay_ms)],
                f"<= {delay_ms + 50:g} ms",
            ),
        ],
        {"loopback": loop, "wan": far},
    )
