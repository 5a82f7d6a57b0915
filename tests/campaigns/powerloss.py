"""Power loss: keep only what was fsynced, then check nothing acknowledged is gone.

Every process of a round (hub, agent daemon, producer) runs with a small
LD_PRELOAD library (powerloss_shim.c, built with the system C compiler) that
copies a file aside each time it is fsynced. The round ends with kill -9 of
all three at once; the stores are then rebuilt from those copies alone —
what a power cut at that instant would have left on disk — and checked:

- every event the producer was told "recorded" is in the agent's store;
- the hub holds at least every seq the agent had saved as acknowledged;
- both files pass SQLite's quick_check.

``synchronous=FULL`` (the default) must lose nothing. The control runs with
``NORMAL`` and ``OFF`` (accepted only under STOCKSYNC_TEST_ALLOW_SYNCHRONOUS_OFF)
must show losses, which proves the check can see one.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import (
    FAST_AGENT,
    AgentChild,
    Campaign,
    HubChild,
    Producer,
    agent_acked_seq,
    hub_watermark,
    new_store,
    read_recorded,
    wait_for,
)

SHIM = Path(__file__).with_name("powerloss_shim.c")
WAREHOUSE = "WH-POWER"


def build_shim(workdir: Path) -> Path:
    out = workdir / "powerloss_shim.so"
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-O2", "-o", str(out), str(SHIM), "-ldl"],
        check=True,
        capture_output=True,
    )
    return out


def _restore(src: Path, dst: Path) -> None:
    """``dst`` as a power cut would leave ``src``: its last fsynced contents."""
    for suffix in ("", "-wal"):
        durable = Path(f"{src}{suffix}.durable")
        if durable.exists():
            shutil.copyfile(durable, f"{dst}{suffix}")


def _quick_check(db: Path) -> bool:
    if not db.exists():
        return True  # nothing was ever synced: an empty disk, not a damaged one
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        except sqlite3.DatabaseError:
            return False


def _restored(db: Path) -> tuple[dict[int, tuple[str, int, int]], int]:
    """(seq -> (sku, kind, quantity), acked_seq) of a rebuilt agent store."""
    if not db.exists():
        return {}, 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            rows = conn.execute("SELECT seq, sku, kind, quantity FROM events").fetchall()
            acked = conn.execute("SELECT value FROM meta WHERE key = 'acked_seq'").fetchone()
        except sqlite3.DatabaseError:
            return {}, 0
    return {r[0]: (r[1], r[2], r[3]) for r in rows}, int(acked[0]) if acked else 0


def _round(workdir: Path, shim: Path, level: str, rng: random.Random, seed: int) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    env = {
        "LD_PRELOAD": str(shim),
        "POWERLOSS_DIR": str(workdir),
        "STOCKSYNC_TEST_ALLOW_SYNCHRONOUS_OFF": "1",
    }
    hub_db, agent_db = workdir / "hub.db", workdir / "agent.db"
    new_store(agent_db)  # created synced, before the cut can matter
    for f in workdir.glob("agent.db*"):
        if not f.name.endswith(".durable") and f.name != "agent.db":
            f.unlink()
    shutil.copyfile(agent_db, f"{agent_db}.durable")
    hub = HubChild(hub_db, workdir / "hub.log", env={**env, "STOCKSYNC_HUB_SYNCHRONOUS": level})
    agent = producer = None
    try:
        hub.wait_ready(60)
        agent = AgentChild(
            WAREHOUSE,
            agent_db,
            hub.target,
            workdir / "agent.log",
            env={**env, **FAST_AGENT, "STOCKSYNC_AGENT_SYNCHRONOUS": level},
        )
        producer = Producer(
            agent_db, workdir / "recorded.log", seed, pause_ms=2, synchronous=level, env=env
        ).start()
        wait_for(lambda: hub_watermark(hub_db, WAREHOUSE) > 0, 60, "first events at the hub")
        # The cut comes after the agent has saved an acknowledgement, so every
        # round has one to check (a one-round CI run could otherwise cut first).
        wait_for(lambda: agent_acked_seq(agent_db) > 0, 60, "an acknowledgement saved")
        time.sleep(rng.uniform(0.5, 2.0))
    finally:
        # The power cut: everything at once.
        for child in (producer, agent, hub):
            proc = getattr(child, "proc", None)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for child in (producer, agent, hub):
            proc = getattr(child, "proc", None)
            if proc is not None:
                proc.wait(10)
    after = workdir / "after"
    after.mkdir()
    _restore(hub_db, after / "hub.db")
    _restore(agent_db, after / "agent.db")
    recorded = read_recorded(workdir / "recorded.log")
    events, acked = _restored(after / "agent.db")
    lost = sum(1 for r in recorded if events.get(r.seq) != (r.sku, r.kind, r.quantity))
    durable_wm = hub_watermark(after / "hub.db", WAREHOUSE) if (after / "hub.db").exists() else 0
    return {
        "recorded": len(recorded),
        "lost_recorded": lost,
        "acked_saved": acked,
        "lost_acked": max(0, acked - durable_wm),
        "sound": _quick_check(after / "hub.db") and _quick_check(after / "agent.db"),
    }


def power_loss(workdir: Path, rounds: int, seed: int) -> Campaign:
    c = Campaign("power-loss", f"python -m tests.campaigns power-loss --count {rounds}")
    shim = build_shim(workdir)
    rng = random.Random(seed)
    for level in ("FULL", "NORMAL", "OFF"):
        results = [
            _round(workdir / f"{level}-{i}", shim, level, rng, seed * 100 + i)
            for i in range(rounds)
        ]
        key = level.lower()
        c.figures[f"{key}_rounds"] = rounds
        c.figures[f"{key}_recorded"] = sum(r["recorded"] for r in results)
        c.figures[f"{key}_lost_recorded"] = sum(r["lost_recorded"] for r in results)
        c.figures[f"{key}_acked_checked"] = sum(r["acked_saved"] for r in results)
        c.figures[f"{key}_lost_acked"] = sum(r["lost_acked"] for r in results)
        c.figures[f"{key}_rounds_with_loss"] = sum(
            1 for r in results if r["lost_recorded"] or r["lost_acked"]
        )
        c.figures[f"{key}_unsound_files"] = sum(1 for r in results if not r["sound"])
    c.expect(c.figures["full_lost_recorded"] == 0, "FULL lost recorded events")
    c.expect(c.figures["full_lost_acked"] == 0, "FULL lost acknowledged events")
    c.expect(c.figures["full_unsound_files"] == 0, "FULL left a damaged file")
    c.expect(c.figures["full_acked_checked"] > 0, "FULL: no acknowledgement was there to check")
    c.expect(
        c.figures["off_rounds_with_loss"] > 0, "the OFF control run lost nothing: the test is blind"
    )
    return c
