"""The sync protocol of DESIGN §6 as two sans-IO state machines.

Everything that decides *what* may be sent or applied lives here: which
message each state accepts, the handshake and its checks (warehouse, epoch,
protocol version, identity, retired epochs), the batch size both ends agree
on, the window of unacknowledged events, watermarks, duplicates, gaps and
snapshots. The machines never touch a socket or a database; the gRPC and
SQLite adapters feed them facts ("the hub welcomed us at 41", "batch 42..91
arrived") and do what they answer. Every violation raises one exception
class per kind, carrying the status it means (:mod:`stocksync.errors`), so an
adapter maps them with one table. That keeps the hard logic testable in
microseconds (tests/test_protocol.py). docs/protocol.md describes the same
rules for someone writing an agent in another language.

Agent side::

    session = AgentSession(window=8000, max_batch=1000)
    hello = session.hello(warehouse, epoch, high_seq, acked_seq)
    session.receive("welcome")
    session.on_welcome(WelcomeInfo(watermark, snapshot_required, max_batch_events), acked)
    rng = session.next_batch(high_seq)        # (first, last) or None
    session.on_sent(*rng)
    session.receive("ack"); session.on_ack(up_to_seq)

Hub side::

    session = HubSession(identity="WH-LAX", max_batch=5000)
    session.receive("hello")
    welcome = session.on_hello(hello, known)    # known: the stored epoch, or None
    session.receive("batch")
    verdict = session.on_batch(first_seq, count)  # Apply / Duplicate, or raises SeqGap
    session.on_applied(last_seq)
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from stocksync.errors import Status, StocksyncError
from stocksync.events import InvalidEvent, validate_sku, validate_warehouse

__all__ = [
    "AGENT_ACCEPTS",
    "EPOCH_PATTERN",
    "HUB_ACCEPTS",
    "MAX_SNAPSHOT_SKUS",
    "PROTOCOL_VERSION",
    "AgentSession",
    "AgentState",
    "Apply",
    "Duplicate",
    "EpochInUse",
    "EpochRecord",
    "EpochRetired",
    "HelloInfo",
    "HubSession",
    "HubState",
    "KnownEpoch",
    "MalformedMessage",
    "ProtocolError",
    "SeqGap",
    "StoreBehindHub",
    "Superseded",
    "TimedOut",
    "UnexpectedMessage",
    "UnsupportedVersion",
    "WelcomeInfo",
    "WrongWarehouse",
    "validate_epoch",
]

PROTOCOL_VERSION = 1
"""The version both ends speak. 0 means "not set" and is refused."""

EPOCH_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
"""An epoch: 1-64 characters of ``[A-Za-z0-9._:-]`` (agents use a UUID)."""

MAX_SNAPSHOT_SKUS = 2_000_000
"""A snapshot naming more SKUs than this is refused (it is held in memory)."""

MAX_SNAPSHOT_ON_HAND = 10**15
"""Largest |on_hand| a snapshot may state for one SKU."""


# -- violations --------------------------------------------------------------


class ProtocolError(StocksyncError):
    """The peer broke the protocol; the stream ends with this error's status."""

    status = Status.INVALID_ARGUMENT


class MalformedMessage(ProtocolError):
    """A field is missing, out of range or of the wrong form."""

    status = Status.INVALID_ARGUMENT


class UnexpectedMessage(ProtocolError):
    """A message the current state does not accept (a batch before Hello...)."""

    status = Status.INVALID_ARGUMENT


class UnsupportedVersion(ProtocolError):
    """The peer speaks another protocol version; one end must be upgraded."""

    status = Status.FAILED_PRECONDITION


class WrongWarehouse(ProtocolError):
    """The caller's credentials name another warehouse than its Hello."""

    status = Status.PERMISSION_DENIED


class EpochRetired(ProtocolError):
    """The (warehouse, epoch) was replaced by a newer store and may not write."""

    status = Status.FAILED_PRECONDITION


class EpochInUse(ProtocolError):
    """A new epoch for a warehouse whose current epoch is connected right now."""

    status = Status.FAILED_PRECONDITION


