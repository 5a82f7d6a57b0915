"""The sync protocol of DESIGN §6 as two sans-IO state machines.

Everything that decides *what* may be sent or applied lives here: the
handshake, the window of unacknowledged events, watermarks, duplicates, gaps
and epochs. The machines never touch a socket or a database; the gRPC and
SQLite adapters feed them facts ("the hub welcomed us at 41", "batch 42..91
arrived") and do what they answer. That keeps the hard logic testable in
microseconds (tests/test_protocol.py).

Agent side::

    session = AgentSession(window=8000, max_batch=1000)
    hello = session.hello(warehouse, epoch, high_seq, acked_seq)
    session.on_welcome(watermark=..., snapshot_required=...)
    rng = session.next_batch(high_seq)        # (first, last) or None
    session.on_ack(up_to_seq)

Hub side::

    session = HubSession(identity="WH-LAX")
    welcome = session.on_hello(hello, known_watermark)
    verdict = session.on_batch(first_seq, count)  # Apply / Duplicate / Gap
    session.on_applied(last_seq)
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

__all__ = [
    "PROTOCOL_VERSION",
    "AgentSession",
    "AgentState",
    "Apply",
    "Duplicate",
    "Gap",
    "HelloInfo",
    "HubSession",
    "HubState",
    "ProtocolError",
    "WelcomeInfo",
]

PROTOCOL_VERSION = 1
"""The version both ends speak. A hub refuses a Hello with another one."""


class ProtocolError(Exception):
    """The peer broke the protocol; the stream must end with this message."""


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


class AgentState(enum.Enum):
    """Where an agent's stream stands."""

    CONNECTING = "connecting"
    """Hello sent, waiting for Welcome."""
    SNAPSHOT = "snapshot"
    """The hub asked for a snapshot; no batch may be sent until it is acked."""
    STREAMING = "streaming"
    CLOSED = "closed"


