"""Reservations, pick commands, quotas and conflicts (DESIGN §5), in plain code.

The :class:`Ledger` is the one place the hub decides anything about stock:
agent events and snapshots arrive here, and so do the shop's reserve, commit
and release. Each call updates the in-memory :class:`~stocksync.hub.stock.StockBook`
and returns the :class:`Changes` to make durable — in one transaction, by the
hub's single writer — before anyone is told. Nothing here does I/O or reads
a clock: the hub's monotonic time comes in as ``now_ms``.

Lifecycle: ``HELD`` (a sale in a room, with a TTL) → ``COMMITTED`` (paid;
allocated to warehouses, a pick command sent to each) → ``SETTLED`` (every
unit shipped: SHIP events carrying the reservation id) or ``RELEASED``
(cancelled, or expired while held). HELD and COMMITTED are *active*. An
active reservation that stock can no longer cover is *at risk*, and shows as
``AT_RISK``; the flag is recomputed whenever its SKU changes, so it clears by
itself if stock returns.

Never oversell: a reserve is granted only if every line's sellable covers it
at that moment, all lines or none. When agent events arrive late and leave
active reservations above stock, the ledger moves committed units to
warehouses that still have spare stock (a new pick command there, the old
one cancelled) and marks what it cannot cover at risk, newest reservations
first; every such finding is recorded as a :class:`Conflict`.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import heapq
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from stocksync.errors import InvalidArgument, Status, StocksyncError
from stocksync.events import MAX_RESERVATION_ID_LEN, EventRow, InvalidEvent, Kind, validate_sku
from stocksync.hub.stock import Allocator, Freshness, MostAvailable, SkuStock, StockBook

__all__ = [
    "DEFAULT_TTL_MS",
    "MAX_LINES",
    "MAX_LINE_QTY",
    "MAX_TTL_MS",
    "Changes",
    "Conflict",
    "ConflictKind",
    "Ledger",
    "Line",
    "NotFound",
    "PickCommand",
    "Reservation",
    "ReservationClosed",
    "Shortage",
    "State",
    "validate_room",
]

DEFAULT_TTL_MS = 15 * 60 * 1000
"""A held reservation expires after this, unless the caller says otherwise."""
MAX_TTL_MS = 24 * 60 * 60 * 1000
"""The longest a reservation may be held unpaid."""
MIN_TTL_MS = 1000
MAX_LINES = 50
"""Most lines (SKUs) in one reservation, by default (``max_reservation_lines``)."""
MAX_LINE_QTY = 100_000
"""Most units of one SKU in one reservation."""
MAX_KEY_LEN = 128
"""Longest idempotency key."""
MAX_ROOM_LEN = 64


class State(enum.Enum):
    """Where a reservation stands."""

    HELD = "HELD"
    COMMITTED = "COMMITTED"
    SETTLED = "SETTLED"
    RELEASED = "RELEASED"


class ConflictKind(enum.Enum):
    """What the hub found that should not have happened."""

    OVERSOLD = "oversold"
    """Active reservations exceed stock; the units are at risk."""
    REALLOCATED = "reallocated"
    """Committed units moved to another warehouse that still had them."""
    NEGATIVE_ON_HAND = "negative_on_hand"
    """A warehouse shipped more than its books held."""
    UNKNOWN_RESERVATION = "unknown_reservation"
    """A SHIP named a reservation (or a line of it) the hub does not have."""
    ALREADY_SETTLED = "already_settled"
    """A SHIP named a reservation that was settled, released or not yet paid,
    or shipped more than it had committed."""
    SHIPPED_ELSEWHERE = "shipped_elsewhere"
    """Another warehouse than the allocated one shipped a committed line."""
    EPOCH_REPLACED = "epoch_replaced"
    """A new store (epoch) replaced a warehouse's silent one; what the old
    one had not sent is lost to the hub."""
    TWO_STORES = "two_stores"
    """A replaced store spoke again: two stores claim one warehouse. Open
    until an operator resolves it."""


class NotFound(StocksyncError):
    """No reservation by that id."""

    status = Status.NOT_FOUND


class ReservationClosed(StocksyncError):
    """The reservation is settled, released or at risk: the call cannot apply."""

    status = Status.FAILED_PRECONDITION


class Shortage(StocksyncError):
    """Not enough sellable stock for a reserve or a quota."""

    status = Status.RESOURCE_EXHAUSTED

    def __init__(self, sku: str, wanted: int, sellable: int) -> None:
        super().__init__(f"{sku}: {wanted} requested, {sellable} sellable")
        self.sku, self.wanted, self.sellable = sku, wanted, sellable


@dataclass
class Line:
    """One SKU of a reservation."""

    sku: str
    qty: int
    from_quota: int = 0
    """Units drawn from the room's quota rather than the pool."""
    sellable_at_grant: int = 0
    """What was sellable (to that room) when the reservation was granted."""
    allocations: dict[str, int] = field(default_factory=dict)
    """Committed units per warehouse (including those shipped since)."""
    shipped: dict[str, int] = field(default_factory=dict)
    at_risk: int = 0
    """Units stock cannot cover right now."""

    @property
    def unallocated(self) -> int:
        """Committed units no warehouse could take (counted at risk)."""
        return self.qty - sum(self.allocations.values())

    def open_at(self, warehouse: str) -> int:
        """Allocated at ``warehouse`` and not yet shipped."""
        return self.allocations.get(warehouse, 0) - self.shipped.get(warehouse, 0)

    @property
    def shipped_total(self) -> int:
        """Units shipped against this line."""
        return sum(self.shipped.values())


