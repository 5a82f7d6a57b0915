"""Soak: a steady load at half the measured capacity for a long time; the hub's
and the agent's memory must not grow (RSS growth ≤ 10 % after warm-up)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from stocksync.agent.store import AgentStore
from stocksync.events import Kind, NewEvent
from stocksync.tools.benchmarks.common import rss_kb

from .common import (
    FAST_AGENT,
    AgentChild,
    Campaign,
    HubChild,
    agent_stock,
    hub_stock,
    hub_watermark,
    median,
    percentile,
    running,
    wait_caught_up,
    wait_for,
)

WAREHOUSE = "WH-SOAK"
SKUS = [f"SOAK-{i:04d}" for i in range(2000)]
STEP_S = 0.1
"""The producer records one transaction every STEP_S seconds."""


def _events(rng: random.Random, n: int) -> list[NewEvent]:
    out = []
    for _ in range(n):
        sku = rng.choice(SKUS)
        if rng.random() < 0.6:
            out.append(NewEvent(sku, Kind.RECEIVE, rng.randint(1, 20)))
        else:
            out.append(NewEvent(sku, Kind.SHIP, rng.randint(1, 5)))
    return out


def _capacity(store: AgentStore, hub_db: Path, rng: random.Random, seconds: float) -> float:
    """End-to-end events per second: record as fast as possible, count what the hub applied."""
    start_wm = hub_watermark(hub_db, WAREHOUSE)
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        store.record_many(_events(rng, 500))
    high = store.high_seq()
    wait_for(lambda: hub_watermark(hub_db, WAREHOUSE) >= high, 300, "capacity drain")
    return (high - start_wm) / (time.monotonic() - began)


def soak(workdir: Path, minutes: float, seed: int, rate: float = 0.0) -> Campaign:
    c = Campaign("soak", f"python -m tests.campaigns soak --minutes {minutes:g}")
    rng = random.Random(seed)
    db = workdir / "agent.db"
    hub = HubChild(workdir / "hub.db", workdir / "hub.log")
    samples: list[dict[str, float]] = []
    lag: list[int] = []
    with running(hub):
        hub.wait_ready(60)
        agent = AgentChild(WAREHOUSE, db, hub.target, workdir / "agent.log", env=FAST_AGENT)
        with running(agent), AgentStore(db) as store:
            agent.wait_connected(60)
            capacity = _capacity(store, hub.db, rng, min(15.0, minutes * 30))
            target = rate or capacity / 2
            per_step = max(1, round(target * STEP_S))
            warmup_s = min(120.0, minutes * 60 / 6)
            began = time.monotonic()
            next_step = began
            next_sample = began
            end = began + minutes * 60
            recorded = 0
            while time.monotonic() < end:
                now = time.monotonic()
                if now >= next_sample:
                    hub_rss, _ = rss_kb(hub.pid)
                    agent_rss, _ = rss_kb(agent.pid)
                    samples.append(
                        {"t": round(now - began, 1), "hub_kb": hub_rss, "agent_kb": agent_rss}
                    )
                    lag.append(store.high_seq() - hub_watermark(hub.db, WAREHOUSE))
                    next_sample += 10.0
                if now >= next_step:
                    store.record_many(_events(rng, per_step))
                    recorded += per_step
                    next_step += STEP_S
                time.sleep(max(0.0, min(next_step, next_sample) - time.monotonic()))
            elapsed = time.monotonic() - began
            catch_up = wait_caught_up(hub.db, db, WAREHOUSE)
            exact = hub_stock(hub.db, WAREHOUSE) == agent_stock(db)
            agent.check_alive()
            hub.check_alive()
    warm = [s for s in samples if s["t"] >= warmup_s] or samples
    base = warm[: max(1, len(warm) // 10)]
    tail = warm[-max(1, len(warm) // 10) :]

    def growth(key: str) -> float:
        before = median([s[key] for s in base])
        after = median([s[key] for s in tail])
        return round(100.0 * (after - before) / before, 2) if before else 0.0

    (workdir / "soak-samples.json").write_text(json.dumps(samples))
    c.figures = {
        "minutes": minutes,
        "capacity_events_per_s": round(capacity),
        "rate_events_per_s": round(per_step / STEP_S),
        "recorded": recorded,
        "elapsed_s": round(elapsed, 1),
        "warmup_s": warmup_s,
        "hub_rss_mb_after_warmup": round(median([s["hub_kb"] for s in base]) / 1024, 1),
        "hub_rss_mb_end": round(median([s["hub_kb"] for s in tail]) / 1024, 1),
        "hub_rss_growth_pct": growth("hub_kb"),
        "agent_rss_mb_after_warmup": round(median([s["agent_kb"] for s in base]) / 1024, 1),
        "agent_rss_mb_end": round(median([s["agent_kb"] for s in tail]) / 1024, 1),
        "agent_rss_growth_pct": growth("agent_kb"),
        "lag_events_p50": round(percentile(lag, 50)),
        "lag_events_p99": round(percentile(lag, 99)),
        "catch_up_s": round(catch_up, 2),
        "hub_exact": exact,
    }
    c.expect(c.figures["hub_rss_growth_pct"] <= 10, "hub RSS grew more than 10 %")
    c.expect(c.figures["agent_rss_growth_pct"] <= 10, "agent RSS grew more than 10 %")
    c.expect(exact, "hub on_hand differs from the agent's")
    return c
