"""Full buffer: the agent offline while many events are recorded under a cap;
the store stays within the cap, and the hub is exact after it reconnects."""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path

from stocksync.agent.store import AgentStore
from stocksync.events import Kind, NewEvent

from .common import (
    FAST_AGENT,
    AgentChild,
    Campaign,
    HubChild,
    agent_stock,
    hub_stock,
    hub_watermark,
    progress,
    read_only,
    running,
    wait_for,
)

WAREHOUSE = "WH-BUFFER"
BATCH = 1000
"""Events per recording call (one transaction), as a WMS import would send them."""


def full_buffer(workdir: Path, events: int, skus: int, cap: int, seed: int) -> Campaign:
    c = Campaign(
        "full-buffer",
        f"python -m tests.campaigns full-buffer --count {events} --skus {skus} --cap {cap}",
    )
    rng = random.Random(seed)
    names = [f"SKU-{i:05d}" for i in range(skus)]
    db = workdir / "agent.db"
    hub_db = workdir / "hub.db"
    expected: dict[str, int] = {}
    worst_after_call = 0
    size_peak = 0
    env = {**FAST_AGENT, "STOCKSYNC_AGENT_MAX_PENDING_EVENTS": str(cap)}
    # The daemon runs (it sets the cap in the store), pointed at a hub that
    # is not there yet: the agent is offline.
    hub = HubChild(hub_db, workdir / "hub.log")
    port = hub.wait_ready(60)
    hub.kill()
    agent = AgentChild(WAREHOUSE, db, f"127.0.0.1:{port}", workdir / "agent.log", env=env)
    with running(agent):
        with AgentStore(db) as store:
            wait_for(lambda: store.max_pending_events() == cap, 60, "the daemon to set the cap")
            began = time.monotonic()
            done = 0
            reservations = 0
            while done < events:
                n = min(BATCH, events - done)
                batch = []
                for _ in range(n):
                    sku = rng.choice(names)
                    roll = rng.random()
                    if roll < 0.5:
                        e = NewEvent(sku, Kind.RECEIVE, rng.randint(1, 20))
                    elif roll < 0.8:
                        rid = ""
                        if rng.random() < 0.001:
                            reservations += 1
                            rid = f"R-{reservations}"
                        e = NewEvent(sku, Kind.SHIP, rng.randint(1, 10), reservation_id=rid)
                    elif roll < 0.97:
                        e = NewEvent(sku, Kind.ADJUST, rng.choice([-1, 1]) * rng.randint(1, 5))
                    else:
                        e = NewEvent(sku, Kind.COUNT, rng.randint(0, 100))
                    batch.append(e)
                store.record_many(batch)
                done += n
                worst_after_call = max(worst_after_call, store.pending_rows())
                size_peak = max(size_peak, store.size_bytes())
                progress(done, events, "events recorded", 100_000)
            record_s = time.monotonic() - began
            expected = {s: q for s, q in store.on_hand().items() if q != 0}
            high = store.high_seq()
            pending_rows = store.pending_rows()
            stats = store.compaction_stats()
        # The hub comes back on the same port.
        hub = HubChild(hub_db, workdir / "hub.log", f"127.0.0.1:{port}")
        with running(hub):
            began = time.monotonic()
            hub.wait_ready(60)
            wait_for(lambda: hub_watermark(hub_db, WAREHOUSE) >= high, 900, "catch-up", poll=0.02)
            catch_up = time.monotonic() - began
            agent.stop()
            hub_exact = hub_stock(hub_db, WAREHOUSE) == expected == agent_stock(db)
            with contextlib.closing(read_only(hub_db)) as conn:
                rows_sent = conn.execute("SELECT count(*) FROM events").fetchone()[0]
                shipped = conn.execute(
                    "SELECT count(*) FROM events WHERE reservation_id != ''"
                ).fetchone()[0]
    c.figures = {
        "events": events,
        "skus": skus,
        "cap": cap,
        "record_s": round(record_s, 1),
        "record_events_per_s": round(events / record_s),
        "compactions": stats["compactions"],
        "rows_folded_away": stats["events_folded"],
        "max_pending_rows_after_a_call": worst_after_call,
        "pending_rows_at_reconnect": pending_rows,
        "store_peak_mb": round(size_peak / 1e6, 1),
        "rows_sent_to_hub": rows_sent,
        "reservation_shipments_kept": f"{shipped}/{reservations}",
        "hub_watermark": high,
        "hub_exact": hub_exact,
        "catch_up_s": round(catch_up, 2),
    }
    c.expect(worst_after_call <= cap, f"the store held {worst_after_call} rows, past the cap")
    c.expect(hub_exact, "hub on_hand differs from what was recorded")
    c.expect(shipped == reservations, "a reservation shipment was not kept")
    return c
