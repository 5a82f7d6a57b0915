"""Lossless compaction of the offline buffer (issue 10 finding 11, DESIGN §6).

The property: whatever the events and wherever the agent folds them, the hub
that applies the folded stream ends where the hub that applies the original
stream does — on_hand, the shipments it settles, the watermark — and no
batch is refused or reported as a gap. Then: rows that may be in flight are
never touched, the cap holds, and a real agent and hub agree end to end.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    AGENT,
    HUB,
    HubProcess,
    agent_on_hand,
    hub_on_hand,
    hub_watermark,
    run_cli,
    wait_until,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stocksync import wire
from stocksync.agent.compaction import fold
from stocksync.agent.store import AgentStore
from stocksync.events import EventRow, InvalidEvent, Kind, NewEvent
from stocksync.hub.ledger import ConflictKind, Ledger
from stocksync.hub.stock import StalenessPolicy, StockBook
from stocksync.protocol import Apply, EpochRecord, HelloInfo, HubSession, HubState
from stocksync.tools.procs import AgentChild

WH = "WH-LAX"
EPOCH = "0f9d5b7e-epoch"
POLICY = StalenessPolicy(stale_after_ms=60_000, stale_buffer=0.5, offline_after_ms=300_000)
SKUS = ("A", "B", "C", "D")


def _ids() -> Iterator[str]:
    for n in itertools.count(1):
        yield f"{n:05d}"


class Hub:
    """The hub's real code paths for one warehouse: the protocol core, the
    wire decoding with every check, and the ledger."""

    def __init__(self) -> None:
        self.book = StockBook(POLICY)
        self.ledger = Ledger(self.book, _ids())
        self.session = HubSession(identity=WH, max_batch=5000)
        self.session.on_hello(HelloInfo(WH, EPOCH, 0, 0), known=EpochRecord(0))
        assert self.session.state is HubState.STREAMING

    def send(self, rows: list[EventRow]) -> None:
        request = wire.batch_message(rows)
        batch = type(request.batch).FromString(request.batch.SerializeToString())
        verdict = self.session.on_batch(batch.first_seq, len(batch.events), batch.events[-1].seq)
        assert isinstance(verdict, Apply)
        applied = wire.batch_rows(batch, verdict.skip)
        self.ledger.apply_events(WH, applied, now_ms=1)
        self.session.on_applied(verdict.last_seq)

    def on_hand(self) -> dict[str, int]:
        return {s: self.book.on_hand(s, WH) for s in SKUS if self.book.on_hand(s, WH) != 0}

    def shipments(self) -> list[tuple[str, str, int]]:
        """What the hub tried to settle, by reservation (none exist here, so
        each SHIP with a reservation id is an unknown-reservation conflict)."""
        return sorted(
            (c.reservation_id, c.sku, c.units)
            for c in self.ledger.conflicts.values()
            if c.kind is ConflictKind.UNKNOWN_RESERVATION
        )


def stream(store: AgentStore, hub: Hub, batch: int, upto: int | None = None) -> None:
    """Send the store's rows from the hub's watermark as the agent's link does."""
    high = store.high_seq() if upto is None else upto
    while hub.session.watermark < high:
        first = hub.session.watermark + 1
        rows = store.outbox(first, min(high, first + batch - 1))
        hub.send(rows)


events_strategy = st.lists(
    st.one_of(
        st.builds(
            lambda s, q: NewEvent(s, Kind.RECEIVE, q), st.sampled_from(SKUS), st.integers(1, 50)
        ),
        st.builds(
            lambda s, q: NewEvent(s, Kind.SHIP, q), st.sampled_from(SKUS), st.integers(1, 50)
        ),
        st.builds(
            lambda s, q, r: NewEvent(s, Kind.SHIP, q, reservation_id=f"r-{r}"),
            st.sampled_from(SKUS),
            st.integers(1, 5),
            st.integers(1, 3),
        ),
        st.builds(
            lambda s, q: NewEvent(s, Kind.ADJUST, q),
            st.sampled_from(SKUS),
            st.integers(-30, 30).filter(bool),
        ),
        st.builds(
            lambda s, q, back: NewEvent(s, Kind.COUNT, q, as_of_seq=-back),
            st.sampled_from(SKUS),
            st.integers(0, 80),
            st.integers(0, 6),
        ),
    ),
    min_size=1,
    max_size=60,
)


