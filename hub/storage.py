"""What the hub needs from a store, and nothing more.

One module per backend implements :class:`HubStore` (``sqlite_store`` now;
PostgreSQL later), the shape of litestream's ``ReplicaClient``: the sync
service and the queries are written against this interface only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "EpochRetired",
    "HubRow",
    "HubStore",
    "Source",
    "WarehouseRecord",
    "WatermarkMoved",
]

HubRow = tuple[int, int, str, str, int, int, int, str, str, int, int]
"""One applied event: (source_id, seq, event_id, sku, kind, quantity, delta,
reason, reservation_id, as_of_seq, recorded_at_ms)."""

SKU_COLUMN: Final = 3
DELTA_COLUMN: Final = 6


class WatermarkMoved(Exception):
    """The stored watermark is not where the stream thought: another stream
    applied events for this (warehouse, epoch) in between. Nothing was applied."""


class EpochRetired(Exception):
    """The (warehouse, epoch) was replaced by a newer store and may not write."""


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
class WarehouseRecord:
    """The durable part of a warehouse's status."""

    warehouse: str
    epoch: str
    watermark: int
    last_seen_ms: int


class HubStore(Protocol):
    """The hub's durable state: watermarks, the applied-event log, on_hand."""

    def source(self, warehouse: str, epoch: str) -> Source | None:
        """The stored state of (warehouse, epoch), or None if never seen."""
        ...

    def apply_snapshot(
        self,
        warehouse: str,
        epoch: str,
        as_of_seq: int,
        stock: Sequence[tuple[str, int]],
        seen_ms: int,
    ) -> Source:
        """Atomically replace the warehouse's on_hand with ``stock`` and make
        (warehouse, epoch) its current epoch with watermark ``as_of_seq``."""
        ...

    def apply_batch(
        self, source: Source, expected_watermark: int, rows: Sequence[HubRow], seen_ms: int
    ) -> int:
        """Apply events in one transaction and move the watermark to the
        last row's seq; returns it.

        Raises:
            WatermarkMoved: if the stored watermark is not ``expected_watermark``.
            EpochRetired: if the source is no longer the warehouse's current one.
        """
        ...

    def on_hand(self, skus: Sequence[str]) -> dict[str, dict[str, int]]:
        """on_hand per warehouse for each SKU (warehouses with a row only)."""
        ...

    def warehouses(self) -> list[WarehouseRecord]:
        """Every warehouse with its current epoch, by id."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...