@dataclass
class Reservation:
    """A hold on units, made by a sale in a room or channel."""

    id: str
    key: str
    room: str
    lines: list[Line]
    state: State
    ttl_ms: int
    created_ms: int
    """Hub time it was granted."""
    expires_ms: int
    """Hub time a HELD reservation expires."""
    created_unix_ms: int = 0
    """Wall clock at grant, for people only."""
    updated_unix_ms: int = 0
    reason: str = ""
    """Why it was released: ``released`` or ``expired``."""
    seq: int = 0
    """Grant order: larger is newer."""

    @property
    def active(self) -> bool:
        """HELD or COMMITTED."""
        return self.state in (State.HELD, State.COMMITTED)

    @property
    def at_risk(self) -> bool:
        """Active, and some unit stock cannot cover."""
        return self.active and any(line.at_risk for line in self.lines)

    @property
    def status(self) -> str:
        """The state as callers see it: ``AT_RISK`` while at risk."""
        return "AT_RISK" if self.at_risk else self.state.value

    def line(self, sku: str) -> Line | None:
        """The line of ``sku``, if any."""
        for line in self.lines:
            if line.sku == sku:
                return line
        return None

    def snapshot(self) -> Reservation:
        """An independent copy (for the writer thread to save)."""
        return dataclasses.replace(
            self,
            lines=[
                dataclasses.replace(ln, allocations=dict(ln.allocations), shipped=dict(ln.shipped))
                for ln in self.lines
            ],
        )


@dataclass
class PickCommand:
    """An instruction to one warehouse: pick (or stop picking) a committed line."""

    command_id: str
    warehouse: str
    reservation_id: str
    sku: str
    qty: int
    cancels: str = ""
    """Set on a cancel: the id of the pick command it withdraws (the line
    moved to another warehouse, or the reservation was released)."""
    created_unix_ms: int = 0
    acked: bool = False

    @property
    def cancel(self) -> bool:
        """Whether this withdraws an earlier command."""
        return bool(self.cancels)


@dataclass
class Conflict:
    """Something the hub found and resolved or flagged, for operators."""

    id: int
    kind: ConflictKind
    sku: str
    units: int
    cause: str
    warehouse: str = ""
    reservation_id: str = ""
    at_unix_ms: int = 0
    resolved_unix_ms: int = 0

    @property
    def open(self) -> bool:
        """Not yet resolved (oversold units and negative stock resolve
        themselves; two stores for one warehouse waits for an operator)."""
        return self.resolved_unix_ms == 0 and self.kind in (
            ConflictKind.OVERSOLD,
            ConflictKind.NEGATIVE_ON_HAND,
            ConflictKind.TWO_STORES,
        )


@dataclass
class Changes:
    """What one decision changed, to be made durable in one transaction.

    Objects are copies: the ledger goes on changing its own while the writer
    thread saves these.
    """

    reservations: dict[str, Reservation] = field(default_factory=dict)
    picks: dict[str, PickCommand] = field(default_factory=dict)
    quotas: dict[tuple[str, str], int | None] = field(default_factory=dict)
    """(room, sku) -> free units; None: the quota was removed."""
    safety: dict[str, int] = field(default_factory=dict)
    conflicts: dict[int, Conflict] = field(default_factory=dict)
    skus: set[str] = field(default_factory=set)
    """SKUs whose sellable may have changed (for rooms), not saved."""
    all_skus: bool = False
    """Every SKU may have changed (a warehouse went stale or offline)."""
    freshness: dict[str, Freshness] = field(default_factory=dict)
    """Warehouses whose freshness changed, to what (for webhooks), not saved."""

    def __bool__(self) -> bool:
        return bool(self.reservations or self.picks or self.quotas or self.safety or self.conflicts)

    def merge(self, other: Changes) -> Changes:
        """Add ``other``'s changes (later ones win); returns self."""
        self.reservations.update(other.reservations)
        self.picks.update(other.picks)
        self.quotas.update(other.quotas)
        self.safety.update(other.safety)
        self.conflicts.update(other.conflicts)
        self.skus |= other.skus
        self.all_skus = self.all_skus or other.all_skus
        self.freshness.update(other.freshness)
        return self


