"""The injectable wall clock (stocksync/clock.py): what the clock-skew campaign moves."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import AGENT, read_only, run_cli

HOURS_12 = 12 * 3600


def _wall_ms(offset: str) -> int:
    env = {**os.environ, "STOCKSYNC_TEST_CLOCK_OFFSET_S": offset}
    out = subprocess.run(
        [sys.executable, "-c", "from stocksync.clock import wall_ms; print(wall_ms())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


def test_the_offset_moves_every_wall_clock_reading() -> None:
    now = time.time_ns() // 1_000_000
    ahead, behind = _wall_ms(str(HOURS_12)), _wall_ms(str(-HOURS_12))
    assert abs(ahead - now - HOURS_12 * 1000) < 60_000
    assert abs(now - behind - HOURS_12 * 1000) < 60_000


def test_an_agent_records_with_its_skewed_clock(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    env = {**os.environ, "STOCKSYNC_TEST_CLOCK_OFFSET_S": str(-HOURS_12)}
    run_cli(AGENT, "record", "receive", "A", "3", "--db", str(db), env=env, check=True)
    with read_only(db) as conn:
        (stamp,) = conn.execute("SELECT recorded_at_ms FROM events").fetchone()
    assert abs(time.time_ns() // 1_000_000 - stamp - HOURS_12 * 1000) < 60_000


def test_a_bad_offset_is_one_line() -> None:
    env = {**os.environ, "STOCKSYNC_TEST_CLOCK_OFFSET_S": "soon"}
    out = subprocess.run(
        [sys.executable, "-c", "import stocksync.clock"], env=env, capture_output=True, text=True
    )
    assert out.returncode != 0 and "is not a number of seconds" in out.stderr
    assert "Traceback" not in out.stderr
