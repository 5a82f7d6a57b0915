"""The ledger's durable half on SQLite: saving :class:`~stocksync.hub.ledger.Changes`
inside the writer's transaction, and reading everything back at start-up."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from stocksync.hub.ledger import (
    Changes,
    Conflict,
    ConflictKind,
    Line,
    PickCommand,
    Reservation,
    State,
)
from stocksync.hub.storage import LedgerState

__all__ = ["load_conflicts", "load_ledger", "save_changes"]

_UPSERT_RESERVATION = (
    "INSERT INTO reservations (id, idem_key, room, state, ttl_ms, created_ms, expires_ms, "
    "created_unix_ms, updated_unix_ms, reason, seq) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(id) DO UPDATE SET state = excluded.state, "
    "updated_unix_ms = excluded.updated_unix_ms, reason = excluded.reason"
)
_UPSERT_LINE = (
    "INSERT INTO reservation_lines (reservation_id, position, sku, qty, from_quota, "
    "sellable_at_grant, at_risk, allocations, shipped) VALUES (?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(reservation_id, sku) DO UPDATE SET at_risk = excluded.at_risk, "
    "allocations = excluded.allocations, shipped = excluded.shipped"
)
_UPSERT_PICK = (
    "INSERT INTO pick_commands (command_id, warehouse, reservation_id, sku, qty, cancels, "
    "created_unix_ms, acked) VALUES (?,?,?,?,?,?,?,?) "
    "ON CONFLICT(command_id) DO UPDATE SET acked = excluded.acked"
)
_UPSERT_CONFLICT = (
    "INSERT INTO conflicts (id, kind, sku, units, cause, warehouse, reservation_id, "
    "at_unix_ms, resolved_unix_ms) VALUES (?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(id) DO UPDATE SET units = excluded.units, "
    "resolved_unix_ms = excluded.resolved_unix_ms"
)


def _json(counts: dict[str, int]) -> str:
    return json.dumps(counts, sort_keys=True, separators=(",", ":"))


def save_changes(conn: sqlite3.Connection, changes: Changes) -> None:
    """Write ``changes`` in the caller's transaction."""
    if changes.reservations:
        conn.executemany(
            _UPSERT_RESERVATION,
            [
                (
                    r.id,
                    r.key,
                    r.room,
                    r.state.value,
                    r.ttl_ms,
                    r.created_ms,
                    r.expires_ms,
                    r.created_unix_ms,
                    r.updated_unix_ms,
                    r.reason,
                    r.seq,
                )
                for r in changes.reservations.values()
            ],
        )
        conn.executemany(
            _UPSERT_LINE,
            [
                (
                    r.id,
                    position,
                    line.sku,
                    line.qty,
                    line.from_quota,
                    line.sellable_at_grant,
                    line.at_risk,
                    _json(line.allocations),
                    _json(line.shipped),
                )
                for r in changes.reservations.values()
                for position, line in enumerate(r.lines)
            ],
        )
    if changes.picks:
        conn.executemany(
            _UPSERT_PICK,
            [
                (
                    p.command_id,
                    p.warehouse,
                    p.reservation_id,
                    p.sku,
                    p.qty,
                    p.cancels,
                    p.created_unix_ms,
                    int(p.acked),
                )
                for p in changes.picks.values()
            ],
        )
    for (room, sku), free in changes.quotas.items():
        if free is None:
            conn.execute("DELETE FROM quotas WHERE room = ? AND sku = ?", (room, sku))
        else:
            conn.execute(
                "INSERT INTO quotas (room, sku, free) VALUES (?,?,?) "
                "ON CONFLICT(room, sku) DO UPDATE SET free = excluded.free",
                (room, sku, free),
            )
    for sku, units in changes.safety.items():
        conn.execute(
            "INSERT INTO safety_stock (sku, units) VALUES (?,?) "
            "ON CONFLICT(sku) DO UPDATE SET units = excluded.units",
            (sku, units),
        )
    if changes.conflicts:
        conn.executemany(
            _UPSERT_CONFLICT,
            [
                (
                    c.id,
                    c.kind.value,
                    c.sku,
                    c.units,
                    c.cause,
                    c.warehouse,
                    c.reservation_id,
                    c.at_unix_ms,
                    c.resolved_unix_ms,
                )
                for c in changes.conflicts.values()
            ],
        )


