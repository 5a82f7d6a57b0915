"""Start a new store from what a damaged one can still tell.

A damaged store cannot be trusted to stream: some events may be unreadable,
or read back wrong. What the warehouse needs is its stock. :func:`salvage`
reads ``on_hand`` per SKU from the damaged file (never writing to it) and
records it in a fresh store, one COUNT per SKU (an ADJUST for a negative
on_hand, which a count cannot state). The fresh store has a new epoch, so the
hub asks it for a snapshot and replaces the warehouse's stock with it (DESIGN
§6); the damaged file is kept for whoever investigates.

The new store is built under a temporary name beside ``out`` and linked into
place only when complete: a failure (a full disk, say) leaves nothing behind,
and an existing file is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from stocksync.agent.store import AgentStore, StoreError, describe
from stocksync.events import MAX_QUANTITY, SKU_PATTERN, Kind, NewEvent

__all__ = ["Salvaged", "readable_stock", "salvage"]


@dataclass(frozen=True, slots=True)
class Salvaged:
    """What :func:`salvage` did."""

    skus: int
    """SKUs whose non-zero on_hand was copied."""
    unreadable: int
    """SKUs whose on_hand could not be read; they are not in the new store."""
    epoch: str
    """The new store's epoch."""
    warehouse: str | None
    """The warehouse the damaged store belonged to, if that could be read."""


_ONE_ROW = "SELECT sku, on_hand FROM stock WHERE rowid = ?"


def _sound(sku: object, on_hand: object) -> bool:
    return (
        isinstance(sku, str)
        and SKU_PATTERN.fullmatch(sku) is not None
        and isinstance(on_hand, int)
        and -MAX_QUANTITY <= on_hand <= MAX_QUANTITY
    )


def readable_stock(store: AgentStore) -> tuple[dict[str, int], int]:
    """on_hand per SKU, as far as the ``stock`` table can be read.

    A scan stops at the first damaged page; the rows it did not return are
    then read one at a time by rowid (stock rows are only ever inserted or
    updated, so their rowids run 1..n), and a row that fails or reads back
    as garbage is counted as unreadable.

    Returns:
        The readable on_hand per SKU, and how many rows could not be read.

    Raises:
        StoreError: if not even the size of the table can be read.
    """
    conn = store.conn
    rows: dict[int, tuple[str, int]] = {}
    with contextlib.suppress(sqlite3.DatabaseError):
        for rowid, sku, on_hand in conn.execute("SELECT rowid, sku, on_hand FROM stock"):
            if _sound(sku, on_hand):
                rows[rowid] = (sku, on_hand)
    try:
        top = int(conn.execute("SELECT coalesce(max(rowid), 0) FROM stock").fetchone()[0])
    except sqlite3.DatabaseError as e:
        if not rows:
            raise StoreError(f"cannot read the stock of {store.path}: {describe(e)}") from None
        top = max(rows)
    unreadable = 0
    for rowid in range(1, top + 1):
        if rowid in rows:
            continue
        try:
            row = conn.execute(
                "SELECT sku, on_hand FROM stock WHERE rowid = ?", (rowid,)
            ).fetchone()
        except sqlite3.DatabaseError:
            row = None
        if row is not None and _sound(*row):
            rows[rowid] = (row[0], row[1])
        else:
            unreadable += 1
    stock: dict[str, int] = {}
    for sku, on_hand in rows.values():
        if sku in stock:  # one SKU twice: garbage that looked like a row
            unreadable += 1
        else:
            stock[sku] = on_hand
    return stock, unreadable


def salvage(damaged: str | Path, out: str | Path) -> Salvaged:
    """Copy the readable on_hand of ``damaged`` into a new store at ``out``.

    Raises:
        StoreError: if ``out`` exists, ``damaged`` is not a readable agent
            store, or the new store cannot be written; nothing is left at
            ``out`` then, and ``damaged`` is never changed.
    """
    damaged, out = Path(damaged), Path(out)
    if out.exists() or Path(f"{out}-wal").exists():
        raise StoreError(f"{out} exists: salvage writes a new store and never overwrites a file")
    with AgentStore(damaged, read_only=True) as source:
        stock, unreadable = readable_stock(source)
        warehouse: str | None = None
        with contextlib.suppress(StoreError):
            warehouse = source.warehouse
    events = [
        NewEvent(sku=sku, kind=Kind.COUNT, quantity=on_hand)
        if on_hand > 0
        else NewEvent(sku=sku, kind=Kind.ADJUST, quantity=on_hand, reason="salvaged on_hand")
        for sku, on_hand in sorted(stock.items())
        if on_hand != 0
    ]
    partial = out.with_name(f".{out.name}.salvage-{os.getpid()}")
    try:
        with AgentStore(partial) as fresh:
            if warehouse is not None:
                fresh.claim(warehouse)
            fresh.record_many(events)
            epoch = fresh.epoch
            _checkpoint(fresh)
        try:
            os.link(partial, out)  # fails if `out` appeared meanwhile: never overwrite
        except FileExistsError:
            raise StoreError(
                f"{out} exists: salvage writes a new store and never overwrites a file"
            ) from None
        except OSError as e:
            raise StoreError(f"cannot create {out}: {e.strerror}") from None
    finally:
        for part in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            part.unlink(missing_ok=True)
    return Salvaged(len(events), unreadable, epoch, warehouse)


def _checkpoint(store: AgentStore) -> None:
    """Move everything from the WAL into the database file, which alone is linked."""
    try:
        busy, _, _ = store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error as e:
        raise StoreError(f"cannot write agent store {store.path}: {describe(e)}") from None
    if busy:
        raise StoreError(f"cannot write agent store {store.path}: another process has it open")
