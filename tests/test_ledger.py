"""The stock model and reservation lifecycle (hub/stock.py, hub/ledger.py), no I/O.

Each rule of DESIGN §5 once: sellable with its per-warehouse clamp, safety
stock, quotas and staleness; reserve all-or-nothing and idempotent; commit
allocation and pick commands; settlement by SHIP events; release and expiry
by the hub's own clock; late bad news re-allocated or flagged at risk, and
every conflict recorded.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from stocksync.errors import InvalidArgument, Status
from stocksync.events import EventRow, Kind
from stocksync.hub.ledger import (
    ConflictKind,
    Ledger,
    NotFound,
    ReservationClosed,
    Shortage,
    State,
)
from stocksync.hub.stock import Freshness, MostAvailable, StalenessPolicy, StockBook

POLICY = StalenessPolicy(stale_after_ms=60_000, stale_buffer=0.5, offline_after_ms=300_000)


def ids() -> Iterator[str]:
    for n in itertools.count(1):
        yield f"{n:04d}"


class World:
    """A ledger with warehouses, and a way to play agent events into it."""

    def __init__(self, **stock: dict[str, int]) -> None:
        self.book = StockBook(POLICY)
        self.ledger = Ledger(self.book, ids())
        self.now = 0
        self.seq: dict[str, int] = {}
        for warehouse, skus in stock.items():
            self.book.seen(warehouse, 0)
            for sku, qty in skus.items():
                self.book.add_on_hand(warehouse, sku, qty)

    def event(self, warehouse: str, kind: Kind, sku: str, qty: int, rid: str = "") -> object:
        seq = self.seq[warehouse] = self.seq.get(warehouse, 0) + 1
        delta = -qty if kind == Kind.SHIP else qty
        row = EventRow(seq, f"e{seq}", sku, int(kind), qty, delta, "", rid, 0, 0)
        return self.ledger.apply_events(warehouse, [row], self.now)

    def reserve(self, sku: str, qty: int, room: str = "", key: str | None = None) -> str:
        r, _ = self.ledger.reserve(
            [(sku, qty)],
            room,
            key or f"k{qty}{sku}{room}{self.now}{len(self.ledger.reservations)}",
            None,
            self.now,
        )
        return r.id

    def sellable(self, sku: str, room: str = "") -> int:
        return self.book.sellable(sku, self.now, room)


def test_sellable_clamps_per_warehouse_then_sums() -> None:
    w = World(A={"S": 5}, B={"S": -3})
    assert w.sellable("S") == 5  # B's negative stock does not eat A's
    w.book.set_safety_stock("S", 2)
    assert w.sellable("S") == 3


def test_reserve_is_all_or_nothing_and_names_the_short_sku() -> None:
    w = World(A={"S": 5, "T": 1})
    with pytest.raises(Shortage) as caught:
        w.ledger.reserve([("S", 2), ("T", 2)], "", "k", None, 0)
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert str(caught.value) == "T: 2 requested, 1 sellable"
    assert (w.sellable("S"), w.sellable("T")) == (5, 1)
    assert w.ledger.reservations == {}


def test_reserve_is_idempotent_by_key() -> None:
    w = World(A={"S": 5})
    first, changes = w.ledger.reserve([("S", 2)], "room-1", "key-1", None, 0)
    again, none = w.ledger.reserve([("S", 2)], "room-1", "key-1", None, 0)
    assert again is first and none is None and changes is not None
    assert w.sellable("S") == 3
    with pytest.raises(InvalidArgument, match="other lines"):
        w.ledger.reserve([("S", 3)], "room-1", "key-1", None, 0)


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        ([], "at least one line"),
        ([("S", 0)], "qty of S"),
        ([("S", -1)], "qty of S"),
        ([("S", 100_001)], "qty of S"),
        ([("bad sku", 1)], "sku"),
        ([("S", 1), ("S", 1)], "two lines"),
        ([(f"S{i}", 1) for i in range(51)], "at most 50 lines"),
    ],
)
def test_bad_reserve_is_refused_and_changes_nothing(
    lines: list[tuple[str, int]], fragment: str
) -> None:
    w = World(A={"S": 5})
    with pytest.raises(InvalidArgument, match=fragment):
        w.ledger.reserve(lines, "", "k", None, 0)
    assert w.sellable("S") == 5 and w.ledger.reservations == {}


def test_commit_allocates_most_available_first_and_sends_picks() -> None:
    w = World(A={"S": 3}, B={"S": 10}, C={"S": 4})
    rid = w.reserve("S", 12)
    r, changes = w.ledger.commit(rid, 0)
    assert r.state is State.COMMITTED
    assert r.lines[0].allocations == {"B": 10, "C": 2}
    assert changes is not None
    picks = sorted((p.warehouse, p.qty) for p in changes.picks.values())
    assert picks == [("B", 10), ("C", 2)]
    assert (w.book.committed("S", "B"), w.book.committed("S", "C")) == (10, 2)
    assert w.sellable("S") == 5
    assert w.ledger.commit(rid, 0) == (r, None)  # idempotent


def test_ship_with_the_reservation_settles_it() -> None:
    w = World(A={"S": 10})
    rid = w.reserve("S", 4)
    w.ledger.commit(rid, 0)
    w.event("A", Kind.SHIP, "S", 3, rid)
    r = w.ledger.get(rid)
    assert r.state is State.COMMITTED and r.lines[0].shipped == {"A": 3}
    assert w.book.committed("S", "A") == 1 and w.book.on_hand("S", "A") == 7
    assert w.sellable("S") == 6  # nothing counted twice
    w.event("A", Kind.SHIP, "S", 1, rid)
    assert r.state is State.SETTLED
    assert w.book.committed("S", "A") == 0 and w.sellable("S") == 6


def test_ship_naming_an_unknown_or_settled_reservation_is_applied_and_recorded() -> None:
    w = World(A={"S": 10})
    changes = w.event("A", Kind.SHIP, "S", 2, "R-nope")
    assert w.book.on_hand("S", "A") == 8  # it physically happened
    kinds = [c.kind for c in changes.conflicts.values()]  # type: ignore[attr-defined]
    assert kinds == [ConflictKind.UNKNOWN_RESERVATION]
    rid = w.reserve("S", 1)
    w.ledger.commit(rid, 0)
    w.event("A", Kind.SHIP, "S", 1, rid)
    changes = w.event("A", Kind.SHIP, "S", 1, rid)
    assert [c.kind for c in changes.conflicts.values()] == [ConflictKind.ALREADY_SETTLED]  # type: ignore[attr-defined]
    assert w.book.on_hand("S", "A") == 6


def test_ship_from_another_warehouse_moves_the_allocation_and_cancels_the_pick() -> None:
    w = World(A={"S": 10}, B={"S": 1})
    rid = w.reserve("S", 2)
    w.ledger.commit(rid, 0)  # all at A
    changes = w.event("B", Kind.SHIP, "S", 1, rid)
    r = w.ledger.get(rid)
    assert r.lines[0].allocations == {"A": 1, "B": 1} and r.lines[0].shipped == {"B": 1}
    kinds = [c.kind for c in changes.conflicts.values()]  # type: ignore[attr-defined]
    assert ConflictKind.SHIPPED_ELSEWHERE in kinds
    cancels = [p for p in changes.picks.values() if p.cancel]  # type: ignore[attr-defined]
    assert [p.warehouse for p in cancels] == ["A"]
    assert any(p.warehouse == "A" and p.qty == 1 and not p.cancel for p in changes.picks.values())  # type: ignore[attr-defined]


def test_release_returns_units_and_withdraws_picks() -> None:
    w = World(A={"S": 5})
    held = w.reserve("S", 2)
    paid = w.reserve("S", 3)
    w.ledger.commit(paid, 0)
    assert w.sellable("S") == 0
    w.ledger.release(held, 0)
    _, changes = w.ledger.release(paid, 0)
    assert w.sellable("S") == 5
    assert changes is not None and [p.cancel for p in changes.picks.values()] == [True]
    assert w.ledger.release(paid, 0)[1] is None  # idempotent
    with pytest.raises(ReservationClosed, match="released"):
        w.ledger.commit(paid, 0)
    with pytest.raises(NotFound):
        w.ledger.release("R-nope", 0)


def test_held_reservations_expire_by_the_hub_clock_only() -> None:
    w = World(A={"S": 5})
    r, _ = w.ledger.reserve([("S", 2)], "", "k", 10_000, 0)
    assert not w.ledger.expire(9_999)
    assert r.state is State.HELD
    changes = w.ledger.expire(10_000)
    assert r.state is State.RELEASED and r.reason == "expired"
    assert changes.reservations and w.sellable("S") == 5
    with pytest.raises(ReservationClosed, match="expired"):
        w.ledger.commit(r.id, 10_000)


def test_quota_sets_units_aside_for_one_room() -> None:
    w = World(A={"S": 10})
    w.ledger.set_quota("live-a", "S", 4, 0)
    assert (w.sellable("S"), w.sellable("S", "live-a")) == (6, 10)
    with pytest.raises(Shortage):
        w.ledger.set_quota("live-b", "S", 7, 0)
    rid = w.reserve("S", 5, room="live-a")
    r = w.ledger.get(rid)
    assert r.lines[0].from_quota == 4
    assert (w.sellable("S"), w.sellable("S", "live-a")) == (5, 5)
    w.ledger.release(rid, 0)  # the quota's part goes back to the quota
    assert w.book.quota_free("S", "live-a") == 4
    w.ledger.release_quota("live-a")
    assert w.sellable("S") == 10 and not w.book.has_quota("S", "live-a")


def test_a_stale_warehouse_counts_less_then_nothing_new() -> None:
    w = World(A={"S": 10}, B={"S": 10})
    w.now = 60_000
    w.book.seen("A", w.now)
    assert w.book.freshness("B", w.now) is Freshness.STALE
    assert w.sellable("S") == 15  # B counts 10 x (1 - 0.5)
    w.now = 300_000
    w.book.seen("A", w.now)
    assert w.sellable("S") == 10  # B offline: nothing new
    w.book.seen("B", w.now)
    assert w.sellable("S") == 20  # back: counts fully again


def test_late_damage_reallocates_a_paid_line_to_a_warehouse_with_stock() -> None:
    w = World(A={"S": 5}, B={"S": 3})
    rid = w.reserve("S", 5)
    w.ledger.commit(rid, 0)  # all at A (most available)
    changes = w.event("A", Kind.ADJUST, "S", -3)  # damage found at A
    r = w.ledger.get(rid)
    assert r.lines[0].allocations == {"A": 2, "B": 3}
    assert not r.at_risk
    kinds = [c.kind for c in changes.conflicts.values()]  # type: ignore[attr-defined]
    assert kinds == [ConflictKind.REALLOCATED]
    picks = {(p.warehouse, p.cancel, p.qty) for p in changes.picks.values()}  # type: ignore[attr-defined]
    assert picks == {("A", True, 0), ("A", False, 2), ("B", False, 3)}


def test_late_damage_with_no_stock_elsewhere_flags_the_newest_at_risk() -> None:
    w = World(A={"S": 5})
    old = w.reserve("S", 2)
    new = w.reserve("S", 3)
    w.ledger.commit(old, 0)
    w.ledger.commit(new, 0)
    changes = w.event("A", Kind.ADJUST, "S", -2)
    assert w.ledger.get(new).status == "AT_RISK" and w.ledger.get(new).lines[0].at_risk == 2
    assert w.ledger.get(old).status == "COMMITTED"
    assert w.sellable("S") == 0
    [conflict] = changes.conflicts.values()  # type: ignore[attr-defined]
    assert (conflict.kind, conflict.units, conflict.open) == (ConflictKind.OVERSOLD, 2, True)
    assert w.ledger.at_risk_units() == 2
    # Stock found again: the flag clears by itself and the conflict is resolved.
    changes = w.event("A", Kind.RECEIVE, "S", 2)
    assert w.ledger.get(new).status == "COMMITTED"
    [resolved] = changes.conflicts.values()  # type: ignore[attr-defined]
    assert resolved.id == conflict.id and resolved.resolved_unix_ms > 0
    assert w.ledger.at_risk_units() == 0


def test_a_held_reservation_at_risk_cannot_be_committed() -> None:
    w = World(A={"S": 3})
    rid = w.reserve("S", 3)
    w.event("A", Kind.ADJUST, "S", -1)
    with pytest.raises(ReservationClosed, match="at risk"):
        w.ledger.commit(rid, 0)
    w.event("A", Kind.RECEIVE, "S", 1)
    assert w.ledger.commit(rid, 0)[0].state is State.COMMITTED


def test_negative_on_hand_is_recorded_and_resolved() -> None:
    w = World(A={"S": 1})
    changes = w.event("A", Kind.SHIP, "S", 3)
    [c] = changes.conflicts.values()  # type: ignore[attr-defined]
    assert (c.kind, c.units, c.warehouse) == (ConflictKind.NEGATIVE_ON_HAND, 2, "A")
    changes = w.event("A", Kind.RECEIVE, "S", 5)
    assert [x.resolved_unix_ms > 0 for x in changes.conflicts.values()] == [True]  # type: ignore[attr-defined]


def test_most_available_splits_only_when_it_must() -> None:
    rule = MostAvailable()
    assert rule.allocate("S", 3, {"A": 2, "B": 5}) == {"B": 3}
    assert rule.allocate("S", 6, {"A": 2, "B": 5}) == {"B": 5, "A": 1}
    assert rule.allocate("S", 9, {"A": 2, "B": 5}) == {"B": 5, "A": 2}
    assert rule.allocate("S", 1, {"B": 5, "A": 5}) == {"A": 1}  # ties by id


def test_picks_are_acknowledged_per_warehouse() -> None:
    w = World(A={"S": 5})
    rid = w.reserve("S", 1)
    w.ledger.commit(rid, 0)
    [pick] = w.ledger.pending_picks("A")
    assert not w.ledger.ack_pick("B", pick.command_id)  # not B's command
    assert w.ledger.ack_pick("A", pick.command_id)
    assert w.ledger.pending_picks("A") == []
