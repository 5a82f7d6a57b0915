"""What the hub needs from a store, and nothing more.

One module per backend implements :class:`HubStore` (``sqlite_store`` now;
PostgreSQL later), the shape of litestream's ``ReplicaClient``. The services
are written against this interface only, and ``tests/test_hub_store.py`` is
the contract every backend passes unchanged.

Writes happen in transactions on the hub's single writer
(:class:`stocksync.hub.writer.Writer`): it opens one :meth:`HubStore.transaction`
for a whole group of commands (one fsync for many batches or reserves) and
runs each inside a :meth:`WriteTx.savepoint`, so one command's failure undoes
only that command. Reads may run on another thread at the same time and
never see half a transaction.

Every failure a backend raises is a :class:`StoreError`, whose text is fit
for an agent or an operator to read: no raw driver exception text leaves the
store (the backend logs that once, for the hub's operator).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from stocksync.errors import Status, StocksyncError
from stocksync.events import EventRow
from stocksync.hub.ledger import Changes, Conflict, PickCommand, Reservation
from stocksync.hub.notices import OutboxEvent
from stocksync.hub.rooms import RoomRecord

__all__ = [
    "Applied",
    "Delivery",
    "HubStore",
    "LedgerState",
    "Source",
    "SourceRetired",
    "StoreError",
    "StoreFull",
    "UnknownEvent",
    "WarehouseRecord",
    "WatermarkMoved",
    "WriteTx",
]


class StoreError(StocksyncError):
    """The hub's store could not do what was asked; nothing of it was applied."""

    status = Status.UNAVAILABLE


class StoreFull(StoreError):
    """The disk under the hub's store is full."""


class WatermarkMoved(StoreError):
    """The stored watermark is not where the stream thought: another stream
    applied events for this (warehouse, epoch) in between. Nothing was applied."""

    status = Status.ABORTED


class SourceRetired(StoreError):
    """The (warehouse, epoch) was replaced by a newer store and may not write."""

    status = Status.FAILED_PRECONDITION


class UnknownEvent(StocksyncError):
    """No webhook event by that id in the outbox."""

    status = Status.NOT_FOUND


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook event's delivery to one subscription."""

    event_id: str
    type: str
    reservation_id: str
    body: str
    created_unix_ms: int
    subscription: str
    state: str
    """``pending`` until the receiver answered 2xx, then ``delivered``."""
    attempts: int
    last_error: str
    """Why the last attempt failed ("" if it did not)."""
    last_attempt_unix_ms: int
    delivered_unix_ms: int


@dataclass(frozen=True, slots=True)
class Source:
    """A known (warehouse, epoch) and how far the hub has applied it."""

    source_id: int
    warehouse: str
    epoch: str
    watermark: int
    current: bool
    """False once a newer epoch of the warehouse took over."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What one applied batch changed."""

    watermark: int
    """The source's new watermark: the last applied seq."""
    net: dict[str, int] = field(default_factory=dict)
    """The net change of on_hand per SKU at the batch's warehouse (SKUs whose
    events cancelled out are listed with 0)."""


@dataclass(frozen=True, slots=True)
class WarehouseRecord:
    """The durable part of a warehouse's status."""

    warehouse: str
    epoch: str
    watermark: int
    last_seen_ms: int


@dataclass
class LedgerState:
    """Everything the ledger needs at start-up, read in one consistent snapshot."""

    on_hand: list[tuple[str, str, int]]
    """(warehouse, sku, on_hand) for every figure."""
    warehouses: list[str]
    reservations: list[Reservation]
    picks: list[PickCommand]
    """Commands not yet acknowledged, and those of active reservations."""
    conflicts: list[Conflict]
    """Open conflicts."""
    next_conflict_id: int
    quotas: list[tuple[str, str, int]]
    """(room, sku, free units)."""
    safety: dict[str, int]
    hub_time_ms: int
    """The hub's own clock as last saved (it does not run while the hub is down)."""


