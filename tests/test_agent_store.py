"""The agent's SQLite store (agent/store.py) on real database files.

Each test opens real files under ``tmp_path``; the concurrency tests open one
file from two ``AgentStore`` objects, as the daemon and the CLI do.
"""

from __future__ import annotations

import io
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stocksync.agent.event_ids import block
from stocksync.agent.store import (
    PROGRESS_EVERY,
    AgentStore,
    Backlog,
    DaemonState,
    StoreError,
    csv_entries,
    parse_events_csv,
    read_csv_entries,
)
from stocksync.events import InvalidEvent, Kind, NewEvent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "agent.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[AgentStore]:
    with AgentStore(db_path) as s:
        yield s


def receive(sku: str, n: int) -> NewEvent:
    return NewEvent(sku=sku, kind=Kind.RECEIVE, quantity=n)


def ship(sku: str, n: int, reservation_id: str = "") -> NewEvent:
    return NewEvent(sku=sku, kind=Kind.SHIP, quantity=n, reservation_id=reservation_id)


def adjust(sku: str, n: int, reason: str = "correction") -> NewEvent:
    return NewEvent(sku=sku, kind=Kind.ADJUST, quantity=n, reason=reason)


def count(sku: str, counted: int, as_of_seq: int | None = None) -> NewEvent:
    return NewEvent(sku=sku, kind=Kind.COUNT, quantity=counted, as_of_seq=as_of_seq)


def state(store: AgentStore) -> tuple[int, dict[str, int], list[tuple[str, int]]]:
    """Everything a refused write must leave alone: high seq, on_hand, snapshot."""
    return store.high_seq(), store.on_hand(), store.snapshot(store.high_seq())


class BookModel:
    """DESIGN §4 on_hand rules, kept in plain Python as a reference.

    ``history[k]`` is on_hand per SKU after seq k; a COUNT replaces on_hand as
    of its as_of_seq and keeps the moves after it (a rebased count).
    """

    def __init__(self) -> None:
        self.history: list[dict[str, int]] = [{}]

    def apply(self, e: NewEvent) -> None:
        now = dict(self.history[-1])
        before = now.get(e.sku, 0)
        if e.kind is Kind.RECEIVE:
            now[e.sku] = before + e.quantity
        elif e.kind is Kind.SHIP:
            now[e.sku] = before - e.quantity
        elif e.kind is Kind.ADJUST:
            now[e.sku] = before + e.quantity
        else:
            as_of = len(self.history) - 1 if e.as_of_seq is None else e.as_of_seq
            then = self.history[as_of].get(e.sku, 0)
            now[e.sku] = e.quantity + (before - then)
        self.history.append(now)

    def as_of(self, seq: int) -> list[tuple[str, int]]:
        return sorted((s, q) for s, q in self.history[seq].items() if q != 0)


# -- epoch and lifecycle -------------------------------------------------------


def test_epoch_is_created_once_and_persists(db_path: Path, tmp_path: Path) -> None:
    with AgentStore(db_path) as s:
        epoch = s.epoch
        s.record(receive("A", 1))
    assert epoch
    with AgentStore(db_path) as s:
        assert s.epoch == epoch
        assert s.high_seq() == 1
    with AgentStore(tmp_path / "other.db") as other:
        assert other.epoch and other.epoch != epoch, "a new store is a new epoch"


