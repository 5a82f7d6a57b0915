"""The sans-IO sync protocol of DESIGN §6 (stocksync/protocol.py), without any I/O.

The unit tests walk each rule once; ``test_lossy_link_applies_every_seq_exactly_once``
drives an agent and a hub over a channel that drops and duplicates messages and
breaks the stream, and checks invariants 1 and 3 of DESIGN §11.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from stocksync.errors import Status, StocksyncError
from stocksync.protocol import (
    AGENT_ACCEPTS,
    HUB_ACCEPTS,
    PROTOCOL_VERSION,
    AgentSession,
    AgentState,
    Apply,
    Duplicate,
    EpochRecord,
    EpochRetired,
    HelloInfo,
    HubSession,
    HubState,
    MalformedMessage,
    ProtocolError,
    SeqGap,
    StoreBehindHub,
    UnexpectedMessage,
    UnsupportedVersion,
    WelcomeInfo,
    WrongWarehouse,
)

WH = "WH-LAX"
EPOCH = "0b7c6f9e-epoch-1"

_M = TypeVar("_M")


def hello_for(high_seq: int = 0, acked_seq: int = 0, **overrides: object) -> HelloInfo:
    """A Hello from WH-LAX in EPOCH, with fields overridden as given."""
    fields: dict[str, object] = {
        "warehouse": WH,
        "epoch": EPOCH,
        "high_seq": high_seq,
        "acked_seq": acked_seq,
    }
    fields.update(overrides)
    return HelloInfo(**fields)  # type: ignore[arg-type]


def connect(
    agent: AgentSession,
    hub: HubSession,
    high_seq: int,
    known_watermark: int | None,
    acked_seq: int = 0,
) -> WelcomeInfo:
    """Run the handshake between ``agent`` and ``hub``; returns the Welcome."""
    hello = agent.hello(WH, EPOCH, high_seq, acked_seq)
    known = None if known_watermark is None else EpochRecord(known_watermark)
    welcome = hub.on_hello(hello, known)
    agent.on_welcome(welcome, acked_seq)
    return welcome


def streaming_hub(watermark: int, max_batch: int = 5000) -> HubSession:
    """A hub session past the handshake, holding ``watermark``."""
    hub = HubSession(identity=WH, max_batch=max_batch)
    hub.on_hello(hello_for(high_seq=watermark), known=EpochRecord(watermark))
    assert hub.state is HubState.STREAMING
    return hub


def streaming_agent(
    high_seq: int, watermark: int = 0, window: int = 100, max_batch: int = 10
) -> AgentSession:
    """An agent session welcomed at ``watermark``."""
    agent = AgentSession(window=window, max_batch=max_batch)
    agent.hello(WH, EPOCH, high_seq, acked_seq=0)
    agent.on_welcome(WelcomeInfo(watermark=watermark, snapshot_required=False), acked_seq=0)
    assert agent.state is AgentState.STREAMING
    return agent


def send_next(agent: AgentSession, high_seq: int, now: float = 0.0) -> tuple[int, int] | None:
    """Ask for the next batch and, if there is one, mark it sent."""
    rng = agent.next_batch(high_seq, now)
    if rng is not None:
        agent.on_sent(*rng)
    return rng


# -- handshake ----------------------------------------------------------------


def test_handshake_goes_from_hello_to_welcome_to_streaming() -> None:
    agent = AgentSession(window=50, max_batch=10)
    hub = HubSession(identity=WH)
    assert (agent.state, hub.state) == (AgentState.CLOSED, HubState.AWAITING_HELLO)

    hello = agent.hello(WH, EPOCH, high_seq=7, acked_seq=3)
    assert (hello, agent.state) == (
        HelloInfo(WH, EPOCH, 7, 3, PROTOCOL_VERSION),
        AgentState.CONNECTING,
    )
    assert agent.next_batch(7) is None, "nothing may be sent before the Welcome"

    welcome = hub.on_hello(hello, known=EpochRecord(3))
    assert welcome == WelcomeInfo(watermark=3, snapshot_required=False, max_batch_events=5000)
    assert (hub.state, hub.warehouse, hub.epoch, hub.watermark) == (
        HubState.STREAMING,
        WH,
        EPOCH,
        3,
    )
    assert hub.lag_events == 4

    agent.on_welcome(welcome, acked_seq=3)
    assert agent.state is AgentState.STREAMING
    assert (agent.acked, agent.sent) == (3, 3)
    assert agent.next_batch(7) == (4, 7)


def test_hub_without_identity_accepts_any_warehouse() -> None:
    hub = HubSession(identity=None)
    welcome = hub.on_hello(hello_for(warehouse="WH-FRA"), known=EpochRecord(0))
    assert welcome.snapshot_required is False
    assert hub.warehouse == "WH-FRA"


def test_identity_mismatch_is_wrong_warehouse() -> None:
    hub = HubSession(identity=WH)
    with pytest.raises(WrongWarehouse, match="WH-FRA"):
        hub.on_hello(hello_for(warehouse="WH-FRA"), known=EpochRecord(0))
    assert hub.state is HubState.AWAITING_HELLO


def test_protocol_version_mismatch_is_refused() -> None:
    hub = HubSession(identity=WH)
    with pytest.raises(UnsupportedVersion, match=f"protocol version {PROTOCOL_VERSION + 1}"):
        hub.on_hello(hello_for(protocol_version=PROTOCOL_VERSION + 1), known=EpochRecord(0))
    assert hub.state is HubState.AWAITING_HELLO


def test_protocol_version_must_be_set() -> None:
    hub = HubSession(identity=WH)
    with pytest.raises(MalformedMessage, match="must set protocol_version"):
        hub.on_hello(hello_for(protocol_version=0), known=EpochRecord(0))
    assert hub.state is HubState.AWAITING_HELLO


def test_hello_without_epoch_is_refused() -> None:
    with pytest.raises(ProtocolError, match="epoch"):
        HubSession().on_hello(hello_for(epoch=""), known=EpochRecord(0))


def test_second_hello_on_one_stream_is_refused() -> None:
    hub = streaming_hub(watermark=5)
    with pytest.raises(UnexpectedMessage, match="hello is not allowed while streaming"):
        hub.on_hello(hello_for(high_seq=5), known=EpochRecord(5))
    assert hub.watermark == 5


def test_welcome_outside_connecting_is_refused() -> None:
    agent = AgentSession(window=10, max_batch=5)
    with pytest.raises(UnexpectedMessage, match="welcome while closed"):
        agent.on_welcome(WelcomeInfo(0, False), acked_seq=0)
    agent = streaming_agent(high_seq=5)
    with pytest.raises(UnexpectedMessage, match="welcome while streaming"):
        agent.on_welcome(WelcomeInfo(0, False), acked_seq=0)


def test_welcome_watermark_beyond_agent_high_seq_raises() -> None:
    agent = AgentSession(window=10, max_batch=5)
    agent.hello(WH, EPOCH, high_seq=5, acked_seq=5)
    with pytest.raises(StoreBehindHub, match=r"seq 6 .* only reaches 5"):
        agent.on_welcome(WelcomeInfo(watermark=6, snapshot_required=False), acked_seq=5)
    assert agent.state is AgentState.CLOSED
    assert agent.next_batch(10) is None


def test_welcome_watermark_equal_to_high_seq_is_fine() -> None:
    agent = AgentSession(window=10, max_batch=5)
    agent.hello(WH, EPOCH, high_seq=5, acked_seq=0)
    agent.on_welcome(WelcomeInfo(watermark=5, snapshot_required=False), acked_seq=0)
    assert agent.state is AgentState.STREAMING
    assert agent.next_batch(5) is None
    assert agent.next_batch(6) == (6, 6)


@pytest.mark.parametrize(("window", "max_batch"), [(10, 0), (4, 5)])
def test_agent_session_refuses_bad_sizes(window: int, max_batch: int) -> None:
    with pytest.raises(ValueError):
        AgentSession(window=window, max_batch=max_batch)


def test_agent_session_refuses_negative_linger() -> None:
    with pytest.raises(ValueError, match="linger"):
        AgentSession(window=10, max_batch=5, linger=-0.1)


# -- hub: classifying batches --------------------------------------------------


def test_contiguous_batch_is_applied_whole() -> None:
    hub = streaming_hub(watermark=10)
    assert hub.on_batch(11, 5) == Apply(skip=0, last_seq=15)
    assert hub.on_applied(15) == 15
    assert hub.watermark == 15


@pytest.mark.parametrize(("first", "count"), [(1, 10), (3, 5), (10, 1), (1, 1)])
def test_duplicate_batch_is_reacked_and_ignored(first: int, count: int) -> None:
    hub = streaming_hub(watermark=10)
    assert hub.on_batch(first, count) == Duplicate(ack_seq=10)
    assert hub.watermark == 10


@pytest.mark.parametrize(
    ("first", "count", "skip", "last"), [(8, 5, 3, 12), (1, 11, 10, 11), (10, 2, 1, 11)]
)
def test_partially_overlapping_batch_applies_only_the_new_tail(
    first: int, count: int, skip: int, last: int
) -> None:
    hub = streaming_hub(watermark=10)
    assert hub.on_batch(first, count) == Apply(skip=skip, last_seq=last)
    hub.on_applied(last)
    assert hub.watermark == last


def test_gap_names_expected_got_and_resume_point() -> None:
    hub = streaming_hub(watermark=10)
    with pytest.raises(SeqGap) as caught:
        hub.on_batch(13, 2)
    gap = caught.value
    assert (gap.expected, gap.got, gap.status) == (11, 13, Status.FAILED_PRECONDITION)
    assert "expected seq 11" in gap.detail
    assert "got 13" in gap.detail
    assert "resume from seq 11" in gap.detail
    assert gap.trailers() == (("resume-from-seq", "11"),)
    assert hub.watermark == 10


def test_batch_before_hello_is_refused() -> None:
    with pytest.raises(UnexpectedMessage, match="first message must be Hello, not batch"):
        HubSession().on_batch(1, 1)


def test_batch_before_requested_snapshot_is_refused() -> None:
    hub = HubSession(identity=WH)
    assert hub.on_hello(hello_for(high_seq=3), known=None).snapshot_required
    with pytest.raises(ProtocolError, match="snapshot"):
        hub.on_batch(1, 3)
    assert hub.state is HubState.AWAITING_SNAPSHOT


@pytest.mark.parametrize("count", [0, -1])
def test_empty_batch_is_refused(count: int) -> None:
    with pytest.raises(ProtocolError, match="empty"):
        streaming_hub(watermark=0).on_batch(1, count)


def test_oversized_batch_is_refused_and_the_limit_itself_is_fine() -> None:
    hub = streaming_hub(watermark=0, max_batch=5)
    with pytest.raises(ProtocolError, match="6 events exceeds the limit of 5"):
        hub.on_batch(1, 6)
    assert hub.on_batch(1, 5) == Apply(skip=0, last_seq=5)


def test_batch_starting_below_seq_1_is_refused() -> None:
    with pytest.raises(ProtocolError, match="start at 1"):
        streaming_hub(watermark=0).on_batch(0, 3)


def test_watermark_moves_only_to_the_end_of_the_batch_being_applied() -> None:
    hub = streaming_hub(watermark=10)
    for seq in (10, 9, 15):  # backwards, or with no Apply verdict at all
        with pytest.raises(StocksyncError, match="being applied"):
            hub.on_applied(seq)
    assert hub.on_batch(11, 5) == Apply(skip=0, last_seq=15)
    with pytest.raises(StocksyncError, match="being applied end at 15"):
        hub.on_applied(14)
    assert hub.watermark == 10
    assert hub.on_applied(15) == 15


def test_hub_tracks_agent_lag_from_hello_batches_and_pings() -> None:
    hub = HubSession(identity=WH)
    hub.on_hello(hello_for(high_seq=20), known=EpochRecord(5))
    assert hub.lag_events == 15
    hub.on_backlog(30)
    hub.on_backlog(25)  # an older ping never lowers what the agent is known to have
    assert hub.lag_events == 25
    assert hub.on_batch(6, 25) == Apply(skip=0, last_seq=30)
    hub.on_applied(30)
    assert hub.lag_events == 0


# -- agent: batches and the window ------------------------------------------


def test_max_batch_is_respected() -> None:
    agent = streaming_agent(high_seq=20, window=100, max_batch=7)
    assert [send_next(agent, 20) for _ in range(4)] == [(1, 7), (8, 14), (15, 20), None]


def test_full_window_stops_sending_until_an_ack() -> None:
    agent = streaming_agent(high_seq=100, window=10, max_batch=4)
    assert send_next(agent, 100) == (1, 4)
    assert send_next(agent, 100) == (5, 8)
    assert send_next(agent, 100) == (9, 10)  # only 2 slots of the window were left
    assert agent.in_flight == 10
    assert agent.next_batch(100) is None

    assert agent.on_ack(4) == 4
    assert agent.in_flight == 6
    assert send_next(agent, 100) == (11, 14)
    assert agent.next_batch(100) is None


def test_nothing_to_send_when_everything_recorded_is_in_flight() -> None:
    agent = streaming_agent(high_seq=3)
    assert send_next(agent, 3) == (1, 3)
    assert agent.next_batch(3) is None
    assert send_next(agent, 5) == (4, 5)


def test_ack_of_unsent_seqs_raises() -> None:
    agent = streaming_agent(high_seq=20, max_batch=8)
    send_next(agent, 20)
    with pytest.raises(ProtocolError, match="acknowledged seq 9 but only 8 was sent"):
        agent.on_ack(9)
    assert agent.acked == 0


def test_repeated_and_older_acks_cover_nothing() -> None:
    agent = streaming_agent(high_seq=20, max_batch=8)
    send_next(agent, 20)
    send_next(agent, 20)
    assert agent.on_ack(8) == 8
    assert agent.on_ack(8) == 0
    assert agent.on_ack(3) == 0
    assert agent.acked == 8
    assert agent.on_ack(16) == 8


def test_ack_before_welcome_is_refused() -> None:
    agent = AgentSession(window=10, max_batch=5)
    agent.hello(WH, EPOCH, high_seq=5, acked_seq=0)
    with pytest.raises(ProtocolError, match="connecting"):
        agent.on_ack(0)


def test_sent_range_must_continue_the_stream() -> None:
    agent = streaming_agent(high_seq=20)
    with pytest.raises(StocksyncError, match="stream is at 0"):
        agent.on_sent(2, 5)
    with pytest.raises(StocksyncError, match="stream is at 0"):
        agent.on_sent(1, 0)
    agent.on_sent(1, 5)
    assert agent.sent == 5


def test_with_nothing_in_flight_a_partial_batch_goes_at_once() -> None:
    agent = AgentSession(window=100, max_batch=10, linger=0.5)
    agent.hello(WH, EPOCH, high_seq=0, acked_seq=0)
    agent.on_welcome(WelcomeInfo(0, False), acked_seq=0)
    assert agent.next_batch(1, now=100.0) == (1, 1), "lingering would only add latency"
    assert agent.send_at is None


def test_linger_holds_a_partial_batch_while_one_is_in_flight() -> None:
    agent = AgentSession(window=100, max_batch=10, linger=0.5)
    agent.hello(WH, EPOCH, high_seq=3, acked_seq=0)
    agent.on_welcome(WelcomeInfo(0, False), acked_seq=0)
    assert send_next(agent, 3, now=100.0) == (1, 3)
    assert agent.next_batch(4, now=100.0) is None, "one is in flight; more may come"
    assert agent.send_at == pytest.approx(100.5)
    assert agent.next_batch(5, now=100.4) is None
    assert agent.send_at == pytest.approx(100.5), "the first waiting event started the clock"
    assert agent.next_batch(5, now=100.5) == (4, 5)
    agent.on_sent(4, 5)
    assert agent.send_at is None
    agent.on_ack(5)
    assert agent.next_batch(6, now=100.6) == (6, 6), "nothing in flight again"


def test_an_ack_releases_a_lingering_batch_before_it_is_due() -> None:
    agent = AgentSession(window=100, max_batch=10, linger=5.0)
    agent.hello(WH, EPOCH, high_seq=2, acked_seq=0)
    agent.on_welcome(WelcomeInfo(0, False), acked_seq=0)
    assert send_next(agent, 2, now=1.0) == (1, 2)
    assert agent.next_batch(3, now=1.0) is None
    agent.on_ack(2)
    assert agent.next_batch(3, now=1.1) == (3, 3)


def test_linger_sends_a_full_batch_at_once() -> None:
    agent = AgentSession(window=100, max_batch=10, linger=5.0)
    agent.hello(WH, EPOCH, high_seq=1, acked_seq=0)
    agent.on_welcome(WelcomeInfo(0, False), acked_seq=0)
    assert send_next(agent, 1, now=1.0) == (1, 1)
    assert agent.next_batch(4, now=1.0) is None
    assert agent.next_batch(11, now=1.1) == (2, 11)
    agent.on_sent(2, 11)
    assert agent.send_at is None


def test_linger_does_not_hold_a_batch_the_window_cut_short() -> None:
    # 30 events wait; only 5 fit in the window. Lingering cannot fill the
    # batch (the backlog is there already), so it goes out now.
    agent = AgentSession(window=15, max_batch=10, linger=5.0)
    agent.hello(WH, EPOCH, high_seq=40, acked_seq=0)
    agent.on_welcome(WelcomeInfo(0, False), acked_seq=0)
    assert send_next(agent, 40, now=1.0) == (1, 10)
    assert send_next(agent, 40, now=1.0) == (11, 15)


# -- reconnecting, snapshots, epochs ---------------------------------------


def test_lost_ack_then_resume_from_the_hub_watermark() -> None:
    hub_watermark: int | None = 0  # the hub's stored watermark for (WH, EPOCH)
    agent = AgentSession(window=100, max_batch=10)
    hub = HubSession(identity=WH)
    connect(agent, hub, high_seq=10, known_watermark=hub_watermark)

    assert send_next(agent, 10) == (1, 10)
    verdict = hub.on_batch(1, 10)
    assert verdict == Apply(skip=0, last_seq=10)
    hub_watermark = hub.on_applied(10)
    # ... the Ack(10) is lost with the stream; the agent never saw it.
    agent.close()
    assert agent.state is AgentState.CLOSED
    assert agent.next_batch(15) is None

    hub = HubSession(identity=WH)
    hello = agent.hello(WH, EPOCH, high_seq=15, acked_seq=0)
    assert hello.acked_seq == 0
    welcome = hub.on_hello(hello, EpochRecord(hub_watermark))
    assert welcome == WelcomeInfo(watermark=10, snapshot_required=False, max_batch_events=5000)
    agent.on_welcome(welcome, acked_seq=0)
    assert agent.acked == 10, "the Welcome watermark acknowledges what the lost ack covered"
    assert send_next(agent, 15) == (11, 15)
    assert hub.on_batch(11, 5) == Apply(skip=0, last_seq=15)


def test_resending_after_reconnect_overlaps_and_is_trimmed() -> None:
    # The agent's old stream sent 1..10 and the hub applied 1..6 before the
    # break; a stale batch 1..10 still in a buffer reaches the new stream.
    hub = HubSession(identity=WH)
    hub.on_hello(hello_for(high_seq=10), known=EpochRecord(6))
    assert hub.on_batch(1, 10) == Apply(skip=6, last_seq=10)


def test_unknown_epoch_requires_a_snapshot_before_any_batch() -> None:
    agent = AgentSession(window=100, max_batch=10)
    hub = HubSession(identity=WH)
    hello = agent.hello(WH, "new-epoch", high_seq=30, acked_seq=20)
    welcome = hub.on_hello(hello, known=None)
    assert welcome == WelcomeInfo(watermark=0, snapshot_required=True, max_batch_events=5000)
    assert hub.state is HubState.AWAITING_SNAPSHOT

    agent.on_welcome(welcome, acked_seq=20)
    assert (agent.state, agent.snapshot_as_of) == (AgentState.SNAPSHOT, 20)
    assert agent.next_batch(30) is None, "no batch until the snapshot is acknowledged"

    agent.on_snapshot_sent()
    assert agent.next_batch(30) is None
    assert hub.on_snapshot_chunk(20, [("SKU-A", 4)], last=False) is None
    assert hub.on_snapshot_chunk(20, [("SKU-B", -1)], last=True) == [("SKU-A", 4), ("SKU-B", -1)]
    ack = hub.on_snapshot_applied(20)
    assert (ack, hub.state, hub.watermark) == (20, HubState.STREAMING, 20)

    assert agent.on_ack(ack) == 0
    assert agent.state is AgentState.STREAMING
    assert send_next(agent, 30) == (21, 30)
    assert hub.on_batch(21, 10) == Apply(skip=0, last_seq=30)


def test_snapshot_ack_at_another_seq_is_refused() -> None:
    agent = AgentSession(window=100, max_batch=10)
    agent.hello(WH, "new-epoch", high_seq=30, acked_seq=20)
    agent.on_welcome(WelcomeInfo(watermark=0, snapshot_required=True), acked_seq=20)
    agent.on_snapshot_sent()
    for wrong in (0, 19, 21):
        with pytest.raises(ProtocolError, match="snapshot as of 20"):
            agent.on_ack(wrong)
    assert agent.state is AgentState.SNAPSHOT


def test_snapshot_ack_before_the_snapshot_was_sent_is_refused() -> None:
    agent = AgentSession(window=100, max_batch=10)
    agent.hello(WH, "new-epoch", high_seq=30, acked_seq=20)
    agent.on_welcome(WelcomeInfo(watermark=0, snapshot_required=True), acked_seq=20)
    with pytest.raises(ProtocolError):
        agent.on_ack(20)


def test_snapshot_sent_without_a_request_is_refused() -> None:
    with pytest.raises(ProtocolError, match="no snapshot"):
        streaming_agent(high_seq=5).on_snapshot_sent()


def test_snapshot_request_mid_stream_stops_batches_then_resumes_after_it() -> None:
    agent = streaming_agent(high_seq=50, window=100, max_batch=10)
    send_next(agent, 50)
    send_next(agent, 50)
    agent.on_ack(10)
    agent.on_snapshot_request(acked_seq=10)
    assert agent.state is AgentState.SNAPSHOT
    assert agent.next_batch(50) is None
    agent.on_snapshot_sent()
    agent.on_ack(10)
    assert send_next(agent, 50) == (11, 20), "what was in flight is sent again"


def test_snapshot_unasked_or_past_agent_high_seq_is_refused() -> None:
    with pytest.raises(UnexpectedMessage, match="must be Hello"):
        HubSession().on_snapshot_chunk(0, [], last=True)  # before Hello
    streaming = streaming_hub(watermark=8)
    with pytest.raises(UnexpectedMessage, match="snapshot is not allowed while streaming"):
        streaming.on_snapshot_chunk(4, [], last=True)  # mid-stream: would move the watermark back
    assert streaming.watermark == 8
    hub = HubSession(identity=WH)
    hub.on_hello(hello_for(high_seq=30), known=None)
    with pytest.raises(MalformedMessage, match="past the agent's high seq 30"):
        hub.on_snapshot_chunk(31, [], last=True)
    assert hub.state is HubState.AWAITING_SNAPSHOT
    assert hub.on_snapshot_chunk(30, [], last=True) == []


@pytest.mark.parametrize(
    ("chunks", "fragment"),
    [
        ([[("SKU-A", 1), ("SKU-A", 2)]], "appears twice"),
        ([[("SKU-A", 1)], [("SKU-A", 2)]], "appears twice"),
        ([[("bad sku", 1)]], "sku"),
        ([[("SKU-A", 10**16)]], "out of range"),
    ],
)
def test_bad_snapshot_is_refused(chunks: list[list[tuple[str, int]]], fragment: str) -> None:
    hub = HubSession(identity=WH, max_snapshot_skus=3)
    hub.on_hello(hello_for(high_seq=5), known=None)
    with pytest.raises(MalformedMessage, match=fragment):
        for i, chunk in enumerate(chunks):
            hub.on_snapshot_chunk(5, chunk, last=i == len(chunks) - 1)


def test_snapshot_chunks_must_agree_and_stay_under_the_limit() -> None:
    hub = HubSession(identity=WH, max_snapshot_skus=3)
    hub.on_hello(hello_for(high_seq=5), known=None)
    hub.on_snapshot_chunk(5, [("A", 1)], last=False)
    with pytest.raises(MalformedMessage, match="as of seq 4 in a snapshot as of 5"):
        hub.on_snapshot_chunk(4, [("B", 1)], last=False)
    hub.on_snapshot_chunk(5, [("B", 1), ("C", 1)], last=False)
    with pytest.raises(MalformedMessage, match="more than 3 SKUs"):
        hub.on_snapshot_chunk(5, [("D", 1)], last=True)


@pytest.mark.parametrize(
    ("overrides", "error", "fragment"),
    [
        ({"warehouse": "WH LAX!"}, MalformedMessage, "warehouse id"),
        ({"warehouse": ""}, MalformedMessage, "warehouse id"),
        ({"epoch": ""}, MalformedMessage, "no epoch"),
        ({"epoch": "e" * 65}, MalformedMessage, "1-64"),
        ({"epoch": "epoch with spaces"}, MalformedMessage, "1-64"),
        ({"high_seq": 3, "acked_seq": 4}, MalformedMessage, "past its high_seq"),
    ],
)
def test_bad_hello_fields_are_refused(
    overrides: dict[str, object], error: type[Exception], fragment: str
) -> None:
    hub = HubSession(identity=None)
    with pytest.raises(error, match=fragment):
        hub.on_hello(hello_for(**overrides), known=None)
    assert hub.state is HubState.AWAITING_HELLO


def test_retired_epoch_is_refused_in_the_core() -> None:
    hub = HubSession(identity=WH)
    with pytest.raises(EpochRetired, match="replaced by a newer store"):
        hub.on_hello(hello_for(high_seq=5), known=EpochRecord(5, current=False))
    assert hub.state is HubState.AWAITING_HELLO


def test_every_violation_carries_one_status() -> None:
    expected = {
        MalformedMessage: Status.INVALID_ARGUMENT,
        UnexpectedMessage: Status.INVALID_ARGUMENT,
        UnsupportedVersion: Status.FAILED_PRECONDITION,
        WrongWarehouse: Status.PERMISSION_DENIED,
        EpochRetired: Status.FAILED_PRECONDITION,
        SeqGap: Status.FAILED_PRECONDITION,
        StoreBehindHub: Status.FAILED_PRECONDITION,
    }
    for cls, status in expected.items():
        assert cls.status is status, cls
        assert issubclass(cls, ProtocolError)


@pytest.mark.parametrize("state", list(HubState))
@pytest.mark.parametrize("kind", ["hello", "batch", "snapshot", "ping", "command_ack", None])
def test_hub_states_accept_exactly_their_table(state: HubState, kind: str | None) -> None:
    hub = HubSession()
    hub.state = state
    if kind in HUB_ACCEPTS[state]:
        hub.receive(kind)
    else:
        with pytest.raises(UnexpectedMessage):
            hub.receive(kind)


@pytest.mark.parametrize("state", list(AgentState))
@pytest.mark.parametrize(
    "kind", ["welcome", "ack", "ping", "snapshot_request", "pick", "cancel_pick", "goodbye", None]
)
def test_agent_states_accept_exactly_their_table(state: AgentState, kind: str | None) -> None:
    agent = AgentSession(window=10, max_batch=5)
    agent.state = state
    if kind in AGENT_ACCEPTS[state]:
        agent.receive(kind)
    else:
        with pytest.raises(UnexpectedMessage):
            agent.receive(kind)


# -- batch size: the two ends agree ------------------------------------------


@pytest.mark.parametrize(
    ("ours", "hubs", "limit"), [(1000, 100, 100), (100, 1000, 100), (50, 0, 50)]
)
def test_batch_size_is_the_smaller_of_the_two_limits(ours: int, hubs: int, limit: int) -> None:
    agent = AgentSession(window=5000, max_batch=ours)
    agent.hello(WH, EPOCH, high_seq=500, acked_seq=0)
    agent.on_welcome(WelcomeInfo(0, False, max_batch_events=hubs), acked_seq=0)
    assert agent.batch_limit == limit
    hub = HubSession(identity=WH, max_batch=hubs or 5000)
    hub.on_hello(hello_for(high_seq=500), known=EpochRecord(0))
    sent = 0
    while (rng := send_next(agent, 500)) is not None:
        assert rng[1] - rng[0] + 1 <= limit
        assert isinstance(hub.on_batch(rng[0], rng[1] - rng[0] + 1), Apply)
        sent = rng[1]
    assert sent == 500


def test_a_new_stream_starts_from_the_configured_batch_size() -> None:
    agent = AgentSession(window=5000, max_batch=1000)
    agent.hello(WH, EPOCH, high_seq=10, acked_seq=0)
    agent.on_welcome(WelcomeInfo(0, False, max_batch_events=10), acked_seq=0)
    assert agent.batch_limit == 10
    agent.close()
    agent.hello(WH, EPOCH, high_seq=10, acked_seq=0)
    assert agent.batch_limit == 1000


# -- property: a lossy link never loses or repeats an event ------------------


@dataclass
class Simulation:
    """One agent and a hub whose stream drops, repeats and breaks.

    The hub's durable books are ``watermarks`` and ``applied``; they outlive
    every stream, as the hub's database does. ``to_hub`` and ``to_agent`` are
    the two directions of the current stream.
    """

    rng: random.Random
    agent: AgentSession
    drop: float
    dup: float
    high: int = 0
    agent_acked: int = 0
    now: float = 0.0
    hub: HubSession | None = None
    watermarks: dict[str, int] = field(default_factory=dict)
    applied: list[int] = field(default_factory=list)
    to_hub: deque[tuple[str, int, int]] = field(default_factory=deque)
    to_agent: deque[int] = field(default_factory=deque)
    late_to_hub: list[tuple[str, int, int]] = field(default_factory=list)
    late_to_agent: list[int] = field(default_factory=list)
    gaps: int = 0

    def transmit_to_hub(self, message: tuple[str, int, int], lossy: bool) -> None:
        """Queue a message to the hub, maybe dropping it or repeating it late.

        A snapshot is never repeated: a hub takes a snapshot mid-stream as a
        new base (it may have asked for one), so a stale copy is not a
        duplicate the protocol could recognise.
        """
        repeat = message[0] != "snapshot"
        self.to_hub.extend(self._lossy(message, self.late_to_hub, lossy, repeat))

    def transmit_to_agent(self, ack: int, lossy: bool) -> None:
        """Queue an ack to the agent, maybe dropping it or repeating it late."""
        self.to_agent.extend(self._lossy(ack, self.late_to_agent, lossy))

    def _lossy(self, message: _M, late: list[_M], lossy: bool, repeat: bool = True) -> list[_M]:
        """What reaches the queue: nothing, the message, and maybe older copies.

        A repeated message may arrive straight after itself or behind later
        ones, so duplicates also come out of order.
        """
        if not lossy:
            return [message]
        out = [] if self.rng.random() < self.drop else [message]
        if out and repeat and self.rng.random() < self.dup:
            late.append(message)
        if late and self.rng.random() < 0.5:
            out.append(late.pop(0))
        return out

    def connect(self, lossy: bool) -> None:
        """Open a stream: Hello, Welcome and, if asked, a snapshot."""
        self.hub = HubSession(identity=WH, max_batch=self.agent.max_batch)
        hello = self.agent.hello(WH, EPOCH, self.high, self.agent_acked)
        known = self.watermarks.get(EPOCH)
        welcome = self.hub.on_hello(hello, None if known is None else EpochRecord(known))
        self.agent.on_welcome(welcome, self.agent_acked)
        # The Welcome watermark is durable at the hub: the agent saves it too.
        self.agent_acked = max(self.agent_acked, self.agent.acked)
        if self.agent.state is AgentState.SNAPSHOT:
            self.transmit_to_hub(("snapshot", self.agent.snapshot_as_of, 0), lossy)
            self.agent.on_snapshot_sent()

    def disconnect(self) -> None:
        """The stream breaks; whatever was on the wire is gone."""
        self.agent.close()
        self.hub = None
        for queue in (self.to_hub, self.to_agent, self.late_to_hub, self.late_to_agent):
            queue.clear()

    def send(self, lossy: bool) -> None:
        """Let the agent send one batch if it may."""
        rng = self.agent.next_batch(self.high, self.now)
        if rng is not None:
            assert rng[1] - rng[0] + 1 <= self.agent.max_batch
            assert rng[1] - self.agent.acked <= self.agent.window
            self.agent.on_sent(*rng)
            self.transmit_to_hub(("batch", *rng), lossy)

    def deliver_to_hub(self, lossy: bool) -> None:
        """The hub takes the next message; a gap ends the stream."""
        assert self.hub is not None
        kind, a, b = self.to_hub.popleft()
        if kind == "snapshot":
            # A new epoch is only ever seen at the first connection here, so
            # the snapshot is of nothing: it must not claim any seq.
            assert a == len(self.applied) == 0
            assert self.hub.on_snapshot_chunk(a, [], last=True) == []
            self.watermarks[EPOCH] = self.hub.on_snapshot_applied(a)
            self.transmit_to_agent(a, lossy)
            return
        try:
            verdict = self.hub.on_batch(a, b - a + 1)
        except SeqGap as gap:
            assert gap.expected == self.watermarks[EPOCH] + 1
            assert gap.got > gap.expected
            self.gaps += 1
            self.disconnect()
            return
        if isinstance(verdict, Duplicate):
            assert b <= verdict.ack_seq == self.watermarks[EPOCH]
            self.transmit_to_agent(verdict.ack_seq, lossy)
        else:
            for seq in range(a + verdict.skip, verdict.last_seq + 1):
                assert seq == len(self.applied) + 1, f"applied {seq} after {len(self.applied)}"
                self.applied.append(seq)
            self.watermarks[EPOCH] = self.hub.on_applied(verdict.last_seq)
            self.transmit_to_agent(verdict.last_seq, lossy)

    def deliver_to_agent(self) -> None:
        """The agent takes the next ack and saves it, as its store would."""
        ack = self.to_agent.popleft()
        assert ack <= self.watermarks[EPOCH], "acked a seq the hub does not hold"
        self.agent.on_ack(ack)
        self.agent_acked = max(self.agent_acked, self.agent.acked)

    def step(self, lossy: bool) -> None:
        """One random thing happens."""
        self.now += self.rng.random()
        if self.hub is None:
            self.connect(lossy)
            return
        choice = self.rng.random()
        if lossy and choice < 0.03:
            self.disconnect()
        elif lossy and choice < 0.25:
            self.high += self.rng.randint(1, 6)
        elif choice < 0.5:
            self.send(lossy)
        elif choice < 0.75 and self.to_hub:
            self.deliver_to_hub(lossy)
        elif self.to_agent:
            self.deliver_to_agent()


def simulate(seed: int, steps: int = 400) -> Simulation:
    """Run one seeded simulation, then heal the link and drain the backlog."""
    rng = random.Random(seed)
    max_batch = rng.randint(1, 8)
    window = rng.randint(max_batch, 3 * max_batch)
    linger = rng.choice([0.0, 0.0, 2.0])
    sim = Simulation(
        rng=rng,
        agent=AgentSession(window=window, max_batch=max_batch, linger=linger),
        drop=rng.uniform(0.0, 0.2),
        dup=rng.uniform(0.0, 0.2),
    )
    for _ in range(steps):
        sim.step(lossy=True)
    # Heal: one clean reconnect, then no more loss until the hub has it all.
    sim.disconnect()
    for _ in range(50 * (sim.high + 10)):
        if sim.agent_acked == sim.high and sim.agent.state is AgentState.STREAMING:
            break
        sim.step(lossy=False)
    return sim


def test_lossy_link_applies_every_seq_exactly_once() -> None:
    total_events = total_gaps = 0
    for seed in range(300):
        try:
            sim = simulate(seed)
        except Exception as e:
            e.add_note(f"simulation seed {seed}")
            raise
        assert sim.applied == list(range(1, sim.high + 1)), f"seed {seed}"
        assert sim.agent_acked == sim.watermarks[EPOCH] == sim.high, f"seed {seed}"
        total_events += sim.high
        total_gaps += sim.gaps
    # The loop must actually have exercised loss, gaps and volume.
    assert total_events > 10_000
    assert total_gaps > 50


def test_pipelined_batches_are_accepted_before_they_are_durable() -> None:
    hub = streaming_hub(watermark=10)
    assert hub.on_batch(11, 5) == Apply(skip=0, last_seq=15)
    assert hub.on_batch(16, 5) == Apply(skip=0, last_seq=20)
    assert (hub.accepted, hub.watermark) == (20, 10)
    # A resend of an accepted batch is a duplicate; its ack may only say what is durable.
    assert hub.on_batch(11, 5) == Duplicate(10)
    with pytest.raises(SeqGap, match="expected seq 21, got 22"):
        hub.on_batch(22, 3)
    # Both commit together: one ack covers them.
    assert hub.on_applied(20) == 20
    assert hub.watermark == 20
    with pytest.raises(StocksyncError, match="being applied end at none"):
        hub.on_applied(15)
