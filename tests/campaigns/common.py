"""What every campaign shares: real processes, the producer, the exactness check, the report."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from test_crash import (  # noqa: E402
    Producer,
    Recorded,
    agent_acked_seq,
    agent_high_seq,
    read_recorded,
)

from stocksync.tools.procs import AgentChild, HubChild, wait_for  # noqa: E402

__all__ = [
    "AgentChild",
    "Campaign",
    "HubChild",
    "Producer",
    "Recorded",
    "agent_acked_seq",
    "agent_high_seq",
    "exactness",
    "hub_watermark",
    "machine",
    "percentile",
    "read_recorded",
    "wait_for",
]

FAST_AGENT = {
    "STOCKSYNC_AGENT_BACKOFF_INITIAL_S": "0.05",
    "STOCKSYNC_AGENT_BACKOFF_MAX_S": "0.5",
}
"""Reconnect quickly: a campaign measures the pipe, not the backoff's patience."""


@dataclass
class Campaign:
    """One campaign's outcome: what was done, the figures, and whether the promise held."""

    name: str
    command: str
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def expect(self, condition: bool, what: str) -> None:
        """Record a broken promise (the campaign goes on and reports it)."""
        if not condition:
            self.failures.append(what)

    def table(self) -> str:
        width = max(len(k) for k in self.figures) if self.figures else 10
        lines = [f"campaign {self.name}: {'PASS' if self.ok else 'FAIL'}", f"  $ {self.command}"]
        for key, value in self.figures.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                shown = str(value)
            elif isinstance(value, float):
                shown = f"{value:,.3f}"
            else:
                shown = f"{value:,}"
            lines.append(f"  {key:<{width}}  {shown}")
        for failure in self.failures:
            lines.append(f"  FAILED: {failure}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "campaign": self.name,
                "command": self.command,
                "ok": self.ok,
                "figures": self.figures,
                "failures": self.failures,
                "machine": machine(),
            },
            sort_keys=False,
        )


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[k])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def hub_watermark(db: Path, warehouse: str) -> int:
    """The hub's watermark for the warehouse's current epoch (0 if none yet)."""
    if not db.exists():
        return 0
    with contextlib.closing(read_only(db)) as conn:
        try:
            row = conn.execute(
                "SELECT s.watermark FROM sources s JOIN warehouses w ON w.source_id = s.id "
                "WHERE w.warehouse = ?",
                (warehouse,),
            ).fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(row[0]) if row else 0


def new_store(db: Path) -> str:
    from stocksync.agent.store import AgentStore

    with AgentStore(db) as store:
        return str(store.epoch)


def hub_log_rows(db: Path, warehouse: str) -> list[tuple[Any, ...]]:
    """(first seq, seq, event id, sku, kind, quantity, delta) of every row the
    hub applied for the warehouse's current epoch, by seq."""
    with contextlib.closing(read_only(db)) as conn:
        return conn.execute(
            "SELECT CASE WHEN e.folded_from_seq > 0 THEN e.folded_from_seq ELSE e.seq END, "
            "e.seq, e.event_id, e.sku, e.kind, e.quantity, e.delta FROM events e "
            "JOIN warehouses w ON w.source_id = e.source_id WHERE w.warehouse = ? "
            "ORDER BY e.seq",
            (warehouse,),
        ).fetchall()


def on_hand(db: Path, sql: str, *args: Any) -> dict[str, int]:
    with contextlib.closing(read_only(db)) as conn:
        return {s: int(q) for s, q in conn.execute(sql, args) if q != 0}


def hub_stock(db: Path, warehouse: str) -> dict[str, int]:
    return on_hand(db, "SELECT sku, on_hand FROM stock WHERE warehouse = ?", warehouse)


def agent_stock(db: Path) -> dict[str, int]:
    return on_hand(db, "SELECT sku, on_hand FROM stock")


def agent_ids(db: Path) -> list[str]:
    with contextlib.closing(read_only(db)) as conn:
        return [r[0] for r in conn.execute("SELECT event_id FROM events ORDER BY seq")]


def exactness(
    hub_db: Path, agent_db: Path, warehouse: str, recorded: list[Recorded] | None = None
) -> dict[str, int | bool]:
    """Recorded vs applied: lost, duplicated, gaps, and whether stock agrees.

    ``recorded`` is what producers were told "recorded" (seq, sku, kind,
    quantity); each must be at the hub as asked. Folded rows count for the
    seqs they stand for.
    """
    rows = hub_log_rows(hub_db, warehouse)
    high = agent_high_seq(agent_db)
    covered: list[int] = []
    by_seq: dict[int, tuple[Any, ...]] = {}
    for first, seq, *rest in rows:
        covered.extend(range(first, seq + 1))
        by_seq[seq] = tuple(rest)
    ids = [r[2] for r in rows]
    duplicated = (len(covered) - len(set(covered))) + (len(ids) - len(set(ids)))
    gaps = len(set(range(1, high + 1)) - set(covered))
    lost = 0
    wrong = 0
    for r in recorded or []:
        got = by_seq.get(r.seq)
        if got is None:
            if r.seq not in set(covered):
                lost += 1
            continue
        if got[1:4] != (r.sku, r.kind, r.quantity):
            wrong += 1
    return {
        "recorded": len(recorded) if recorded is not None else high,
        "agent_high_seq": high,
        "applied_seqs": len(set(covered)),
        "lost": lost,
        "wrong": wrong,
        "duplicated": duplicated,
        "gaps": gaps,
        "ids_equal": ids == agent_ids(agent_db),
        "on_hand_equal": hub_stock(hub_db, warehouse) == agent_stock(agent_db),
    }


def check_exact(c: Campaign, figures: dict[str, int | bool], prefix: str = "") -> None:
    for key in ("lost", "wrong", "duplicated", "gaps"):
        c.expect(figures[key] == 0, f"{prefix}{key} = {figures[key]}")
    c.expect(bool(figures["on_hand_equal"]), f"{prefix}hub on_hand differs from the agent's")
    c.expect(
        figures["applied_seqs"] == figures["agent_high_seq"],
        f"{prefix}hub applied {figures['applied_seqs']} seqs of {figures['agent_high_seq']}",
    )


def wait_caught_up(hub_db: Path, agent_db: Path, warehouse: str, timeout: float = 300) -> float:
    """Wait until the hub holds every event the agent recorded; returns the seconds it took."""
    start = time.monotonic()
    high = agent_high_seq(agent_db)
    wait_for(
        lambda: hub_watermark(hub_db, warehouse) >= high,
        timeout,
        f"the hub to reach {warehouse}'s seq {high}",
        poll=0.01,
    )
    return time.monotonic() - start


@contextlib.contextmanager
def running(*children: Any) -> Iterator[None]:
    """Kill every child still running at the end, whatever happened."""
    try:
        yield
    finally:
        for child in children:
            with contextlib.suppress(Exception):
                if child is not None:
                    child.kill()


def hub_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return dict(extra or {})


def progress(done: int, total: int, what: str, every: int) -> None:
    if every and done % every == 0:
        print(f"  ... {done}/{total} {what}", file=sys.stderr, flush=True)


Clock = Callable[[], float]