def test_newer_schema_is_refused(db_path: Path) -> None:
    AgentStore(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        AgentStore(db_path)


def test_file_that_is_not_a_database_is_refused(db_path: Path) -> None:
    db_path.write_bytes(b"not a database, just text " * 100)
    with pytest.raises(StoreError, match="is not a SQLite database, so not an agent store"):
        AgentStore(db_path)
    assert db_path.read_bytes() == b"not a database, just text " * 100


def test_wal_and_synchronous_full_are_set(store: AgentStore, db_path: Path) -> None:
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    # journal_mode=WAL is a property of the file: a fresh connection sees it.
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_synchronous_is_configurable_and_checked(db_path: Path) -> None:
    with AgentStore(db_path, synchronous="normal") as s:
        assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    with pytest.raises(StoreError, match="synchronous"):
        AgentStore(db_path, synchronous="FULL; DROP TABLE events")


def test_claim_binds_the_store_to_one_warehouse(db_path: Path) -> None:
    with AgentStore(db_path) as s:
        assert s.warehouse is None
        s.claim("WH-LAX")
        s.claim("WH-LAX")  # claiming again for the same warehouse is fine
        with pytest.raises(StoreError, match="holds the books of WH-LAX, not WH-FRA"):
            s.claim("WH-FRA")
    with AgentStore(db_path) as s:
        assert s.warehouse == "WH-LAX"
        with pytest.raises(StoreError, match="WH-LAX"):
            s.claim("WH-FRA")


# -- recording ------------------------------------------------------------------


def test_record_assigns_gap_free_seqs_from_1(db_path: Path) -> None:
    with AgentStore(db_path) as s:
        assert s.high_seq() == 0
        assert [s.record(receive("A", 1)) for _ in range(3)] == [1, 2, 3]
        assert s.record_many([ship("A", 1), adjust("B", 2)]) == [4, 5]
    with AgentStore(db_path) as s:
        assert s.record(receive("A", 1)) == 6
        rows = s.events(1, 6)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert len({r[1] for r in rows}) == 6, "every event gets its own id"


def test_events_rows_carry_the_recorded_fields(store: AgentStore) -> None:
    store.record_many(
        [receive("A", 10), ship("A", 4, reservation_id="r-1"), adjust("A", -1, "damaged")],
        now_ms=1_700_000_000_000,
    )
    rows = store.events(2, 3)
    assert [r[:1] + r[2:] for r in rows] == [
        (2, "A", int(Kind.SHIP), 4, -4, "", "r-1", 0, 1_700_000_000_000, 0),
        (3, "A", int(Kind.ADJUST), -1, -1, "damaged", "", 0, 1_700_000_000_000, 0),
    ]
    assert store.events(4, 10) == []


def test_on_hand_follows_each_kind(store: AgentStore) -> None:
    store.record(receive("A", 10))
    store.record(receive("B", 3))
    store.record(ship("A", 4))
    store.record(adjust("B", -1))
    assert store.on_hand() == {"A": 6, "B": 2}
    assert store.on_hand("A") == {"A": 6}
    assert store.on_hand("NOPE") == {}


def test_ship_beyond_on_hand_is_recorded_as_it_happened(store: AgentStore) -> None:
    # DESIGN §4: a well-formed event that contradicts the books is accepted.
    store.record(receive("A", 2))
    assert store.record(ship("A", 5)) == 2
    assert store.on_hand("A") == {"A": -3}


def test_count_now_sets_on_hand(store: AgentStore) -> None:
    store.record(receive("A", 10))
    store.record(ship("A", 3))
    seq = store.record(count("A", 5))
    assert store.on_hand("A") == {"A": 5}
    (row,) = store.events(seq, seq)
    assert (row[4], row[5], row[8]) == (5, -2, 2), "quantity, delta, as_of = previous seq"


def test_count_of_an_unseen_sku_sets_on_hand(store: AgentStore) -> None:
    store.record(receive("A", 1))
    store.record(count("B", 7))
    assert store.on_hand() == {"A": 1, "B": 7}


def test_count_as_of_an_earlier_seq_keeps_later_moves(store: AgentStore) -> None:
    store.record(receive("A", 10))  # 1
    store.record(ship("A", 3))  # 2   the count is taken here: 7 expected, 6 found
    store.record(receive("A", 4))  # 3
    store.record(ship("A", 1))  # 4
    store.record(receive("B", 9))  # 5   another SKU's moves are not A's
    seq = store.record(count("A", 6, as_of_seq=2))
    assert store.on_hand() == {"A": 6 + 4 - 1, "B": 9}
    (row,) = store.events(seq, seq)
    assert (row[5], row[8]) == (-1, 2), "delta and as_of_seq"


def test_count_as_of_0_keeps_every_move(store: AgentStore) -> None:
    store.record(receive("A", 10))
    store.record(ship("A", 2))
    store.record(count("A", 5, as_of_seq=0))
    assert store.on_hand("A") == {"A": 13}


def test_count_as_of_the_high_seq_is_a_count_now(store: AgentStore) -> None:
    store.record(receive("A", 10))
    store.record(count("A", 4, as_of_seq=1))
    assert store.on_hand("A") == {"A": 4}


def test_count_as_of_past_the_high_seq_is_refused_and_changes_nothing(
    store: AgentStore,
) -> None:
    store.record(receive("A", 10))
    store.record(ship("A", 1))
    before = state(store)
    with pytest.raises(InvalidEvent, match="as_of_seq 3 is past the last recorded seq 2"):
        store.record(count("A", 5, as_of_seq=3))
    assert state(store) == before
    assert store.record(receive("A", 1)) == 3


@pytest.mark.parametrize(
    "bad",
    [
        NewEvent("A", Kind.RECEIVE, 0),
        NewEvent("A", Kind.SHIP, -2),
        NewEvent("A", Kind.ADJUST, 0),
        NewEvent("A", Kind.COUNT, -1),
        NewEvent("", Kind.RECEIVE, 1),
        NewEvent("A B", Kind.RECEIVE, 1),
        NewEvent("S" * 65, Kind.RECEIVE, 1),
        NewEvent("A", Kind.RECEIVE, 1, reservation_id="r-1"),
        NewEvent("A", Kind.ADJUST, 1, as_of_seq=1),
        NewEvent("A", Kind.COUNT, 1, as_of_seq=-1),
    ],
)
def test_invalid_event_is_refused_and_changes_nothing(store: AgentStore, bad: NewEvent) -> None:
    store.record(receive("A", 10))
    before = state(store)
    with pytest.raises(InvalidEvent):
        store.record(bad)
    assert state(store) == before
    assert store.record(receive("A", 1)) == 2, "a refused event uses no seq"


def test_record_many_is_all_or_nothing(store: AgentStore) -> None:
    store.record(receive("A", 10))
    before = state(store)
    batch = [receive("A", 5), ship("B", 1), count("A", 3), NewEvent("A", Kind.ADJUST, 0)]
    with pytest.raises(InvalidEvent, match="adjust quantity must not be 0"):
        store.record_many(batch)
    assert state(store) == before
    assert store.record_many(batch[:3]) == [2, 3, 4]
    assert store.on_hand() == {"A": 3, "B": -1}


def test_record_many_from_a_failing_csv_stores_nothing(store: AgentStore) -> None:
    lines = ["A,receive,5\n", "B,receive,2\n", "C,receive,zero\n"]
    with pytest.raises(InvalidEvent, match="line 3"):
        store.record_many(parse_events_csv(lines))
    assert store.high_seq() == 0
    assert store.on_hand() == {}


def test_record_many_counts_as_of_within_the_same_batch(store: AgentStore) -> None:
    seqs = store.record_many([receive("A", 10), ship("A", 2), count("A", 9, as_of_seq=1)])
    assert seqs == [1, 2, 3]
    assert store.on_hand("A") == {"A": 7}


def test_record_many_reports_progress(store: AgentStore) -> None:
    seen: list[int] = []
    store.record_many((receive("A", 1) for _ in range(2500)), on_progress=seen.append)
    assert seen == [1000, 2000, 2500]


def test_long_runs_of_plain_events_and_single_counts_keep_every_rule(db_path: Path) -> None:
    """Plain events go in whole chunks, the rest one by one: the books and the
    rows must come out as if each event had been recorded alone."""
    rng = random.Random(11)
    events: list[NewEvent] = []
    for i in range(3 * PROGRESS_EVERY + 17):
        sku = f"S{rng.randrange(7)}"
        roll = rng.random()
        if i in (5, PROGRESS_EVERY - 1, PROGRESS_EVERY, 2 * PROGRESS_EVERY + 3) or roll < 0.002:
            as_of = rng.choice([None, max(0, i - rng.randrange(40))])
            events.append(count(sku, rng.randrange(30), as_of_seq=as_of))
        elif roll < 0.4:
            events.append(receive(sku, rng.randint(1, 9)))
        elif roll < 0.8:
            events.append(ship(sku, rng.randint(1, 9)))
        else:
            events.append(adjust(sku, rng.choice([-2, -1, 1, 2])))
    model = BookModel()
    for e in events:
        model.apply(e)
    with AgentStore(db_path) as bulk, AgentStore(db_path.with_name("one.db")) as alone:
        assert bulk.record_many(events) == list(range(1, len(events) + 1))
        for e in events:
            alone.record(e)
        assert (
            bulk.on_hand()
            == alone.on_hand()
            == {s: q for s, q in model.history[-1].items() if s in bulk.on_hand()}
        )
        assert bulk.snapshot(bulk.high_seq()) == model.as_of(len(events))
        columns = (
            "seq, sku, kind, quantity, delta, reason, reservation_id, as_of_seq, recorded_at_ms"
        )
        rows = bulk.conn.execute(f"SELECT {columns} FROM events ORDER BY seq").fetchall()
        # recorded_at_ms differs between the two stores: compare the rest.
        assert [r[:-1] for r in rows] == [
            r[:-1] for r in alone.conn.execute(f"SELECT {columns} FROM events ORDER BY seq")
        ]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (NewEvent("A", Kind.RECEIVE, True), "is not a whole number"),
        (NewEvent("A", Kind.RECEIVE, 1.0), "is not a whole number"),  # type: ignore[arg-type]
        (NewEvent("A", 9, 1), "unknown event kind"),  # type: ignore[arg-type]
        (NewEvent("A", Kind.SHIP, -1), "ship quantity must be greater than 0"),
        (NewEvent("A", Kind.ADJUST, 0), "adjust quantity must not be 0"),
        (NewEvent("A", Kind.ADJUST, -1_000_000_001), "out of range"),
        (NewEvent("A B", Kind.RECEIVE, 1), "may only contain"),
        (NewEvent("A", Kind.RECEIVE, 1, reason="x" * 201), "reason is longer"),
        (NewEvent("A", Kind.RECEIVE, 1, reservation_id="R-1"), "only be settled by a ship"),
        (NewEvent("A", Kind.RECEIVE, 1, as_of_seq=0), "only meaningful for a count"),
    ],
)
def test_a_bad_event_deep_in_a_large_batch_stores_nothing(
    store: AgentStore, bad: NewEvent, message: str
) -> None:
    good = [receive("A", 1), ship("B", 1), adjust("C", -1)] * PROGRESS_EVERY
    with pytest.raises(InvalidEvent, match=message):
        store.record_many([*good, bad, *good])
    assert store.high_seq() == 0
    assert store.on_hand() == {}
    assert store.record_many(good) == list(range(1, len(good) + 1))


