"""The webhook outbox on SQLite: events and their deliveries (schema V4).

Writes run in the writer's transaction (the events in the very transaction
of the change they report); reads on the store's read connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from stocksync.hub.notices import OutboxEvent
from stocksync.hub.storage import Delivery, UnknownEvent

__all__ = [
    "add_events",
    "attempted",
    "deliveries",
    "pending",
    "prune",
    "replay",
]

_COLUMNS = (
    "e.event_id, e.type, e.reservation_id, e.body, e.created_unix_ms, d.subscription, d.state, "
    "d.attempts, d.last_error, d.last_attempt_unix_ms, d.delivered_unix_ms"
)


def add_events(conn: sqlite3.Connection, events: Sequence[OutboxEvent]) -> None:
    """Store ``events`` and a pending delivery for each of their subscriptions."""
    for event in events:
        cursor = conn.execute(
            "INSERT INTO webhook_events (event_id, type, reservation_id, body, created_unix_ms) "
            "VALUES (?,?,?,?,?)",
            (event.event_id, event.type, event.reservation_id, event.body, event.created_unix_ms),
        )
        conn.executemany(
            "INSERT INTO webhook_deliveries (subscription, event, state, attempts, last_error, "
            f"last_attempt_unix_ms, delivered_unix_ms) VALUES (?,{int(cursor.lastrowid or 0)},"
            "'pending',0,'',0,0)",
            [(s,) for s in event.subscriptions],
        )


def attempted(
    conn: sqlite3.Connection, subscription: str, event_id: str, error: str, unix_ms: int
) -> None:
    """One attempt of a delivery: ``error`` "" means the receiver took it."""
    conn.execute(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = ?, "
        "last_attempt_unix_ms = ?, state = CASE WHEN ? = '' THEN 'delivered' ELSE state END, "
        "delivered_unix_ms = CASE WHEN ? = '' THEN ? ELSE delivered_unix_ms END "
        "WHERE subscription = ? AND event = (SELECT id FROM webhook_events WHERE event_id = ?)",
        (error, unix_ms, error, error, unix_ms, subscription, event_id),
    )


def replay(conn: sqlite3.Connection, from_event_id: str, subscriptions: Sequence[str]) -> int:
    """Make the deliveries of ``subscriptions`` from ``from_event_id`` on pending
    again; returns how many were delivered before.

    Raises:
        UnknownEvent: no event by that id (or it was pruned).
    """
    row = conn.execute(
        "SELECT id FROM webhook_events WHERE event_id = ?", (from_event_id,)
    ).fetchone()
    if row is None:
        raise UnknownEvent(f"no webhook event {from_event_id} (unknown, or pruned)")
    marks = ",".join("?" * len(subscriptions))
    return conn.execute(
        "UPDATE webhook_deliveries SET state = 'pending' WHERE state = 'delivered' "
        f"AND event >= ? AND subscription IN ({marks})",
        (row[0], *subscriptions),
    ).rowcount


def prune(conn: sqlite3.Connection, before_unix_ms: int, limit: int) -> int:
    """Delete up to ``limit`` events created before ``before_unix_ms`` whose
    every delivery is done; returns how many."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM webhook_events e WHERE created_unix_ms < ? AND NOT EXISTS "
            "(SELECT 1 FROM webhook_deliveries d WHERE d.event = e.id AND d.state = 'pending') "
            "ORDER BY id LIMIT ?",
            (before_unix_ms, limit),
        )
    ]
    marks = ",".join("?" * len(ids))
    if ids:
        conn.execute(f"DELETE FROM webhook_deliveries WHERE event IN ({marks})", ids)
        conn.execute(f"DELETE FROM webhook_events WHERE id IN ({marks})", ids)
    return len(ids)


def _delivery(row: tuple[object, ...]) -> Delivery:
    return Delivery(*row)  # type: ignore[arg-type]


def pending(conn: sqlite3.Connection, subscription: str, limit: int) -> list[Delivery]:
    """The oldest ``limit`` pending deliveries of ``subscription``, in event order."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event "
        "WHERE d.subscription = ? AND d.state = 'pending' ORDER BY d.event LIMIT ?",
        (subscription, limit),
    )
    return [_delivery(r) for r in rows]


def pending_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Pending deliveries per subscription (those with none left out)."""
    rows = conn.execute(
        "SELECT subscription, count(*) FROM webhook_deliveries WHERE state = 'pending' "
        "GROUP BY subscription"
    )
    return {str(s): int(n) for s, n in rows}


def deliveries(
    conn: sqlite3.Connection, subscription: str | None, pending_only: bool, limit: int
) -> list[Delivery]:
    """Deliveries, newest event first (of one subscription, or all)."""
    where = []
    args: list[object] = []
    if subscription:
        where.append("d.subscription = ?")
        args.append(subscription)
    if pending_only:
        where.append("d.state = 'pending'")
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event "
        f"{clause}ORDER BY d.event DESC, d.subscription LIMIT ?",
        (*args, limit),
    )
    return [_delivery(r) for r in rows]