class StoreBehindHub(ProtocolError):
    """The hub holds seqs of this epoch that the agent's store does not."""

    status = Status.FAILED_PRECONDITION


class Superseded(ProtocolError):
    """A newer stream for the same warehouse took over this one."""

    status = Status.ABORTED


class TimedOut(ProtocolError):
    """An expected message (Hello, a requested snapshot) did not arrive in time."""

    status = Status.DEADLINE_EXCEEDED


class SeqGap(ProtocolError):
    """A batch starts after ``expected``: events are missing; resume from there."""

    status = Status.FAILED_PRECONDITION

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(
            f"gap in seqs: expected seq {expected}, got {got}; resume from seq {expected}"
        )
        self.expected = expected
        self.got = got

    def trailers(self) -> tuple[tuple[str, str], ...]:
        """``resume-from-seq``: where the agent's next batch must start."""
        return (("resume-from-seq", str(self.expected)),)


# -- messages as the core sees them ------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloInfo:
    """What an agent says when it opens a stream."""

    warehouse: str
    epoch: str
    high_seq: int
    acked_seq: int
    protocol_version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class WelcomeInfo:
    """What the hub answers."""

    watermark: int
    snapshot_required: bool
    max_batch_events: int = 0
    """The hub's batch limit; 0 (an old hub) means "no limit stated"."""


class KnownEpoch(Protocol):
    """What the hub has stored about a (warehouse, epoch)."""

    @property
    def watermark(self) -> int:
        """Highest seq durably applied."""
        ...

    @property
    def current(self) -> bool:
        """False once a newer epoch of the warehouse took over."""
        ...


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """A plain :class:`KnownEpoch`."""

    watermark: int
    current: bool = True


def validate_epoch(epoch: str) -> str:
    """Return ``epoch`` if it has the form of :data:`EPOCH_PATTERN`.

    Raises:
        MalformedMessage: naming what is wrong.
    """
    if not epoch:
        raise MalformedMessage("Hello has no epoch")
    if not EPOCH_PATTERN.fullmatch(epoch):
        raise MalformedMessage(
            f"epoch {epoch[:80]!r} must be 1-64 letters, digits, '.', '_', ':' or '-'"
        )
    return epoch


# -- the agent ---------------------------------------------------------------


class AgentState(enum.Enum):
    """Where an agent's stream stands."""

    CONNECTING = "connecting"
    """Hello sent, waiting for Welcome."""
    SNAPSHOT = "snapshot"
    """The hub asked for a snapshot; no batch may be sent until it is acked."""
    STREAMING = "streaming"
    CLOSED = "closed"


AGENT_ACCEPTS: dict[AgentState, frozenset[str]] = {
    AgentState.CONNECTING: frozenset({"welcome", "goodbye"}),
    AgentState.SNAPSHOT: frozenset({"ack", "ping", "goodbye"}),
    AgentState.STREAMING: frozenset(
        {"ack", "ping", "snapshot_request", "pick", "cancel_pick", "goodbye"}
    ),
    AgentState.CLOSED: frozenset(),
}
"""Which hub message each agent state accepts; anything else is a violation.
A Goodbye (the hub ending the stream, and why) may come at any time."""