def test_event_ids_are_uuid7_and_increase_in_recording_order(store: AgentStore) -> None:
    store.record(receive("A", 1))
    store.record_many([receive("A", 1)] * 5000)
    store.record(receive("A", 1))
    ids = [r[0] for r in store.conn.execute("SELECT event_id FROM events ORDER BY seq")]
    assert len(set(ids)) == len(ids) == 5002
    assert ids == sorted(ids)
    for text in ids[:3] + ids[-3:]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, text)


@pytest.mark.parametrize("size", [1, 255, 256, 0x10000 + 7])
def test_a_block_of_ids_is_consecutive(size: int) -> None:
    ids = [uuid.UUID(t).int for t in block(size)]
    assert ids == list(range(ids[0], ids[0] + size))
    assert (ids[0] >> 80) <= time.time_ns() // 1_000_000


# -- snapshot and backlog --------------------------------------------------------


def test_snapshot_equals_replaying_the_events_up_to_it(store: AgentStore) -> None:
    rng = random.Random(7)
    model = BookModel()
    for seq in range(1, 301):
        sku = rng.choice(["A", "B", "C", "D/1"])
        roll = rng.random()
        if roll < 0.35:
            e = receive(sku, rng.randint(1, 20))
        elif roll < 0.65:
            e = ship(sku, rng.randint(1, 10))
        elif roll < 0.8:
            e = adjust(sku, rng.choice([-3, -1, 1, 2]))
        elif roll < 0.9:
            e = count(sku, rng.randint(0, 15))
        else:
            e = count(sku, rng.randint(0, 15), as_of_seq=rng.randint(0, seq - 1))
        assert store.record(e) == seq
        model.apply(e)
    for as_of in [0, 1, 2, 57, 150, 299, 300]:
        assert store.snapshot(as_of) == model.as_of(as_of), f"as of {as_of}"
    assert {s: q for s, q in store.on_hand().items() if q} == dict(model.as_of(300))


