"""Live rooms in plain code (DESIGN §7): display policy, positions and resume,
coalescing, featured sets, ending, persistence, bad input.

Stock comes from a real :class:`StockBook` through :class:`BookStockSource`,
on a clock the test moves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from stocksync.errors import InvalidArgument, StocksyncError
from stocksync.hub.rooms import (
    MAX_FEATURED,
    BookStockSource,
    DisplayMode,
    DisplayPolicy,
    DisplayState,
    Feed,
    MemoryRoomStore,
    Position,
    RoomEvent,
    RoomHub,
    RoomRecord,
    SkuDisplay,
    Snapshot,
    SnapshotReason,
    Subscription,
    UnknownRoom,
    Update,
    event_dict,
    once_per_message,
)
from stocksync.hub.stock import StalenessPolicy, StockBook

WH = "WH-1"


class Stock:
    """A StockBook, the rooms over it, and a hand-moved clock."""

    def __init__(self, store: MemoryRoomStore | None = None, history: int = 1000) -> None:
        self.now_ms = 1_000_000
        self.book = StockBook(StalenessPolicy(stale_after_ms=60_000, offline_after_ms=300_000))
        self.book.seen(WH, self.now_ms)
        self.source = BookStockSource(self.book, lambda: self.now_ms)
        self.store = store if store is not None else MemoryRoomStore()
        self.rooms = RoomHub(self.source, self.store, history=history)

    def add(self, sku: str, delta: int, warehouse: str = WH) -> None:
        """A durable on_hand change, announced to the rooms."""
        self.book.seen(warehouse, self.now_ms)
        self.book.add_on_hand(warehouse, sku, delta)
        self.rooms.stock_changed([sku], time.monotonic())

    def restart(self) -> Stock:
        """A new hub over the same store and stock."""
        again = Stock.__new__(Stock)
        again.now_ms, again.book, again.source, again.store = (
            self.now_ms,
            self.book,
            self.source,
            self.store,
        )
        again.rooms = RoomHub(self.source, self.store)
        return again


def drain(watcher: Subscription) -> list[RoomEvent]:
    """Every message the watcher has waiting."""
    out = []
    while (event := watcher.take()) is not None:
        out.append(event)
    return out


def shown(events: list[RoomEvent]) -> dict[str, SkuDisplay]:
    """The last display per SKU after applying ``events`` in order."""
    state: dict[str, SkuDisplay] = {}
    for event in events:
        if isinstance(event, Snapshot):
            state = {}
        state.update({s.sku: s for s in event.skus})
    return state


@pytest.fixture
def stock() -> Stock:
    return Stock()


def test_a_watcher_starts_with_a_snapshot_in_the_hosts_order(stock: Stock) -> None:
    stock.add("B", 40)
    stock.add("A", 3)
    stock.rooms.set_featured("live-1", ["B", "A", "C"])
    watcher = stock.rooms.subscribe("live-1")
    assert watcher.reason is SnapshotReason.INITIAL
    [snap] = drain(watcher)
    assert isinstance(snap, Snapshot)
    assert snap.reason is SnapshotReason.INITIAL
    assert snap.position == Position(stock.rooms.epoch, 1)
    assert [(s.sku, s.state, s.sellable, s.label) for s in snap.skus] == [
        ("B", DisplayState.IN_STOCK, None, "In stock"),
        ("A", DisplayState.LOW, 3, "Only 3 left!"),
        ("C", DisplayState.SOLD_OUT, None, "Sold out"),
    ]
    assert snap.policy == DisplayPolicy(DisplayMode.BUCKETS, 10)


def test_buckets_publish_only_when_the_display_changes(stock: Stock) -> None:
    stock.add("A", 40)
    stock.rooms.set_featured("r", ["A"])
    watcher = stock.rooms.subscribe("r")
    drain(watcher)
    published = stock.rooms.published
    stock.add("A", -1)  # 39: still "In stock"
    stock.add("A", -28)  # 11: still "In stock"
    assert drain(watcher) == [] and stock.rooms.published == published
    stock.add("A", -1)  # 10: low
    [low] = drain(watcher)
    stock.add("A", -10)  # 0
    [gone] = drain(watcher)
    assert isinstance(low, Update) and isinstance(gone, Update)
    assert low.skus[0] == SkuDisplay("A", DisplayState.LOW, 10, "Only 10 left!")
    assert gone.skus[0] == SkuDisplay("A", DisplayState.SOLD_OUT, None, "Sold out")
    assert gone.position.offset == low.position.offset + 1


def test_exact_mode_shows_every_number(stock: Stock) -> None:
    stock.add("A", 40)
    stock.rooms.set_featured("r", ["A"])
    stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT, low_threshold=3))
    watcher = stock.rooms.subscribe("r")
    [snap] = drain(watcher)
    assert isinstance(snap, Snapshot) and snap.policy.mode is DisplayMode.EXACT
    assert snap.skus[0].label == "40 in stock" and snap.skus[0].sellable == 40
    labels = []
    for delta in (-1, -36, -3):
        stock.add("A", delta)
        labels += [(e.skus[0].sellable, e.skus[0].label) for e in drain(watcher)]
    assert labels == [(39, "39 in stock"), (3, "Only 3 left!"), (0, "Sold out")]


def test_a_room_sees_its_own_quota(stock: Stock) -> None:
    stock.add("A", 20)
    stock.book.set_quota_free("A", "flash", 15)
    stock.rooms.set_featured("flash", ["A"])
    stock.rooms.set_featured("other", ["A"])
    [flash] = drain(stock.rooms.subscribe("flash"))
    [other] = drain(stock.rooms.subscribe("other"))
    assert flash.skus[0].label == "In stock"  # 5 in the pool + its own 15
    assert other.skus[0].label == "Only 5 left!"


def test_a_stale_warehouse_is_named_and_counts_less(stock: Stock) -> None:
    stock.add("A", 100)
    stock.rooms.set_featured("r", ["A"])
    stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT))
    watcher = stock.rooms.subscribe("r")
    drain(watcher)
    stock.now_ms += 61_000  # silent past stale_after: counts 80%
    stock.rooms.stock_changed(None, time.monotonic())
    [update] = drain(watcher)
    assert update.skus[0].sellable == 80 and update.skus[0].stale_warehouses == (WH,)
    stock.now_ms += 300_000  # offline: counts nothing
    stock.rooms.stock_changed(None, time.monotonic())
    [update] = drain(watcher)
    assert update.skus[0].label == "Sold out" and update.skus[0].stale_warehouses == (WH,)


def test_resume_gives_exactly_the_missed_messages(stock: Stock) -> None:
    stock.rooms.set_featured("r", ["A", "B"])
    stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT))
    first = stock.rooms.subscribe("r")
    seen = drain(first)
    first.close()
    stock.add("A", 5)
    stock.rooms.set_featured("r", ["B", "A"])  # a snapshot is part of what was missed
    stock.add("B", 7)
    stock.add("A", 1)
    again = stock.rooms.subscribe("r", seen[-1].position)
    assert again.reason is SnapshotReason.RESUMED
    missed = drain(again)
    assert [type(e).__name__ for e in missed] == ["Update", "Snapshot", "Update", "Update"]
    assert [e.position.offset for e in missed] == list(
        range(seen[-1].position.offset + 1, seen[-1].position.offset + 5)
    )
    assert [(e.skus[0].sku, e.skus[0].sellable) for e in missed if isinstance(e, Update)] == [
        ("A", 5),
        ("B", 7),
        ("A", 6),
    ]
    # Resuming from the newest position: nothing missed, nothing sent.
    assert drain(stock.rooms.subscribe("r", missed[-1].position)) == []


def test_a_position_older_than_the_history_gets_a_flagged_snapshot() -> None:
    stock = Stock(history=3)
    stock.rooms.set_featured("r", ["A"])
    stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT))
    [snap] = drain(stock.rooms.subscribe("r"))
    for _ in range(3):
        stock.add("A", 1)
    kept = stock.rooms.subscribe("r", snap.position)
    assert kept.reason is SnapshotReason.RESUMED and len(drain(kept)) == 3
    stock.add("A", 1)  # the fourth: the snapshot's position has left the history
    gone = stock.rooms.subscribe("r", snap.position)
    [fresh] = drain(gone)
    assert isinstance(fresh, Snapshot) and fresh.reason is SnapshotReason.HISTORY_GONE
    assert fresh.skus[0].sellable == 4 and fresh.position.offset == snap.position.offset + 4


def test_a_position_from_another_hub_start_gets_a_new_epoch_snapshot(stock: Stock) -> None:
    stock.add("A", 2)
    stock.rooms.set_featured("r", ["A"])
    stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.BUCKETS, low_threshold=5))
    [snap] = drain(stock.rooms.subscribe("r"))
    again = stock.restart()
    assert again.rooms.epoch != stock.rooms.epoch
    [fresh] = drain(again.rooms.subscribe("r", snap.position))
    assert isinstance(fresh, Snapshot) and fresh.reason is SnapshotReason.NEW_EPOCH
    # The room, its featured set and its policy came back from the store.
    assert fresh.policy == DisplayPolicy(DisplayMode.BUCKETS, 5)
    assert fresh.skus == snap.skus


def test_a_stalled_watcher_gets_the_latest_value_per_sku_in_one_message(stock: Stock) -> None:
    skus = [f"SKU-{i}" for i in range(10)]
    stock.rooms.set_featured("r", skus)
    stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT))
    stalled = stock.rooms.subscribe("r")
    also = stock.rooms.subscribe("r")  # stalled at the same place
    live = stock.rooms.subscribe("r")
    for watcher in (stalled, also, live):
        drain(watcher)
    live_seen = []
    for i in range(999):  # within the room's history of 1,000
        stock.add(skus[i % 10], 1)
        live_seen += drain(live)
        assert stalled.pending <= len(skus)
    assert [e.position.offset for e in live_seen] == list(range(3, 1002))
    [merged] = drain(stalled)
    assert isinstance(merged, Update) and merged.position == live_seen[-1].position
    assert {s.sku: s.sellable for s in merged.skus} == {
        sku: 100 - (i >= 9) for i, sku in enumerate(skus)
    }
    assert [s.sku for s in merged.skus] == skus  # in the order they first changed
    # Every watcher at the same place takes the same message: merged once,
    # encoded once.
    assert also.take() is merged
    # Everything published reached each watcher, on its own or merged.
    assert stock.rooms.coalesced == 2 * 998
    assert stock.rooms.delivered == 3 + 999 + 2  # three snapshots, live, merged twice


def test_a_watcher_stalled_past_the_history_gets_a_snapshot(stock: Stock) -> None:
    skus = [f"SKU-{i}" for i in range(10)]
    stock.rooms.set_featured("r", skus)
    stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT))
    stalled = stock.rooms.subscribe("r")
    live = stock.rooms.subscribe("r")
    drain(stalled)
    drain(live)
    for i in range(20_000):
        stock.add(skus[i % 10], 1)
        drain(live)
    # As a watcher resuming from a position the history no longer holds:
    # what the room shows now, flagged.
    [snap] = drain(stalled)
    assert isinstance(snap, Snapshot) and snap.reason is SnapshotReason.HISTORY_GONE
    assert snap.position == stock.rooms.room("r").position
    assert snap.policy == DisplayPolicy(DisplayMode.EXACT)
    assert {s.sku: s.sellable for s in snap.skus} == {sku: 2000 for sku in skus}
    assert stock.rooms.coalesced == 19_999
    # It goes on from there like any other watcher.
    stock.add("SKU-3", 1)
    [update] = drain(stalled)
    assert isinstance(update, Update) and [(s.sku, s.sellable) for s in update.skus] == [
        ("SKU-3", 2001)
    ]


def test_an_unmerged_message_is_one_object_for_every_watcher(stock: Stock) -> None:
    stock.rooms.set_featured("r", ["A", "B"])
    one, two = stock.rooms.subscribe("r"), stock.rooms.subscribe("r")
    drain(one)
    drain(two)
    stock.add("A", 1)
    assert one.take() is two.take()  # a transport encodes it once
    stock.add("A", 1)
    stock.add("B", 1)
    merged = one.take()
    assert merged is not None and [s.sku for s in merged.skus] == ["A", "B"]


def test_a_featured_change_replaces_what_was_pending(stock: Stock) -> None:
    stock.rooms.set_featured("r", ["A", "B"])
    watcher = stock.rooms.subscribe("r")
    drain(watcher)
    stock.add("A", 50)
    stock.add("B", 3)
    stock.rooms.set_featured("r", ["C", "B"])
    stock.add("C", 4)
    stock.add("A", 1)  # no longer featured: publishes nothing
    [snap] = drain(watcher)
    assert isinstance(snap, Snapshot) and snap.reason is SnapshotReason.FEATURED_CHANGED
    assert [(s.sku, s.label) for s in snap.skus] == [("C", "Only 4 left!"), ("B", "Only 3 left!")]
    assert stock.rooms.room("r").featured == ("C", "B")
    # The same list again changes nothing.
    before = stock.rooms.room("r").position
    stock.rooms.set_featured("r", ["C", "B"])
    assert stock.rooms.room("r").position == before and drain(watcher) == []


def test_ending_a_room_finishes_its_watchers(stock: Stock) -> None:
    stock.rooms.set_featured("r", ["A"])
    stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT, 2))
    watcher = stock.rooms.subscribe("r")
    stock.add("A", 1)
    stock.rooms.end_room("r")

    async def read_all() -> list[RoomEvent]:
        return [event async for event in watcher]

    events = asyncio.run(read_all())
    assert [type(e) for e in events] == [Snapshot]  # the pending update merged into it
    assert events[0].skus[0].sellable == 1
    assert stock.rooms.rooms() == []
    for call in (
        lambda: stock.rooms.room("r"),
        lambda: stock.rooms.subscribe("r"),
        lambda: stock.rooms.end_room("r"),
        lambda: stock.rooms.set_policy("r", DisplayPolicy()),
    ):
        with pytest.raises(UnknownRoom, match="no live room 'r'"):
            call()
    assert stock.store.records["r"].ended
    assert "r" not in [r.room for r in stock.restart().rooms.rooms()]
    # Starting it again keeps its policy; positions keep growing.
    info = stock.rooms.set_featured("r", ["B"])
    assert info.policy == DisplayPolicy(DisplayMode.EXACT, 2)
    assert info.position.offset == events[0].position.offset + 1


def test_a_waiting_watcher_wakes_on_a_change(stock: Stock) -> None:
    stock.rooms.set_featured("r", ["A"])
    watcher = stock.rooms.subscribe("r")
    drain(watcher)

    async def scenario() -> RoomEvent:
        waiting = asyncio.ensure_future(watcher.next())
        await asyncio.sleep(0)
        assert not waiting.done()
        stock.add("A", 2)
        return await asyncio.wait_for(waiting, 30)

    event = asyncio.run(scenario())
    assert isinstance(event, Update) and event.skus[0].label == "Only 2 left!"
    watcher.close()
    assert stock.rooms.room("r").watchers == 0


def test_delivery_latency_is_observed_from_the_oldest_input(stock: Stock) -> None:
    clock = [100.0]
    stock.rooms.clock = lambda: clock[0]
    seen: list[float] = []
    stock.rooms.observe_delivery = seen.append
    stock.rooms.set_featured("r", ["A", "B"])
    watcher = stock.rooms.subscribe("r")
    drain(watcher)
    for sku, origin in (("A", 97.0), ("B", 98.5)):
        stock.book.add_on_hand(WH, sku, 1)
        stock.rooms.stock_changed({sku}, origin)
    drain(watcher)
    assert seen == [3.0]


@pytest.mark.parametrize(
    ("call", "detail"),
    [
        (lambda r: r.set_featured("bad room", ["A"]), "room_id 'bad room' must be"),
        (lambda r: r.set_featured("x" * 65, ["A"]), "room_id 'xxx"),
        (lambda r: r.set_featured("r", ["A", "A"]), r"skus\[1\]: 'A' is listed twice"),
        (lambda r: r.set_featured("r", ["ok", "b d"]), r"skus\[1\]: sku 'b d' may only"),
        (lambda r: r.set_featured("r", [""]), r"skus\[0\]: sku is empty"),
        (
            lambda r: r.set_featured("r", [f"S{i}" for i in range(MAX_FEATURED + 1)]),
            "skus: at most 200 featured SKUs, got 201",
        ),
        (lambda r: r.set_policy("r", DisplayPolicy(low_threshold=-1)), "low_threshold must be"),
        (lambda r: r.subscribe("r", Position.parse("nope")), "from_position 'nope' is not"),
        (lambda r: r.subscribe("r", Position(r.epoch, 99)), "from_position .* is ahead"),
    ],
)
def test_bad_input_is_refused_naming_the_field(
    call: Callable[[RoomHub], object], detail: str, stock: Stock
) -> None:
    stock.rooms.set_featured("r", ["A"])
    records = dict(stock.store.records)
    with pytest.raises(InvalidArgument, match=detail):
        call(stock.rooms)
    assert stock.store.records == records
    assert stock.rooms.room("r").featured == ("A",)


class BrokenStore(MemoryRoomStore):
    """A store whose disk is full."""

    def save(self, record: RoomRecord) -> None:
        raise StocksyncError("disk full")


def test_a_failed_save_changes_nothing() -> None:
    stock = Stock(store=BrokenStore([RoomRecord("r", ("A",))]))
    watcher = stock.rooms.subscribe("r")
    drain(watcher)
    for call in (
        lambda: stock.rooms.set_featured("r", ["B"]),
        lambda: stock.rooms.set_featured("new", ["B"]),
        lambda: stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT)),
        lambda: stock.rooms.end_room("r"),
    ):
        with pytest.raises(StocksyncError, match="disk full"):
            call()
    info = stock.rooms.room("r")
    assert info.featured == ("A",) and info.policy == DisplayPolicy() and info.position.offset == 0
    assert [r.room for r in stock.rooms.rooms()] == ["r"] and drain(watcher) == []


def test_event_dict_is_the_json_shape() -> None:
    snap = Snapshot(
        Position("e", 3),
        SnapshotReason.INITIAL,
        DisplayPolicy(),
        (SkuDisplay("A", DisplayState.LOW, 2, "Only 2 left!", ("WH-2",)),),
    )
    assert event_dict(snap) == {
        "type": "snapshot",
        "position": "e:3",
        "reason": "initial",
        "policy": {"mode": "buckets", "low_threshold": 10},
        "skus": [
            {
                "sku": "A",
                "state": "low",
                "sellable": 2,
                "label": "Only 2 left!",
                "stale_warehouses": ["WH-2"],
            }
        ],
    }
    update = Update(
        Position("e", 4), (SkuDisplay("A", DisplayState.IN_STOCK, None, "In stock"),), 0
    )
    assert event_dict(update) == {
        "type": "update",
        "position": "e:4",
        "skus": [{"sku": "A", "state": "in_stock", "label": "In stock", "stale_warehouses": []}],
    }


def test_a_room_publishes_at_most_one_update_per_interval() -> None:
    async def go() -> None:
        now = [100.0]
        stock = Stock()
        stock.rooms = RoomHub(stock.source, stock.store, clock=lambda: now[0], min_interval_s=0.05)
        stock.rooms.set_featured("r", ["A", "B", "C"])
        stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT))
        watcher = stock.rooms.subscribe("r")
        drain(watcher)
        stock.add("A", 5)  # after a quiet spell: at once
        [first] = drain(watcher)
        assert isinstance(first, Update) and [s.sellable for s in first.skus] == [5]
        for sku, qty in (("A", 1), ("B", 2), ("A", 1), ("C", 0)):
            now[0] += 0.01  # within the interval: held back, merged
            stock.add(sku, qty)
        assert drain(watcher) == []
        await asyncio.sleep(0.2)  # the interval's end
        [merged] = drain(watcher)
        assert isinstance(merged, Update)
        assert [(s.sku, s.sellable) for s in merged.skus] == [("A", 7), ("B", 2)]
        assert merged.position.offset == first.position.offset + 1
        # A snapshot (the host changes the featured set) never waits.
        now[0] += 0.01
        stock.add("B", 1)
        stock.rooms.set_featured("r", ["B"])
        [snap] = drain(watcher)
        assert isinstance(snap, Snapshot) and [s.sellable for s in snap.skus] == [3]
        await asyncio.sleep(0.2)
        assert drain(watcher) == []  # B's change was in the snapshot: nothing more
        stock.rooms.end_room("r")

    asyncio.run(go())


def test_a_direct_writer_takes_what_its_waiting_watcher_is_up_to_date_for(stock: Stock) -> None:
    async def go() -> None:
        stock.rooms.set_featured("r", ["A", "B"])
        stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT))
        watcher = stock.rooms.subscribe("r")
        written: list[RoomEvent] = []
        room_for = [True]

        def direct(event: RoomEvent) -> bool:
            if room_for[0]:
                written.append(event)
            return room_for[0]

        watcher.direct = direct
        stock.add("A", 1)  # the snapshot is still pending: merged, not written past it
        assert written == []
        drain(watcher)
        waiting = asyncio.ensure_future(watcher.next())
        await asyncio.sleep(0)  # up to date, waiting for a message
        stock.add("A", 1)  # written as published; it goes on waiting
        await asyncio.sleep(0)
        assert len(written) == 1 and not waiting.done() and watcher.take() is None
        room_for[0] = False  # the socket is full: pending as usual, and merging
        stock.add("A", 1)
        stock.add("B", 5)
        room_for[0] = True
        stock.add("B", 1)  # something is pending: merges, never overtakes it
        assert len(written) == 1
        merged = await waiting
        assert {s.sku: s.sellable for s in merged.skus} == {"A": 3, "B": 6}
        delivered = stock.rooms.delivered
        stock.add("A", 1)  # not waiting (its task is writing): pending
        assert len(written) == 1
        assert [s.sellable for s in (await watcher.next()).skus] == [4]
        waiting = asyncio.ensure_future(watcher.next())
        await asyncio.sleep(0)
        stock.add("A", 1)
        assert len(written) == 2 and stock.rooms.delivered == delivered + 2
        waiting.cancel()

    asyncio.run(go())


def test_a_room_with_many_watchers_updates_less_often() -> None:
    async def go() -> None:
        now = [100.0]
        stock = Stock()
        stock.rooms = RoomHub(
            stock.source,
            stock.store,
            clock=lambda: now[0],
            min_interval_s=0.05,
            max_writes_per_s=100,
        )
        stock.rooms.set_featured("r", ["A"])
        stock.rooms.set_policy("r", DisplayPolicy(DisplayMode.EXACT))
        watchers = [stock.rooms.subscribe("r") for _ in range(20)]  # 20 / 100 per s: 0.2 s
        for w in watchers:
            drain(w)
        stock.add("A", 1)  # at once
        assert all(len(drain(w)) == 1 for w in watchers)
        now[0] += 0.1  # past room_update_interval, within 20 watchers / 100 per s
        stock.add("A", 1)
        assert all(drain(w) == [] for w in watchers)
        await asyncio.sleep(0.3)
        [merged] = drain(watchers[0])
        assert [s.sellable for s in merged.skus] == [2]
        # With one watcher left (an edge, say), the room's own interval applies again.
        for w in watchers[1:]:
            w.close()
        now[0] += 0.3
        stock.add("A", 1)
        assert len(drain(watchers[0])) == 1
        now[0] += 0.06
        stock.add("A", 1)
        assert len(drain(watchers[0])) == 1
        stock.rooms.end_room("r")

    asyncio.run(go())


def test_a_message_is_encoded_once_per_object_not_per_value() -> None:
    calls: list[RoomEvent] = []

    def encode(event: RoomEvent) -> int:
        calls.append(event)
        return len(calls)

    encoded = once_per_message(encode, size=2)
    one = Update(Position("e", 1), (), 0.0)
    equal = Update(Position("e", 1), (), 0.0)  # equal, another object
    assert encoded(one) == encoded(one) == 1
    assert encoded(equal) == 2
    encoded(Update(Position("e", 2), (), 0.0))  # the oldest one drops out
    assert encoded(equal) == 2 and encoded(one) == 4


def test_a_feed_holds_what_it_does_not_release_and_merges_it(stock: Stock) -> None:
    def update(n: int) -> Update:
        return Update(Position("e", n), (SkuDisplay("A", DisplayState.IN_STOCK, n, f"{n}"),), 0.0)

    now = Snapshot(Position("e", 9), SnapshotReason.HISTORY_GONE, DisplayPolicy(), ())
    feed = Feed(3, lambda reason: now)
    watcher = Subscription(stock.rooms, "r", SnapshotReason.RESUMED, [], feed)
    feed.publish(update(1))
    taken = watcher.take()
    assert taken is not None and taken.position.offset == 1
    feed.publish(update(2), wake=False)
    feed.publish(update(3), wake=False)
    assert watcher.take() is None  # held
    feed.wake()
    merged = watcher.take()
    assert isinstance(merged, Update) and merged.position.offset == 3
    assert [s.sellable for s in merged.skus] == [3]
    for n in range(4, 9):  # past what the feed keeps
        feed.publish(update(n))
    assert watcher.take() is now and watcher.take() is None


def test_a_direct_watcher_gets_held_messages_once_each(stock: Stock) -> None:
    def update(n: int) -> Update:
        return Update(Position("e", n), (SkuDisplay("A", DisplayState.IN_STOCK, n, f"{n}"),), 0.0)

    async def go() -> None:
        feed = Feed(10, lambda reason: Snapshot(Position("e", 0), reason, DisplayPolicy(), ()))
        watcher = Subscription(stock.rooms, "r", SnapshotReason.RESUMED, [], feed)
        written: list[int] = []
        room_for = [True]

        def direct(event: RoomEvent) -> bool:
            if room_for[0]:
                written.append(event.position.offset)
            return room_for[0]

        watcher.direct = direct
        waiting = asyncio.ensure_future(watcher.next())
        await asyncio.sleep(0)
        waiting.cancel()  # as a heartbeat's timeout does
        feed.publish(update(1), wake=False)  # up to date: written at once, though held
        room_for[0] = False
        feed.publish(update(2), wake=False)  # no room: it waits for the release
        assert written == [1] and watcher.take() is None
        room_for[0] = True
        await asyncio.sleep(0)
        again = asyncio.ensure_future(watcher.next())  # waiting again, nothing released yet
        await asyncio.sleep(0)
        feed.wake()
        feed.publish(update(3))
        await asyncio.sleep(0)
        assert written == [1, 2, 3] and not again.done() and watcher.take() is None
        again.cancel()

    asyncio.run(go())