class WriteTx(Protocol):
    """The writes of one transaction (used by the writer thread only)."""

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested scope: an exception inside undoes only what it did."""
        ...

    def apply_batch(
        self, source: Source, expected_watermark: int, rows: Sequence[EventRow], seen_ms: int
    ) -> Applied:
        """Log ``rows`` (contiguous, first seq = ``expected_watermark`` + 1),
        add their deltas to on_hand and move the watermark to the last seq.

        Raises:
            WatermarkMoved: if the stored watermark is not ``expected_watermark``.
            SourceRetired: if the source is no longer the warehouse's current one.
        """
        ...

    def apply_snapshot(
        self,
        warehouse: str,
        epoch: str,
        as_of_seq: int,
        stock: Sequence[tuple[str, int]],
        seen_ms: int,
    ) -> Source:
        """Replace the warehouse's on_hand with ``stock`` and make (warehouse,
        epoch) its current epoch with watermark ``as_of_seq``."""
        ...

    def save_changes(self, changes: Changes) -> None:
        """Make the ledger's ``changes`` durable: reservations, pick commands,
        quotas, safety stock and conflicts."""
        ...

    def set_hub_time(self, hub_time_ms: int) -> None:
        """Save the hub's own clock, so reservation TTLs resume from it."""
        ...

    def save_room(self, record: RoomRecord) -> None:
        """Insert or replace a live room's record."""
        ...

    def add_webhook_events(self, events: Sequence[OutboxEvent]) -> None:
        """Put ``events`` in the outbox, pending for each of their subscriptions."""
        ...

    def webhook_attempted(self, subscription: str, event_id: str, error: str, unix_ms: int) -> None:
        """Record one delivery attempt; ``error`` "" means delivered."""
        ...

    def replay_webhooks(self, from_event_id: str, subscriptions: Sequence[str]) -> int:
        """Make the deliveries of ``subscriptions`` from ``from_event_id`` on
        pending again; returns how many had been delivered.

        Raises:
            UnknownEvent: no such event.
        """
        ...

    def prune_webhooks(self, before_unix_ms: int, limit: int) -> int:
        """Delete up to ``limit`` fully delivered events older than ``before_unix_ms``."""
        ...


class HubStore(Protocol):
    """The hub's durable state: watermarks, the applied-event log, on_hand."""

    def transaction(self) -> AbstractContextManager[WriteTx]:
        """One write transaction: committed when the block ends, rolled back
        (and the error raised as a :class:`StoreError`) if it raises.

        Raises:
            StoreError: if the transaction cannot begin or commit.
        """
        ...

    def source(self, warehouse: str, epoch: str) -> Source | None:
        """The stored state of (warehouse, epoch), or None if never seen."""
        ...

    def on_hand(self, skus: Sequence[str]) -> dict[str, dict[str, int]]:
        """on_hand per warehouse for each SKU (warehouses with a row only)."""
        ...

    def warehouses(self) -> list[WarehouseRecord]:
        """Every warehouse with its current epoch, by id."""
        ...

    def load_ledger(self) -> LedgerState:
        """Everything the ledger needs at start-up."""
        ...

    def conflicts(self, open_only: bool = False, limit: int = 1000) -> list[Conflict]:
        """Recorded conflicts, newest first."""
        ...

    def rooms(self) -> list[RoomRecord]:
        """Every live room's record, ended ones included."""
        ...

    def webhook_pending(self, subscription: str, limit: int) -> list[Delivery]:
        """The oldest ``limit`` pending deliveries of ``subscription``, in event order."""
        ...

    def webhook_deliveries(
        self, subscription: str | None = None, pending_only: bool = False, limit: int = 100
    ) -> list[Delivery]:
        """Deliveries, newest event first (one subscription's, or all)."""
        ...

    def webhook_pending_counts(self) -> dict[str, int]:
        """Pending deliveries per subscription (for the metrics)."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...