class AgentSession:
    """The agent's half of one stream.

    Args:
        window: most events sent but not yet acknowledged.
        max_batch: most events in one batch (N), as configured; the hub's
            Welcome may lower it for the stream (:attr:`batch_limit`).
        linger: seconds to wait for a batch to fill before sending it
            anyway (T); a batch goes out at N events or T, whichever first.
    """

    def __init__(self, window: int, max_batch: int, linger: float = 0.0) -> None:
        if max_batch < 1 or window < max_batch:
            raise ValueError("need max_batch >= 1 and window >= max_batch")
        if linger < 0:
            raise ValueError("linger must be >= 0")
        self.window = window
        self.max_batch = max_batch
        self.batch_limit = max_batch
        """Most events per batch on this stream: min(ours, the hub's)."""
        self.linger = linger
        self._waiting_since: float | None = None
        self.state = AgentState.CLOSED
        self.acked = 0
        """Highest seq the hub has acknowledged on this stream."""
        self.sent = 0
        """Highest seq sent on this stream."""
        self.snapshot_as_of = 0
        self._snapshot_sent = False
        self._high_at_hello = 0

    def hello(self, warehouse: str, epoch: str, high_seq: int, acked_seq: int) -> HelloInfo:
        """Start a new stream; returns the Hello to send first."""
        self.state = AgentState.CONNECTING
        self._high_at_hello = high_seq
        self.acked = self.sent = 0
        self.batch_limit = self.max_batch
        return HelloInfo(warehouse, epoch, high_seq, acked_seq)

    def receive(self, kind: str | None) -> None:
        """Check that the current state accepts a hub message of ``kind``.

        Raises:
            UnexpectedMessage: if it does not.
        """
        if kind not in AGENT_ACCEPTS[self.state]:
            raise UnexpectedMessage(
                f"hub sent {kind or 'an empty message'} while {self.state.value}"
            )

    def on_welcome(self, welcome: WelcomeInfo, acked_seq: int) -> None:
        """Take the hub's watermark as the resume point and its batch limit.

        Args:
            welcome: the hub's answer.
            acked_seq: the highest seq any hub acknowledged before (from the
                agent's store); a snapshot is taken as of this seq.

        Raises:
            UnexpectedMessage: outside CONNECTING.
            StoreBehindHub: if the hub claims seqs this store never recorded
                (the store was restored from an older copy under the same epoch).
        """
        self.receive("welcome")
        if welcome.max_batch_events > 0:
            self.batch_limit = min(self.max_batch, welcome.max_batch_events)
        if welcome.snapshot_required:
            self.state = AgentState.SNAPSHOT
            self._snapshot_sent = False
            self.snapshot_as_of = self.acked = self.sent = acked_seq
            return
        if welcome.watermark > self._high_at_hello:
            self.state = AgentState.CLOSED
            raise StoreBehindHub(
                f"hub holds seq {welcome.watermark} for this epoch but this store only "
                f"reaches {self._high_at_hello}: the store was replaced by an older copy; "
                "start a new store for the warehouse"
            )
        self.state = AgentState.STREAMING
        self.acked = self.sent = welcome.watermark

    @property
    def in_flight(self) -> int:
        """Events sent but not yet acknowledged."""
        return self.sent - self.acked

    def next_batch(self, high_seq: int, now: float = 0.0) -> tuple[int, int] | None:
        """The seq range to send next, or None when nothing may be sent yet.

        Nothing is sent before the Welcome, during a snapshot, when the
        window is full, or when every recorded event is already in flight.
        With nothing in flight, what there is goes at once: waiting would
        only add latency. While a batch is in flight, a partial one waits
        until ``linger`` seconds after its first event was seen (or the ack,
        whichever first), so a steady trickle travels in fuller batches;
        :attr:`send_at` then says when to ask again.

        Args:
            high_seq: the highest recorded seq.
            now: a monotonic clock reading, in seconds.
        """
        if self.state is not AgentState.STREAMING or high_seq <= self.sent:
            self._waiting_since = None
            return None
        room = self.window - self.in_flight
        if room <= 0:
            return None
        limit = self.batch_limit
        size = min(high_seq - self.sent, room, limit)
        if high_seq - self.sent < limit and self.linger > 0 and self.in_flight > 0:
            if self._waiting_since is None:
                self._waiting_since = now
            if now - self._waiting_since < self.linger:
                return None
        self._waiting_since = None
        return self.sent + 1, self.sent + size

    @property
    def send_at(self) -> float | None:
        """When a lingering partial batch is due (monotonic seconds), if one is."""
        return None if self._waiting_since is None else self._waiting_since + self.linger

    def on_sent(self, first: int, last: int) -> None:
        """Record that ``first..last`` went out."""
        if first != self.sent + 1 or last < first:
            raise StocksyncError(f"sent {first}..{last} but the stream is at {self.sent}")
        self.sent = last

    def on_snapshot_sent(self) -> None:
        """The last snapshot chunk went out; wait for its ack."""
        if self.state is not AgentState.SNAPSHOT:
            raise UnexpectedMessage("no snapshot was requested")
        self._snapshot_sent = True

    def on_snapshot_request(self, acked_seq: int) -> None:
        """The hub asked for a snapshot mid-stream: stop sending, resend from it."""
        self.receive("snapshot_request")
        self.state = AgentState.SNAPSHOT
        self._snapshot_sent = False
        self.snapshot_as_of = self.acked = self.sent = acked_seq

    def on_ack(self, up_to_seq: int) -> int:
        """Take an acknowledgement; returns how many events it newly covers.

        A repeated or older ack covers nothing and is ignored.

        Raises:
            UnexpectedMessage: before the Welcome, or for a snapshot ack
                before the snapshot went out.
            MalformedMessage: for an ack of seqs never sent.
        """
        self.receive("ack")
        if self.state is AgentState.SNAPSHOT:
            if not self._snapshot_sent:
                raise UnexpectedMessage("snapshot acknowledged before it was sent")
            if up_to_seq != self.snapshot_as_of:
                raise MalformedMessage(
                    f"snapshot as of {self.snapshot_as_of} acknowledged at {up_to_seq}"
                )
            self.state = AgentState.STREAMING
            return 0
        if up_to_seq > self.sent:
            raise MalformedMessage(
                f"hub acknowledged seq {up_to_seq} but only {self.sent} was sent"
            )
        newly = max(0, up_to_seq - self.acked)
        self.acked = max(self.acked, up_to_seq)
        return newly

    def close(self) -> None:
        """The stream ended; everything in flight will be resent from the next Welcome."""
        self.state = AgentState.CLOSED


