"""The hub's stock, as every front end uses it: decide in the ledger, make it
durable through the writer, then tell whoever listens.

gRPC (``InventoryService``, ``SyncService``), HTTP and the CLI all call the
same :class:`Inventory`: a reserve over HTTP and one over gRPC run the same
code. Each operation is decided on the event loop by the
:class:`~stocksync.hub.ledger.Ledger` (in memory, microseconds), queued to
the :class:`~stocksync.hub.writer.Writer` (group commit, one fsync for many)
and answered only once durable. Then rooms hear which SKUs changed and the
warehouses' streams get their new pick commands.

If a write ever fails (a full disk), the writer halts and the inventory
rebuilds its in-memory state from the store before accepting anything again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

from uuid6 import uuid7

from stocksync.errors import StocksyncError
from stocksync.events import EventRow
from stocksync.hub.clock import HubClock
from stocksync.hub.ledger import (
    DEFAULT_TTL_MS,
    MAX_LINES,
    Changes,
    Conflict,
    ConflictKind,
    Ledger,
    PickCommand,
    Reservation,
    Shortage,
    State,
)
from stocksync.hub.metrics import HubMetrics
from stocksync.hub.notices import Notices
from stocksync.hub.stock import Allocator, Freshness, SkuStock, StalenessPolicy, StockBook
from stocksync.hub.storage import Applied, HubStore, Source, SourceRetired, WatermarkMoved
from stocksync.hub.writer import Writer

__all__ = ["MAX_QUERY_SKUS", "TICK_S", "Inventory"]

log = logging.getLogger("stocksync.hub.inventory")

T = TypeVar("T")

TICK_S = 0.25
"""How often expiries and warehouse staleness are checked."""
HUB_TIME_SAVE_MS = 1000
"""How often the hub's clock is saved (what a kill -9 can add to a TTL)."""
MAX_QUERY_SKUS = 1000
"""Most SKUs one stock query may name, by default (``max_query_skus``)."""

StockListener = Callable[[Collection[str] | None, float], None]
"""Called with the SKUs whose sellable may have changed (None: any) and the
monotonic time the cause reached the hub."""
PickListener = Callable[[list[PickCommand]], None]


def _ids() -> Iterator[str]:
    while True:
        yield str(uuid7())


