"""The hub's SQLite file: what it holds, how it is recognised, how it is upgraded.

Every file says what it is with ``PRAGMA application_id``: a hub never opens
an agent's store (or anything else) as its own, and says so in one line.
``PRAGMA user_version`` counts the migrations that have run; opening writes
nothing unless one is due.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from stocksync.sqlite import AGENT_APPLICATION_ID, HUB_APPLICATION_ID, use_wal

__all__ = [
    "AGENT_APPLICATION_ID",
    "APPLICATION_ID",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "WrongFile",
    "open_schema",
]

APPLICATION_ID = HUB_APPLICATION_ID
"""``PRAGMA application_id`` of a hub store (one home: :mod:`stocksync.sqlite`)."""

V1 = """
CREATE TABLE sources (
    id INTEGER PRIMARY KEY,
    warehouse TEXT NOT NULL,
    epoch TEXT NOT NULL,
    watermark INTEGER NOT NULL,
    snapshot_seq INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (warehouse, epoch)
);
CREATE TABLE warehouses (
    warehouse TEXT PRIMARY KEY,
    source_id INTEGER NOT NULL REFERENCES sources(id),
    last_seen_ms INTEGER NOT NULL
);
CREATE TABLE stock (
    warehouse TEXT NOT NULL,
    sku TEXT NOT NULL,
    on_hand INTEGER NOT NULL,
    PRIMARY KEY (warehouse, sku)
) WITHOUT ROWID;
CREATE INDEX stock_sku ON stock (sku);
CREATE TABLE events (
    source_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    kind INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    delta INTEGER NOT NULL,
    reason TEXT NOT NULL,
    reservation_id TEXT NOT NULL,
    as_of_seq INTEGER NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    PRIMARY KEY (source_id, seq)
) WITHOUT ROWID;
"""
"""The warehouses' stock. The event log is keyed by (source, seq): a second
apply of one seq fails on the key even if the watermark logic were wrong."""

V2 = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE snapshot_stock (
    source_id INTEGER NOT NULL,
    sku TEXT NOT NULL,
    on_hand INTEGER NOT NULL,
    PRIMARY KEY (source_id, sku)
) WITHOUT ROWID;
CREATE TABLE reservations (
    id TEXT PRIMARY KEY,
    idem_key TEXT NOT NULL UNIQUE,
    room TEXT NOT NULL,
    state TEXT NOT NULL,
    ttl_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE reservation_lines (
    reservation_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    sku TEXT NOT NULL,
    qty INTEGER NOT NULL,
    from_quota INTEGER NOT NULL,
    sellable_at_grant INTEGER NOT NULL,
    at_risk INTEGER NOT NULL,
    allocations TEXT NOT NULL,
    shipped TEXT NOT NULL,
    PRIMARY KEY (reservation_id, sku)
) WITHOUT ROWID;
CREATE TABLE pick_commands (
    command_id TEXT PRIMARY KEY,
    warehouse TEXT NOT NULL,
    reservation_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    qty INTEGER NOT NULL,
    cancels TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    acked INTEGER NOT NULL
);
CREATE INDEX pick_commands_pending ON pick_commands (warehouse) WHERE acked = 0;
CREATE TABLE quotas (
    room TEXT NOT NULL,
    sku TEXT NOT NULL,
    free INTEGER NOT NULL,
    PRIMARY KEY (room, sku)
) WITHOUT ROWID;
CREATE TABLE safety_stock (
    sku TEXT PRIMARY KEY,
    units INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE conflicts (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    sku TEXT NOT NULL,
    units INTEGER NOT NULL,
    cause TEXT NOT NULL,
    warehouse TEXT NOT NULL,
    reservation_id TEXT NOT NULL,
    at_unix_ms INTEGER NOT NULL,
    resolved_unix_ms INTEGER NOT NULL
);
"""
"""Reservations (DESIGN §5): lines with their allocations per warehouse (JSON
objects), pick commands, room quotas, safety stock, conflicts; the hub's own
clock in ``meta``; and each snapshot's stock, so ``stocksync-hub check`` can
recompute every on_hand from the stored history."""

V3 = """
CREATE TABLE rooms (
    room TEXT PRIMARY KEY,
    featured TEXT NOT NULL,
    mode TEXT NOT NULL,
    low_threshold INTEGER NOT NULL,
    ended INTEGER NOT NULL
) WITHOUT ROWID;
"""
"""Live rooms: the featured SKUs (a JSON list, in the host's order), the
display policy, and whether the room has ended."""

V4 = """
CREATE TABLE webhook_events (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    reservation_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL
);
CREATE TABLE webhook_deliveries (
    subscription TEXT NOT NULL,
    event INTEGER NOT NULL REFERENCES webhook_events(id),
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    last_attempt_unix_ms INTEGER NOT NULL,
    delivered_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (subscription, event)
) WITHOUT ROWID;
CREATE INDEX webhook_pending ON webhook_deliveries (subscription, event) WHERE state = 'pending';
"""
"""The webhook outbox: each event once (its body exactly as sent, ordered by
``id``), and one delivery per subscription that wants it, ``pending`` until
the receiver answered 2xx, then ``delivered``. Events are written in the
transaction of the change they report."""

V5 = """
ALTER TABLE events ADD COLUMN folded_from_seq INTEGER NOT NULL DEFAULT 0;
"""
"""Folded events (DESIGN §6): a row the agent compacted stands for the seqs
``folded_from_seq..seq``; 0 for an event as recorded."""

MIGRATIONS = (V1, V2, V3, V4, V5)
SCHEMA_VERSION = len(MIGRATIONS)


class WrongFile(Exception):
    """The file is not a hub store (another application's, an agent's, a newer one)."""


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def open_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Check that ``conn`` holds a hub store and run the migrations it lacks.

    A new, empty file becomes a hub store. Writes happen only when a
    migration is due, in one transaction.

    Raises:
        WrongFile: for an agent's store, another application's file, a
            database without the hub's tables, or a newer schema.
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id == AGENT_APPLICATION_ID:
        raise WrongFile(f"{path} is a stocksync agent store, not a hub store")
    if app_id not in (0, APPLICATION_ID):
        raise WrongFile(f"{path} belongs to another application (application_id {app_id:#x})")
    tables = _tables(conn)
    if version == 0 and tables:
        raise WrongFile(f"{path} is a SQLite database but not a stocksync hub store")
    if version >= 1 and "sources" not in tables:
        what = "an agent store" if "meta" in tables and "events" in tables else "not a hub store"
        raise WrongFile(f"{path} is {what}: it has no hub tables")
    if version > SCHEMA_VERSION:
        raise WrongFile(
            f"{path} has schema version {version}; this hub knows {SCHEMA_VERSION}: "
            "upgrade stocksync"
        )
    use_wal(conn)  # only now: switching to WAL rewrites the file's header
    if version == SCHEMA_VERSION and app_id == APPLICATION_ID:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for script in MIGRATIONS[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
