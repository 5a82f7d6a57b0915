"""A hypothesis state machine over the stock model (hub/ledger.py, hub/stock.py).

Random interleavings of everything that moves stock: receipts, picks,
damage, cycle counts taken in the past (rebased as the agent does), reserve
(idempotent keys, rooms with quotas), commit, ship with the reservation id,
release, expiry, agents going offline and coming back with late batches,
and time passing (staleness). After every step:

- sellable is never negative, for the pool or any room;
- no active reservation line holds more than was sellable when it was
  granted, and every grant was checked against sellable computed
  independently just before it;
- held and committed in the book equal what the reservations say;
- replaying the whole history into a fresh ledger reproduces the state.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from stocksync.errors import StocksyncError
from stocksync.events import EventRow, Kind
from stocksync.hub.ledger import Ledger, State
from stocksync.hub.stock import StalenessPolicy, StockBook

WAREHOUSES = ("WH-A", "WH-B", "WH-C")
SKUS = ("S1", "S2", "S3")
ROOMS = ("", "live-a", "live-b")
POLICY = StalenessPolicy(stale_after_ms=30_000, stale_buffer=0.25, offline_after_ms=90_000)


def ids() -> Iterator[str]:
    for n in itertools.count(1):
        yield f"{n:05d}"


@dataclass
class AgentBook:
    """One warehouse's own books, as its agent keeps them (the owner of on_hand)."""

    on_hand: dict[str, int] = field(default_factory=dict)
    history: list[EventRow] = field(default_factory=list)
    unsent: list[EventRow] = field(default_factory=list)
    online: bool = True

    def record(
        self, kind: Kind, sku: str, qty: int, rid: str = "", as_of: int | None = None
    ) -> None:
        seq = len(self.history) + 1
        if kind == Kind.COUNT:
            point = seq - 1 if as_of is None else as_of
            moved_since = sum(e.delta for e in self.history if e.seq > point and e.sku == sku)
            delta = qty - (self.on_hand.get(sku, 0) - moved_since)
            as_of_seq = point
        else:
            delta = -qty if kind == Kind.SHIP else qty
            as_of_seq = 0
        row = EventRow(seq, f"e{seq}", sku, int(kind), qty, delta, "", rid, as_of_seq, 0)
        self.history.append(row)
        self.unsent.append(row)
        self.on_hand[sku] = self.on_hand.get(sku, 0) + delta


def fresh_ledger() -> Ledger:
    return Ledger(StockBook(POLICY), ids(), default_ttl_ms=120_000)


def apply(ledger: Ledger, op: tuple[Any, ...]) -> Any:
    """Run one recorded operation against ``ledger`` (also used to replay)."""
    name, now, args = op[0], op[1], op[2:]
    if name == "events":
        warehouse, rows = args
        return ledger.apply_events(warehouse, rows, now)
    if name == "seen":
        return ledger.seen(args[0], now)
    if name == "reserve":
        lines, room, key, ttl = args
        return ledger.reserve(lines, room, key, ttl, now)
    if name == "commit":
        return ledger.commit(args[0], now)
    if name == "release":
        return ledger.release(args[0], now)
    if name == "expire":
        return ledger.expire(now)
    if name == "quota":
        return ledger.set_quota(args[0], args[1], args[2], now)
    if name == "release_quota":
        return ledger.release_quota(args[0])
    if name == "freshness":
        return ledger.check_freshness(args[0], now)
    raise AssertionError(name)


def state_of(ledger: Ledger) -> dict[str, Any]:
    book = ledger.book
    return {
        "reservations": {
            rid: (
                r.state,
                r.reason,
                [
                    (ln.sku, ln.qty, ln.at_risk, dict(ln.allocations), dict(ln.shipped))
                    for ln in r.lines
                ],
            )
            for rid, r in ledger.reservations.items()
        },
        "stock": {
            (w, s): (book.on_hand(s, w), book.committed(s, w)) for w in WAREHOUSES for s in SKUS
        },
        "held": {s: book.held(s) for s in SKUS},
        "quotas": book.quotas(),
        "picks": sorted(
            (p.warehouse, p.reservation_id, p.sku, p.qty, p.cancel) for p in ledger.picks.values()
        ),
        "conflicts": sorted((c.kind.value, c.sku, c.units) for c in ledger.conflicts.values()),
    }


class StockMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = fresh_ledger()
        self.now = 0
        self.ops: list[tuple[Any, ...]] = []
        self.agents = {w: AgentBook() for w in WAREHOUSES}
        self.freshness: dict[str, Any] = {}
        self.keys: list[tuple[str, list[tuple[str, int]], str]] = []
        for w in WAREHOUSES:
            self.run(("seen", self.now, w))

    @initialize(stock=st.lists(st.integers(0, 15), min_size=9, max_size=9))
    def stock_the_shelves(self, stock: list[int]) -> None:
        for (w, sku), qty in zip(itertools.product(WAREHOUSES, SKUS), stock, strict=True):
            if qty:
                self.agents[w].record(Kind.RECEIVE, sku, qty)
        for w in WAREHOUSES:
            self.deliver(w)

    def run(self, op: tuple[Any, ...]) -> Any:
        try:
            result = apply(self.ledger, op)
        except StocksyncError:
            self.ops.append(op)
            raise
        self.ops.append(op)
        return result

    def deliver(self, warehouse: str) -> None:
        agent = self.agents[warehouse]
        if agent.online and agent.unsent:
            rows, agent.unsent = agent.unsent, []
            self.run(("events", self.now, warehouse, rows))

    # -- the warehouses -------------------------------------------------------------

    @rule(w=st.sampled_from(WAREHOUSES), sku=st.sampled_from(SKUS), n=st.integers(1, 20))
    def receive(self, w: str, sku: str, n: int) -> None:
        self.agents[w].record(Kind.RECEIVE, sku, n)
        self.deliver(w)

    @rule(
        w=st.sampled_from(WAREHOUSES), sku=st.sampled_from(SKUS), n=st.integers(-6, 6).filter(bool)
    )
    def adjust(self, w: str, sku: str, n: int) -> None:
        self.agents[w].record(Kind.ADJUST, sku, n)
        self.deliver(w)

    @rule(w=st.sampled_from(WAREHOUSES), sku=st.sampled_from(SKUS), n=st.integers(1, 4))
    def ship_unreserved(self, w: str, sku: str, n: int) -> None:
        self.agents[w].record(Kind.SHIP, sku, n)
        self.deliver(w)

    @rule(
        w=st.sampled_from(WAREHOUSES),
        sku=st.sampled_from(SKUS),
        counted=st.integers(0, 30),
        back=st.integers(0, 5),
    )
    def count(self, w: str, sku: str, counted: int, back: int) -> None:
        agent = self.agents[w]
        as_of = max(0, len(agent.history) - back)
        agent.record(Kind.COUNT, sku, counted, as_of=as_of)
        self.deliver(w)

    @rule(data=st.data())
    def ship_a_pick(self, data: st.DataObject) -> None:
        committed = [
            (r, ln, w)
            for r in self.ledger.reservations.values()
            if r.state is State.COMMITTED
            for ln in r.lines
            for w in ln.allocations
            if ln.open_at(w) > 0
        ]
        if not committed:
            return
        r, ln, w = data.draw(st.sampled_from(committed))
        n = data.draw(st.integers(1, ln.open_at(w)))
        event(f"ship a pick of {min(n, 3)}+" if n >= 3 else f"ship a pick of {n}")
        self.agents[w].record(Kind.SHIP, ln.sku, n, rid=r.id)
        self.deliver(w)

    @rule(w=st.sampled_from(WAREHOUSES))
    def go_offline(self, w: str) -> None:
        self.agents[w].online = False

    @rule(w=st.sampled_from(WAREHOUSES))
    def come_back(self, w: str) -> None:
        self.agents[w].online = True
        self.run(("seen", self.now, w))
        self.deliver(w)  # the late batch

    @rule(ms=st.sampled_from([1_000, 20_000, 45_000, 100_000]))
    def time_passes(self, ms: int) -> None:
        self.now += ms
        for w, agent in self.agents.items():
            if agent.online:
                self.run(("seen", self.now, w))
        new, _ = self.run(("freshness", self.now, dict(self.freshness)))
        self.freshness = new
        self.run(("expire", self.now))

    # -- the shop ---------------------------------------------------------------------

    @rule(
        lines=st.lists(
            st.tuples(st.sampled_from(SKUS), st.integers(1, 8)),
            min_size=1,
            max_size=3,
            unique_by=lambda line: line[0],
        ),
        room=st.sampled_from(ROOMS),
        ttl=st.sampled_from([None, 5_000, 60_000]),
        reuse=st.booleans(),
    )
    def reserve(
        self, lines: list[tuple[str, int]], room: str, ttl: int | None, reuse: bool
    ) -> None:
        if reuse and self.keys:
            key, lines, room = self.keys[-1]
        else:
            key = f"key-{len(self.keys)}"
        before = {sku: self.ledger.book.sellable(sku, self.now, room) for sku, _ in lines}
        known = key in self.ledger._by_key
        try:
            _r, _ = self.run(("reserve", self.now, lines, room, key, ttl))
        except StocksyncError:
            return
        event("reserve granted" if not known else "reserve repeated")
        if not known:
            self.keys.append((key, lines, room))
            for sku, qty in lines:
                assert qty <= before[sku], f"granted {qty} {sku} with {before[sku]} sellable"

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        held = sorted(r.id for r in self.ledger.reservations.values() if r.state is State.HELD)
        rid = data.draw(st.sampled_from(held or sorted(self.ledger.reservations) or ["R-none"]))
        try:
            self.run(("commit", self.now, rid))
            event("commit granted")
        except StocksyncError:
            pass

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if self.ledger.reservations:
            rid = data.draw(st.sampled_from(sorted(self.ledger.reservations)))
            with contextlib.suppress(StocksyncError):
                self.run(("release", self.now, rid))

    @rule(room=st.sampled_from(ROOMS[1:]), sku=st.sampled_from(SKUS), n=st.integers(0, 10))
    def quota(self, room: str, sku: str, n: int) -> None:
        with contextlib.suppress(StocksyncError):
            self.run(("quota", self.now, room, sku, n))

    @rule(room=st.sampled_from(ROOMS[1:]))
    def release_quota(self, room: str) -> None:
        self.run(("release_quota", self.now, room))

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def sellable_is_never_negative(self) -> None:
        for sku in SKUS:
            for room in ROOMS:
                assert self.ledger.book.sellable(sku, self.now, room) >= 0

    @invariant()
    def no_active_line_exceeds_what_was_sellable_at_grant(self) -> None:
        for r in self.ledger.reservations.values():
            if r.active:
                for ln in r.lines:
                    assert ln.qty <= ln.sellable_at_grant, (r.id, ln)

    @invariant()
    def book_matches_reservations(self) -> None:
        book = self.ledger.book
        held = dict.fromkeys(SKUS, 0)
        committed = {(w, s): 0 for w in WAREHOUSES for s in SKUS}
        for r in self.ledger.reservations.values():
            for ln in r.lines:
                if r.state is State.HELD:
                    held[ln.sku] += ln.qty
                elif r.state is State.COMMITTED:
                    for w in ln.allocations:
                        committed[(w, ln.sku)] += ln.open_at(w)
        assert held == {s: book.held(s) for s in SKUS}
        assert committed == {(w, s): book.committed(s, w) for w in WAREHOUSES for s in SKUS}
        assert all(free >= 0 for _, _, free in book.quotas())

    @invariant()
    def hub_on_hand_follows_what_was_delivered(self) -> None:
        for w, agent in self.agents.items():
            delivered = [e for e in agent.history if e not in agent.unsent]
            for sku in SKUS:
                expected = sum(e.delta for e in delivered if e.sku == sku)
                assert self.ledger.book.on_hand(sku, w) == expected

    def teardown(self) -> None:
        # Replaying the history reproduces the state (decisions are deterministic).
        replayed = fresh_ledger()
        for op in self.ops:
            with contextlib.suppress(StocksyncError):
                apply(replayed, op)
        assert state_of(replayed) == state_of(self.ledger)


StockMachine.TestCase.settings = settings(
    max_examples=1000,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestStockModel = StockMachine.TestCase