class Inventory:
    """Stock decisions made durable.

    Args:
        store: the hub's store.
        writer: the hub's single writer.
        reads: the executor for store reads.
        clock: the hub's clock.
        policy: the staleness policy.
        allocator: which warehouses ship a committed line (default: most available).
        default_ttl_ms: how long a held reservation lasts when Reserve gives no ttl.
        max_lines: most lines in one reservation (``max_reservation_lines``).
        max_query_skus: most SKUs one stock query may name (``max_query_skus``);
            :mod:`stocksync.hub.inventory_calls` holds every face to it.
        metrics: where reservations and conflicts are counted (default: a
            registry of its own).
    """

    def __init__(
        self,
        store: HubStore,
        writer: Writer,
        reads: Executor,
        clock: HubClock | None = None,
        policy: StalenessPolicy | None = None,
        allocator: Allocator | None = None,
        default_ttl_ms: int = DEFAULT_TTL_MS,
        max_lines: int = MAX_LINES,
        max_query_skus: int = MAX_QUERY_SKUS,
        metrics: HubMetrics | None = None,
    ) -> None:
        self.metrics = metrics or HubMetrics()
        self.store = store
        self.max_lines = max_lines
        self.max_query_skus = max_query_skus
        self.writer = writer
        self.reads = reads
        self.clock = clock or HubClock()
        self.policy = policy or StalenessPolicy()
        self.allocator = allocator
        self.default_ttl_ms = default_ttl_ms
        self.ledger = Ledger(StockBook(self.policy), _ids(), allocator, default_ttl_ms, max_lines)
        self.stock_listeners: list[StockListener] = []
        self.pick_listeners: dict[str, PickListener] = {}
        self._current: dict[str, int] = {}
        """warehouse -> source id of its current epoch."""
        self._accepted: dict[int, int] = {}
        """source id -> last seq decided (durable or queued)."""
        self._freshness: dict[str, Freshness] = {}
        self._saved_hub_time = 0
        self._conflicts_counted: int | None = None
        """The last conflict id counted in the metrics (None: not loaded yet)."""
        self._timer: asyncio.Future[None] | None = None
        self._reloading: asyncio.Future[None] | None = None
        self.notices: Notices | None = None
        """Set before :meth:`start` when webhooks are configured: the events
        each change makes go to the outbox in the change's own transaction."""
        writer.on_halt = self._on_halt

    # -- start, stop, recover ------------------------------------------------------

    async def start(self) -> None:
        """Load the durable state and start the timers (expiry, staleness)."""
        await self._load()
        self._timer = asyncio.ensure_future(self._tick_forever())

    async def stop(self) -> None:
        """Stop the timers (the caller then closes the writer)."""
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        if self._reloading is not None:
            await asyncio.gather(self._reloading, return_exceptions=True)
        now = self.clock.now_ms()
        try:
            await self.writer.write(lambda tx: tx.set_hub_time(now))
        except StocksyncError as e:
            log.warning("could not save the hub's clock on the way out: %s", e)

    async def _load(self, reload: bool = False) -> None:
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(self.reads, self.store.load_ledger)
        records = await loop.run_in_executor(self.reads, self.store.warehouses)
        sources = {}
        for record in records:
            source = await loop.run_in_executor(
                self.reads, self.store.source, record.warehouse, record.epoch
            )
            if source is not None:
                sources[record.warehouse] = source
        self.clock.resume_from(state.hub_time_ms)
        now = self.clock.now_ms()
        book = StockBook(self.policy)
        for warehouse, sku, qty in state.on_hand:
            book.add_on_hand(warehouse, sku, qty)
        for warehouse in state.warehouses:
            # Heard from "now": a restarted hub counts stock as fresh until
            # stale_after passes without its agent reconnecting.
            book.seen(warehouse, now)
        for room, sku, free in state.quotas:
            book.set_quota_free(sku, room, free)
        for sku, units in state.safety.items():
            book.set_safety_stock(sku, units)
        for r in state.reservations:
            for line in r.lines:
                if r.state.value == "HELD":
                    book.add_held(line.sku, line.qty)
                elif r.state.value == "COMMITTED":
                    for warehouse in line.allocations:
                        open_units = line.open_at(warehouse)
                        if open_units > 0:
                            book.add_committed(warehouse, line.sku, open_units)
        ledger = Ledger(book, _ids(), self.allocator, self.default_ttl_ms, self.max_lines)
        ledger.restore(state.reservations, state.picks, state.conflicts, state.next_conflict_id)
        if self.notices is not None:
            self.notices.restore(state.reservations, state.next_conflict_id - 1)
        self.ledger = ledger
        self._current = {w: s.source_id for w, s in sources.items()}
        self._accepted = {s.source_id: s.watermark for s in sources.values()}
        self._freshness = {w: Freshness.FRESH for w in state.warehouses}
        self._saved_hub_time = state.hub_time_ms
        if self._conflicts_counted is None:
            self._conflicts_counted = state.next_conflict_id - 1
        log.log(
            logging.DEBUG if reload else logging.INFO,
            "stock loaded: %d warehouses, %d reservations, %d open conflicts, hub time %.1f s",
            len(state.warehouses),
            len(state.reservations),
            len(state.conflicts),
            state.hub_time_ms / 1000,
        )

    def _on_halt(self, error: StocksyncError) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.ensure_future(self._reload())

    async def _reload(self) -> None:
        try:
            await self.writer.idle()
            await self._load(reload=True)
        except StocksyncError as e:
            log.error("cannot reload the hub's state (%s); retrying", e)
            await asyncio.sleep(1.0)
            self._reloading = asyncio.ensure_future(self._reload())
            return
        self.writer.resume()
        self._notify(None, time.monotonic())

    # -- writing -------------------------------------------------------------------

    def _write(
        self, changes: Changes | None, origin: float, extra: Any = None
    ) -> asyncio.Future[Any]:
        """Queue ``changes`` (and ``extra``, a command run first); notify once durable."""
        notices = self.notices
        events = (
            notices.derive(changes, self.clock.now_ms(), self.clock.unix_ms())
            if notices is not None and changes is not None
            else []
        )
        if not changes and extra is None and not events:
            # Nothing to save (staleness, say): tell listeners now.
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_result(None)
            if changes is not None:
                self._after(future, changes, origin)
            return future

        def command(tx: Any) -> Any:
            result = extra(tx) if extra is not None else None
            if changes:
                tx.save_changes(changes)
            if events:
                tx.add_webhook_events(events)
            return result

        future = self.writer.submit(command)
        if events and notices is not None:
            future.add_done_callback(
                lambda f: None if f.cancelled() or f.exception() else notices.durable(events)
            )
        if changes is not None:
            future.add_done_callback(lambda f: self._after(f, changes, origin))
        return future

    def _after(self, future: asyncio.Future[Any], changes: Changes, origin: float) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        if changes.conflicts:
            self._count_conflicts(changes.conflicts.values())
        if changes.skus or changes.all_skus:
            self._notify(None if changes.all_skus else changes.skus, origin)
        if changes.picks:
            by_warehouse: dict[str, list[PickCommand]] = {}
            for pick in changes.picks.values():
                if not pick.acked:
                    by_warehouse.setdefault(pick.warehouse, []).append(pick)
            for warehouse, picks in by_warehouse.items():
                listener = self.pick_listeners.get(warehouse)
                if listener is not None:
                    listener(picks)

    def _count_conflicts(self, conflicts: Iterable[Conflict]) -> None:
        """Count each conflict once, when it is first durable (a later change
        to it, or its resolution, comes with the same id)."""
        counted = self._conflicts_counted or 0
        for conflict in conflicts:
            if conflict.id > counted:
                self.metrics.conflicts[conflict.kind].inc()
        self._conflicts_counted = max(counted, *(c.id for c in conflicts))

    def _notify(self, skus: Collection[str] | None, origin: float) -> None:
        for listener in list(self.stock_listeners):
            try:
                listener(skus, origin)
            except Exception:  # a listener's bug must not fail a write that is durable
                log.exception("stock listener failed")

    # -- agent streams -----------------------------------------------------------------

    def warehouses(self) -> list[str]:
        """Every warehouse the hub has stock of (or heard from)."""
        return list(self._freshness)

    def watermark(self, warehouse: str) -> int:
        """The last seq accepted from ``warehouse``'s current epoch (0: none)."""
        source = self._current.get(warehouse)
        return 0 if source is None else self._accepted.get(source, 0)

    def freshness(self, warehouse: str) -> Freshness:
        """How recently ``warehouse`` was heard from."""
        return self._freshness.get(warehouse, Freshness.FRESH)

    def seen(self, warehouse: str) -> None:
        """The warehouse's agent said something just now."""
        now = self.clock.now_ms()
        changes = self.ledger.seen(warehouse, now)
        if self._freshness.get(warehouse) is not Freshness.FRESH:
            self._freshness[warehouse] = Freshness.FRESH
            self._write(changes, time.monotonic()).add_done_callback(_retrieve)

    def apply_batch(
        self, source: Source, rows: list[EventRow], origin: float
    ) -> asyncio.Future[Applied]:
        """Decide ``rows`` (contiguous, right after what was accepted for the
        source) and queue them; the future resolves once they are durable.

        Raises:
            WatermarkMoved: the rows do not follow what was accepted (another
                stream of the same store got there first).
            SourceRetired: the source's epoch was replaced.
        """
        expected = rows[0].first_seq - 1  # a folded row starts before its seq
        if self._current.get(source.warehouse) != source.source_id:
            raise SourceRetired(
                f"epoch {source.epoch} of {source.warehouse} was replaced by a newer store; "
                "this store may no longer send events"
            )
        accepted = self._accepted.get(source.source_id, source.watermark)
        if accepted != expected:
            raise WatermarkMoved(
                f"watermark of {source.warehouse}/{source.epoch} is no longer {expected}"
            )
        now = self.clock.now_ms()
        changes = self.ledger.apply_events(source.warehouse, rows, now, self.clock.unix_ms())
        self._accepted[source.source_id] = rows[-1].seq
        seen_ms = self.clock.unix_ms()
        return self._write(
            changes, origin, lambda tx: tx.apply_batch(source, expected, rows, seen_ms)
        )

    async def apply_snapshot(
        self, warehouse: str, epoch: str, as_of_seq: int, stock: list[tuple[str, int]]
    ) -> Source:
        """Replace ``warehouse``'s stock with a snapshot from (a new) epoch."""
        changes = self.ledger.apply_snapshot(
            warehouse, dict(stock), self.clock.now_ms(), self.clock.unix_ms()
        )
        seen_ms = self.clock.unix_ms()
        source: Source = await self._write(
            changes,
            time.monotonic(),
            lambda tx: tx.apply_snapshot(warehouse, epoch, as_of_seq, stock, seen_ms),
        )
        self._current[warehouse] = source.source_id
        self._accepted[source.source_id] = as_of_seq
        return source

    async def note(self, kind: ConflictKind, warehouse: str, cause: str, units: int = 0) -> None:
        """Record a conflict about a warehouse as a whole (durably, before returning)."""
        changes = self.ledger.note(kind, warehouse, cause, units, self.clock.unix_ms())
        await self._write(changes, time.monotonic())

    async def resolve_conflict(self, conflict_id: int) -> None:
        """An operator handled an open conflict. See :meth:`Ledger.resolve`."""
        await self._write(self.ledger.resolve(conflict_id, self.clock.unix_ms()), time.monotonic())

    def pending_picks(self, warehouse: str) -> list[PickCommand]:
        """Commands ``warehouse`` has not acknowledged yet."""
        return self.ledger.pending_picks(warehouse)

    def ack_pick(self, warehouse: str, command_id: str) -> None:
        """``warehouse`` stored a command durably."""
        changes = self.ledger.ack_pick(warehouse, command_id)
        if changes:
            future = self._write(changes, time.monotonic())
            future.add_done_callback(_retrieve)

    # -- the shop's calls ----------------------------------------------------------------

    async def reserve(
        self, lines: Sequence[tuple[str, int]], room: str, key: str, ttl_ms: int | None
    ) -> Reservation:
        """Hold every line, or none; answered once durable. See :meth:`Ledger.reserve`."""
        try:
            reservation, changes = self.ledger.reserve(
                lines, room, key, ttl_ms, self.clock.now_ms(), self.clock.unix_ms()
            )
        except Shortage:
            self.metrics.reservations["short"].inc()
            raise
        except StocksyncError:
            self.metrics.reservations["invalid"].inc()
            raise
        if changes is not None:
            await self._write(changes, time.monotonic())
        self.metrics.reservations["granted" if changes is not None else "duplicate"].inc()
        return reservation

    async def commit(self, reservation_id: str) -> Reservation:
        """Paid: allocate and send pick commands. See :meth:`Ledger.commit`."""
        try:
            reservation, changes = self.ledger.commit(
                reservation_id, self.clock.now_ms(), self.clock.unix_ms()
            )
        except StocksyncError:
            self.metrics.reservations["refused"].inc()
            raise
        if changes is not None:
            await self._write(changes, time.monotonic())
            self.metrics.reservations["committed"].inc()
        return reservation

    async def release(self, reservation_id: str) -> Reservation:
        """Cancel. See :meth:`Ledger.release`."""
        try:
            reservation, changes = self.ledger.release(
                reservation_id, self.clock.now_ms(), self.clock.unix_ms()
            )
        except StocksyncError:
            self.metrics.reservations["refused"].inc()
            raise
        if changes is not None:
            await self._write(changes, time.monotonic())
            self.metrics.reservations["released"].inc()
        return reservation

    def reservation(self, reservation_id: str) -> Reservation:
        """The reservation as it stands. See :meth:`Ledger.get`."""
        return self.ledger.get(reservation_id)

    async def set_quota(self, room: str, sku: str, units: int) -> int:
        """Set aside ``units`` for ``room``; returns what ``room`` may now sell."""
        changes = self.ledger.set_quota(room, sku, units, self.clock.now_ms())
        await self._write(changes, time.monotonic())
        return self.ledger.book.sellable(sku, self.clock.now_ms(), room)

    async def release_quota(self, room: str, sku: str | None = None) -> None:
        """Return ``room``'s unsold quota (of ``sku``, or all) to the pool."""
        changes = self.ledger.release_quota(room, sku)
        if changes:
            await self._write(changes, time.monotonic())

    async def set_safety_stock(self, sku: str, units: int) -> None:
        """Keep ``units`` of ``sku`` back from sale."""
        await self._write(self.ledger.set_safety_stock(sku, units), time.monotonic())

    def stock(self, skus: Sequence[str], room: str = "") -> list[SkuStock]:
        """Each SKU as ``room`` (or the pool) sees it now."""
        now = self.clock.now_ms()
        return [self.ledger.view(sku, now, room) for sku in skus]

    def views(self, skus: Sequence[str], room: str) -> list[SkuStock]:
        """The rooms' :class:`~stocksync.hub.rooms.StockSource`: :meth:`stock`."""
        return self.stock(skus, room)

    async def conflicts(self, open_only: bool = False, limit: int = 1000) -> list[Conflict]:
        """Recorded conflicts, newest first."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.reads, self.store.conflicts, open_only, limit)

    # -- timers --------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick()
            except StocksyncError as e:  # halted: the reload resumes the writer
                log.debug("tick skipped: %s", e)

    def tick(self) -> None:
        """Expire held reservations and notice warehouses going stale or offline."""
        now = self.clock.now_ms()
        unix = self.clock.unix_ms()
        changes = self.ledger.expire(now, unix)
        expired = sum(
            1
            for r in changes.reservations.values()
            if r.state is State.RELEASED and r.reason == "expired"
        )
        if expired:
            self.metrics.reservations["expired"].inc(expired)
        self._freshness, stale = self.ledger.check_freshness(self._freshness, now, unix)
        if stale.skus:
            stale.all_skus = True
        changes.merge(stale)
        save_time = now - self._saved_hub_time >= HUB_TIME_SAVE_MS
        if not changes and not changes.skus and not changes.all_skus and not save_time:
            return
        if save_time:
            self._saved_hub_time = now
        future = self._write(
            changes, time.monotonic(), (lambda tx: tx.set_hub_time(now)) if save_time else None
        )
        future.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