class AgentSession:
    """The agent's half of one stream.

    Args:
        window: most events sent but not yet acknowledged.
        max_batch: most events in one batch (N).
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
        return HelloInfo(warehouse, epoch, high_seq, acked_seq)

    def on_welcome(self, welcome: WelcomeInfo, acked_seq: int) -> None:
        """Take the hub's watermark as the resume point.

        Args:
            welcome: the hub's answer.
            acked_seq: the highest seq any hub acknowledged before (from the
                agent's store); a snapshot is taken as of this seq.

        Raises:
            ProtocolError: if the hub claims seqs this store never recorded
                (the store was restored from an older copy under the same epoch).
        """
        if self.state is not AgentState.CONNECTING:
            raise ProtocolError(f"unexpected Welcome in state {self.state.value}")
        if welcome.snapshot_required:
            self.state = AgentState.SNAPSHOT
            self._snapshot_sent = False
            self.snapshot_as_of = self.acked = self.sent = acked_seq
            return
        if welcome.watermark > self._high_at_hello:
            self.state = AgentState.CLOSED
            raise ProtocolError(
                f"hub holds seq {welcome.watermark} for this epoch but this store only "
                f"reaches {self._high_at_hello}: the store was replaced by an older copy; "
                "start a new epoch (stocksync-agent new-epoch)"
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
        A partial batch waits until ``linger`` seconds after its first event
        was seen; :attr:`send_at` then says when to ask again.

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
        size = min(high_seq - self.sent, room, self.max_batch)
        if high_seq - self.sent < self.max_batch and self.linger > 0:
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
            raise ProtocolError(f"sent {first}..{last} but the stream is at {self.sent}")
        self.sent = last

    def on_snapshot_sent(self) -> None:
        """The last snapshot chunk went out; wait for its ack."""
        if self.state is not AgentState.SNAPSHOT:
            raise ProtocolError("no snapshot was requested")
        self._snapshot_sent = True

    def on_snapshot_request(self, acked_seq: int) -> None:
        """The hub asked for a snapshot mid-stream: stop sending, resend from it."""
        self.state = AgentState.SNAPSHOT
        self._snapshot_sent = False
        self.snapshot_as_of = self.acked = self.sent = acked_seq

    def on_ack(self, up_to_seq: int) -> int:
        """Take an acknowledgement; returns how many events it newly covers.

        A repeated or older ack covers nothing and is ignored.

        Raises:
            ProtocolError: for an ack of seqs never sent.
        """
        if self.state is AgentState.SNAPSHOT:
            if not self._snapshot_sent:
                raise ProtocolError("snapshot acknowledged before it was sent")
            if up_to_seq != self.snapshot_as_of:
                raise ProtocolError(
                    f"snapshot as of {self.snapshot_as_of} acknowledged at {up_to_seq}"
                )
            self.state = AgentState.STREAMING
            return 0
        if self.state is not AgentState.STREAMING:
            raise ProtocolError(f"unexpected Ack in state {self.state.value}")
        if up_to_seq > self.sent:
            raise ProtocolError(f"hub acknowledged seq {up_to_seq} but only {self.sent} was sent")
        newly = max(0, up_to_seq - self.acked)
        self.acked = max(self.acked, up_to_seq)
        return newly

    def close(self) -> None:
        """The stream ended; everything in flight will be resent from the next Welcome."""
        self.state = AgentState.CLOSED


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply ``events[skip:]`` of the batch, then ack ``last_seq``."""

    skip: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Every event of the batch was applied before: re-ack and ignore it."""

    ack_seq: int


@dataclass(frozen=True, slots=True)
class Gap:
    """The batch starts after ``expected``: events are missing."""

    expected: int
    got: int

    def message(self) -> str:
        """A detail naming the resume point."""
        return (
            f"gap in seqs: expected seq {self.expected}, got {self.got}; "
            f"resume from seq {self.expected}"
        )


class HubState(enum.Enum):
    """Where the hub's side of one stream stands."""

    AWAITING_HELLO = "awaiting-hello"
    AWAITING_SNAPSHOT = "awaiting-snapshot"
    STREAMING = "streaming"


class HubSession:
    """The hub's half of one stream.

    Batches may be pipelined: one is accepted (checked, queued for the
    store) while earlier ones are still being committed. :attr:`accepted` is
    how far the stream has been accepted, :attr:`watermark` how far it is
    durable; only the watermark is ever acknowledged.

    Args:
        identity: the warehouse the caller proved it is (certificate or
            token), or None when the hub runs without authentication.
        max_batch: most events accepted in one batch.
    """

    def __init__(self, identity: str | None = None, max_batch: int = 5000) -> None:
        self.identity = identity
        self.max_batch = max_batch
        self.state = HubState.AWAITING_HELLO
        self.warehouse = ""
        self.epoch = ""
        self.watermark = 0
        """Highest seq durably applied: what may be acknowledged."""
        self.accepted = 0
        """Highest seq accepted for applying (>= watermark)."""
        self.agent_high_seq = 0
        self._applying: deque[int] = deque()

    def on_hello(self, hello: HelloInfo, known_watermark: int | None) -> WelcomeInfo:
        """Decide the Welcome.

        Args:
            hello: the agent's Hello.
            known_watermark: the stored watermark of (warehouse, epoch), or
                None if the hub has never seen this epoch.

        Raises:
            ProtocolError: for a second Hello, another protocol version, or an
                agent speaking for a warehouse it is not.
        """
        if self.state is not HubState.AWAITING_HELLO:
            raise ProtocolError("Hello sent twice on one stream")
        if hello.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {hello.protocol_version} is not supported "
                f"(this hub speaks {PROTOCOL_VERSION})"
            )
        if self.identity is not None and hello.warehouse != self.identity:
            raise PermissionError(
                f"credentials are for warehouse {self.identity!r}, not {hello.warehouse!r}"
            )
        if not hello.epoch:
            raise ProtocolError("Hello has no epoch")
        self.warehouse, self.epoch = hello.warehouse, hello.epoch
        self.agent_high_seq = hello.high_seq
        if known_watermark is None:
            self.state = HubState.AWAITING_SNAPSHOT
            return WelcomeInfo(watermark=0, snapshot_required=True)
        self.state = HubState.STREAMING
        self.watermark = self.accepted = known_watermark
        return WelcomeInfo(watermark=known_watermark, snapshot_required=False)

    def on_snapshot(self, as_of_seq: int) -> None:
        """Check that a snapshot may be applied now, as of ``as_of_seq``."""
        if self.state is not HubState.AWAITING_SNAPSHOT:
            # Only a requested snapshot may replace stock: one sent mid-stream
            # could move the watermark back under events already applied.
            raise ProtocolError("snapshot the hub did not ask for")
        if as_of_seq > self.agent_high_seq:
            raise ProtocolError(
                f"snapshot as of seq {as_of_seq} is past the agent's high seq {self.agent_high_seq}"
            )

    def on_snapshot_applied(self, as_of_seq: int) -> int:
        """The snapshot is durable; streaming resumes after it. Returns the ack."""
        self.state = HubState.STREAMING
        self.watermark = self.accepted = as_of_seq
        return as_of_seq

    def on_batch(self, first_seq: int, count: int) -> Apply | Duplicate | Gap:
        """Classify a batch of ``count`` contiguous events from ``first_seq``.

        Raises:
            ProtocolError: before the handshake or snapshot is done, or for an
                empty or oversized batch.
        """
        if self.state is HubState.AWAITING_HELLO:
            raise ProtocolError("batch before Hello")
        if self.state is HubState.AWAITING_SNAPSHOT:
            raise ProtocolError("batch before the requested snapshot")
        if count < 1:
            raise ProtocolError("empty batch")
        if count > self.max_batch:
            raise ProtocolError(f"batch of {count} events exceeds the limit of {self.max_batch}")
        if first_seq < 1:
            raise ProtocolError("seqs start at 1")
        last = first_seq + count - 1
        self.agent_high_seq = max(self.agent_high_seq, last)
        if last <= self.accepted:
            return Duplicate(self.watermark)
        if first_seq > self.accepted + 1:
            return Gap(expected=self.accepted + 1, got=first_seq)
        skip = self.accepted + 1 - first_seq
        self.accepted = last
        self._applying.append(last)
        return Apply(skip=skip, last_seq=last)

    def on_applied(self, last_seq: int) -> int:
        """Accepted batches are durable up to ``last_seq`` (the end of one of
        them: several may commit together). Returns the seq to ack."""
        if last_seq not in self._applying:
            ends = ", ".join(map(str, self._applying)) or "none"
            raise ProtocolError(
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