def test_snapshot_leaves_out_zero_stock(store: AgentStore) -> None:
    store.record(receive("A", 3))
    store.record(receive("B", 1))
    store.record(ship("A", 3))
    assert store.snapshot(3) == [("B", 1)]
    assert store.snapshot(2) == [("A", 3), ("B", 1)]
    assert store.snapshot(0) == []


def test_backlog_counts_pending_events_and_the_age_of_the_oldest(store: AgentStore) -> None:
    assert store.backlog(now_ms=5_000) == Backlog(0, 0, 0, None)
    for t in (1_000, 2_000, 3_500):
        store.record_many([receive("A", 1)], now_ms=t)
    assert store.backlog(now_ms=5_000) == Backlog(3, 0, 3, 4.0)

    store.set_acked_seq(1)
    assert store.acked_seq() == 1
    assert store.backlog(now_ms=5_000) == Backlog(3, 1, 2, 3.0)
    assert store.backlog(acked_seq=2, now_ms=5_000) == Backlog(3, 2, 1, 1.5)

    store.set_acked_seq(0)  # an older ack never moves the saved one back
    assert store.acked_seq() == 1

    store.set_acked_seq(3)
    assert store.backlog(now_ms=5_000) == Backlog(3, 3, 0, None)


def test_backlog_age_is_never_negative_when_the_clock_went_back(store: AgentStore) -> None:
    store.record_many([receive("A", 1)], now_ms=10_000)
    assert store.backlog(now_ms=4_000).oldest_pending_age_s == 0.0