# -- the hub -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply the batch's events past its first ``skip`` seqs (``events[skip:]``
    unless some are folded), then ack ``last_seq``."""

    skip: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Every event of the batch was accepted before: re-ack and ignore it."""

    ack_seq: int


class HubState(enum.Enum):
    """Where the hub's side of one stream stands."""

    AWAITING_HELLO = "awaiting-hello"
    AWAITING_SNAPSHOT = "awaiting-snapshot"
    STREAMING = "streaming"


HUB_ACCEPTS: dict[HubState, frozenset[str]] = {
    HubState.AWAITING_HELLO: frozenset({"hello"}),
    HubState.AWAITING_SNAPSHOT: frozenset({"snapshot", "ping"}),
    HubState.STREAMING: frozenset({"batch", "ping", "command_ack"}),
}
"""Which agent message each hub state accepts; anything else is a violation.

A snapshot is accepted only while one was asked for: one sent mid-stream
could move the watermark back under events already applied."""


class HubSession:
    """The hub's half of one stream.

    Batches may be pipelined: one is accepted (checked, queued for the
    store) while earlier ones are still being committed. :attr:`accepted` is
    how far the stream has been accepted, :attr:`watermark` how far it is
    durable; only the watermark is ever acknowledged.

    Args:
        identity: the warehouse the caller proved it is (certificate or
            token), or None when the hub runs without authentication.
        max_batch: most events accepted in one batch; sent in the Welcome.
        max_snapshot_skus: most SKUs one snapshot may name.
    """

    def __init__(
        self,
        identity: str | None = None,
        max_batch: int = 5000,
        max_snapshot_skus: int = MAX_SNAPSHOT_SKUS,
    ) -> None:
        self.identity = identity
        self.max_batch = max_batch
        self.max_snapshot_skus = max_snapshot_skus
        self.state = HubState.AWAITING_HELLO
        self.warehouse = ""
        self.epoch = ""
        self.watermark = 0
        """Highest seq durably applied: what may be acknowledged."""
        self.accepted = 0
        """Highest seq accepted for applying (>= watermark)."""
        self.agent_high_seq = 0
        self._applying: deque[int] = deque()
        self._snapshot: list[tuple[str, int]] = []
        self._snapshot_skus: set[str] = set()
        self._snapshot_as_of: int | None = None

    def receive(self, kind: str | None) -> None:
        """Check that the current state accepts an agent message of ``kind``.

        Raises:
            UnexpectedMessage: if it does not.
        """
        if kind in HUB_ACCEPTS[self.state]:
            return
        if kind is None:
            raise UnexpectedMessage("message has no content (no field of the oneof is set)")
        if self.state is HubState.AWAITING_HELLO:
            raise UnexpectedMessage(f"the first message must be Hello, not {kind}")
        raise UnexpectedMessage(f"{kind} is not allowed while {self.state.value}")

    def check_hello(self, hello: HelloInfo) -> None:
        """Every check of a Hello that needs nothing stored.

        Raises:
            UnexpectedMessage: for a second Hello.
            MalformedMessage: for a bad warehouse id, epoch or seqs, or a
                protocol version of 0 (not set).
            UnsupportedVersion: for another protocol version.
            WrongWarehouse: for an agent speaking for a warehouse it is not.
        """
        self.receive("hello")
        if hello.protocol_version == 0:
            raise MalformedMessage(
                f"Hello must set protocol_version (this hub speaks {PROTOCOL_VERSION})"
            )
        if hello.protocol_version != PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"protocol version {hello.protocol_version} is not supported "
                f"(this hub speaks {PROTOCOL_VERSION})"
            )
        try:
            validate_warehouse(hello.warehouse)
        except InvalidEvent as e:
            raise MalformedMessage(str(e)) from None
        validate_epoch(hello.epoch)
        if hello.acked_seq > hello.high_seq:
            raise MalformedMessage(
                f"Hello acked_seq {hello.acked_seq} is past its high_seq {hello.high_seq}"
            )
        if self.identity is not None and hello.warehouse != self.identity:
            raise WrongWarehouse(
                f"credentials are for warehouse {self.identity!r}, not {hello.warehouse!r}"
            )

    def on_hello(
        self,
        hello: HelloInfo,
        known: KnownEpoch | None,
        streaming_epoch: str | None = None,
    ) -> WelcomeInfo:
        """Check the Hello and decide the Welcome.

        Args:
            hello: the agent's Hello.
            known: what the hub has stored for (warehouse, epoch), or None if
                it has never seen this epoch.
            streaming_epoch: the epoch of the warehouse's stream that is
                connected right now, if any.

        Raises:
            EpochRetired: for an epoch a newer store replaced.
            EpochInUse: for a new epoch while another epoch of the warehouse
                is connected (two stores claim one warehouse).
            and every error of :meth:`check_hello`.
        """
        self.check_hello(hello)
        if known is not None and not known.current:
            raise EpochRetired(
                f"epoch {hello.epoch} of {hello.warehouse} was replaced by a newer store; "
                "this store may no longer send events"
            )
        if known is None and streaming_epoch is not None and streaming_epoch != hello.epoch:
            raise EpochInUse(
                f"two stores claim {hello.warehouse}: epoch {streaming_epoch} is connected, "
                f"so a new store (epoch {hello.epoch}) may not take over; stop the other agent "
                "or give this one its own warehouse id"
            )
        self.warehouse, self.epoch = hello.warehouse, hello.epoch
        self.agent_high_seq = hello.high_seq
        if known is None:
            self.state = HubState.AWAITING_SNAPSHOT
            return WelcomeInfo(0, snapshot_required=True, max_batch_events=self.max_batch)
        self.state = HubState.STREAMING
        self.watermark = self.accepted = known.watermark
        return WelcomeInfo(
            known.watermark, snapshot_required=False, max_batch_events=self.max_batch
        )

    def on_snapshot_chunk(
        self, as_of_seq: int, stock: Sequence[tuple[str, int]], last: bool
    ) -> list[tuple[str, int]] | None:
        """Take one chunk of a requested snapshot; returns the whole snapshot
        once the last chunk is in (the adapter then applies it), else None.

        Raises:
            UnexpectedMessage: for a snapshot the hub did not ask for.
            MalformedMessage: for chunks of different ``as_of_seq``, an
                ``as_of_seq`` past the agent's high seq, a bad or repeated
                SKU, an absurd on_hand, or too many SKUs.
        """
        self.receive("snapshot")
        if self._snapshot_as_of is None:
            if as_of_seq > self.agent_high_seq:
                raise MalformedMessage(
                    f"snapshot as of seq {as_of_seq} is past the agent's high seq "
                    f"{self.agent_high_seq}"
                )
            self._snapshot_as_of = as_of_seq
        elif as_of_seq != self._snapshot_as_of:
            raise MalformedMessage(
                f"snapshot chunk as of seq {as_of_seq} in a snapshot as of {self._snapshot_as_of}"
            )
        if len(self._snapshot) + len(stock) > self.max_snapshot_skus:
            raise MalformedMessage(f"snapshot has more than {self.max_snapshot_skus} SKUs")
        seen = self._snapshot_skus
        for sku, on_hand in stock:
            try:
                validate_sku(sku)
            except InvalidEvent as e:
                raise MalformedMessage(f"snapshot: {e}") from None
            if sku in seen:
                raise MalformedMessage(f"snapshot: sku {sku} appears twice")
            if abs(on_hand) > MAX_SNAPSHOT_ON_HAND:
                raise MalformedMessage(f"snapshot: on_hand {on_hand} of {sku} is out of range")
            seen.add(sku)
        self._snapshot.extend(stock)
        if not last:
            return None
        complete, self._snapshot, self._snapshot_skus = self._snapshot, [], set()
        return complete

    @property
    def snapshot_as_of(self) -> int:
        """The ``as_of_seq`` of the snapshot being received (0 before its first chunk)."""
        return self._snapshot_as_of or 0

    def on_snapshot_applied(self, as_of_seq: int) -> int:
        """The snapshot is durable; streaming resumes after it. Returns the ack."""
        self.state = HubState.STREAMING
        self._snapshot_as_of = None
        self.watermark = self.accepted = as_of_seq
        return as_of_seq

    def on_batch(
        self, first_seq: int, count: int, last_seq: int | None = None
    ) -> Apply | Duplicate:
        """Classify a batch of ``count`` contiguous events from ``first_seq``.

        ``last_seq`` is the last event's seq: ``first_seq + count - 1`` (the
        default) unless the batch holds folded events, which stand for a seq
        range each (DESIGN §6).

        Raises:
            UnexpectedMessage: before the handshake or snapshot is done.
            MalformedMessage: for an empty or oversized batch, or seq 0.
            SeqGap: when the batch starts past ``accepted + 1``.
        """
        self.receive("batch")
        if count < 1:
            raise MalformedMessage("empty batch")
        if count > self.max_batch:
            raise MalformedMessage(
                f"batch of {count} events exceeds the limit of {self.max_batch} "
                "(the Welcome's max_batch_events)"
            )
        if first_seq < 1:
            raise MalformedMessage("seqs start at 1")
        last = first_seq + count - 1 if last_seq is None else last_seq
        if last < first_seq + count - 1:
            raise MalformedMessage(
                f"batch of {count} events from seq {first_seq} cannot end at seq {last}"
            )
        self.agent_high_seq = max(self.agent_high_seq, last)
        if last <= self.accepted:
            return Duplicate(self.watermark)
        if first_seq > self.accepted + 1:
            raise SeqGap(expected=self.accepted + 1, got=first_seq)
        skip = self.accepted + 1 - first_seq
        self.accepted = last
        self._applying.append(last)
        return Apply(skip=skip, last_seq=last)

    def on_applied(self, last_seq: int) -> int:
        """Accepted batches are durable up to ``last_seq`` (the end of one of
        them: several may commit together). Returns the seq to ack."""
        if last_seq not in self._applying:
            ends = ", ".join(map(str, self._applying)) or "none"
            raise StocksyncError(  # a bug in the adapter, not the peer's doing
                f"applied up to {last_seq}, but the batches being applied end at {ends}"
            )
        while self._applying and self._applying[0] <= last_seq:
            self._applying.popleft()
        self.watermark = last_seq
        return last_seq

    def on_backlog(self, high_seq: int) -> None:
        """The agent reported its high seq in a ping."""
        self.agent_high_seq = max(self.agent_high_seq, high_seq)

    @property
    def lag_events(self) -> int:
        """Events the agent has that the hub has not made durable."""
        return max(0, self.agent_high_seq - self.watermark)