def record_both(plain: AgentStore, folded: AgentStore, events: list[NewEvent]) -> None:
    """Record each event in both stores (they share seqs); a COUNT's ``-back``
    becomes ``as_of_seq = high - back``. A count the folded store refuses (as
    of a seq inside a fold, as an operator's would be) is recorded in neither."""
    for e in events:
        if e.kind == Kind.COUNT:
            as_of = max(0, folded.high_seq() + (e.as_of_seq or 0))
            e = NewEvent(e.sku, e.kind, e.quantity, as_of_seq=as_of)
        try:
            folded.record(e)
        except InvalidEvent as err:
            assert "compacted" in str(err)
            continue
        plain.record(e)
    assert plain.high_seq() == folded.high_seq()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=events_strategy,
    more=events_strategy,
    sent=st.integers(0, 40),
    batch=st.integers(1, 7),
)
def test_the_hub_ends_the_same_from_the_folded_stream_as_from_the_original(
    tmp_path_factory: pytest.TempPathFactory,
    events: list[NewEvent],
    more: list[NewEvent],
    sent: int,
    batch: int,
) -> None:
    base = tmp_path_factory.mktemp("fold")
    plain, folded = AgentStore(base / "plain.db"), AgentStore(base / "folded.db")
    plain_hub, folded_hub = Hub(), Hub()
    try:
        record_both(plain, folded, events)
        # Some of it went out before the hub became unreachable.
        sent = min(sent, folded.high_seq())
        stream(folded, folded_hub, batch, upto=sent)
        folded.reserve_sent(sent)
        before = folded.events(1, sent)
        folded.compact()
        # More events while offline, counts among them, and a second fold
        # over the first one.
        record_both(plain, folded, more)
        folded.compact()
        assert folded.events(1, sent) == before, "sent rows are never touched"
        stream(plain, plain_hub, batch)
        stream(folded, folded_hub, batch)
        assert folded.on_hand() == plain.on_hand(), "the agent's own books do not move"
        assert folded_hub.on_hand() == plain_hub.on_hand() == _nonzero(plain.on_hand())
        assert folded_hub.shipments() == plain_hub.shipments()
        assert folded_hub.session.watermark == plain_hub.session.watermark == plain.high_seq()
        assert folded.snapshot(folded.high_seq()) == plain.snapshot(plain.high_seq())
    finally:
        plain.close()
        folded.close()


def _nonzero(stock: dict[str, int]) -> dict[str, int]:
    return {s: q for s, q in stock.items() if q != 0}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AgentStore]:
    with AgentStore(tmp_path / "agent.db") as s:
        yield s


def test_a_count_inside_a_run_folds_to_the_right_net(store: AgentStore) -> None:
    store.record_many(
        [
            NewEvent("A", Kind.RECEIVE, 10),  # 1
            NewEvent("A", Kind.SHIP, 3),  # 2
            NewEvent("B", Kind.RECEIVE, 5),  # 3
            NewEvent("A", Kind.COUNT, 4, as_of_seq=1),  # 4: counted 4 at seq 1, the ship survives
            NewEvent("A", Kind.ADJUST, 2),  # 5
        ]
    )
    assert store.on_hand() == {"A": 3, "B": 5}  # 4 - 3 + 2
    result = store.compact()
    assert result is not None
    rows = store.events(1, 5)
    assert [(r.sku, r.kind, r.delta, r.first_seq, r.seq) for r in rows] == [
        ("B", Kind.RECEIVE, 5, 1, 3),
        ("A", Kind.ADJUST, 3, 4, 5),
    ]
    assert store.on_hand() == {"A": 3, "B": 5}
    assert store.snapshot(5) == [("A", 3), ("B", 5)]