def test_acked_seq_persists_across_reopen(db_path: Path) -> None:
    with AgentStore(db_path) as s:
        s.record_many([receive("A", 1)] * 4)
        s.set_acked_seq(3)
    with AgentStore(db_path) as s:
        assert s.acked_seq() == 3
        assert s.backlog(now_ms=0).pending == 1


def test_daemon_state_round_trips(store: AgentStore) -> None:
    assert store.daemon_state() == DaemonState()
    state = DaemonState(
        connected=True,
        pid=42,
        hub="hub.example:7443",
        since_unix_ms=1,
        last_error="hub hub.example:7443: UNAVAILABLE: hub store is full",
        last_error_unix_ms=2,
    )
    store.set_daemon_state(state)
    assert store.daemon_state() == state


def test_daemon_state_ignores_what_it_does_not_know() -> None:
    assert DaemonState.from_json('{"pid": 7, "from_a_newer_agent": 1}') == DaemonState(pid=7)
    assert DaemonState.from_json("not json") == DaemonState()
    assert DaemonState.from_json("[1, 2]") == DaemonState()


# -- two writers on one file (daemon + CLI) --------------------------------------


def test_two_stores_on_one_file_interleave_gap_free(db_path: Path) -> None:
    with AgentStore(db_path) as daemon, AgentStore(db_path) as cli:
        seqs = []
        for i in range(20):
            writer = daemon if i % 3 else cli
            seqs.append(writer.record(receive("A", 1)))
        seqs += cli.record_many([ship("A", 1), ship("A", 1)])
        seqs.append(daemon.record(count("A", 50)))
        assert seqs == list(range(1, 24))
        assert daemon.on_hand() == cli.on_hand() == {"A": 50}
        assert daemon.high_seq() == cli.high_seq() == 23
        assert [r[0] for r in daemon.events(1, 23)] == seqs