def _conflict(row: tuple[object, ...]) -> Conflict:
    id_, kind, sku, units, cause, warehouse, rid, at_ms, resolved_ms = row
    return Conflict(
        id=int(id_),  # type: ignore[call-overload]
        kind=ConflictKind(kind),
        sku=str(sku),
        units=int(units),  # type: ignore[call-overload]
        cause=str(cause),
        warehouse=str(warehouse),
        reservation_id=str(rid),
        at_unix_ms=int(at_ms),  # type: ignore[call-overload]
        resolved_unix_ms=int(resolved_ms),  # type: ignore[call-overload]
    )


_CONFLICT_COLUMNS = (
    "id, kind, sku, units, cause, warehouse, reservation_id, at_unix_ms, resolved_unix_ms"
)


def load_conflicts(
    conn: sqlite3.Connection, open_only: bool = False, limit: int = 1000
) -> list[Conflict]:
    """Conflicts, newest first."""
    where = (
        "WHERE resolved_unix_ms = 0 AND kind IN ('oversold', 'negative_on_hand', 'two_stores') "
        if open_only
        else ""
    )
    rows = conn.execute(
        f"SELECT {_CONFLICT_COLUMNS} FROM conflicts {where}ORDER BY id DESC LIMIT ?", (limit,)
    )
    return [_conflict(row) for row in rows]


def _reservations(conn: sqlite3.Connection) -> list[Reservation]:
    lines: dict[str, list[Line]] = {}
    for rid, sku, qty, from_quota, at_grant, at_risk, allocations, shipped in conn.execute(
        "SELECT reservation_id, sku, qty, from_quota, sellable_at_grant, at_risk, allocations, "
        "shipped FROM reservation_lines ORDER BY reservation_id, position"
    ):
        lines.setdefault(rid, []).append(
            Line(
                sku=sku,
                qty=qty,
                from_quota=from_quota,
                sellable_at_grant=at_grant,
                allocations=json.loads(allocations),
                shipped=json.loads(shipped),
                at_risk=at_risk,
            )
        )
    return [
        Reservation(
            id=rid,
            key=key,
            room=room,
            lines=lines.get(rid, []),
            state=State(state),
            ttl_ms=ttl,
            created_ms=created,
            expires_ms=expires,
            created_unix_ms=created_unix,
            updated_unix_ms=updated_unix,
            reason=reason,
            seq=seq,
        )
        for (
            rid,
            key,
            room,
            state,
            ttl,
            created,
            expires,
            created_unix,
            updated_unix,
            reason,
            seq,
        ) in conn.execute(
            "SELECT id, idem_key, room, state, ttl_ms, created_ms, expires_ms, "
            "created_unix_ms, updated_unix_ms, reason, seq FROM reservations ORDER BY seq"
        )
    ]


def _picks(conn: sqlite3.Connection) -> Iterable[PickCommand]:
    for command_id, warehouse, rid, sku, qty, cancels, created, acked in conn.execute(
        "SELECT command_id, warehouse, reservation_id, sku, qty, cancels, created_unix_ms, acked "
        "FROM pick_commands p WHERE acked = 0 OR EXISTS (SELECT 1 FROM reservations r "
        "WHERE r.id = p.reservation_id AND r.state IN ('HELD', 'COMMITTED')) ORDER BY rowid"
    ):
        yield PickCommand(
            command_id=command_id,
            warehouse=warehouse,
            reservation_id=rid,
            sku=sku,
            qty=qty,
            cancels=cancels,
            created_unix_ms=created,
            acked=bool(acked),
        )


def load_ledger(conn: sqlite3.Connection) -> LedgerState:
    """Everything the ledger and its stock book need at start-up, in one read."""
    conn.execute("BEGIN")
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        max_conflict = conn.execute("SELECT coalesce(max(id), 0) FROM conflicts").fetchone()[0]
        return LedgerState(
            on_hand=conn.execute("SELECT warehouse, sku, on_hand FROM stock").fetchall(),
            warehouses=[
                w for (w,) in conn.execute("SELECT warehouse FROM warehouses ORDER BY warehouse")
            ],
            reservations=_reservations(conn),
            picks=list(_picks(conn)),
            conflicts=load_conflicts(conn, open_only=True, limit=1_000_000),
            next_conflict_id=int(max_conflict) + 1,
            quotas=conn.execute("SELECT room, sku, free FROM quotas").fetchall(),
            safety=dict(conn.execute("SELECT sku, units FROM safety_stock")),
            hub_time_ms=int(meta.get("hub_time_ms", "0")),
        )
    finally:
        conn.execute("COMMIT")
