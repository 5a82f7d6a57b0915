"""The embedded default backend: one SQLite file, WAL, ``synchronous=FULL``.

Writes (batches, snapshots) go through one connection that the caller uses
from a single writer thread; reads use a second connection, so a query never
waits for a commit's fsync and never sees half a batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from stocksync.errors import IncidentLog
from stocksync.events import EventRow
from stocksync.hub import sqlite_webhooks
from stocksync.hub.ledger import Changes, Conflict
from stocksync.hub.notices import OutboxEvent
from stocksync.hub.rooms import DisplayMode, DisplayPolicy, RoomRecord
from stocksync.hub.sqlite_ledger import load_conflicts, load_ledger, save_changes
from stocksync.hub.sqlite_schema import WrongFile, open_schema
from stocksync.hub.storage import (
    Applied,
    Delivery,
    LedgerState,
    Source,
    SourceRetired,
    StoreError,
    StoreFull,
    WarehouseRecord,
    WatermarkMoved,
)
from stocksync.sqlite import check_synchronous, connect, error_kind

__all__ = ["SqliteHubStore", "apply_rows", "insert_event_sql"]

log = logging.getLogger("stocksync.hub.store")

UPSERT_STOCK = (
    "INSERT INTO stock(warehouse, sku, on_hand) VALUES (?, ?, ?) "
    "ON CONFLICT(warehouse, sku) DO UPDATE SET on_hand = on_hand + excluded.on_hand"
)


def insert_event_sql(source_id: int) -> str:
    """The log insert for one source's rows.

    The source id is written into the statement (an integer the store itself
    issued) so the rows go to ``executemany`` as they are, without a new
    tuple per event; SQLite's statement cache keeps one per source.
    """
    return f"INSERT INTO events VALUES ({int(source_id)},?,?,?,?,?,?,?,?,?,?,?)"


def apply_rows(
    conn: sqlite3.Connection, source_id: int, warehouse: str, rows: Sequence[EventRow]
) -> dict[str, int]:
    """Insert ``rows`` into the log and add their deltas to on_hand; returns
    the net change per SKU.

    Deltas are summed per SKU first, so a batch costs one upsert per distinct
    SKU rather than per event.
    """
    # sqlite3 binds exact tuples on a fast path; a tuple subclass such as
    # EventRow takes the generic sequence path, about 40 % slower here.
    conn.executemany(insert_event_sql(source_id), map(tuple, rows))
    net: dict[str, int] = {}
    get = net.get
    for row in rows:
        sku = row.sku
        net[sku] = get(sku, 0) + row.delta
    conn.executemany(UPSERT_STOCK, [(warehouse, sku, d) for sku, d in net.items()])
    return net


_FAILURES: dict[str, tuple[type[StoreError], str]] = {
    "full": (StoreFull, "hub store is full"),
    "busy": (StoreError, "hub store is locked by another process"),
    "corrupt": (StoreError, "hub store is damaged"),
    "not-a-database": (StoreError, "hub store is not a database"),
    "read-only": (StoreError, "hub store is read-only"),
    "io": (StoreError, "hub store cannot be read or written (I/O error)"),
}


class SqliteHubStore:
    """:class:`~stocksync.hub.storage.HubStore` on one SQLite file.

    Args:
        path: the database file, created if missing.
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` (default)
            makes an acknowledged batch survive power loss.

    Raises:
        StoreError: if the file cannot be opened as a hub store.
    """

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        try:
            sync = check_synchronous(synchronous)
        except ValueError as e:
            raise StoreError(str(e)) from None
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._incidents = IncidentLog(log)
        with self._errors("open"):
            self._writer = connect(self.path, sync, wal=False)
            try:
                open_schema(self._writer, self.path)
            except WrongFile as e:
                self._writer.close()
                raise StoreError(str(e)) from None
            self._reader = connect(self.path, sync)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn a SQLite error into a :class:`StoreError` an agent may read."""
        try:
            yield
        except sqlite3.Error as e:
            kind, detail = _FAILURES.get(
                error_kind(e), (StoreError, "hub store failed (the hub's log says why)")
            )
            # One line per incident, not per attempt (every agent retries).
            self._incidents.failed(f"hub store {self.path}: {detail}", f"{doing} failed: {e}")
            raise kind(detail) from None

    @contextmanager
    def transaction(self) -> Iterator[_SqliteTx]:
        """See :meth:`HubStore.transaction`."""
        with self._write_lock:
            with self._errors("begin"):
                self._writer.execute("BEGIN IMMEDIATE")
            try:
                with self._errors("write"):
                    yield _SqliteTx(self)
                with self._errors("commit"):
                    self._writer.execute("COMMIT")
                self._incidents.recovered(f"hub store {self.path}: writing again")
            except BaseException:
                if self._writer.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._writer.execute("ROLLBACK")
                raise

    def source(self, warehouse: str, epoch: str) -> Source | None:
        """See :meth:`HubStore.source`."""
        with self._read_lock, self._errors("read"):
            row = self._reader.execute(
                "SELECT s.id, s.watermark, w.source_id FROM sources s "
                "LEFT JOIN warehouses w ON w.warehouse = s.warehouse "
                "WHERE s.warehouse = ? AND s.epoch = ?",
                (warehouse, epoch),
            ).fetchone()
        if row is None:
            return None
        return Source(row[0], warehouse, epoch, row[1], current=row[2] == row[0])

    def on_hand(self, skus: Sequence[str]) -> dict[str, dict[str, int]]:
        """See :meth:`HubStore.on_hand`."""
        result: dict[str, dict[str, int]] = {sku: {} for sku in skus}
        with self._read_lock, self._errors("read"):
            for warehouse, sku, qty in self._reader.execute(
                "SELECT warehouse, sku, on_hand FROM stock WHERE sku IN "
                f"({','.join('?' * len(skus))}) ORDER BY warehouse",
                list(skus),
            ):
                result[sku][warehouse] = qty
        return result

    def warehouses(self) -> list[WarehouseRecord]:
        """See :meth:`HubStore.warehouses`."""
        with self._read_lock, self._errors("read"):
            rows = self._reader.execute(
                "SELECT w.warehouse, s.epoch, s.watermark, w.last_seen_ms FROM warehouses w "
                "JOIN sources s ON s.id = w.source_id ORDER BY w.warehouse"
            ).fetchall()
        return [WarehouseRecord(*row) for row in rows]

    def load_ledger(self) -> LedgerState:
        """See :meth:`HubStore.load_ledger`."""
        with self._read_lock, self._errors("read"):
            return load_ledger(self._reader)

    def conflicts(self, open_only: bool = False, limit: int = 1000) -> list[Conflict]:
        """See :meth:`HubStore.conflicts`."""
        with self._read_lock, self._errors("read"):
            return load_conflicts(self._reader, open_only, limit)

    def rooms(self) -> list[RoomRecord]:
        """See :meth:`HubStore.rooms`."""
        with self._read_lock, self._errors("read"):
            rows = self._reader.execute(
                "SELECT room, featured, mode, low_threshold, ended FROM rooms ORDER BY room"
            ).fetchall()
        return [
            RoomRecord(
                room,
                tuple(json.loads(featured)),
                DisplayPolicy(DisplayMode(mode), low_threshold),
                bool(ended),
            )
            for room, featured, mode, low_threshold, ended in rows
        ]

    def webhook_pending(self, subscription: str, limit: int) -> list[Delivery]:
        """See :meth:`HubStore.webhook_pending`."""
        with self._read_lock, self._errors("read"):
            return sqlite_webhooks.pending(self._reader, subscription, limit)

    def webhook_pending_counts(self) -> dict[str, int]:
        """See :meth:`HubStore.webhook_pending_counts`."""
        with self._read_lock, self._errors("read"):
            return sqlite_webhooks.pending_counts(self._reader)

    def webhook_deliveries(
        self, subscription: str | None = None, pending_only: bool = False, limit: int = 100
    ) -> list[Delivery]:
        """See :meth:`HubStore.webhook_deliveries`."""
        with self._read_lock, self._errors("read"):
            return sqlite_webhooks.deliveries(self._reader, subscription, pending_only, limit)

    def close(self) -> None:
        """Fold the write-ahead log into the database file, then close both
        connections (the file is then complete on its own, e.g. for a copy)."""
        writer = getattr(self, "_writer", None)
        if writer is not None:
            with contextlib.suppress(sqlite3.Error):  # a full disk: the WAL stays, still valid
                writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for name in ("_reader", "_writer"):
            conn = getattr(self, name, None)
            if conn is not None:
                conn.close()


class _SqliteTx:
    """:class:`~stocksync.hub.storage.WriteTx` on the writer connection."""

    def __init__(self, store: SqliteHubStore) -> None:
        self._store = store
        self._conn = store._writer

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """See :meth:`WriteTx.savepoint`."""
        conn = self._conn
        with self._store._errors("savepoint"):
            conn.execute("SAVEPOINT command")
        try:
            yield
        except BaseException:
            with self._store._errors("rollback"):
                conn.execute("ROLLBACK TO command")
                conn.execute("RELEASE command")
            raise
        with self._store._errors("release"):
            conn.execute("RELEASE command")

    def apply_snapshot(
        self,
        warehouse: str,
        epoch: str,
        as_of_seq: int,
        stock: Sequence[tuple[str, int]],
        seen_ms: int,
    ) -> Source:
        """See :meth:`WriteTx.apply_snapshot`."""
        conn = self._conn
        with self._store._errors("snapshot"):
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
            # Kept so the on_hand of every warehouse can be recomputed from history.
            conn.execute("DELETE FROM snapshot_stock WHERE source_id = ?", (source_id,))
            conn.executemany(
                "INSERT INTO snapshot_stock(source_id, sku, on_hand) "
                f"VALUES ({int(source_id)}, ?, ?)",
                stock,
            )
        return Source(source_id, warehouse, epoch, as_of_seq, current=True)

    def save_changes(self, changes: Changes) -> None:
        """See :meth:`WriteTx.save_changes`."""
        with self._store._errors("save"):
            save_changes(self._conn, changes)

    def save_room(self, record: RoomRecord) -> None:
        """See :meth:`WriteTx.save_room`."""
        with self._store._errors("save"):
            self._conn.execute(
                "INSERT INTO rooms (room, featured, mode, low_threshold, ended) "
                "VALUES (?,?,?,?,?) ON CONFLICT(room) DO UPDATE SET featured = excluded.featured, "
                "mode = excluded.mode, low_threshold = excluded.low_threshold, "
                "ended = excluded.ended",
                (
                    record.room,
                    json.dumps(list(record.featured)),
                    record.policy.mode.value,
                    record.policy.low_threshold,
                    int(record.ended),
                ),
            )

    def add_webhook_events(self, events: Sequence[OutboxEvent]) -> None:
        """See :meth:`WriteTx.add_webhook_events`."""
        with self._store._errors("save"):
            sqlite_webhooks.add_events(self._conn, events)

    def webhook_attempted(self, subscription: str, event_id: str, error: str, unix_ms: int) -> None:
        """See :meth:`WriteTx.webhook_attempted`."""
        with self._store._errors("save"):
            sqlite_webhooks.attempted(self._conn, subscription, event_id, error, unix_ms)

    def replay_webhooks(self, from_event_id: str, subscriptions: Sequence[str]) -> int:
        """See :meth:`WriteTx.replay_webhooks`."""
        with self._store._errors("save"):
            return sqlite_webhooks.replay(self._conn, from_event_id, subscriptions)

    def prune_webhooks(self, before_unix_ms: int, limit: int) -> int:
        """See :meth:`WriteTx.prune_webhooks`."""
        with self._store._errors("save"):
            return sqlite_webhooks.prune(self._conn, before_unix_ms, limit)

    def set_hub_time(self, hub_time_ms: int) -> None:
        """See :meth:`WriteTx.set_hub_time`."""
        with self._store._errors("save"):
            self._conn.execute(
                "INSERT INTO meta (key, value) VALUES ('hub_time_ms', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(int(hub_time_ms)),),
            )

    def apply_batch(
        self, source: Source, expected_watermark: int, rows: Sequence[EventRow], seen_ms: int
    ) -> Applied:
        """See :meth:`WriteTx.apply_batch`."""
        last = rows[-1].seq
        conn = self._conn
        with self._store._errors("apply"):
            current = conn.execute(
                "SELECT source_id FROM warehouses WHERE warehouse = ?", (source.warehouse,)
            ).fetchone()
            if current is None or current[0] != source.source_id:
                raise SourceRetired(
                    f"epoch {source.epoch} of {source.warehouse} was replaced by a newer "
                    "store; this store may no longer send events"
                )
            moved = conn.execute(
                "UPDATE sources SET watermark = ? WHERE id = ? AND watermark = ?",
                (last, source.source_id, expected_watermark),
            ).rowcount
            if moved != 1:
                raise WatermarkMoved(
                    f"watermark of {source.warehouse}/{source.epoch} is no longer "
                    f"{expected_watermark}"
                )
            net = apply_rows(conn, source.source_id, source.warehouse, rows)
            conn.execute(
                "UPDATE warehouses SET last_seen_ms = ? WHERE warehouse = ?",
                (seen_ms, source.warehouse),
            )
        return Applied(last, net)
