"""The embedded default backend: one SQLite file, WAL, ``synchronous=FULL``.

Writes (batches, snapshots) go through one connection that the caller uses
from a single writer thread; reads use a second connection, so a query never
waits for a commit's fsync and never sees half a batch.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from stocksync.hub.storage import (
    DELTA_COLUMN,
    SKU_COLUMN,
    EpochRetired,
    HubRow,
    Source,
    WarehouseRecord,
    WatermarkMoved,
)

__all__ = ["SCHEMA", "SqliteHubStore", "apply_rows"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    id INTEGER PRIMARY KEY,
    warehouse TEXT NOT NULL,
    epoch TEXT NOT NULL,
    watermark INTEGER NOT NULL,
    snapshot_seq INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (warehouse, epoch)
);
CREATE TABLE IF NOT EXISTS warehouses (
    warehouse TEXT PRIMARY KEY,
    source_id INTEGER NOT NULL REFERENCES sources(id),
    last_seen_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stock (
    warehouse TEXT NOT NULL,
    sku TEXT NOT NULL,
    on_hand INTEGER NOT NULL,
    PRIMARY KEY (warehouse, sku)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stock_sku ON stock (sku);
CREATE TABLE IF NOT EXISTS events (
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
"""Schema version 1. The event log is keyed by (source, seq): a second
apply of one seq fails on the key even if the watermark logic were wrong."""

INSERT_EVENT = "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)"
UPSERT_STOCK = (
    "INSERT INTO stock(warehouse, sku, on_hand) VALUES (?, ?, ?) "
    "ON CONFLICT(warehouse, sku) DO UPDATE SET on_hand = on_hand + excluded.on_hand"
)


def apply_rows(conn: sqlite3.Connection, warehouse: str, rows: Sequence[HubRow]) -> None:
    """Insert ``rows`` into the log and add their deltas to on_hand.

    Deltas are summed per SKU first, so a batch costs one upsert per distinct
    SKU rather than per event.
    """
    conn.executemany(INSERT_EVENT, rows)
    net: dict[str, int] = {}
    for row in rows:
        sku = row[SKU_COLUMN]
        net[sku] = net.get(sku, 0) + row[DELTA_COLUMN]
    conn.executemany(UPSERT_STOCK, [(warehouse, sku, d) for sku, d in net.items()])


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


class SqliteHubStore:
    """:class:`~stocksync.hub.storage.HubStore` on one SQLite file.

    Args:
        path: the database file, created if missing.
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` (default)
            makes an acknowledged batch survive power loss.
    """

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        sync = synchronous.upper()
        if sync not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self._writer = _connect(self.path, sync)
        self._write_lock = threading.Lock()
        with self._tx() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > 1:
                raise RuntimeError(f"{self.path} has schema version {version}; upgrade stocksync")
            if version == 0:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("PRAGMA user_version = 1")
        self._reader = _connect(self.path, sync)
        self._read_lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    def source(self, warehouse: str, epoch: str) -> Source | None:
        """See :meth:`HubStore.source`."""
        with self._read_lock:
            row = self._reader.execute(
                "SELECT s.id, s.watermark, w.source_id FROM sources s "
                "LEFT JOIN warehouses w ON w.warehouse = s.warehouse "
                "WHERE s.warehouse = ? AND s.epoch = ?",
                (warehouse, epoch),
            ).fetchone()
        if row is None:
            return None
        return Source(row[0], warehouse, epoch, row[1], current=row[2] == row[0])

    def apply_snapshot(
        self,
        warehouse: str,
        epoch: str,
        as_of_seq: int,
        stock: Sequence[tuple[str, int]],
        seen_ms: int,
    ) -> Source:
        """See :meth:`HubStore.apply_snapshot`."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO sources(warehouse, epoch, watermark, snapshot_seq, created_ms) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(warehouse, epoch) DO UPDATE SET "
                "watermark = excluded.watermark, snapshot_seq = excluded.snapshot_seq",
                (warehouse, epoch, as_of_seq, as_of_seq, seen_ms),
            )
            (source_id,) = conn.execute(
                "SELECT id FROM sources WHERE warehouse = ? AND epoch = ?", (warehouse, epoch)
            ).fetchone()
            conn.execute(
                "INSERT INTO warehouses(warehouse, source_id, last_seen_ms) VALUES (?, ?, ?) "
                "ON CONFLICT(warehouse) DO UPDATE SET source_id = excluded.source_id, "
                "last_seen_ms = excluded.last_seen_ms",
                (warehouse, source_id, seen_ms),
            )
            conn.execute("DELETE FROM stock WHERE warehouse = ?", (warehouse,))
            conn.executemany(
                "INSERT INTO stock(warehouse, sku, on_hand) VALUES (?, ?, ?)",
                [(warehouse, sku, q) for sku, q in stock],
            )
        return Source(source_id, warehouse, epoch, as_of_seq, current=True)

    def apply_batch(
        self, source: Source, expected_watermark: int, rows: Sequence[HubRow], seen_ms: int
    ) -> int:
        """See :meth:`HubStore.apply_batch`."""
        last = rows[-1][1]
        with self._tx() as conn:
            current = conn.execute(
                "SELECT source_id FROM warehouses WHERE warehouse = ?", (source.warehouse,)
            ).fetchone()
            if current is None or current[0] != source.source_id:
                raise EpochRetired(f"epoch {source.epoch} of {source.warehouse} was replaced")
            moved = conn.execute(
                "UPDATE sources SET watermark = ? WHERE id = ? AND watermark = ?",
                (last, source.source_id, expected_watermark),
            ).rowcount
            if moved != 1:
                raise WatermarkMoved(
                    f"watermark of {source.warehouse}/{source.epoch} is no longer "
                    f"{expected_watermark}"
                )
            apply_rows(conn, source.warehouse, rows)
            conn.execute(
                "UPDATE warehouses SET last_seen_ms = ? WHERE warehouse = ?",
                (seen_ms, source.warehouse),
            )
        return last

    def on_hand(self, skus: Sequence[str]) -> dict[str, dict[str, int]]:
        """See :meth:`HubStore.on_hand`."""
        result: dict[str, dict[str, int]] = {sku: {} for sku in skus}
        with self._read_lock:
            for warehouse, sku, qty in self._reader.execute(
                "SELECT warehouse, sku, on_hand FROM stock WHERE sku IN "
                f"({','.join('?' * len(skus))}) ORDER BY warehouse",
                list(skus),
            ):
                result[sku][warehouse] = qty
        return result

    def warehouses(self) -> list[WarehouseRecord]:
        """See :meth:`HubStore.warehouses`."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT w.warehouse, s.epoch, s.watermark, w.last_seen_ms FROM warehouses w "
                "JOIN sources s ON s.id = w.source_id ORDER BY w.warehouse"
            ).fetchall()
        return [WarehouseRecord(*row) for row in rows]

    def close(self) -> None:
        """Close both connections."""
        self._reader.close()
        self._writer.close()