def test_reservation_shipments_are_kept_whole(store: AgentStore) -> None:
    store.record_many(
        [
            NewEvent("A", Kind.RECEIVE, 10),
            NewEvent("A", Kind.SHIP, 2, reservation_id="r-1"),
            NewEvent("A", Kind.SHIP, 1),
            NewEvent("A", Kind.SHIP, 3, reservation_id="r-2"),
            NewEvent("A", Kind.RECEIVE, 1),
        ]
    )
    store.compact()
    rows = store.outbox(1, 5)
    ships = [(r.reservation_id, r.quantity, r.kind) for r in rows if r.reservation_id]
    assert ships == [("r-1", 2, Kind.SHIP), ("r-2", 3, Kind.SHIP)]
    assert sum(r.delta for r in rows) == 5
    assert rows[-1].seq == 5 and rows[0].first_seq == 1


def test_moves_that_cancel_out_still_cover_their_seqs(store: AgentStore) -> None:
    store.record_many([NewEvent("A", Kind.RECEIVE, 4), NewEvent("A", Kind.SHIP, 4)] * 3)
    store.compact()
    rows = store.outbox(1, 6)
    assert [(r.kind, r.quantity, r.first_seq, r.seq) for r in rows] == [(Kind.ADJUST, 0, 1, 6)]
    hub = Hub()
    stream(store, hub, 10)
    assert hub.session.watermark == 6 and hub.on_hand() == {}


def test_rows_that_may_be_in_flight_are_never_touched(store: AgentStore) -> None:
    store.record_many([NewEvent(s, Kind.RECEIVE, 1) for s in "ABCD" * 25])
    store.set_acked_seq(20)
    assert store.reserve_sent(60) == 60
    before = store.events(1, 60)
    result = store.compact()
    assert result is not None and result.first_seq == 61
    assert store.events(1, 60) == before, "acknowledged and in-flight rows stay as they were"
    assert [(r.first_seq, r.seq) for r in store.events(61, 100)] == [
        (61, 97),
        (98, 98),
        (99, 99),
        (100, 100),
    ]
    # The horizon is durable: a new connection (a restarted daemon) sees it.
    with AgentStore(store.path) as again:
        assert again.sent_horizon() == 60
        assert again.reserve_sent(70, ahead=100) == 170
    assert store.compact() is None, "nothing past the new horizon to fold"


def test_turning_compaction_on_never_folds_what_was_recorded_before(store: AgentStore) -> None:
    # With the cap at 0 the daemon keeps no sent horizon: any of these may be in flight.
    store.record_many([NewEvent(s, Kind.RECEIVE, 1) for s in "AB" * 50])
    assert store.sent_horizon() == 0
    store.set_max_pending_events(1000)
    assert store.sent_horizon() == 100
    store.record_many([NewEvent(s, Kind.RECEIVE, 1) for s in "AB" * 50])
    before = store.events(1, 100)
    result = store.compact()
    assert result is not None and result.first_seq == 101
    assert store.events(1, 100) == before
    store.set_max_pending_events(2000)  # a cap changed, not turned on: the horizon stays
    assert store.sent_horizon() == 100


def test_a_count_as_of_a_seq_inside_a_fold_is_refused(store: AgentStore) -> None:
    store.record_many([NewEvent("A", Kind.RECEIVE, 1), NewEvent("B", Kind.RECEIVE, 1)] * 5)
    store.compact()
    with pytest.raises(InvalidEvent, match=r"inside seqs 1\.\.10.*compacted"):
        store.record(NewEvent("A", Kind.COUNT, 7, as_of_seq=4))
    store.record(NewEvent("A", Kind.COUNT, 7, as_of_seq=10))
    assert store.on_hand("A") == {"A": 7}


def test_the_cap_holds_while_the_hub_is_out_of_reach(store: AgentStore) -> None:
    store.set_max_pending_events(1000)
    skus = [f"SKU-{i}" for i in range(40)]
    worst = 0
    for i in range(40):
        store.record_many([NewEvent(skus[(i * 7 + j) % 40], Kind.RECEIVE, 1) for j in range(500)])
        worst = max(worst, store.pending_rows())
    assert worst <= 1000
    assert store.high_seq() == 20_000
    assert sum(store.on_hand().values()) == 20_000, "never drops an event"
    stats = store.compaction_stats()
    assert stats["compactions"] >= 10 and stats["events_folded"] >= 15_000
    hub = Hub()
    stream(store, hub, 500)
    assert hub.on_hand() == {}  # SKUS are A-D; check the book directly
    assert sum(hub.book.on_hand(s, WH) for s in skus) == 20_000
    assert hub.session.watermark == 20_000


