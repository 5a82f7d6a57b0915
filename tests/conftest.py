"""Shared fixtures: real hubs and agents as subprocesses on real SQLite files.

Everything here starts the real commands (``stocksync-hub serve``,
``stocksync-agent run``) on 127.0.0.1 port 0 and reads their stores directly,
so crash tests can ``kill -9`` them like an operator's bad day would.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stocksync.tools.procs import AgentChild, HubChild

BIN = Path(sys.executable).parent
HUB = str(BIN / "stocksync-hub")
AGENT = str(BIN / "stocksync-agent")


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.05)


def ctrl_c_reaches_it() -> None:
    """``preexec_fn`` for a child a test stops with SIGINT, as Ctrl-C in a
    terminal would: started from a background job (``cmd &`` in a script, as
    CI runners may), the child inherits SIGINT ignored and Python then never
    raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args: str, check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a stocksync command and capture its output; ``check`` fails with its stderr."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


class HubProcess:
    """``stocksync-hub serve`` in a subprocess; restartable on the same port and store."""

    def __init__(self, db: Path, log: Path, port: int = 0, *extra: str) -> None:
        self.db, self.log, self.port, self.extra = db, log, port, extra
        self.http_port = 0
        self.child: HubChild | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self.child is None else self.child.proc

    def start(self) -> HubProcess:
        self.child = HubChild(self.db, self.log, f"127.0.0.1:{self.port}", self.extra)
        self.port = self.child.wait_ready(30)
        self.http_port = self.child.http_port
        return self

    def kill(self) -> None:
        """kill -9: no chance to flush or say goodbye."""
        if self.child is not None:
            self.child.kill()

    def stop(self) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        return 0 if self.child is None else self.child.stop(30)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


class AgentProcess:
    """``stocksync-agent run`` in a subprocess."""

    def __init__(self, warehouse: str, db: Path, hub: str, log: Path, *extra: str) -> None:
        self.warehouse, self.db, self.hub, self.log, self.extra = warehouse, db, hub, log, extra
        self.child: AgentChild | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self.child is None else self.child.proc

    def start(self) -> AgentProcess:
        self.child = AgentChild(
            self.warehouse,
            self.db,
            self.hub,
            self.log,
            self.extra,
            env={"STOCKSYNC_AGENT_BACKOFF_MAX_S": "1"},
        )
        return self

    def kill(self) -> None:
        """kill -9: no chance to flush or say goodbye."""
        if self.child is not None:
            self.child.kill()

    def stop(self) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        return 0 if self.child is None else self.child.stop(30)


def read_only(path: Path) -> sqlite3.Connection:
    """Open a store for inspection without writing to it."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


HUB_CLOCK_ROW = ("hub_time_ms",)
"""The meta row where the hub saves its own clock about once a second: it
moves by itself, whatever callers do."""


def dump_hub(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of a hub store (to prove bad input changed
    nothing), but for the hub's saved clock."""
    with contextlib.closing(read_only(db)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        dump = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in sorted(tables)}
    if "meta" in dump:
        dump["meta"] = [r for r in dump["meta"] if r[:1] != HUB_CLOCK_ROW]
    return dump


def agent_on_hand(db: Path) -> dict[str, int]:
    """The agent store's on_hand per SKU (zero rows left out)."""
    with read_only(db) as conn:
        return {s: q for s, q in conn.execute("SELECT sku, on_hand FROM stock") if q != 0}


def agent_event_ids(db: Path) -> list[str]:
    """Every event id the agent recorded, by seq."""
    with read_only(db) as conn:
        return [r[0] for r in conn.execute("SELECT event_id FROM events ORDER BY seq")]


def hub_on_hand(db: Path, warehouse: str) -> dict[str, int]:
    """The hub's on_hand per SKU for one warehouse (zero rows left out)."""
    with read_only(db) as conn:
        rows = conn.execute("SELECT sku, on_hand FROM stock WHERE warehouse = ?", (warehouse,))
        return {s: q for s, q in rows if q != 0}


def hub_event_ids(db: Path, warehouse: str) -> list[str]:
    """Event ids the hub applied for the warehouse's current epoch, by seq."""
    with read_only(db) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT e.event_id FROM events e JOIN warehouses w ON w.source_id = e.source_id "
                "WHERE w.warehouse = ? ORDER BY e.seq",
                (warehouse,),
            )
        ]


def hub_watermark(db: Path, warehouse: str) -> int:
    """The hub's watermark for the warehouse's current epoch (0 if unknown)."""
    if not db.exists():
        return 0
    with read_only(db) as conn:
        try:
            row = conn.execute(
                "SELECT s.watermark FROM sources s JOIN warehouses w ON w.source_id = s.id "
                "WHERE w.warehouse = ?",
                (warehouse,),
            ).fetchone()
        except sqlite3.OperationalError:  # not created yet
            return 0
    return int(row[0]) if row else 0


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    """A real hub on port 0 with its own SQLite file."""
    proc = HubProcess(tmp_path / "hub.db", tmp_path / "hub.log").start()
    yield proc
    proc.kill()


@pytest.fixture
def start_agent(tmp_path: Path, hub: HubProcess) -> Iterator[Callable[..., AgentProcess]]:
    """Start real agents against the ``hub`` fixture; all are stopped afterwards."""
    agents: list[AgentProcess] = []

    def start(warehouse: str, db: Path | None = None, *extra: str) -> AgentProcess:
        db = db or tmp_path / f"{warehouse}.db"
        agent = AgentProcess(
            warehouse, db, hub.target, tmp_path / f"{warehouse}.log", *extra
        ).start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.kill()
