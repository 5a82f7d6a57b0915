"""Clock skew: the same scripted run with agent and hub clocks −12 h, 0 and +12 h
off (the agent one way, the hub the other) must end in identical states."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import time
from pathlib import Path
from typing import Any

from stocksync.tools.procs import command

from .common import (
    FAST_AGENT,
    AgentChild,
    Campaign,
    HubChild,
    read_only,
    running,
    wait_caught_up,
    wait_for,
)

HOURS_12 = 12 * 3600
WAREHOUSE = "WH-SKEW"


def _script(seed: int, rounds: int) -> list[str]:
    """CSV files to import one after another: the same for every run."""
    rng = random.Random(seed)
    skus = [f"SKU-{i}" for i in range(20)]
    files = []
    for _ in range(rounds):
        lines = ["sku,kind,qty"]
        for _ in range(rng.randint(20, 60)):
            roll = rng.random()
            sku = rng.choice(skus)
            if roll < 0.4:
                lines.append(f"{sku},receive,{rng.randint(1, 50)}")
            elif roll < 0.7:
                lines.append(f"{sku},ship,{rng.randint(1, 10)}")
            elif roll < 0.9:
                lines.append(f"{sku},adjust,{rng.choice([-1, 1]) * rng.randint(1, 5)}")
            else:
                lines.append(f"{sku},count,{rng.randint(0, 80)}")
        files.append("\n".join(lines) + "\n")
    return files


def _run(
    workdir: Path, agent_offset: int, hub_offset: int, seed: int, rounds: int
) -> tuple[dict[str, Any], tuple[int, int]]:
    workdir.mkdir(parents=True, exist_ok=True)
    agent_env = {"STOCKSYNC_TEST_CLOCK_OFFSET_S": str(agent_offset)}
    hub_env = {"STOCKSYNC_TEST_CLOCK_OFFSET_S": str(hub_offset)}
    hub = HubChild(workdir / "hub.db", workdir / "hub.log", env=hub_env)
    db = workdir / "agent.db"
    with running(hub):
        hub.wait_ready(60)
        agent = AgentChild(
            WAREHOUSE, db, hub.target, workdir / "agent.log", env={**FAST_AGENT, **agent_env}
        )
        with running(agent):
            env = {**os.environ, **agent_env}
            for i, text in enumerate(_script(seed, rounds)):
                csv = workdir / f"round-{i}.csv"
                csv.write_text(text)
                subprocess.run(
                    [*command("stocksync-agent"), "import", str(csv), "--db", str(db)],
                    env=env,
                    check=True,
                    capture_output=True,
                )
            wait_for(lambda: db.exists(), 30, "the agent store")
            wait_caught_up(hub.db, db, WAREHOUSE)
            # A reservation made and released on the skewed hub: TTLs run on
            # the hub's own clock, never the wall clock.
            hub_cli = [*command("stocksync-hub")]
            target = ["--hub", hub.target, "--insecure"]
            reserve = subprocess.run(
                [*hub_cli, "reserve", "SKU-1", "1", *target, "--key", "skew-1", "--json"],
                env={**os.environ, **hub_env},
                capture_output=True,
                text=True,
            )
            agent.stop()
    with contextlib.closing(read_only(workdir / "hub.db")) as conn:
        stock = sorted(conn.execute("SELECT warehouse, sku, on_hand FROM stock").fetchall())
        events = conn.execute(
            "SELECT seq, sku, kind, quantity, delta, reason, reservation_id, as_of_seq "
            "FROM events ORDER BY seq"
        ).fetchall()
        watermark = conn.execute("SELECT max(watermark) FROM sources").fetchone()[0]
        conflicts = sorted(conn.execute("SELECT kind, sku, units FROM conflicts").fetchall())
        reservations = sorted(
            conn.execute("SELECT idem_key, state, ttl_ms FROM reservations").fetchall()
        )
    with contextlib.closing(read_only(db)) as conn:
        agent_stock = sorted(conn.execute("SELECT sku, on_hand FROM stock").fetchall())
        stamp = conn.execute("SELECT max(recorded_at_ms) FROM events").fetchone()[0]
    with contextlib.closing(read_only(workdir / "hub.db")) as conn:
        seen = conn.execute("SELECT max(last_seen_ms) FROM warehouses").fetchone()[0]
    clocks = (
        round((stamp - time.time() * 1000) / 3_600_000),
        round((seen - time.time() * 1000) / 3_600_000),
    )
    return {
        "hub_stock": stock,
        "hub_events": events,
        "watermark": watermark,
        "conflicts": conflicts,
        "agent_stock": agent_stock,
        "reservations": reservations,
        "reserve_exit": reserve.returncode,
    }, clocks


def clock_skew(workdir: Path, rounds: int, seed: int) -> Campaign:
    c = Campaign("clock-skew", f"python -m tests.campaigns clock-skew --count {rounds}")
    states = {}
    clocks = {}
    for hours in (-12, 0, 12):
        offset = hours * 3600
        states[hours], clocks[hours] = _run(
            workdir / f"skew{hours:+d}h", offset, -offset, seed, rounds
        )
    base = states[0]
    c.figures = {
        "runs": "agent/hub clocks at -12h/+12h, 0/0, +12h/-12h",
        "imports_per_run": rounds,
        "events_per_run": base["watermark"],
        "skus": len(base["agent_stock"]),
        "reservations": str(base["reservations"]),
        "clocks_seen_h (agent event time, hub last-seen)": str(clocks),
        "identical_end_states": all(s == base for s in states.values()),
    }
    for hours, (agent_h, hub_h) in clocks.items():
        c.expect(agent_h == hours and hub_h == -hours, f"{hours:+d}h: the skew was not applied")
    for hours, state in states.items():
        for key in base:
            c.expect(state[key] == base[key], f"{hours:+d}h: {key} differs from the 0h run")
    c.expect(base["reserve_exit"] == 0, "the reservation on the hub failed")
    return c
