"""What the daemons cost at rest.

- **idle agent**: a real agent connected to a real hub with nothing to send;
  after 2 s to settle, its RSS (``VmRSS``) and CPU over ``idle_s`` seconds
  (``/proc/<pid>/stat``), as % of one core. The hub's idle CPU alongside.
- **loaded hub**: ``warehouses`` agent stores each holding one RECEIVE for
  each of ``skus`` SKUs (recorded offline, not timed), caught up by a fresh
  hub; once every watermark is at its last seq and 2 s have passed, the
  hub's RSS and peak (``VmHWM``), next to the same hub empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stocksync.agent.store import AgentStore
from stocksync.events import Kind, NewEvent
from stocksync.tools.benchmarks.common import Row, Scenario, cpu_s, rss_kb
from stocksync.tools.benchmarks.ingest import _Watermarks
from stocksync.tools.procs import AgentChild, HubChild, wait_for

__all__ = ["scenario"]

SETTLE_S = 2.0


def _idle(workdir: Path, idle_s: float) -> dict[str, Any]:
    db = workdir / "idle-agent.db"
    with AgentStore(db) as store:
        store.claim("WH-IDLE")
    hub = HubChild(workdir / "idle-hub.db", workdir / "idle-hub.log")
    agent: AgentChild | None = None
    try:
        hub.wait_ready()
        agent = AgentChild("WH-IDLE", db, hub.target, workdir / "idle-agent.log")
        agent.wait_connected(60)
        time.sleep(SETTLE_S)
        a0, h0, t0 = cpu_s(agent.pid), cpu_s(hub.pid), time.monotonic()
        time.sleep(idle_s)
        a1, h1, t1 = cpu_s(agent.pid), cpu_s(hub.pid), time.monotonic()
        agent_rss, agent_hwm = rss_kb(agent.pid)
        hub_rss, _ = rss_kb(hub.pid)
    finally:
        if agent is not None:
            agent.stop()
        hub.stop()
    return {
        "agent_rss_mib": agent_rss / 1024,
        "agent_peak_mib": agent_hwm / 1024,
        "agent_cpu_pct": 100 * (a1 - a0) / (t1 - t0),
        "hub_cpu_pct": 100 * (h1 - h0) / (t1 - t0),
        "hub_empty_rss_mib": hub_rss / 1024,
    }


def _loaded(
    workdir: Path, skus: int, warehouses: int, say: Callable[[str], None]
) -> dict[str, Any]:
    names = [f"WH-F{i:02d}" for i in range(warehouses)]
    dbs = []
    for warehouse in names:
        db = workdir / f"{warehouse.lower()}.db"
        with AgentStore(db) as store:
            store.claim(warehouse)
            store.record_many(NewEvent(f"SKU-{i:07d}", Kind.RECEIVE, 10) for i in range(skus))
        dbs.append(db)
    say(f"footprint: {warehouses} agents catching up {skus:,} SKUs each")
    hub = HubChild(workdir / "hub.db", workdir / "hub.log")
    agents: list[AgentChild] = []
    try:
        hub.wait_ready()
        poller = _Watermarks(hub.db)
        poller.start()
        try:
            for warehouse, db in zip(names, dbs, strict=True):
                agents.append(AgentChild(warehouse, db, hub.target, workdir / f"{warehouse}.log"))

            def applied() -> bool:
                hub.check_alive()
                return all(poller.now.get(w, 0) >= skus for w in names)

            wait_for(
                applied,
                max(300.0, skus * warehouses / 1000),
                "the hub to apply every warehouse",
                poll=0.1,
            )
        finally:
            poller.stopping.set()
            poller.join()
        time.sleep(SETTLE_S)
        rss, hwm = rss_kb(hub.pid)
    finally:
        for agent in agents:
            agent.stop()
        hub.stop()
    return {"hub_rss_mib": rss / 1024, "hub_peak_mib": hwm / 1024, "stock_rows": skus * warehouses}


def scenario(
    skus: int, warehouses: int, idle_s: float, workdir: Path, say: Callable[[str], None]
) -> Scenario:
    """The ``footprint`` scenario."""
    say(f"footprint: an idle agent for {idle_s:g} s")
    idle = _idle(workdir, idle_s)
    loaded = _loaded(workdir, skus, warehouses, say)
    return Scenario(
        "footprint",
        {"skus": skus, "warehouses": warehouses, "idle_s": idle_s},
        [
            Row("idle agent RSS", idle["agent_rss_mib"], "MiB", [], "<= 60 MB (57.2 MiB)"),
            Row("idle agent CPU", idle["agent_cpu_pct"], "%", [], "<= 1 %"),
            Row("idle hub CPU (one agent connected)", idle["hub_cpu_pct"], "%"),
            Row("hub RSS, empty", idle["hub_empty_rss_mib"], "MiB"),
            Row(f"hub RSS, {skus:,} SKUs x {warehouses} warehouses", loaded["hub_rss_mib"], "MiB"),
            Row("  hub peak RSS while loading", loaded["hub_peak_mib"], "MiB"),
        ],
        {"idle": idle, "loaded": loaded},
    )