def test_two_stores_writing_concurrently_keep_seqs_gap_free(db_path: Path) -> None:
    per_writer = 150
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    AgentStore(db_path).close()  # create the schema before the race

    def writer(name: str) -> None:
        try:
            with AgentStore(db_path) as s:
                results[name] = [s.record(receive(name, 1)) for _ in range(per_writer)]
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("D", "C")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for seqs in results.values():
        assert seqs == sorted(seqs)
    assert sorted(results["D"] + results["C"]) == list(range(1, 2 * per_writer + 1))
    with AgentStore(db_path) as s:
        assert s.on_hand() == {"C": per_writer, "D": per_writer}
        rows = s.events(1, 2 * per_writer)
    assert {r[0] for r in rows if r[2] == "D"} == set(results["D"])


# -- CSV import --------------------------------------------------------------------


def test_csv_with_header_reason_and_blank_lines() -> None:
    lines = [
        "sku,kind,qty,reason\n",
        "A,receive,5\n",
        "\n",
        " B , Ship , 2 \n",
        ",,\n",
        "C,adjust,-1,damaged in transit\n",
        "A,count,0\n",
    ]
    assert list(parse_events_csv(lines)) == [
        NewEvent("A", Kind.RECEIVE, 5),
        NewEvent("B", Kind.SHIP, 2),
        NewEvent("C", Kind.ADJUST, -1, reason="damaged in transit"),
        NewEvent("A", Kind.COUNT, 0),
    ]


def test_csv_header_is_only_allowed_on_the_first_line() -> None:
    with pytest.raises(InvalidEvent, match="line 2: unknown kind 'kind'"):
        list(parse_events_csv(["A,receive,5\n", "sku,kind,qty\n"]))


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ("B,sell,2", "unknown kind 'sell'"),
        ("B,receive,two", "quantity 'two' is not a whole number"),
        ("B,receive,1.5", "quantity '1.5' is not a whole number"),
        ("B,receive,0", "receive quantity must be greater than 0"),
        ("B,adjust,0", "adjust quantity must not be 0"),
        ("B B,receive,1", "may only contain"),
        (",receive,1", "sku is empty"),
    ],
)
def test_csv_bad_row_names_its_line(bad_row: str, message: str) -> None:
    lines = ["sku,kind,qty\n", "A,receive,5\n", "\n", bad_row + "\n"]
    with pytest.raises(InvalidEvent) as info:
        list(parse_events_csv(lines))
    assert str(info.value).startswith("line 4: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("row", "columns"), [("A,receive", 2), ("A", 1), ("A,receive,1,why,extra", 5)]
)
def test_csv_wrong_column_count_names_its_line(row: str, columns: int) -> None:
    with pytest.raises(InvalidEvent) as info:
        list(parse_events_csv(["A,receive,5\n", row + "\n"]))
    assert str(info.value) == (f"line 2: expected sku,kind,qty[,reason], got {columns} columns")


def test_csv_rows_before_a_bad_one_are_yielded_lazily() -> None:
    rows = parse_events_csv(["A,receive,5\n", "B,receive,x\n"])
    assert next(rows) == NewEvent("A", Kind.RECEIVE, 5)
    with pytest.raises(InvalidEvent, match="line 2"):
        next(rows)


def test_csv_line_numbers_count_lines_inside_quoted_fields() -> None:
    lines = ['A,adjust,-1,"broken\n', 'seal"\n', "B,receive,x\n"]
    with pytest.raises(InvalidEvent, match="line 3"):
        list(parse_events_csv(lines))


