"""What may be sold, per SKU (DESIGN §5), in plain code with no I/O.

:class:`StockBook` holds the quantities the hub decides with — on_hand
mirrored from the agents, what is committed at each warehouse, what is held
by unpaid reservations, what rooms have set aside (quotas) and the safety
stock — and computes::

    avail[w,s]    = max(0, effective_on_hand[w,s] - committed[w,s])
    sellable[s]   = max(0, Σ_w avail[w,s] - held[s] - safety[s] - Σ_rooms quota_free[r,s])
    sellable_r[s] = the same, without room r's own quota (what room r may sell)

``effective_on_hand`` applies the staleness policy: a warehouse not heard
from for ``stale_after`` counts ``on_hand × (1 − stale_buffer)``; after
``offline_after`` it adds nothing new (only what is already committed there).
Time is the hub's own monotonic clock in milliseconds, passed in: no wall
clock decides anything.

The reservation lifecycle that moves units between these buckets lives in
:mod:`stocksync.hub.ledger`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Allocator",
    "Freshness",
    "MostAvailable",
    "SkuStock",
    "StalenessPolicy",
    "StockBook",
    "WarehouseStock",
]


class Freshness(enum.Enum):
    """How recently a warehouse's agent was heard from."""

    FRESH = "fresh"
    STALE = "stale"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class StalenessPolicy:
    """How much a silent warehouse's stock still counts."""

    stale_after_ms: int = 60_000
    """Silent this long: the warehouse is stale."""
    stale_buffer: float = 0.2
    """A stale warehouse counts ``on_hand × (1 − stale_buffer)``, rounded down."""
    offline_after_ms: int = 300_000
    """Silent this long: the warehouse adds nothing new to what may be sold."""

    def freshness(self, silent_ms: int) -> Freshness:
        """The freshness of a warehouse silent for ``silent_ms``."""
        if silent_ms >= self.offline_after_ms:
            return Freshness.OFFLINE
        if silent_ms >= self.stale_after_ms:
            return Freshness.STALE
        return Freshness.FRESH


@dataclass(frozen=True, slots=True)
class WarehouseStock:
    """One warehouse's share of one SKU."""

    warehouse: str
    on_hand: int
    committed: int
    available: int
    """What new reservations may draw on here (after the staleness policy)."""
    freshness: Freshness
    last_seen_ms: int
    """Hub time the warehouse's agent was last heard from."""


@dataclass(frozen=True, slots=True)
class SkuStock:
    """One SKU as a room or a shop sees it."""

    sku: str
    sellable: int
    on_hand: int
    held: int
    committed: int
    safety_stock: int
    quota_free: int
    """Units rooms have set aside and not yet sold (for a room's view: its own)."""
    warehouses: tuple[WarehouseStock, ...] = ()

    @property
    def stale_warehouses(self) -> tuple[str, ...]:
        """Warehouses whose figures are stale or offline."""
        return tuple(w.warehouse for w in self.warehouses if w.freshness is not Freshness.FRESH)


class Allocator(Protocol):
    """Decides which warehouses ship a committed line."""

    def allocate(self, sku: str, qty: int, available: Mapping[str, int]) -> dict[str, int]:
        """Split ``qty`` units over warehouses with ``available`` units.

        Returns at most ``sum(available.values())`` units in all; the caller
        handles a remainder (units no warehouse has).
        """
        ...


class MostAvailable:
    """The warehouse with the most available units ships the line; if it
    cannot ship it all, the next one ships the rest (ties: by warehouse id)."""

    def allocate(self, sku: str, qty: int, available: Mapping[str, int]) -> dict[str, int]:
        """See :meth:`Allocator.allocate`."""
        plan: dict[str, int] = {}
        for warehouse, units in sorted(available.items(), key=lambda wu: (-wu[1], wu[0])):
            if qty <= 0:
                break
            take = min(units, qty)
            if take > 0:
                plan[warehouse] = take
                qty -= take
        return plan