def test_fold_refuses_rows_that_are_not_one_run() -> None:
    row = EventRow(1, str(uuid.uuid4()), "A", int(Kind.RECEIVE), 1, 1, "", "", 0, 0)
    with pytest.raises(ValueError, match="contiguous"):
        fold([row, row._replace(seq=3)], lambda: "x")


def test_an_offline_agent_within_its_cap_catches_up_with_a_real_hub(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    hub = HubProcess(tmp_path / "hub.db", tmp_path / "hub.log").start()
    try:
        # The daemon sets the cap in the store; recording runs offline.
        with AgentStore(db) as store:
            store.set_max_pending_events(1000)
            for i in range(12):
                store.record_many(
                    [NewEvent(f"SKU-{(i + j) % 30}", Kind.RECEIVE, 2) for j in range(500)]
                    + [NewEvent("SKU-0", Kind.SHIP, 1, reservation_id=f"r-{i}")]
                )
            assert store.pending_rows() <= 1000
            high = store.high_seq()
        status = run_cli(AGENT, "status", "--db", str(db), "--json", check=True)
        info = json.loads(status.stdout)
        assert info["compactions"] > 0 and info["max_pending_events"] == 1000
        assert info["pending_rows"] <= 1000 < info["pending"]
        proc = AgentChild(
            WH,
            db,
            hub.target,
            tmp_path / "agent.log",
            env={"STOCKSYNC_AGENT_MAX_PENDING_EVENTS": "1000"},
        )
        try:
            wait_until(lambda: hub_watermark(hub.db, WH) >= high, 60, "the hub to catch up")
            assert hub_on_hand(hub.db, WH) == agent_on_hand(db)
            with sqlite3.connect(f"file:{hub.db}?mode=ro", uri=True) as conn:
                folded = conn.execute(
                    "SELECT count(*) FROM events WHERE folded_from_seq > 0"
                ).fetchone()[0]
                settled = conn.execute(
                    "SELECT count(*) FROM events WHERE reservation_id != ''"
                ).fetchone()[0]
            assert folded > 0 and settled == 12
            check = run_cli(HUB, "check", "--db", str(hub.db))
            assert check.returncode == 0, check.stdout + check.stderr
        finally:
            proc.stop()
    finally:
        hub.kill()


def test_the_daemon_counts_compactions_in_its_metrics(tmp_path: Path) -> None:
    from metrics_scrape import Scrape

    db = tmp_path / "agent.db"
    AgentStore(db).close()
    agent = AgentChild(
        WH,
        db,
        "127.0.0.1:9",  # nothing listens there: the agent is offline
        tmp_path / "agent.log",
        extra=("--metrics", "127.0.0.1:0"),
        env={
            "STOCKSYNC_AGENT_MAX_PENDING_EVENTS": "1000",
            "STOCKSYNC_AGENT_BACKOFF_INITIAL_S": "0.05",
            "STOCKSYNC_AGENT_BACKOFF_MAX_S": "0.2",
        },
    )
    try:
        with AgentStore(db) as store:
            wait_until(lambda: store.max_pending_events() == 1000, 30, "the cap in the store")
            for i in range(6):  # recorded by this process, counted by the daemon
                store.record_many(
                    [NewEvent(f"SKU-{(i + j) % 20}", Kind.RECEIVE, 1) for j in range(500)]
                )
            stats = store.compaction_stats()
        assert stats["compactions"] >= 2
        address = wait_until(lambda: agent.status().get("metrics"), 30, "agent metrics")

        def counted() -> Scrape | None:
            s = Scrape(f"http://{address}/metrics")
            done = s.get("stocksync_agent_compactions_total", warehouse=WH)
            return s if done >= stats["compactions"] else None

        scrape = wait_until(counted, 30, "the compactions counted")
        assert (
            scrape.get("stocksync_agent_events_folded_total", warehouse=WH)
            == (stats["events_folded"])
        )
    finally:
        agent.stop()