@pytest.mark.parametrize(
    "text",
    [
        "sku,kind,qty,reason\nA,receive,5,\nB,ship,2,\nC,adjust,-1,damaged\n",
        "A,receive,5\r\nB,ship,2\r\n",
        "A,receive,5\nB,ship,2",
        "A,receive,5\n\nB,ship,2\n",
        "A,receive,5\n,,\nB,ship,2\n",
        ' A , Ship , 2 \nB,receive,1,"a, b"\n',
        'A,adjust,-1,"broken\nseal"\nB,receive,1\n',
        "A,count,0\nB,receive,1\n",
        "SKU,Kind,Qty\nA,receive,1,why\nB,receive,2\n",
        "A,receive,1\rB,receive,2\r",
        "",
        "sku,kind,qty\n",
    ],
)
def test_reading_a_whole_csv_equals_reading_it_row_by_row(text: str) -> None:
    assert read_csv_entries(text) == list(csv_entries(io.StringIO(text, newline="")))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A,receive,5\nB,receive,two\n", "line 2: quantity 'two'"),
        ("A,receive,5\nB,ship,-2\n", "line 2: ship quantity must be greater than 0"),
        ("A,receive,5\nB,adjust,0\n", "line 2: adjust quantity must not be 0"),
        ("A,receive,5\nB B,receive,1\n", "line 2: sku 'B B' may only contain"),
        ("A,receive,5\nB,receive,1,2,3\n", "line 2: expected sku,kind,qty.,reason., got 5"),
        ("A,receive,5\nB,sell,1\n", "line 2: unknown kind 'sell'"),
        ("A,receive,5\nB,receive,1," + "x" * 201 + "\n", "line 2: reason is longer"),
        ("A,receive,5\nB,receive,1000000001\n", "line 2: quantity 1000000001 is out of range"),
        ("A,receive,5\nB,rec\0eive,1\n", "line 2"),
    ],
)
def test_reading_a_whole_csv_names_the_line_of_a_bad_row(text: str, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        read_csv_entries(text)


# -- pick commands -------------------------------------------------------------


def test_a_pick_is_kept_once_and_closed_by_the_ships_that_name_its_reservation(
    store: AgentStore,
) -> None:
    store.claim("WH-LAX")
    store.record(receive("LIP", 10))
    store.store_pick("cmd-1", "R-1", "LIP", 4, now_ms=1000)
    store.store_pick("cmd-1", "R-1", "LIP", 4, now_ms=2000)  # the hub resent it
    store.store_pick("cmd-2", "R-2", "LIP", 3, now_ms=1500)
    assert [(p["command_id"], p["qty"]) for p in store.open_picks()] == [
        ("cmd-1", 4),
        ("cmd-2", 3),
    ]
    store.record(ship("LIP", 1))  # a walk-in order: no reservation, closes nothing
    store.record(ship("LIP", 3, reservation_id="R-1"))
    assert [(p["command_id"], p["qty"]) for p in store.open_picks()] == [
        ("cmd-1", 1),
        ("cmd-2", 3),
    ]
    store.record(ship("LIP", 1, reservation_id="R-1"))
    assert [p["command_id"] for p in store.open_picks()] == ["cmd-2"]
    assert store.on_hand("LIP") == {"LIP": 5}


def test_a_ship_recorded_before_its_pick_arrived_counts_and_a_cancel_withdraws(
    store: AgentStore,
) -> None:
    store.claim("WH-LAX")
    store.record(receive("LIP", 10))
    store.record(ship("LIP", 2, reservation_id="R-1"))  # the WMS was ahead of the hub
    store.store_pick("cmd-1", "R-1", "LIP", 5)
    assert [p["qty"] for p in store.open_picks()] == [3]
    store.store_pick("cmd-9", "", "", 0, cancels="cmd-1")
    assert store.open_picks() == []
    store.store_pick("cmd-9", "", "", 0, cancels="cmd-1")  # resent withdrawal: no change
    store.store_pick("cmd-1", "R-1", "LIP", 5)  # a late resend of the pick: stays withdrawn
    assert store.open_picks() == []