@dataclass
class _Sku:
    on_hand: dict[str, int] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)
    held: int = 0
    safety: int = 0
    quota_free: dict[str, int] = field(default_factory=dict)
    """Per room."""

    @property
    def quota_total(self) -> int:
        return sum(self.quota_free.values())


class StockBook:
    """The hub's quantities per SKU and warehouse, and what is sellable.

    Args:
        policy: the staleness policy.
    """

    def __init__(self, policy: StalenessPolicy | None = None) -> None:
        self.policy = policy or StalenessPolicy()
        self._skus: dict[str, _Sku] = {}
        self._last_seen: dict[str, int] = {}

    # -- warehouses --------------------------------------------------------

    def seen(self, warehouse: str, now_ms: int) -> Freshness:
        """The warehouse's agent was heard from at ``now_ms``; returns its
        freshness before (to notice a warehouse coming back)."""
        before = self.freshness(warehouse, now_ms)
        self._last_seen[warehouse] = max(self._last_seen.get(warehouse, now_ms), now_ms)
        return before

    def freshness(self, warehouse: str, now_ms: int) -> Freshness:
        """How fresh ``warehouse``'s figures are at ``now_ms``."""
        seen = self._last_seen.get(warehouse)
        if seen is None:
            return Freshness.OFFLINE
        return self.policy.freshness(now_ms - seen)

    def last_seen(self, warehouse: str) -> int:
        """Hub time ``warehouse`` was last heard from (0 if never)."""
        return self._last_seen.get(warehouse, 0)

    def warehouses(self) -> list[str]:
        """Every warehouse the book has heard from, by id."""
        return sorted(self._last_seen)

    def skus_at(self, warehouse: str) -> list[str]:
        """SKUs with a figure at ``warehouse``."""
        return [sku for sku, s in self._skus.items() if warehouse in s.on_hand]

    # -- quantities --------------------------------------------------------

    def _sku(self, sku: str) -> _Sku:
        entry = self._skus.get(sku)
        if entry is None:
            entry = self._skus[sku] = _Sku()
        return entry

    def skus(self) -> Iterable[str]:
        """Every SKU the book knows."""
        return self._skus.keys()

    def on_hand(self, sku: str, warehouse: str) -> int:
        """on_hand of ``sku`` at ``warehouse``."""
        entry = self._skus.get(sku)
        return 0 if entry is None else entry.on_hand.get(warehouse, 0)

    def add_on_hand(self, warehouse: str, sku: str, delta: int) -> int:
        """Add ``delta`` to on_hand; returns the new on_hand."""
        counts = self._sku(sku).on_hand
        counts[warehouse] = value = counts.get(warehouse, 0) + delta
        return value

    def replace_on_hand(self, warehouse: str, stock: Mapping[str, int]) -> set[str]:
        """The warehouse's on_hand becomes ``stock`` (a snapshot); returns
        every SKU whose figure there changed."""
        changed = set()
        for sku, entry in self._skus.items():
            if warehouse in entry.on_hand and sku not in stock:
                del entry.on_hand[warehouse]
                changed.add(sku)
        for sku, qty in stock.items():
            counts = self._sku(sku).on_hand
            if counts.get(warehouse) != qty:
                counts[warehouse] = qty
                changed.add(sku)
        return changed

    def committed(self, sku: str, warehouse: str) -> int:
        """Units of ``sku`` committed (allocated, not yet shipped) at ``warehouse``."""
        entry = self._skus.get(sku)
        return 0 if entry is None else entry.committed.get(warehouse, 0)

    def add_committed(self, warehouse: str, sku: str, delta: int) -> None:
        """Move ``delta`` units in (or, negative, out of) committed at ``warehouse``."""
        counts = self._sku(sku).committed
        value = counts.get(warehouse, 0) + delta
        if value:
            counts[warehouse] = value
        else:
            counts.pop(warehouse, None)

    def held(self, sku: str) -> int:
        """Units of ``sku`` held by unpaid reservations."""
        entry = self._skus.get(sku)
        return 0 if entry is None else entry.held

    def add_held(self, sku: str, delta: int) -> None:
        """Move ``delta`` units in (or out of) held."""
        self._sku(sku).held += delta

    def safety_stock(self, sku: str) -> int:
        """Units of ``sku`` never offered for sale."""
        entry = self._skus.get(sku)
        return 0 if entry is None else entry.safety

    def set_safety_stock(self, sku: str, units: int) -> None:
        """Keep ``units`` of ``sku`` back from sale."""
        self._sku(sku).safety = units

    def quota_free(self, sku: str, room: str) -> int:
        """Units of ``sku`` set aside for ``room`` and not yet sold there."""
        entry = self._skus.get(sku)
        return 0 if entry is None else entry.quota_free.get(room, 0)

    def has_quota(self, sku: str, room: str) -> bool:
        """Whether ``room`` has a quota of ``sku`` (even one used up)."""
        entry = self._skus.get(sku)
        return entry is not None and room in entry.quota_free

    def set_quota_free(self, sku: str, room: str, units: int | None) -> None:
        """Set ``room``'s free quota of ``sku``; None removes the quota."""
        quotas = self._sku(sku).quota_free
        if units is None:
            quotas.pop(room, None)
        else:
            quotas[room] = units

    def quotas(self) -> list[tuple[str, str, int]]:
        """Every quota as (room, sku, free units)."""
        return sorted(
            (room, sku, free)
            for sku, entry in self._skus.items()
            for room, free in entry.quota_free.items()
        )

    # -- what may be sold ----------------------------------------------------

    def effective_on_hand(self, sku: str, warehouse: str, now_ms: int) -> int:
        """on_hand after the staleness policy."""
        on_hand = self.on_hand(sku, warehouse)
        fresh = self.freshness(warehouse, now_ms)
        if fresh is Freshness.FRESH or on_hand <= 0:
            return on_hand
        if fresh is Freshness.STALE:
            return math.floor(on_hand * (1 - self.policy.stale_buffer))
        # Offline: nothing new, only what is already committed there.
        return min(on_hand, self.committed(sku, warehouse))

    def available(self, sku: str, warehouse: str, now_ms: int) -> int:
        """Units at ``warehouse`` new reservations may draw on."""
        return max(
            0, self.effective_on_hand(sku, warehouse, now_ms) - self.committed(sku, warehouse)
        )

    def available_by_warehouse(self, sku: str, now_ms: int) -> dict[str, int]:
        """:meth:`available` of every warehouse with a figure for ``sku``."""
        entry = self._skus.get(sku)
        if entry is None:
            return {}
        return {w: self.available(sku, w, now_ms) for w in entry.on_hand}

    def pool(self, sku: str, now_ms: int, room: str = "") -> int:
        """Sellable before the clamp at 0 (negative: held exceeds stock).

        ``room``'s own quota is counted as sellable for it.
        """
        entry = self._skus.get(sku)
        if entry is None:
            return 0
        avail = sum(self.available(sku, w, now_ms) for w in entry.on_hand)
        quotas = entry.quota_total - (entry.quota_free.get(room, 0) if room else 0)
        return avail - entry.held - entry.safety - quotas

    def sellable(self, sku: str, now_ms: int, room: str = "") -> int:
        """What may be sold now (by ``room``, counting its quota); never negative."""
        return max(0, self.pool(sku, now_ms, room))

    def view(self, sku: str, now_ms: int, room: str = "") -> SkuStock:
        """Everything about ``sku``, for a query or a room."""
        entry = self._skus.get(sku) or _Sku()
        warehouses = tuple(
            WarehouseStock(
                warehouse=w,
                on_hand=q,
                committed=entry.committed.get(w, 0),
                available=self.available(sku, w, now_ms),
                freshness=self.freshness(w, now_ms),
                last_seen_ms=self.last_seen(w),
            )
            for w, q in sorted(entry.on_hand.items())
        )
        return SkuStock(
            sku=sku,
            sellable=self.sellable(sku, now_ms, room),
            on_hand=sum(entry.on_hand.values()),
            held=entry.held,
            committed=sum(entry.committed.values()),
            safety_stock=entry.safety,
            quota_free=entry.quota_free.get(room, 0) if room else entry.quota_total,
            warehouses=warehouses,
        )
