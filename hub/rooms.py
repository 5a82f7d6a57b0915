"""Live rooms (DESIGN §7) in plain code, with no I/O.

A room features up to :data:`MAX_FEATURED` SKUs and shows each through its
:class:`DisplayPolicy` — exact numbers, or buckets ("In stock", "Only 3
left!", "Sold out"). :class:`RoomHub` keeps what every room shows and, when
the hub says stock changed (:meth:`RoomHub.stock_changed`), publishes an
:class:`Update` to a room only if what that room shows changed.

Every message of a room has a :class:`Position`: the hub's epoch (random per
:class:`RoomHub`, so per hub start) and the room's offset, which only grows.
A room keeps its latest ``history`` messages, so a watcher that comes back
with its last position gets exactly what it missed, or a :class:`Snapshot`
that says why not (the Centrifugo recovery model).

A watcher is a :class:`Subscription`: a place in its room's :class:`Feed`.
What it has not taken yet coalesces to the latest value per SKU when it
takes it (merged once for every watcher at the same place); however long it
stalls it holds nothing of its own, and publishing never waits for it. A
watcher further behind than the history gets a snapshot (``HISTORY_GONE``).

The transports — gRPC (:mod:`stocksync.hub.room_service`) and Server-Sent
Events (:mod:`stocksync.hub.http`) — only translate these messages.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from stocksync.errors import InvalidArgument, Status, StocksyncError
from stocksync.events import InvalidEvent, validate_sku
from stocksync.hub.stock import SkuStock, StockBook

__all__ = [
    "DEFAULT_HISTORY",
    "DEFAULT_LOW_THRESHOLD",
    "MAX_FEATURED",
    "MAX_LOW_THRESHOLD",
    "BookStockSource",
    "DisplayMode",
    "DisplayPolicy",
    "DisplayState",
    "Feed",
    "MemoryRoomStore",
    "Position",
    "RoomEvent",
    "RoomHub",
    "RoomInfo",
    "RoomRecord",
    "RoomStore",
    "SkuDisplay",
    "Snapshot",
    "SnapshotReason",
    "StockSource",
    "Subscription",
    "UnknownRoom",
    "Update",
    "event_dict",
    "once_per_message",
    "resume_reason",
    "room_dict",
    "validate_room_id",
]

MAX_FEATURED = 200
"""Most SKUs a room features at once by default (``max_featured_skus``): what
a host can talk about in one stream, and the bound on what a stalled watcher
holds."""

DEFAULT_HISTORY = 1000
"""Messages each room keeps for watchers that resume (``RoomHub(history=)``):
at a few updates a second, minutes of disconnection recover exactly."""

DEFAULT_LOW_THRESHOLD = 10
"""At or below this many sellable a SKU shows "Only N left!" unless the room
says otherwise."""

MAX_LOW_THRESHOLD = 1_000_000
"""Largest low threshold a room may set."""

_ROOM_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_POSITION = re.compile(r"([A-Za-z0-9_-]{1,64}):([0-9]{1,18})")


class UnknownRoom(StocksyncError):
    """No room of that id is live (it never started, or it ended)."""

    status = Status.NOT_FOUND


def validate_room_id(room: str) -> str:
    """Return ``room`` if it is a well-formed room id.

    Raises:
        InvalidArgument: naming the field ``room_id``.
    """
    if not isinstance(room, str) or not _ROOM_ID.fullmatch(room):
        shown = room[:80] if isinstance(room, str) else room
        raise InvalidArgument(f"room_id {shown!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return room


def resume_reason(
    room_id: str, start: Position | None, latest: Position, floor: int
) -> SnapshotReason:
    """How a watcher starting at ``start`` begins: ``RESUMED`` (exactly the
    messages after it follow) or why it gets a snapshot instead.

    Args:
        room_id: the room (for the error's detail).
        start: the position the watcher gave, if any.
        latest: the room's latest position.
        floor: the oldest offset of ``latest.epoch`` from which what follows
            is still known message by message.

    Raises:
        InvalidArgument: ``start`` is ahead of the room.
    """
    if start is None:
        return SnapshotReason.INITIAL
    if start.epoch != latest.epoch:
        return SnapshotReason.NEW_EPOCH
    if start.offset > latest.offset:
        raise InvalidArgument(
            f"from_position {start} is ahead of room {room_id!r} (latest {latest})"
        )
    if start.offset >= floor:
        return SnapshotReason.RESUMED
    return SnapshotReason.HISTORY_GONE


def _validate_featured(skus: Sequence[str], limit: int = MAX_FEATURED) -> tuple[str, ...]:
    if len(skus) > limit:
        raise InvalidArgument(
            f"skus: at most {limit} featured SKUs, got {len(skus)} (max_featured_skus)"
        )
    seen: set[str] = set()
    for i, sku in enumerate(skus):
        try:
            validate_sku(sku)
        except InvalidEvent as e:
            raise InvalidArgument(f"skus[{i}]: {e.detail}") from None
        if sku in seen:
            raise InvalidArgument(f"skus[{i}]: {sku!r} is listed twice")
        seen.add(sku)
    return tuple(skus)


class DisplayMode(enum.Enum):
    """How a room shows quantities."""

    EXACT = "exact"
    """Numbers: "12 in stock", "Only 3 left!", "Sold out"."""
    BUCKETS = "buckets"
    """"In stock", "Only 3 left!", "Sold out": the number only when low."""


class DisplayState(enum.Enum):
    """Which bucket a SKU is in."""

    IN_STOCK = "in_stock"
    LOW = "low"
    SOLD_OUT = "sold_out"


class SnapshotReason(enum.Enum):
    """Why a watcher gets a snapshot (or, ``RESUMED``, does not)."""

    INITIAL = "initial"
    """The watcher gave no position."""
    RESUMED = "resumed"
    """No snapshot: the watcher's position is in the history, and exactly the
    messages after it follow."""
    HISTORY_GONE = "history_gone"
    """The watcher's position is older than the room's history."""
    NEW_EPOCH = "new_epoch"
    """The watcher's position is from another hub start."""
    FEATURED_CHANGED = "featured_changed"
    """The host changed the featured SKUs."""
    DISPLAY_CHANGED = "display_changed"
    """The host changed the display policy."""


@dataclass(frozen=True, slots=True)
class SkuDisplay:
    """What a room shows for one SKU; two equal values look the same."""

    sku: str
    state: DisplayState
    sellable: int | None
    """The number shown: always in exact mode, only when low in buckets mode."""
    label: str
    stale_warehouses: tuple[str, ...] = ()
    """Warehouses whose figures are stale or offline."""


@dataclass(frozen=True, slots=True)
class DisplayPolicy:
    """How a room shows stock.

    Raises:
        InvalidArgument: if ``low_threshold`` is out of range.
    """

    mode: DisplayMode = DisplayMode.BUCKETS
    low_threshold: int = DEFAULT_LOW_THRESHOLD
    """1 to ``low_threshold`` sellable shows "Only N left!"; 0: never low."""

    def __post_init__(self) -> None:
        if not 0 <= self.low_threshold <= MAX_LOW_THRESHOLD:
            raise InvalidArgument(
                f"low_threshold must be 0 to {MAX_LOW_THRESHOLD}, got {self.low_threshold}"
            )

    def show(self, stock: SkuStock) -> SkuDisplay:
        """What a room with this policy shows for ``stock``."""
        units = stock.sellable
        exact = self.mode is DisplayMode.EXACT
        if units <= 0:
            state, label, shown = DisplayState.SOLD_OUT, "Sold out", 0 if exact else None
        elif units <= self.low_threshold:
            state, label, shown = DisplayState.LOW, f"Only {units} left!", units
        elif exact:
            state, label, shown = DisplayState.IN_STOCK, f"{units} in stock", units
        else:
            state, label, shown = DisplayState.IN_STOCK, "In stock", None
        return SkuDisplay(stock.sku, state, shown, label, stock.stale_warehouses)


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a message is in a room's stream: ``EPOCH:OFFSET``."""

    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"

    @classmethod
    def parse(cls, text: str, field_name: str = "from_position") -> Position:
        """The position written as ``EPOCH:OFFSET``.

        Raises:
            InvalidArgument: naming ``field_name``.
        """
        match = _POSITION.fullmatch(text)
        if match is None:
            raise InvalidArgument(f"{field_name} {text[:80]!r} is not a position (EPOCH:OFFSET)")
        return cls(match[1], int(match[2]))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a room shows: its featured SKUs in the host's order."""

    position: Position
    reason: SnapshotReason
    policy: DisplayPolicy
    skus: tuple[SkuDisplay, ...]


@dataclass(frozen=True, slots=True)
class Update:
    """The SKUs whose display changed."""

    position: Position
    skus: tuple[SkuDisplay, ...]
    origin: float
    """``time.monotonic()`` when the oldest input behind it reached the hub."""


RoomEvent = Snapshot | Update
"""One message of a room."""


def _policy_dict(policy: DisplayPolicy) -> dict[str, Any]:
    return {"mode": policy.mode.value, "low_threshold": policy.low_threshold}


def event_dict(event: RoomEvent) -> dict[str, Any]:
    """A message as JSON-ready data: one shape for Server-Sent Events and the CLI."""
    skus = [
        {
            "sku": s.sku,
            "state": s.state.value,
            **({} if s.sellable is None else {"sellable": s.sellable}),
            "label": s.label,
            "stale_warehouses": list(s.stale_warehouses),
        }
        for s in event.skus
    ]
    if isinstance(event, Update):
        return {"type": "update", "position": str(event.position), "skus": skus}
    return {
        "type": "snapshot",
        "position": str(event.position),
        "reason": event.reason.value,
        "policy": _policy_dict(event.policy),
        "skus": skus,
    }


@dataclass(frozen=True, slots=True)
class RoomRecord:
    """What of a room survives a hub restart."""

    room: str
    featured: tuple[str, ...] = ()
    policy: DisplayPolicy = field(default_factory=DisplayPolicy)
    ended: bool = False
    """An ended room is kept so that starting it again keeps its policy."""


class RoomStore(Protocol):
    """Where rooms are kept durably (the hub's own store in production)."""

    def load(self) -> list[RoomRecord]:
        """Every room saved, ended ones included."""
        ...

    def save(self, record: RoomRecord) -> None:
        """Insert or replace the record of ``record.room``.

        A store that can write at once does so before returning; the hub's
        own store queues the write to its writer (the event loop never
        waits on SQLite), and :meth:`flushed` then waits for it.

        Raises:
            StocksyncError: if it cannot; the caller then changes nothing.
        """
        ...

    async def flushed(self) -> None:
        """Wait until everything saved is durable.

        Raises:
            StocksyncError: if a queued save failed (it is tried again with
                the next save).
        """
        ...


class MemoryRoomStore:
    """A :class:`RoomStore` in memory (tests, tools)."""

    def __init__(self, records: Iterable[RoomRecord] = ()) -> None:
        self.records = {r.room: r for r in records}

    def load(self) -> list[RoomRecord]:
        """See :meth:`RoomStore.load`."""
        return list(self.records.values())

    def save(self, record: RoomRecord) -> None:
        """See :meth:`RoomStore.save`."""
        self.records[record.room] = record

    async def flushed(self) -> None:
        """See :meth:`RoomStore.flushed` (saves are immediate here)."""


class StockSource(Protocol):
    """Where rooms read stock from."""

    def views(self, skus: Sequence[str], room: str) -> list[SkuStock]:
        """The current stock of each SKU, in order, as ``room`` sees it (its
        sellable counts the room's own quota)."""
        ...


class BookStockSource:
    """A :class:`StockSource` over a :class:`StockBook`.

    Args:
        book: the quantities.
        now_ms: the hub's monotonic clock in milliseconds (the staleness
            policy's time).
    """

    def __init__(self, book: StockBook, now_ms: Callable[[], int] | None = None) -> None:
        self.book = book
        self.now_ms = now_ms or (lambda: time.monotonic_ns() // 1_000_000)

    def views(self, skus: Sequence[str], room: str) -> list[SkuStock]:
        """See :meth:`StockSource.views`."""
        now = self.now_ms()
        return [self.book.view(sku, now, room) for sku in skus]


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """A room as :meth:`RoomHub.room` describes it."""

    room: str
    featured: tuple[str, ...]
    policy: DisplayPolicy
    position: Position
    """Of the room's latest message."""
    watchers: int


def room_dict(info: RoomInfo) -> dict[str, Any]:
    """A room's description as JSON-ready data."""
    return {
        "room_id": info.room,
        "featured": list(info.featured),
        "policy": _policy_dict(info.policy),
        "position": str(info.position),
        "watchers": info.watchers,
    }


@dataclass(eq=False)
class _Room:
    record: RoomRecord
    history: deque[RoomEvent]
    offset: int = 0
    shown: dict[str, SkuDisplay] = field(default_factory=dict)
    watchers: set[Subscription] = field(default_factory=set)
    last_update: float = float("-inf")
    """When the room last published an update (``RoomHub.clock``)."""
    dirty: set[str] = field(default_factory=set)
    """SKUs changed since, waiting for the next update (``min_interval_s``)."""
    dirty_origin: float = 0.0
    flush: asyncio.TimerHandle | None = None
    """The scheduled update of the dirty SKUs, if any."""
    feed: Feed = field(init=False)

    @property
    def live(self) -> bool:
        return not self.record.ended

    def snapshot(self, position: Position, reason: SnapshotReason) -> Snapshot:
        return Snapshot(position, reason, self.record.policy, tuple(self.shown.values()))


class RoomHub:
    """Every live room: what it features and shows, its history, its watchers.

    Runs on one event loop; no method blocks or awaits except
    :meth:`Subscription.next`.

    Args:
        source: where stock is read.
        store: where rooms are kept; loaded here, so ``source`` must be ready.
        history: messages kept per room for resuming watchers.
        clock: ``time.monotonic`` (the clock ``stock_changed``'s origin is on).
        max_featured: most SKUs a room may feature (``max_featured_skus``).
        min_interval_s: a room publishes at most one update this often
            (``room_update_interval_ms``): the first change after a quiet
            spell goes out at once, what follows within the interval merges
            into one update at its end. 0: every change at once. Needs a
            running event loop when above 0.
        max_writes_per_s: a room with many watchers updates less often, so
            that it asks for at most this many messages a second in all
            (``room_max_writes_per_s``): its interval is the larger of
            ``min_interval_s`` and its watchers ÷ this. 0: no such bound.

    Attributes:
        epoch: random per RoomHub: positions from another hub start are
            recognised as such.
        published: messages published to rooms.
        delivered: messages taken by watchers.
        coalesced: messages merged into one a watcher had pending, instead
            of going out on their own.
        observe_delivery: if set, called with the seconds from an update's
            origin to a watcher taking it (for a latency histogram).
    """

    def __init__(
        self,
        source: StockSource,
        store: RoomStore,
        history: int = DEFAULT_HISTORY,
        clock: Callable[[], float] = time.monotonic,
        max_featured: int = MAX_FEATURED,
        min_interval_s: float = 0.0,
        max_writes_per_s: float = 0.0,
    ) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        self.max_featured = max_featured
        self.min_interval_s = min_interval_s
        self.max_writes_per_s = max_writes_per_s
        self.source = source
        self.store = store
        self.history = history
        self.clock = clock
        self.epoch = secrets.token_hex(8)
        self.published = 0
        self.delivered = 0
        self.coalesced = 0
        self.observe_delivery: Callable[[float], None] | None = None
        self._rooms: dict[str, _Room] = {}
        self._featuring: dict[str, set[_Room]] = {}
        """SKU -> the live rooms featuring it."""
        for record in store.load():
            room = self._rooms[record.room] = self._new_room(record)
            if room.live:
                self._feature(room, record.featured)

    # -- rooms ---------------------------------------------------------------

    def watchers(self, room_id: str) -> list[Subscription]:
        """The room's open subscriptions (to read their ``pending``).

        Raises:
            InvalidArgument, UnknownRoom
        """
        return list(self._live(room_id).watchers)

    def watcher_count(self) -> int:
        """Open subscriptions over every room (for the metrics)."""
        return sum(len(r.watchers) for r in self._rooms.values())

    def rooms(self) -> list[RoomInfo]:
        """Every live room, by id."""
        return [self._info(r) for _, r in sorted(self._rooms.items()) if r.live]

    def room(self, room_id: str) -> RoomInfo:
        """Describe a live room.

        Raises:
            InvalidArgument, UnknownRoom
        """
        return self._info(self._live(room_id))

    def set_featured(self, room_id: str, skus: Sequence[str]) -> RoomInfo:
        """Feature ``skus`` (in that order) in the room, starting it if it is
        not live; watchers get a snapshot of the new set. The same list
        again changes nothing.

        Raises:
            InvalidArgument: a bad room id, SKU, duplicate, or too many SKUs.
            StocksyncError: if the store cannot save it (nothing changes).
        """
        validate_room_id(room_id)
        featured = _validate_featured(skus, self.max_featured)
        room = self._rooms.get(room_id)
        if room is not None and room.live and room.record.featured == featured:
            return self._info(room)
        record = RoomRecord(room_id, featured, room.record.policy if room else DisplayPolicy())
        self.store.save(record)
        if room is None:
            room = self._rooms[room_id] = self._new_room(record)
        self._unfeature(room)
        room.record = record
        self._feature(room, featured)
        self._publish(room, room.snapshot(self._advance(room), SnapshotReason.FEATURED_CHANGED))
        return self._info(room)

    def set_policy(self, room_id: str, policy: DisplayPolicy) -> RoomInfo:
        """Show the room's stock by ``policy``; watchers get a snapshot.

        Raises:
            InvalidArgument, UnknownRoom
            StocksyncError: if the store cannot save it (nothing changes).
        """
        room = self._live(room_id)
        if room.record.policy == policy:
            return self._info(room)
        record = replace(room.record, policy=policy)
        self.store.save(record)
        room.record = record
        self._render(room, room.record.featured)
        self._publish(room, room.snapshot(self._advance(room), SnapshotReason.DISPLAY_CHANGED))
        return self._info(room)

    def end_room(self, room_id: str) -> None:
        """End the room: its watchers finish what they have pending and stop.

        Raises:
            InvalidArgument, UnknownRoom
            StocksyncError: if the store cannot save it (nothing changes).
        """
        room = self._live(room_id)
        record = replace(room.record, ended=True)
        self.store.save(record)
        room.record = record
        for watcher in list(room.watchers):
            watcher._end()  # while the room still shows what it showed
        room.watchers.clear()
        self._unfeature(room)
        room.history.clear()  # nobody can resume into a room that ended

    # -- stock ---------------------------------------------------------------

    def stock_changed(self, skus: Collection[str] | None, origin: float) -> None:
        """The hub made a change durable: update every room whose display of
        a featured SKU changed.

        Args:
            skus: SKUs whose sellable may have changed; None: any SKU may
                have (a warehouse went stale or offline).
            origin: ``time.monotonic()`` when the causing input reached the hub.
        """
        targets: list[tuple[_Room, Sequence[str]]]
        if skus is None:
            targets = [(room, room.record.featured) for room in self._rooms.values() if room.live]
        else:
            hit: dict[_Room, set[str]] = {}
            for sku in skus:
                for room in self._featuring.get(sku, ()):
                    hit.setdefault(room, set()).add(sku)
            # In the host's order, so an update lists SKUs as the room shows them.
            targets = [
                (room, [s for s in room.record.featured if s in which])
                for room, which in hit.items()
            ]
        now = self.clock()
        for room, featured in targets:
            interval = self.interval(room)
            if now - room.last_update < interval:
                # Too soon after the last update: merge into the next one.
                if not room.dirty:
                    room.dirty_origin = origin
                room.dirty.update(featured)
                if room.flush is None:
                    room.flush = asyncio.get_running_loop().call_later(
                        room.last_update + interval - now, self._flush, room
                    )
                continue
            self._update(room, featured, origin, now)

    def interval(self, room: _Room) -> float:
        """The least time between two updates of ``room``, in seconds."""
        if self.max_writes_per_s <= 0:
            return self.min_interval_s
        return max(self.min_interval_s, len(room.watchers) / self.max_writes_per_s)

    def _flush(self, room: _Room) -> None:
        room.flush = None
        if room.live and room.dirty:
            dirty, room.dirty = room.dirty, set()
            featured = [s for s in room.record.featured if s in dirty]
            self._update(room, featured, room.dirty_origin, self.clock())

    def _update(self, room: _Room, featured: Sequence[str], origin: float, now: float) -> None:
        changed = self._render(room, featured)
        if changed:
            room.last_update = now
            self._publish(room, Update(self._advance(room), tuple(changed), origin))

    # -- watching ------------------------------------------------------------

    def subscribe(self, room_id: str, from_position: Position | None = None) -> Subscription:
        """Watch a room: a snapshot first (saying why), or, resuming from a
        position still in this epoch's history, exactly the messages after it.

        Raises:
            InvalidArgument: a bad room id, or a position ahead of the room.
            UnknownRoom: no such live room.
        """
        room = self._live(room_id)
        missed: list[RoomEvent] = []
        latest = Position(self.epoch, room.offset)
        reason = resume_reason(room_id, from_position, latest, room.offset - len(room.history))
        if reason is SnapshotReason.RESUMED:
            assert from_position is not None
            skip = len(room.history) - (room.offset - from_position.offset)
            missed = list(itertools.islice(room.history, skip, None))
        # A snapshot is pending like any message: changes until it is taken merge into it.
        opened = None if reason is SnapshotReason.RESUMED else room.snapshot(latest, reason)
        watcher = Subscription(self, room_id, reason, missed, room.feed, opened)
        room.watchers.add(watcher)
        return watcher

    def _leave(self, watcher: Subscription) -> None:
        room = self._rooms.get(watcher.room)
        if room is not None:
            room.watchers.discard(watcher)

    # -- inside --------------------------------------------------------------

    def _live(self, room_id: str) -> _Room:
        validate_room_id(room_id)
        room = self._rooms.get(room_id)
        if room is None or not room.live:
            raise UnknownRoom(f"no live room {room_id!r}")
        return room

    def _info(self, room: _Room) -> RoomInfo:
        return RoomInfo(
            room.record.room,
            room.record.featured,
            room.record.policy,
            Position(self.epoch, room.offset),
            len(room.watchers),
        )

    def _feature(self, room: _Room, featured: Sequence[str]) -> None:
        room.shown = {}
        for sku in featured:
            self._featuring.setdefault(sku, set()).add(room)
        self._render(room, featured)

    def _unfeature(self, room: _Room) -> None:
        for sku in room.record.featured:
            rooms = self._featuring.get(sku)
            if rooms is not None:
                rooms.discard(room)
                if not rooms:
                    del self._featuring[sku]
        room.shown = {}

    def _render(self, room: _Room, skus: Sequence[str]) -> list[SkuDisplay]:
        """Show ``skus`` again by the room's policy; returns those that changed."""
        if not skus:
            return []
        changed = []
        policy = room.record.policy
        for stock in self.source.views(skus, room.record.room):
            shown = policy.show(stock)
            if room.shown.get(stock.sku) != shown:
                room.shown[stock.sku] = shown
                changed.append(shown)
        return changed

    def _advance(self, room: _Room) -> Position:
        room.offset += 1
        return Position(self.epoch, room.offset)

    def _new_room(self, record: RoomRecord) -> _Room:
        room = _Room(record, deque(maxlen=self.history))
        room.feed = Feed(
            self.history,
            lambda reason: room.snapshot(Position(self.epoch, room.offset), reason),
        )
        return room

    def _publish(self, room: _Room, event: RoomEvent) -> None:
        room.history.append(event)
        self.published += 1
        room.feed.publish(event)


_T = TypeVar("_T")


def once_per_message(
    encode: Callable[[RoomEvent], _T], size: int = 256
) -> Callable[[RoomEvent], _T]:
    """``encode``, remembered for the last ``size`` messages by identity.

    A message taken as published, or merged by a :class:`Feed`, is one
    object for every watcher that takes it, so a transport encodes it once.
    Looked up by identity, not by value: a message's hash is every SKU's.
    """
    cache: OrderedDict[int, tuple[RoomEvent, _T]] = OrderedDict()

    def encoded(event: RoomEvent) -> _T:
        hit = cache.get(id(event))
        if hit is not None and hit[0] is event:
            return hit[1]
        value = encode(event)
        cache[id(event)] = (event, value)  # holding it: its id is not reused meanwhile
        if len(cache) > size:
            cache.popitem(last=False)
        return value

    return encoded


class Feed:
    """A room's messages as its watchers take them: shared, not copied.

    A watcher keeps only how far it has taken (a :class:`Subscription`'s
    cursor into this feed). What it has not taken is merged when it takes
    it — the latest value per SKU, a snapshot replacing what came before —
    and that merge is made once for every watcher at the same place, so the
    watchers a busy room leaves behind share one message (and one encoding)
    instead of each folding every change into a copy of its own. Publishing
    costs the same however many watchers are behind: it wakes only those
    waiting for a message.

    A message appended without being released (``publish(wake=False)``) is
    held: no watcher takes it until :meth:`wake`, so an owner can pace how
    often its watchers get a message, what comes meanwhile merging.

    The feed keeps its latest ``keep`` messages; a watcher further behind
    than that gets a snapshot of the room as it is now (reason
    ``HISTORY_GONE``) in place of the merge.

    Args:
        keep: messages kept for watchers that are behind.
        now: a snapshot of the room as it is (every message appended
            included), saying ``reason``.
    """

    def __init__(self, keep: int, now: Callable[[SnapshotReason], Snapshot]) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.seq = 0
        """How many messages were appended (the newest one's number)."""
        self.head = 0
        """The newest message released: watchers take up to here."""
        self._keep = keep
        self._now = now
        self._log: deque[RoomEvent] = deque()
        self._base = 1
        """The number of ``_log[0]``."""
        self._merged: dict[int, RoomEvent] = {}
        """Cursor -> what a watcher there takes, while ``head`` stands."""
        self._waiting: dict[Subscription, None] = {}
        """Watchers waiting in ``next`` whose task takes the next message."""
        self._direct: dict[Subscription, None] = {}
        """Watchers waiting in ``next`` with a direct writer (``direct``)."""

    def publish(self, event: RoomEvent, wake: bool = True) -> None:
        """Append ``event``; with ``wake``, release it and offer it to (or
        wake) the watchers waiting, else hold it until :meth:`wake` — but
        still write it at once to the up-to-date watchers with a direct
        writer (a socket write costs a fraction of waking a task), as long
        as they have room for it."""
        self._log.append(event)
        self.seq += 1
        if len(self._log) > self._keep:
            self._log.popleft()
            self._base += 1
        if wake:
            self.wake()
        elif self._direct:
            for watcher in list(self._direct):
                watcher._write(event)

    def wake(self) -> None:
        """Release what was appended; offer it to the watchers waiting, or
        wake them."""
        if self.head != self.seq:
            self.head = self.seq
            if self._merged:
                self._merged = {}
        waiting, direct = self._waiting, self._direct
        if waiting or direct:
            self._waiting, self._direct = {}, {}
            for watcher in itertools.chain(waiting, direct):
                watcher._offer()

    def since(self, cursor: int) -> tuple[RoomEvent, int]:
        """What a watcher that has taken up to ``cursor`` (< ``head``)
        takes — the one message, or the merge of those after it — and where
        that takes it."""
        if cursor == self.head - 1 and cursor >= self._base - 1:
            # As published: the same object for everyone.
            return self._log[cursor + 1 - self._base], self.head
        if cursor < self._base - 1:
            return self._now(SnapshotReason.HISTORY_GONE), self.seq
        merged = self._merged.get(cursor)
        if merged is None:
            merged = self._merged[cursor] = self._merge(cursor)
        return merged, self.head

    def _merge(self, cursor: int) -> RoomEvent:
        start, end = cursor + 1 - self._base, self.head - self._base
        first = self._log[start]
        # The oldest input the message carries.
        origin = first.origin if isinstance(first, Update) else 0.0
        opened: Snapshot | None = None
        skus: dict[str, SkuDisplay] = {}
        for event in itertools.islice(self._log, start, end + 1):
            if isinstance(event, Snapshot):
                opened = event
                skus = {s.sku: s for s in event.skus}
            else:
                for s in event.skus:
                    skus[s.sku] = s
        position = self._log[end].position
        if opened is not None:
            return replace(opened, position=position, skus=tuple(skus.values()))
        return Update(position, tuple(skus.values()), origin)

    def wait(self, watcher: Subscription, direct: bool = False) -> None:
        """Wake ``watcher`` the next message released; ``direct``: offer it
        each message first."""
        if direct:
            self._waiting.pop(watcher, None)
            self._direct[watcher] = None
        else:
            self._direct.pop(watcher, None)
            self._waiting[watcher] = None

    def forget(self, watcher: Subscription) -> None:
        """``watcher`` no longer waits."""
        self._waiting.pop(watcher, None)
        self._direct.pop(watcher, None)


class Subscription:
    """One watcher of a room; iterate it (``async for``) or call :meth:`next`.

    What the watcher has not taken merges into one message holding the
    latest value per SKU (at most the room's featured SKUs): updates into
    the pending update or snapshot, a snapshot replacing whatever was
    pending. Exactly replayed messages (after a resume) come first, as they
    were. The merge is the room's :class:`Feed`'s, shared with every
    watcher at the same place.

    Attributes:
        room: the room's id.
        reason: why the subscription opened as it did; ``RESUMED``: the
            missed messages come first, with no snapshot.
        room_ended: the room ended (rather than the subscription being closed).
    """

    def __init__(
        self,
        hub: RoomHub,
        room: str,
        reason: SnapshotReason,
        missed: Iterable[RoomEvent],
        feed: Feed,
        opened: Snapshot | None = None,
    ) -> None:
        self.room = room
        self.reason = reason
        self._hub = hub
        self._feed = feed
        self._cursor = feed.seq
        """The feed's messages up to here are taken (or in ``_opened``)."""
        self._exact: deque[RoomEvent] = deque(missed)
        self._opened = opened
        """The snapshot the watcher opened with, until taken: what the feed
        publishes after ``_cursor`` merges into it."""
        self._wakeup = asyncio.Event()
        self._done = False
        self.room_ended = False
        self.direct: Callable[[RoomEvent], bool] | None = None
        """If set, a message the watcher is up to date for (waiting in
        :meth:`next`) is offered to it as published; when it returns True
        the message is delivered (a transport that can write without
        waiting, e.g. to a socket with room in its buffer), else it is
        pending as usual."""

    @property
    def pending(self) -> int:
        """SKU values waiting to be taken (exact replay aside): at most the
        room's featured SKUs."""
        peeked = self._peek()
        return 0 if peeked is None else len(peeked[0].skus)

    @property
    def backlog(self) -> int:
        """Replayed messages waiting to be taken (at most the room's history)."""
        return len(self._exact)

    def _offer(self) -> None:
        """The feed released news while this watcher waited in :meth:`next`."""
        feed = self._feed
        direct = self.direct
        if self._cursor >= feed.head:
            feed.wait(self, direct is not None)  # nothing new for this one yet
            return
        if direct is not None and not self._done:
            event, cursor = feed.since(self._cursor)
            if direct(event):
                self._advance(cursor)
                self._delivered(event)
                feed.wait(self, True)  # up to date again, still waiting
                return
        self._wakeup.set()

    def _write(self, event: RoomEvent) -> None:
        """The feed appended ``event`` and holds it: a watcher waiting with a
        direct writer, up to date just before it, gets it written at once;
        one that has no room for it waits for the release with the others."""
        feed = self._feed
        if self._cursor != feed.seq - 1:
            return  # behind what is held: it takes the merge when released
        direct = self.direct
        if direct is not None and not self._done and direct(event):
            self._advance(feed.seq)
            self._delivered(event)
            return
        feed.wait(self)  # as a task, until the release

    def _peek(self) -> tuple[RoomEvent, int] | None:
        """What :meth:`take` would return after the replay, and the cursor
        it takes the watcher to; without taking it."""
        if self._done and self._opened is None:
            return None
        feed = self._feed
        behind = self._cursor < feed.head
        opened = self._opened
        if opened is None:
            return feed.since(self._cursor) if behind else None
        if not behind:
            return opened, self._cursor
        merged, cursor = feed.since(self._cursor)
        if isinstance(merged, Snapshot):
            return merged, cursor  # a snapshot replaces whatever was pending
        skus = {s.sku: s for s in opened.skus}
        for s in merged.skus:
            skus[s.sku] = s
        return replace(opened, position=merged.position, skus=tuple(skus.values())), cursor

    def _advance(self, cursor: int) -> None:
        """Taken up to ``cursor``: count what was merged on the way."""
        behind = cursor - self._cursor
        # Messages folded into the one taken beyond the first.
        self._hub.coalesced += behind if self._opened is not None else max(behind - 1, 0)
        self._cursor = cursor
        self._opened = None

    def _end(self) -> None:
        """The room ended: finish what is pending, then stop."""
        self._feed.forget(self)
        peeked = self._peek()
        if peeked is not None:
            self._exact.append(peeked[0])
            self._advance(peeked[1])
        self._opened = None
        self._done = self.room_ended = True
        self._wakeup.set()

    def close(self) -> None:
        """Stop watching (the watcher went away, or the hub stops): drops
        anything pending; a waiting :meth:`next` stops."""
        self._done = True
        self._exact.clear()
        self._opened = None
        self._feed.forget(self)
        self._hub._leave(self)
        self._wakeup.set()

    def take(self) -> RoomEvent | None:
        """The next message if one is waiting, else None (never waits)."""
        if self._exact:
            event = self._exact.popleft()
        else:
            peeked = self._peek()
            if peeked is None:
                return None
            event, cursor = peeked
            self._advance(cursor)
        self._delivered(event)
        return event

    def _delivered(self, event: RoomEvent) -> None:
        self._hub.delivered += 1
        observe = self._hub.observe_delivery
        if observe is not None and isinstance(event, Update):
            observe(self._hub.clock() - event.origin)

    async def next(self) -> RoomEvent:
        """The next message, waiting for one.

        Cancelling the wait loses nothing.

        Raises:
            StopAsyncIteration: the room ended (after the last pending
                message) or the subscription was closed.
        """
        while True:
            event = self.take()
            if event is not None:
                return event
            if self._done:
                raise StopAsyncIteration
            self._wakeup.clear()
            self._feed.wait(self, self.direct is not None)
            await self._wakeup.wait()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> RoomEvent:
        return await self.next()
