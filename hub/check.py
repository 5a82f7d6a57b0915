"""``stocksync-hub check``: recompute every quantity from the stored history
and verify the invariants of DESIGN §11 on a hub store.

It reads one consistent snapshot through a read-only connection (WAL lets it
run beside a serving hub) and reports each violation in words:

- every warehouse's on_hand equals its last snapshot plus every event applied
  after it (invariant 2, as the hub holds it);
- every source's applied seqs are gap-free up to its watermark (invariant 3);
- no active reservation line holds more than was sellable when it was granted
  (invariant 4), quota draws stay within the line, allocations within the
  line, shipments within allocations, and no shipment is credited that no
  SHIP event carried;
- settled reservations shipped every unit; units at risk have an open
  oversold conflict; committed units still to ship have a live pick command;
- quotas are never negative.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from stocksync.hub.sqlite_schema import APPLICATION_ID, SCHEMA_VERSION

__all__ = ["Report", "check_store"]


@dataclass
class Report:
    """What a check found."""

    violations: list[str] = field(default_factory=list)
    warehouses: int = 0
    events: int = 0
    reservations: int = 0

    @property
    def ok(self) -> bool:
        """No violation."""
        return not self.violations


def check_store(path: Path) -> Report:
    """Check the hub store at ``path`` (read-only).

    Raises:
        sqlite3.Error: if the file cannot be read as SQLite.
    """
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("BEGIN")
        return _check(conn, path)
    finally:
        conn.close()


def _check(conn: sqlite3.Connection, path: Path) -> Report:
    report = Report()
    bad = report.violations.append
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id != APPLICATION_ID or version != SCHEMA_VERSION:
        bad(
            f"{path} is not a hub store of schema {SCHEMA_VERSION} "
            f"(application_id {app_id:#x}, schema {version})"
        )
        return report

    # -- on_hand and seqs, per warehouse's current source --------------------------
    current = conn.execute(
        "SELECT w.warehouse, s.id, s.watermark, s.snapshot_seq FROM warehouses w "
        "JOIN sources s ON s.id = w.source_id ORDER BY w.warehouse"
    ).fetchall()
    report.warehouses = len(current)
    source_warehouse = {sid: w for w, sid, _, _ in current}
    for warehouse, sid, watermark, snapshot_seq in current:
        history: dict[str, int] = dict(
            conn.execute("SELECT sku, on_hand FROM snapshot_stock WHERE source_id = ?", (sid,))
        )
        count, low, high = conn.execute(
            # A folded row stands for folded_from_seq..seq (DESIGN §6).
            "SELECT coalesce(sum(CASE WHEN folded_from_seq > 0 THEN seq - folded_from_seq + 1 "
            "ELSE 1 END), 0), min(CASE WHEN folded_from_seq > 0 THEN folded_from_seq ELSE seq "
            "END), max(seq) FROM events WHERE source_id = ? AND seq > ?",
            (sid, snapshot_seq),
        ).fetchone()
        report.events += count
        if count != watermark - snapshot_seq or (
            count and (low, high) != (snapshot_seq + 1, watermark)
        ):
            bad(
                f"{warehouse}: {count} events applied after the snapshot at seq {snapshot_seq}, "
                f"but the watermark is {watermark}: seqs are not gap-free"
            )
        for sku, delta in conn.execute(
            "SELECT sku, sum(delta) FROM events WHERE source_id = ? AND seq > ? GROUP BY sku",
            (sid, snapshot_seq),
        ):
            history[sku] = history.get(sku, 0) + delta
        stored = dict(
            conn.execute("SELECT sku, on_hand FROM stock WHERE warehouse = ?", (warehouse,))
        )
        for sku in sorted(set(history) | set(stored)):
            if history.get(sku, 0) != stored.get(sku, 0):
                bad(
                    f"{warehouse} {sku}: on_hand is {stored.get(sku, 0)} but its history "
                    f"(snapshot + events) gives {history.get(sku, 0)}"
                )

    # -- shipments the agents reported, per (warehouse, reservation, sku) ---------------
    shipped_events: dict[tuple[str, str, str], int] = defaultdict(int)
    for sid, rid, sku, qty in conn.execute(
        "SELECT source_id, reservation_id, sku, sum(quantity) FROM events "
        "WHERE kind = 2 AND reservation_id != '' GROUP BY source_id, reservation_id, sku"
    ):
        warehouse = source_warehouse.get(sid)
        if warehouse is None:  # a replaced epoch's events: still shipments of that warehouse
            row = conn.execute("SELECT warehouse FROM sources WHERE id = ?", (sid,)).fetchone()
            warehouse = row[0] if row else ""
        shipped_events[(warehouse, rid, sku)] += qty

    # -- reservations ------------------------------------------------------------------
    states = dict(conn.execute("SELECT id, state FROM reservations"))
    report.reservations = len(states)
    at_risk: dict[str, int] = defaultdict(int)
    live_picks = _live_picks(conn)
    for rid, sku, qty, from_quota, at_grant, risk, allocations, shipped in conn.execute(
        "SELECT reservation_id, sku, qty, from_quota, sellable_at_grant, at_risk, allocations, "
        "shipped FROM reservation_lines"
    ):
        state = states.get(rid)
        if state is None:
            bad(f"{rid} {sku}: a line of a reservation that does not exist")
            continue
        alloc: dict[str, int] = json.loads(allocations)
        ship: dict[str, int] = json.loads(shipped)
        active = state in ("HELD", "COMMITTED")
        if active and qty > at_grant:
            bad(f"{rid} {sku}: holds {qty} but only {at_grant} was sellable when it was granted")
        if not 0 <= from_quota <= qty:
            bad(f"{rid} {sku}: {from_quota} drawn from a quota for a line of {qty}")
        if sum(alloc.values()) > qty:
            bad(f"{rid} {sku}: {sum(alloc.values())} allocated for a line of {qty}")
        for warehouse, units in ship.items():
            if units > alloc.get(warehouse, 0):
                bad(
                    f"{rid} {sku}: {units} shipped from {warehouse} but "
                    f"{alloc.get(warehouse, 0)} allocated there"
                )
            if units > shipped_events.get((warehouse, rid, sku), 0):
                bad(
                    f"{rid} {sku}: {units} credited as shipped from {warehouse} but its SHIP "
                    f"events carry {shipped_events.get((warehouse, rid, sku), 0)}"
                )
        if state == "SETTLED" and sum(ship.values()) < qty:
            bad(f"{rid} {sku}: settled with {sum(ship.values())} of {qty} shipped")
        if active and risk:
            at_risk[sku] += risk
        if state == "COMMITTED":
            for warehouse, units in alloc.items():
                if units - ship.get(warehouse, 0) > 0 and (rid, sku, warehouse) not in live_picks:
                    bad(
                        f"{rid} {sku}: {units - ship.get(warehouse, 0)} to ship from "
                        f"{warehouse} but no pick command there"
                    )
    open_oversold = {
        sku
        for (sku,) in conn.execute(
            "SELECT sku FROM conflicts WHERE kind = 'oversold' AND resolved_unix_ms = 0"
        )
    }
    for sku, units in sorted(at_risk.items()):
        if sku not in open_oversold:
            bad(f"{sku}: {units} units at risk but no open oversold conflict")
    for room, sku, free in conn.execute("SELECT room, sku, free FROM quotas WHERE free < 0"):
        bad(f"{room} {sku}: quota of {free}")
    return report


def _live_picks(conn: sqlite3.Connection) -> set[tuple[str, str, str]]:
    """(reservation, sku, warehouse) with a pick command not withdrawn."""
    live: dict[tuple[str, str, str], str] = {}
    for command_id, warehouse, rid, sku, cancels in conn.execute(
        "SELECT command_id, warehouse, reservation_id, sku, cancels FROM pick_commands "
        "ORDER BY rowid"
    ):
        key = (rid, sku, warehouse)
        if cancels:
            if live.get(key) == cancels:
                del live[key]
        else:
            live[key] = command_id
    return set(live)
