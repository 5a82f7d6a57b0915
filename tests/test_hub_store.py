"""The hub store contract: one suite every backend passes unchanged.

Each test runs against every backend in ``BACKENDS`` (litestream's
``RunWithReplicaClient`` habit). A new backend (PostgreSQL) adds a factory
here and must pass the whole file without changing a test. The SQLite-only
tests at the end cover what only a file can do (a full disk).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stocksync.events import EventRow, Kind
from stocksync.hub.notices import OutboxEvent
from stocksync.hub.sqlite_store import SqliteHubStore
from stocksync.hub.storage import (
    Applied,
    HubStore,
    Source,
    SourceRetired,
    StoreError,
    StoreFull,
    UnknownEvent,
    WatermarkMoved,
)

BACKENDS: dict[str, Callable[[Path], HubStore]] = {
    "sqlite": lambda tmp: SqliteHubStore(tmp / "hub.db"),
}


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubStore]:
    s = BACKENDS[request.param](tmp_path)
    yield s
    s.close()


def row(seq: int, sku: str = "SKU-A", kind: Kind = Kind.RECEIVE, qty: int = 5) -> EventRow:
    delta = -qty if kind == Kind.SHIP else qty
    return EventRow(seq, f"evt-{seq}", sku, int(kind), qty, delta, "", "", 0, 1_700_000_000_000)


def snapshot(
    store: HubStore, warehouse: str, epoch: str, as_of: int, stock: list[tuple[str, int]]
) -> Source:
    with store.transaction() as tx:
        return tx.apply_snapshot(warehouse, epoch, as_of, stock, 1)


def apply(store: HubStore, source: Source, expected: int, rows: list[EventRow]) -> Applied:
    with store.transaction() as tx:
        return tx.apply_batch(source, expected, rows, 2)


def test_unknown_source_is_none(store: HubStore) -> None:
    assert store.source("WH-A", "e1") is None
    assert store.warehouses() == []
    assert store.on_hand(["SKU-A"]) == {"SKU-A": {}}


def test_snapshot_makes_the_epoch_current_at_its_seq(store: HubStore) -> None:
    src = snapshot(store, "WH-A", "e1", 3, [("SKU-A", 10), ("SKU-B", -1)])
    assert (src.warehouse, src.epoch, src.watermark, src.current) == ("WH-A", "e1", 3, True)
    assert store.source("WH-A", "e1") == src
    assert store.on_hand(["SKU-A", "SKU-B", "SKU-C"]) == {
        "SKU-A": {"WH-A": 10},
        "SKU-B": {"WH-A": -1},
        "SKU-C": {},
    }
    [record] = store.warehouses()
    assert (record.warehouse, record.epoch, record.watermark) == ("WH-A", "e1", 3)


def test_apply_batch_moves_the_watermark_and_returns_the_net_change(store: HubStore) -> None:
    src = snapshot(store, "WH-A", "e1", 0, [])
    applied = apply(
        store,
        src,
        0,
        [row(1, "SKU-A", qty=5), row(2, "SKU-B", qty=3), row(3, "SKU-A", Kind.SHIP, 2)],
    )
    assert applied == Applied(watermark=3, net={"SKU-A": 3, "SKU-B": 3})
    assert store.source("WH-A", "e1") == Source(src.source_id, "WH-A", "e1", 3, True)
    assert store.on_hand(["SKU-A", "SKU-B"]) == {"SKU-A": {"WH-A": 3}, "SKU-B": {"WH-A": 3}}
    # Events that cancel out are still listed, with 0.
    assert apply(store, src, 3, [row(4, "SKU-C", qty=2), row(5, "SKU-C", Kind.SHIP, 2)]) == (
        Applied(watermark=5, net={"SKU-C": 0})
    )


def test_watermark_is_compare_and_set(store: HubStore) -> None:
    src = snapshot(store, "WH-A", "e1", 0, [])
    apply(store, src, 0, [row(1), row(2)])
    before = store.on_hand(["SKU-A"])
    with pytest.raises(WatermarkMoved):
        apply(store, src, 0, [row(1), row(2)])  # re-applying 1..2
    with pytest.raises(WatermarkMoved):
        apply(store, src, 5, [row(6)])  # a stream that thinks it is further
    assert store.source("WH-A", "e1").watermark == 2  # type: ignore[union-attr]
    assert store.on_hand(["SKU-A"]) == before


def test_a_replaced_epoch_may_not_write(store: HubStore) -> None:
    old = snapshot(store, "WH-A", "e1", 0, [])
    apply(store, old, 0, [row(1, qty=7)])
    new = snapshot(store, "WH-A", "e2", 4, [("SKU-Z", 1)])
    assert store.source("WH-A", "e1").current is False  # type: ignore[union-attr]
    assert store.source("WH-A", "e2") == new
    with pytest.raises(SourceRetired, match="replaced"):
        apply(store, old, 1, [row(2)])
    # The new epoch's snapshot replaced the warehouse's stock entirely.
    assert store.on_hand(["SKU-A", "SKU-Z"]) == {"SKU-A": {}, "SKU-Z": {"WH-A": 1}}


def test_warehouses_are_independent(store: HubStore) -> None:
    a = snapshot(store, "WH-A", "e1", 0, [])
    b = snapshot(store, "WH-B", "e9", 0, [("SKU-A", 100)])
    apply(store, a, 0, [row(1, qty=5)])
    apply(store, b, 0, [row(1, "SKU-A", Kind.SHIP, 10)])
    assert store.on_hand(["SKU-A"]) == {"SKU-A": {"WH-A": 5, "WH-B": 90}}
    assert [w.warehouse for w in store.warehouses()] == ["WH-A", "WH-B"]


def test_a_failed_command_in_a_savepoint_leaves_the_rest(store: HubStore) -> None:
    src = snapshot(store, "WH-A", "e1", 0, [])
    with store.transaction() as tx:
        with tx.savepoint():
            tx.apply_batch(src, 0, [row(1)], 3)
        with pytest.raises(WatermarkMoved), tx.savepoint():
            tx.apply_batch(src, 0, [row(1)], 3)  # the same seq again
        with tx.savepoint():
            tx.apply_batch(src, 1, [row(2)], 3)
    assert store.source("WH-A", "e1").watermark == 2  # type: ignore[union-attr]
    assert store.on_hand(["SKU-A"]) == {"SKU-A": {"WH-A": 10}}


def test_an_error_in_a_transaction_rolls_all_of_it_back(store: HubStore) -> None:
    src = snapshot(store, "WH-A", "e1", 0, [])

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.transaction() as tx:
        tx.apply_batch(src, 0, [row(1)], 3)
        raise Boom
    assert store.source("WH-A", "e1").watermark == 0  # type: ignore[union-attr]
    assert store.on_hand(["SKU-A"]) == {"SKU-A": {}}


def test_reads_see_only_committed_transactions(store: HubStore) -> None:
    src = snapshot(store, "WH-A", "e1", 0, [])
    with store.transaction() as tx:
        tx.apply_batch(src, 0, [row(1)], 3)
        assert store.on_hand(["SKU-A"]) == {"SKU-A": {}}
        assert store.source("WH-A", "e1").watermark == 0  # type: ignore[union-attr]
    assert store.on_hand(["SKU-A"]) == {"SKU-A": {"WH-A": 5}}


def outbox_event(n: int, *subscriptions: str, unix_ms: int = 1000) -> OutboxEvent:
    return OutboxEvent(
        f"evt_{n}", "reservation.at_risk", f"R-{n}", f'{{"n":{n}}}', unix_ms, subscriptions
    )


def test_the_outbox_keeps_each_subscriptions_deliveries_in_order(store: HubStore) -> None:
    with store.transaction() as tx:
        tx.add_webhook_events([outbox_event(1, "a", "b"), outbox_event(2, "a")])
    with store.transaction() as tx:
        tx.add_webhook_events([outbox_event(3, "b")])
    assert [d.event_id for d in store.webhook_pending("a", 10)] == ["evt_1", "evt_2"]
    assert [d.event_id for d in store.webhook_pending("b", 10)] == ["evt_1", "evt_3"]
    [first] = store.webhook_pending("a", 1)
    assert (first.body, first.reservation_id, first.state, first.attempts) == (
        '{"n":1}',
        "R-1",
        "pending",
        0,
    )
    with store.transaction() as tx:
        tx.webhook_attempted("a", "evt_1", "HTTP 503", 2000)
    [failed, _] = store.webhook_pending("a", 10)
    assert (failed.attempts, failed.last_error) == (1, "HTTP 503")
    assert failed.last_attempt_unix_ms == 2000
    with store.transaction() as tx:
        tx.webhook_attempted("a", "evt_1", "", 3000)
    assert [d.event_id for d in store.webhook_pending("a", 10)] == ["evt_2"]
    listed = store.webhook_deliveries("a")
    assert [(d.event_id, d.state, d.attempts) for d in listed] == [
        ("evt_2", "pending", 0),
        ("evt_1", "delivered", 2),
    ]
    assert [d.event_id for d in store.webhook_deliveries(pending_only=True)] == [
        "evt_3",
        "evt_2",
        "evt_1",
    ]


def test_replay_makes_deliveries_from_an_event_on_pending_again(store: HubStore) -> None:
    with store.transaction() as tx:
        tx.add_webhook_events([outbox_event(n, "a", "b") for n in (1, 2, 3)])
        for n in (1, 2, 3):
            tx.webhook_attempted("a", f"evt_{n}", "", 10)
            tx.webhook_attempted("b", f"evt_{n}", "", 10)
    with store.transaction() as tx:
        assert tx.replay_webhooks("evt_2", ["a"]) == 2
    assert [d.event_id for d in store.webhook_pending("a", 10)] == ["evt_2", "evt_3"]
    assert store.webhook_pending("b", 10) == []
    with pytest.raises(UnknownEvent), store.transaction() as tx:
        tx.replay_webhooks("evt_9", ["a", "b"])


def test_pruning_removes_only_old_events_delivered_everywhere(store: HubStore) -> None:
    with store.transaction() as tx:
        tx.add_webhook_events([outbox_event(1, "a", unix_ms=100), outbox_event(2, "a", "b")])
        tx.add_webhook_events([outbox_event(3, "a", unix_ms=5000)])
        for n in (1, 2, 3):
            tx.webhook_attempted("a", f"evt_{n}", "", 10)
    with store.transaction() as tx:
        assert tx.prune_webhooks(2000, 100) == 1  # evt_2 still waits for b, evt_3 is recent
    assert {d.event_id for d in store.webhook_deliveries()} == {"evt_2", "evt_3"}


def test_store_errors_are_one_family_with_a_status() -> None:
    for cls in (StoreFull, WatermarkMoved, SourceRetired):
        assert issubclass(cls, StoreError)
    assert StoreError.status.name == "UNAVAILABLE"
    assert WatermarkMoved.status.name == "ABORTED"
    assert SourceRetired.status.name == "FAILED_PRECONDITION"


# -- SQLite only -----------------------------------------------------------------


def test_sqlite_full_disk_is_store_full_and_applies_nothing(tmp_path: Path) -> None:
    store = SqliteHubStore(tmp_path / "hub.db")
    src = snapshot(store, "WH-A", "e1", 0, [])
    apply(store, src, 0, [row(1)])
    # SQLite's own limit on the file's size: the same SQLITE_FULL a full disk gives.
    pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
    store._writer.execute(f"PRAGMA max_page_count = {pages}")
    many = [row(seq, f"SKU-{seq:05d}") for seq in range(2, 3000)]
    with pytest.raises(StoreFull) as caught:
        apply(store, src, 1, many)
    assert caught.value.detail == "hub store is full"  # no raw SQLite text for a peer
    assert store.source("WH-A", "e1").watermark == 1  # type: ignore[union-attr]
    store._writer.execute("PRAGMA max_page_count = 1073741823")
    assert apply(store, src, 1, many).watermark == 2999  # space again: it works
    store.close()


def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError, match="not a database"):
        SqliteHubStore(path)


def test_sqlite_synchronous_off_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="NORMAL, FULL or EXTRA"):
        SqliteHubStore(tmp_path / "hub.db", synchronous="OFF")
    assert not (tmp_path / "hub.db").exists()