def validate_room(room: str) -> str:
    """Return ``room`` if it is a room id: 1-64 characters of ``[A-Za-z0-9._-]``.

    Raises:
        InvalidArgument: naming what is wrong.
    """
    if not room or len(room) > MAX_ROOM_LEN or not all(c.isalnum() or c in "._-" for c in room):
        raise InvalidArgument(f"room {room[:80]!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if not room.isascii():
        raise InvalidArgument(f"room {room[:80]!r} must be ASCII")
    return room


def _check_lines(
    lines: Sequence[tuple[str, int]], max_lines: int = MAX_LINES
) -> list[tuple[str, int]]:
    if not lines:
        raise InvalidArgument("a reservation needs at least one line")
    if len(lines) > max_lines:
        raise InvalidArgument(
            f"lines: a reservation has at most {max_lines} lines, got {len(lines)} "
            "(max_reservation_lines)"
        )
    seen: set[str] = set()
    for sku, qty in lines:
        try:
            validate_sku(sku)
        except InvalidEvent as e:
            raise InvalidArgument(str(e)) from None
        if sku in seen:
            raise InvalidArgument(f"sku {sku} appears in two lines; use one line per SKU")
        seen.add(sku)
        if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_LINE_QTY:
            raise InvalidArgument(f"qty of {sku} must be 1 to {MAX_LINE_QTY:,}, got {qty}")
    return list(lines)


class Ledger:
    """The hub's stock decisions, over one :class:`StockBook`.

    Args:
        book: the quantities (on_hand, committed, held, quotas, safety stock).
        allocator: decides which warehouses ship a committed line.
        new_id: makes reservation and pick command ids (unique across restarts).
        default_ttl_ms: how long a reservation is held when its caller says nothing.
        max_lines: most lines in one reservation (``max_reservation_lines``).
    """

    def __init__(
        self,
        book: StockBook,
        new_id: Iterable[str],
        allocator: Allocator | None = None,
        default_ttl_ms: int = DEFAULT_TTL_MS,
        max_lines: int = MAX_LINES,
    ) -> None:
        self.book = book
        self.max_lines = max_lines
        self.allocator = allocator or MostAvailable()
        self.default_ttl_ms = default_ttl_ms
        self._ids = iter(new_id)
        self.reservations: dict[str, Reservation] = {}
        self._by_key: dict[str, str] = {}
        self._active_by_sku: dict[str, dict[str, Reservation]] = {}
        self._expiry: list[tuple[int, int, str]] = []
        self._grants = itertools.count(1)
        self.picks: dict[str, PickCommand] = {}
        """Pick commands not yet acknowledged by their warehouse."""
        self._open_picks: dict[tuple[str, str, str], str] = {}
        """(reservation, sku, warehouse) -> the live pick command's id."""
        self.conflicts: dict[int, Conflict] = {}
        """Open conflicts (oversold, negative stock), by id."""
        self._conflict_ids = itertools.count(1)
        self._oversold: dict[str, int] = {}
        """sku -> id of its open oversold conflict."""
        self._negative: dict[tuple[str, str], int] = {}
        """(warehouse, sku) -> id of its open negative-stock conflict."""
        self.oversold_units_total = 0
        """Units ever found oversold (for the metric)."""

    # -- loading -------------------------------------------------------------

    def restore(
        self,
        reservations: Iterable[Reservation],
        picks: Iterable[PickCommand],
        conflicts: Iterable[Conflict],
        next_conflict_id: int,
    ) -> None:
        """Take back durable state at start-up (quantities are in the book)."""
        for r in sorted(reservations, key=lambda r: r.seq):
            self.reservations[r.id] = r
            self._by_key[r.key] = r.id
            if r.active:
                self._index(r)
            if r.state is State.HELD:
                heapq.heappush(self._expiry, (r.expires_ms, r.seq, r.id))
        self._grants = itertools.count(
            max((r.seq for r in self.reservations.values()), default=0) + 1
        )
        for p in picks:
            if not p.acked:
                self.picks[p.command_id] = p
            if not p.cancel:
                self._open_picks[(p.reservation_id, p.sku, p.warehouse)] = p.command_id
        for c in conflicts:
            if c.open:
                self.conflicts[c.id] = c
                if c.kind is ConflictKind.OVERSOLD:
                    self._oversold[c.sku] = c.id
                elif c.kind is ConflictKind.NEGATIVE_ON_HAND:
                    self._negative[(c.warehouse, c.sku)] = c.id
        self._conflict_ids = itertools.count(next_conflict_id)

    def _index(self, r: Reservation) -> None:
        for line in r.lines:
            self._active_by_sku.setdefault(line.sku, {})[r.id] = r

    def _unindex(self, r: Reservation) -> None:
        for line in r.lines:
            active = self._active_by_sku.get(line.sku)
            if active is not None:
                active.pop(r.id, None)

    # -- reserve / commit / release --------------------------------------------

    def reserve(
        self,
        lines: Sequence[tuple[str, int]],
        room: str,
        key: str,
        ttl_ms: int | None,
        now_ms: int,
        unix_ms: int = 0,
    ) -> tuple[Reservation, Changes | None]:
        """Grant a reservation of every line, or none.

        Idempotent by ``key``: the same key with the same lines and room
        returns the reservation it made (and no changes).

        Raises:
            InvalidArgument: bad lines, room, key or ttl, or a key reused with
                other lines.
            Shortage: a line exceeds what is sellable (to ``room``).
        """
        lines = _check_lines(lines, self.max_lines)
        if room:
            validate_room(room)
        if not key or len(key) > MAX_KEY_LEN:
            raise InvalidArgument(f"idempotency key must be 1-{MAX_KEY_LEN} characters")
        ttl = ttl_ms or self.default_ttl_ms
        if not MIN_TTL_MS <= ttl <= MAX_TTL_MS:
            raise InvalidArgument(
                f"ttl must be {MIN_TTL_MS // 1000} s to {MAX_TTL_MS // 1000} s, "
                f"got {ttl / 1000:g} s"
            )
        existing_id = self._by_key.get(key)
        if existing_id is not None:
            existing = self.reservations[existing_id]
            if sorted((ln.sku, ln.qty) for ln in existing.lines) != sorted(lines) or (
                existing.room != room
            ):
                raise InvalidArgument(
                    f"idempotency key {key!r} was used for reservation {existing.id} with "
                    "other lines or another room"
                )
            return existing, None
        book = self.book
        granted: list[Line] = []
        for sku, qty in lines:
            sellable = book.sellable(sku, now_ms, room)
            if qty > sellable:
                raise Shortage(sku, qty, sellable)
            from_quota = min(qty, book.quota_free(sku, room)) if room else 0
            granted.append(Line(sku, qty, from_quota=from_quota, sellable_at_grant=sellable))
        rid = f"R-{next(self._ids)}"
        assert len(rid) <= MAX_RESERVATION_ID_LEN
        seq = next(self._grants)
        reservation = Reservation(
            id=rid,
            key=key,
            room=room,
            lines=granted,
            state=State.HELD,
            ttl_ms=ttl,
            created_ms=now_ms,
            expires_ms=now_ms + ttl,
            created_unix_ms=unix_ms,
            updated_unix_ms=unix_ms,
            seq=seq,
        )
        changes = Changes()
        for line in granted:
            book.add_held(line.sku, line.qty)
            if line.from_quota:
                free = book.quota_free(line.sku, room) - line.from_quota
                book.set_quota_free(line.sku, room, free)
                changes.quotas[(room, line.sku)] = free
            changes.skus.add(line.sku)
        self.reservations[rid] = reservation
        self._by_key[key] = rid
        self._index(reservation)
        heapq.heappush(self._expiry, (reservation.expires_ms, seq, rid))
        changes.reservations[rid] = reservation.snapshot()
        return reservation, changes

    def get(self, rid: str) -> Reservation:
        """The reservation ``rid``.

        Raises:
            NotFound: if there is none.
        """
        if len(rid) > MAX_RESERVATION_ID_LEN:
            raise InvalidArgument(
                f"reservation id is longer than {MAX_RESERVATION_ID_LEN} characters"
            )
        reservation = self.reservations.get(rid)
        if reservation is None:
            raise NotFound(f"no reservation {rid}")
        return reservation

    def commit(self, rid: str, now_ms: int, unix_ms: int = 0) -> tuple[Reservation, Changes | None]:
        """Paid: allocate every line to warehouses and send them pick commands.

        Committing a committed reservation changes nothing (idempotent).

        Raises:
            NotFound: no such reservation.
            ReservationClosed: it was released (or expired) or settled, or it
                is at risk (stock no longer covers it: release it, or wait).
        """
        r = self.get(rid)
        if r.state is State.COMMITTED:
            return r, None
        if r.state is not State.HELD:
            reason = f" ({r.reason})" if r.reason else ""
            raise ReservationClosed(f"reservation {rid} is {r.state.value.lower()}{reason}")
        if r.at_risk:
            short = ", ".join(f"{ln.sku} short by {ln.at_risk}" for ln in r.lines if ln.at_risk)
            raise ReservationClosed(f"reservation {rid} is at risk ({short}); release it or retry")
        changes = Changes()
        book = self.book
        for line in r.lines:
            book.add_held(line.sku, -line.qty)
            plan = self.allocator.allocate(
                line.sku, line.qty, book.available_by_warehouse(line.sku, now_ms)
            )
            for warehouse, units in plan.items():
                line.allocations[warehouse] = units
                book.add_committed(warehouse, line.sku, units)
                self._send_pick(r, line.sku, warehouse, units, changes, unix_ms)
            changes.skus.add(line.sku)
        r.state = State.COMMITTED
        r.updated_unix_ms = unix_ms
        for line in r.lines:
            changes.merge(self._resolve(line.sku, f"commit of {rid}", now_ms, unix_ms))
        changes.reservations[rid] = r.snapshot()
        return r, changes

    def release(
        self, rid: str, now_ms: int, unix_ms: int = 0, reason: str = "released"
    ) -> tuple[Reservation, Changes | None]:
        """Cancel a held or committed reservation; its units return to sale.

        Releasing a released reservation changes nothing (idempotent).

        Raises:
            NotFound: no such reservation.
            ReservationClosed: it is settled (shipped).
        """
        r = self.get(rid)
        if r.state is State.RELEASED:
            return r, None
        if r.state is State.SETTLED:
            raise ReservationClosed(f"reservation {rid} is settled: its goods have shipped")
        changes = Changes()
        book = self.book
        was = r.state
        for line in r.lines:
            if was is State.HELD:
                book.add_held(line.sku, -line.qty)
                if line.from_quota and r.room and book.has_quota(line.sku, r.room):
                    free = book.quota_free(line.sku, r.room) + line.from_quota
                    book.set_quota_free(line.sku, r.room, free)
                    changes.quotas[(r.room, line.sku)] = free
            else:
                for warehouse in list(line.allocations):
                    open_units = line.open_at(warehouse)
                    if open_units > 0:
                        book.add_committed(warehouse, line.sku, -open_units)
                    self._cancel_pick(r.id, line.sku, warehouse, changes, unix_ms)
            line.at_risk = 0
            changes.skus.add(line.sku)
        r.state = State.RELEASED
        r.reason = reason
        r.updated_unix_ms = unix_ms
        self._unindex(r)
        for line in r.lines:
            changes.merge(self._resolve(line.sku, f"release of {rid}", now_ms, unix_ms))
        changes.reservations[rid] = r.snapshot()
        return r, changes

    def expire(self, now_ms: int, unix_ms: int = 0, limit: int = 1000) -> Changes:
        """Release held reservations whose TTL has run out by ``now_ms``."""
        changes = Changes()
        done = 0
        while self._expiry and self._expiry[0][0] <= now_ms and done < limit:
            _, _, rid = heapq.heappop(self._expiry)
            r = self.reservations.get(rid)
            if r is None or r.state is not State.HELD or r.expires_ms > now_ms:
                continue
            _, released = self.release(rid, now_ms, unix_ms, reason="expired")
            if released is not None:
                changes.merge(released)
            done += 1
        return changes

    # -- quotas and safety stock ---------------------------------------------------

    def set_quota(self, room: str, sku: str, units: int, now_ms: int) -> Changes:
        """Set aside ``units`` of ``sku`` that only ``room`` may sell.

        The room's current free quota returns to the pool first, so the new
        amount needs ``units`` ≤ what the room may sell now.

        Raises:
            InvalidArgument: bad room, SKU or units.
            Shortage: not enough sellable.
        """
        validate_room(room)
        _check_lines([(sku, max(units, 1))])
        if units < 0:
            raise InvalidArgument(f"quota units must be 0 or more, got {units}")
        available = self.book.sellable(sku, now_ms, room)
        if units > available:
            raise Shortage(sku, units, available)
        self.book.set_quota_free(sku, room, units)
        changes = Changes(quotas={(room, sku): units}, skus={sku})
        return changes

    def release_quota(self, room: str, sku: str | None = None) -> Changes:
        """Return the unsold part of ``room``'s quota (of one SKU, or all) to the pool."""
        validate_room(room)
        changes = Changes()
        for quota_room, quota_sku, _ in self.book.quotas():
            if quota_room == room and (sku is None or quota_sku == sku):
                self.book.set_quota_free(quota_sku, room, None)
                changes.quotas[(room, quota_sku)] = None
                changes.skus.add(quota_sku)
        return changes

    def set_safety_stock(self, sku: str, units: int) -> Changes:
        """Keep ``units`` of ``sku`` back from sale.

        Raises:
            InvalidArgument: bad SKU or units.
        """
        _check_lines([(sku, 1)])
        if not 0 <= units <= 10**9:
            raise InvalidArgument(f"safety stock must be 0 to 1,000,000,000, got {units}")
        self.book.set_safety_stock(sku, units)
        return Changes(safety={sku: units}, skus={sku})

    # -- agent events ----------------------------------------------------------------

    def apply_events(
        self, warehouse: str, rows: Sequence[EventRow], now_ms: int, unix_ms: int = 0
    ) -> Changes:
        """A batch of ``warehouse``'s events: on_hand moves, SHIPs settle
        reservations, and every SKU touched is checked for conflicts."""
        book = self.book
        changes = Changes()
        touched: dict[str, int] = {}
        get = touched.get
        settles = False
        for row in rows:
            sku = row.sku
            touched[sku] = get(sku, 0) + row.delta
            if row.reservation_id and row.kind == Kind.SHIP:
                settles = True
        if settles:
            # Settling reads the books as each SHIP finds them: event by event.
            for row in rows:
                book.add_on_hand(warehouse, row.sku, row.delta)
                if row.kind == Kind.SHIP and row.reservation_id:
                    self._settle(warehouse, row, changes, unix_ms)
        else:
            # Nothing reads on_hand between the events: one addition per SKU.
            for sku, delta in touched.items():
                book.add_on_hand(warehouse, sku, delta)
        self.book.seen(warehouse, now_ms)
        last = rows[-1] if rows else None
        cause = f"{warehouse} events up to seq {last.seq}" if last else warehouse
        changes.skus.update(touched)
        negative, active, oversold = self._negative, self._active_by_sku, self._oversold
        for sku in touched:
            # Most SKUs have no reservation, no conflict and stock to spare:
            # the checks below would find nothing to change.
            if book.on_hand(sku, warehouse) < 0 or (warehouse, sku) in negative:
                changes.merge(self._check_negative(warehouse, sku, cause, unix_ms))
            if active.get(sku) or sku in oversold:
                changes.merge(self._resolve(sku, cause, now_ms, unix_ms))
        return changes

    def apply_snapshot(
        self, warehouse: str, stock: Mapping[str, int], now_ms: int, unix_ms: int = 0
    ) -> Changes:
        """``warehouse``'s on_hand replaced by a snapshot (a new store)."""
        changed = self.book.replace_on_hand(warehouse, stock)
        self.book.seen(warehouse, now_ms)
        changes = Changes(skus=set(changed))
        for sku in sorted(changed):
            changes.merge(self._check_negative(warehouse, sku, f"{warehouse} snapshot", unix_ms))
            changes.merge(self._resolve(sku, f"{warehouse} snapshot", now_ms, unix_ms))
        return changes

    def seen(self, warehouse: str, now_ms: int) -> Changes:
        """The warehouse's agent spoke: if it was stale or offline, its stock counts fully again."""
        before = self.book.seen(warehouse, now_ms)
        if before is Freshness.FRESH:
            return Changes()
        return self._recheck_warehouse(warehouse, f"{warehouse} is back", now_ms, 0)

    def check_freshness(
        self, warehouses: Mapping[str, Freshness], now_ms: int, unix_ms: int = 0
    ) -> tuple[dict[str, Freshness], Changes]:
        """Compare each warehouse's freshness with ``warehouses`` (what it was);
        returns the new ones and what changed because of them."""
        now = {w: self.book.freshness(w, now_ms) for w in self.book.warehouses()}
        changes = Changes()
        for w, fresh in now.items():
            if warehouses.get(w, Freshness.FRESH) is not fresh:
                changes.merge(self._recheck_warehouse(w, f"{w} is {fresh.value}", now_ms, unix_ms))
                changes.freshness[w] = fresh
        return now, changes

    def _recheck_warehouse(self, warehouse: str, cause: str, now_ms: int, unix_ms: int) -> Changes:
        changes = Changes(skus=set(self.book.skus_at(warehouse)))
        for sku in sorted(changes.skus):
            changes.merge(self._resolve(sku, cause, now_ms, unix_ms))
        return changes

    # -- settlement ------------------------------------------------------------------

    def _settle(self, warehouse: str, row: EventRow, changes: Changes, unix_ms: int) -> None:
        rid, sku, qty = row.reservation_id, row.sku, row.quantity
        cause = f"{warehouse} seq {row.seq}: ship {qty} {sku} for {rid}"
        r = self.reservations.get(rid)
        line = r.line(sku) if r is not None else None
        if r is None or line is None:
            what = "no reservation" if r is None else "a reservation without this SKU"
            self._record(
                ConflictKind.UNKNOWN_RESERVATION,
                sku,
                qty,
                f"{cause}: {what}",
                changes,
                unix_ms,
                warehouse,
                rid,
            )
            return
        if r.state is not State.COMMITTED:
            self._record(
                ConflictKind.ALREADY_SETTLED,
                sku,
                qty,
                f"{cause}: it is {r.state.value.lower()}",
                changes,
                unix_ms,
                warehouse,
                rid,
            )
            return
        book = self.book
        take = min(qty, line.open_at(warehouse))
        rest = qty - take
        # Shipped by another warehouse than the allocated one: move the
        # allocation here so nothing is counted twice, and cancel the pick there.
        for other in sorted(line.allocations):
            if rest <= 0:
                break
            if other == warehouse:
                continue
            move = min(rest, line.open_at(other))
            if move <= 0:
                continue
            line.allocations[other] -= move
            book.add_committed(other, sku, -move)
            line.allocations[warehouse] = line.allocations.get(warehouse, 0) + move
            book.add_committed(warehouse, sku, move)
            self._cancel_pick(rid, sku, other, changes, unix_ms)
            if line.open_at(other) > 0:
                self._send_pick(r, sku, other, line.open_at(other), changes, unix_ms)
            self._record(
                ConflictKind.SHIPPED_ELSEWHERE,
                sku,
                move,
                f"{cause}: allocated to {other}",
                changes,
                unix_ms,
                warehouse,
                rid,
            )
            take += move
            rest -= move
        if take > 0:
            line.shipped[warehouse] = line.shipped.get(warehouse, 0) + take
            book.add_committed(warehouse, sku, -take)
        if rest > 0:
            self._record(
                ConflictKind.ALREADY_SETTLED,
                sku,
                rest,
                f"{cause}: {rest} more than was committed",
                changes,
                unix_ms,
                warehouse,
                rid,
            )
        if all(ln.shipped_total >= ln.qty for ln in r.lines):
            r.state = State.SETTLED
            r.updated_unix_ms = unix_ms
            for ln in r.lines:
                ln.at_risk = 0
            self._unindex(r)
        changes.reservations[rid] = r.snapshot()

    # -- conflicts -----------------------------------------------------------------

    def _record(
        self,
        kind: ConflictKind,
        sku: str,
        units: int,
        cause: str,
        changes: Changes,
        unix_ms: int,
        warehouse: str = "",
        reservation_id: str = "",
    ) -> Conflict:
        conflict = Conflict(
            id=next(self._conflict_ids),
            kind=kind,
            sku=sku,
            units=units,
            cause=cause,
            warehouse=warehouse,
            reservation_id=reservation_id,
            at_unix_ms=unix_ms,
        )
        if conflict.open:
            self.conflicts[conflict.id] = conflict
        changes.conflicts[conflict.id] = copy.copy(conflict)
        return conflict

    def _resolve_conflict(self, conflict_id: int, changes: Changes, unix_ms: int) -> None:
        conflict = self.conflicts.pop(conflict_id, None)
        if conflict is not None:
            conflict.resolved_unix_ms = unix_ms or 1
            changes.conflicts[conflict.id] = copy.copy(conflict)

    def _check_negative(self, warehouse: str, sku: str, cause: str, unix_ms: int) -> Changes:
        changes = Changes()
        on_hand = self.book.on_hand(sku, warehouse)
        open_id = self._negative.get((warehouse, sku))
        if on_hand < 0 and open_id is None:
            c = self._record(
                ConflictKind.NEGATIVE_ON_HAND,
                sku,
                -on_hand,
                f"{cause}: on_hand at {warehouse} is {on_hand}",
                changes,
                unix_ms,
                warehouse,
            )
            self._negative[(warehouse, sku)] = c.id
        elif on_hand >= 0 and open_id is not None:
            del self._negative[(warehouse, sku)]
            self._resolve_conflict(open_id, changes, unix_ms)
        return changes

    def _resolve(self, sku: str, cause: str, now_ms: int, unix_ms: int) -> Changes:
        """Re-allocate committed units a warehouse cannot cover, then recompute
        which reservations of ``sku`` are at risk."""
        changes = Changes()
        active = self._active_by_sku.get(sku)
        book = self.book
        if active:
            self._reallocate(sku, active, cause, now_ms, changes, unix_ms)
        # At risk, committed: per warehouse, what on_hand does not cover,
        # newest reservations first; plus units no warehouse could take.
        at_risk: dict[str, int] = {}
        newest_first = sorted((active or {}).values(), key=lambda r: -r.seq)
        for warehouse in sorted(book.warehouses()):
            short = book.committed(sku, warehouse) - max(0, book.on_hand(sku, warehouse))
            for r in newest_first:
                if short <= 0:
                    break
                line = r.line(sku)
                if r.state is State.COMMITTED and line is not None:
                    units = min(short, line.open_at(warehouse))
                    if units > 0:
                        at_risk[r.id] = at_risk.get(r.id, 0) + units
                        short -= units
        for r in newest_first:
            line = r.line(sku)
            if r.state is State.COMMITTED and line is not None and line.unallocated > 0:
                at_risk[r.id] = at_risk.get(r.id, 0) + line.unallocated
        # At risk, held: what the pool cannot cover, newest first.
        over = -book.pool(sku, now_ms)
        for r in newest_first:
            if over <= 0:
                break
            line = r.line(sku)
            if r.state is State.HELD and line is not None:
                units = min(over, line.qty)
                at_risk[r.id] = at_risk.get(r.id, 0) + units
                over -= units
        for r in (active or {}).values():
            line = r.line(sku)
            assert line is not None
            units = at_risk.get(r.id, 0)
            if line.at_risk != units:
                line.at_risk = units
                changes.reservations[r.id] = r.snapshot()
                changes.skus.add(sku)
        total = sum(at_risk.values())
        open_id = self._oversold.get(sku)
        if total > 0 and open_id is None:
            self.oversold_units_total += total
            c = self._record(
                ConflictKind.OVERSOLD,
                sku,
                total,
                f"{cause}: {total} reserved units not covered by stock",
                changes,
                unix_ms,
                reservation_id=",".join(sorted(at_risk))[:MAX_RESERVATION_ID_LEN],
            )
            self._oversold[sku] = c.id
        elif total > 0 and open_id is not None and self.conflicts[open_id].units != total:
            conflict = self.conflicts[open_id]
            if total > conflict.units:
                self.oversold_units_total += total - conflict.units
            conflict.units = total
            changes.conflicts[conflict.id] = copy.copy(conflict)
        elif total == 0 and open_id is not None:
            del self._oversold[sku]
            self._resolve_conflict(open_id, changes, unix_ms)
        return changes

    def _reallocate(
        self,
        sku: str,
        active: Mapping[str, Reservation],
        cause: str,
        now_ms: int,
        changes: Changes,
        unix_ms: int,
    ) -> None:
        book = self.book

        def spare(warehouse: str) -> int:
            if book.freshness(warehouse, now_ms) is Freshness.OFFLINE:
                return 0
            return max(0, book.on_hand(sku, warehouse)) - book.committed(sku, warehouse)

        newest_first = sorted(active.values(), key=lambda r: -r.seq)
        for warehouse in sorted(book.warehouses()):
            short = book.committed(sku, warehouse) - max(0, book.on_hand(sku, warehouse))
            for r in newest_first:
                if short <= 0:
                    break
                line = r.line(sku)
                if r.state is not State.COMMITTED or line is None:
                    continue
                movable = min(short, line.open_at(warehouse))
                if movable <= 0:
                    continue
                others = {w: spare(w) for w in book.warehouses() if w != warehouse}
                plan = self.allocator.allocate(
                    sku, movable, {w: s for w, s in others.items() if s > 0}
                )
                moved = sum(plan.values())
                if moved <= 0:
                    continue
                line.allocations[warehouse] -= moved
                book.add_committed(warehouse, sku, -moved)
                self._cancel_pick(r.id, sku, warehouse, changes, unix_ms)
                if line.open_at(warehouse) > 0:
                    self._send_pick(r, sku, warehouse, line.open_at(warehouse), changes, unix_ms)
                for target, units in plan.items():
                    line.allocations[target] = line.allocations.get(target, 0) + units
                    book.add_committed(target, sku, units)
                    self._cancel_pick(r.id, sku, target, changes, unix_ms)
                    self._send_pick(r, sku, target, line.open_at(target), changes, unix_ms)
                    self._record(
                        ConflictKind.REALLOCATED,
                        sku,
                        units,
                        f"{cause}: {units} moved from {warehouse} to {target}",
                        changes,
                        unix_ms,
                        target,
                        r.id,
                    )
                changes.reservations[r.id] = r.snapshot()
                changes.skus.add(sku)
                short -= moved
        # Units no warehouse could take at commit: place them where stock appeared.
        for r in sorted(active.values(), key=lambda r: r.seq):
            line = r.line(sku)
            if r.state is not State.COMMITTED or line is None or line.unallocated <= 0:
                continue
            spares = {w: spare(w) for w in book.warehouses()}
            plan = self.allocator.allocate(
                sku, line.unallocated, {w: s for w, s in spares.items() if s > 0}
            )
            for target, units in plan.items():
                line.allocations[target] = line.allocations.get(target, 0) + units
                book.add_committed(target, sku, units)
                self._cancel_pick(r.id, sku, target, changes, unix_ms)
                self._send_pick(r, sku, target, line.open_at(target), changes, unix_ms)
            if plan:
                changes.reservations[r.id] = r.snapshot()
                changes.skus.add(sku)

    def note(
        self, kind: ConflictKind, warehouse: str, cause: str, units: int = 0, unix_ms: int = 0
    ) -> Changes:
        """Record a conflict about a warehouse as a whole (two stores, a replaced epoch)."""
        changes = Changes()
        self._record(kind, "", units, cause, changes, unix_ms, warehouse)
        return changes

    def resolve(self, conflict_id: int, unix_ms: int = 0) -> Changes:
        """An operator handled an open conflict.

        Raises:
            NotFound: no open conflict by that id.
        """
        if conflict_id not in self.conflicts:
            raise NotFound(f"no open conflict #{conflict_id}")
        changes = Changes()
        conflict = self.conflicts[conflict_id]
        if conflict.kind is ConflictKind.OVERSOLD:
            self._oversold.pop(conflict.sku, None)
        elif conflict.kind is ConflictKind.NEGATIVE_ON_HAND:
            self._negative.pop((conflict.warehouse, conflict.sku), None)
        self._resolve_conflict(conflict_id, changes, unix_ms)
        return changes

    def alerts(self, warehouse: str) -> list[Conflict]:
        """Open conflicts about ``warehouse`` as a whole."""
        return [
            c
            for c in self.conflicts.values()
            if c.warehouse == warehouse and c.kind is ConflictKind.TWO_STORES
        ]

    # -- pick commands -------------------------------------------------------------

    def _send_pick(
        self, r: Reservation, sku: str, warehouse: str, units: int, changes: Changes, unix_ms: int
    ) -> None:
        if units <= 0:
            return
        pick = PickCommand(
            command_id=f"P-{next(self._ids)}",
            warehouse=warehouse,
            reservation_id=r.id,
            sku=sku,
            qty=units,
            created_unix_ms=unix_ms,
        )
        self.picks[pick.command_id] = pick
        self._open_picks[(r.id, sku, warehouse)] = pick.command_id
        changes.picks[pick.command_id] = copy.copy(pick)

    def _cancel_pick(
        self, rid: str, sku: str, warehouse: str, changes: Changes, unix_ms: int
    ) -> None:
        command_id = self._open_picks.pop((rid, sku, warehouse), None)
        if command_id is None:
            return
        cancel = PickCommand(
            command_id=f"C-{command_id}",
            warehouse=warehouse,
            reservation_id=rid,
            sku=sku,
            qty=0,
            cancels=command_id,
            created_unix_ms=unix_ms,
        )
        self.picks[cancel.command_id] = cancel
        changes.picks[cancel.command_id] = copy.copy(cancel)

    def pending_picks(self, warehouse: str) -> list[PickCommand]:
        """Commands for ``warehouse`` not yet acknowledged, oldest first."""
        return [p for p in self.picks.values() if p.warehouse == warehouse]

    def ack_pick(self, warehouse: str, command_id: str) -> Changes:
        """``warehouse`` stored the command durably; it need not be sent again.

        An unknown id, or another warehouse's, changes nothing.
        """
        pick = self.picks.get(command_id)
        if pick is None or pick.warehouse != warehouse:
            return Changes()
        del self.picks[command_id]
        pick.acked = True
        return Changes(picks={command_id: copy.copy(pick)})

    # -- views -----------------------------------------------------------------------

    def view(self, sku: str, now_ms: int, room: str = "") -> SkuStock:
        """What ``sku`` looks like now (to ``room``, counting its quota)."""
        return self.book.view(sku, now_ms, room)

    def at_risk_units(self) -> int:
        """Units of active reservations stock cannot cover right now."""
        return sum(c.units for c in self.conflicts.values() if c.kind is ConflictKind.OVERSOLD)
