"""A fault-injecting TCP proxy for loopback: latency, stalls, resets and partitions.

``tc netem`` is not available on the test and benchmark machines, so crash and
partition campaigns put this proxy between an agent and the hub instead. It
forwards bytes and nothing else, so gRPC over HTTP/2, plaintext or TLS, passes
through untouched.

Every fault is something a real network can do to a TCP connection: delay it,
stall it or kill it. The proxy never drops, duplicates or reorders bytes
*inside* a connection, because no network can make TCP do that; a stalled
connection that is healed before either end gives up delivers everything it
held, as TCP retransmission would. "up" is client -> upstream, "down" is
upstream -> client.

- **shaping** (:meth:`FaultProxy.set_latency`, :meth:`FaultProxy.set_bandwidth`):
  each chunk is held for latency ± jitter in a per-connection, per-direction
  delay line (a FIFO, so order is kept), after a link shared by all connections
  of that direction has spent ``size / bandwidth`` seconds sending it.
- **blackhole** (:meth:`FaultProxy.blackhole`): nothing moves in that
  direction; the proxy stops reading, so senders meet TCP backpressure and
  receivers meet silence, never a reset. New connections are accepted and wait.
- **reset** (:meth:`FaultProxy.reset`): every connection is closed with an RST
  on both sides, and new ones can be refused (accepted, then reset) for a while.
- **cut** (:meth:`FaultProxy.cut_after`): a direction goes silent after N more
  bytes while the connection stays open: the request got there, the answer
  never came.
- **flapping** (:meth:`FaultProxy.flap`): up and down phases of seeded random
  length; entering a down phase resets everything and refuses until the next
  up phase. :func:`flap_schedule` gives the same schedule without a network.
- :meth:`FaultProxy.heal` clears every fault.

Example::

    async with FaultProxy("127.0.0.1", hub_port) as proxy:
        proxy.set_latency(0.125, jitter=0.010)  # Jakarta–Frankfurt, each way
        ...  # point the agent at 127.0.0.1:{proxy.port}
        proxy.blackhole()
        proxy.heal()

From synchronous code (tests without an event loop, subprocess campaigns)::

    with ThreadedFaultProxy("127.0.0.1", hub_port) as proxy:
        proxy.reset(refuse_for=2.0)

From a shell, until Ctrl-C::

    python -m stocksync.tools.faultproxy --listen 127.0.0.1:6000 \\
        --upstream 127.0.0.1:50051 --latency-ms 125 --jitter-ms 10
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar

import click

__all__ = [
    "Direction",
    "FaultProxy",
    "Phase",
    "ProxyStats",
    "ThreadedFaultProxy",
    "flap_schedule",
    "main",
]

log = logging.getLogger(__name__)

Direction = Literal["up", "down", "both"]
"""Which way a fault applies: client -> upstream, upstream -> client, or both."""
Phase = Literal["up", "down"]
"""One direction of a connection, or one phase of flapping."""
Span = float | tuple[float, float]
"""A duration in seconds, or a (low, high) range to draw one from uniformly."""

# Bytes read from a socket at a time: asyncio's default high-water mark, and
# small enough that one chunk does not hold a capped link for long.
CHUNK = 64 * 1024
# Default for ``max_in_flight``: bytes one direction of one connection may hold
# before the proxy stops reading from the sender, like a TCP window. It bounds
# memory, and throughput to max_in_flight per latency (32 MiB/s at 125 ms).
MAX_IN_FLIGHT = 4 * 1024 * 1024
# How long a ThreadedFaultProxy method waits for the proxy's loop to answer.
CALL_TIMEOUT = 30.0


def _directions(direction: Direction) -> tuple[Phase, ...]:
    if direction == "both":
        return ("up", "down")
    if direction == "up":
        return ("up",)
    if direction == "down":
        return ("down",)
    raise ValueError(f"direction must be 'up', 'down' or 'both', not {direction!r}")


def _abort(writer: asyncio.StreamWriter, rst: bool) -> None:
    """Close a connection now, without flushing; with ``rst``, send an RST, not a FIN."""
    if rst:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER on, timeout 0: close() discards unsent data and sends RST.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _span(name: str, value: Span) -> tuple[float, float]:
    low, high = (value, value) if isinstance(value, int | float) else value
    if not 0 < low <= high:
        raise ValueError(f"{name}: need 0 < low <= high seconds, got {value!r}")
    return float(low), float(high)


def flap_schedule(up: Span, down: Span, seed: int = 0) -> Iterator[tuple[Phase, float]]:
    """The endless phases of flapping: ``("up", seconds), ("down", seconds), ...``.

    Args:
        up: How long each up phase lasts, in seconds, or a (low, high) range.
        down: How long each down phase lasts, in seconds, or a (low, high) range.
        seed: Seeds the ``random.Random`` the lengths are drawn from, so the
            same seed gives the same schedule.

    Returns:
        An iterator of (phase, duration) pairs, starting with an up phase.

    Raises:
        ValueError: A duration is not positive or a range is upside down.
    """
    spans: dict[Phase, tuple[float, float]] = {"up": _span("up", up), "down": _span("down", down)}
    rng = random.Random(seed)

    def phases() -> Iterator[tuple[Phase, float]]:
        while True:
            for phase in ("up", "down"):
                yield phase, rng.uniform(*spans[phase])

    return phases()


@dataclass(frozen=True)
class ProxyStats:
    """A snapshot of the proxy's counters."""

    accepted: int
    """Connections accepted and forwarded (refused ones not counted)."""
    refused: int
    """Connections accepted and reset at once because the proxy was refusing."""
    resets: int
    """Connections killed by :meth:`FaultProxy.reset` or a flapping down phase."""
    bytes_up: int
    """Bytes written to the upstream, over all connections."""
    bytes_down: int
    """Bytes written to the clients, over all connections."""
    connections: int
    """Connections open now."""


@dataclass
class _Shaping:
    """Latency, jitter and bandwidth of one direction of the link."""

    latency: float = 0.0
    jitter: float = 0.0
    bandwidth: float | None = None
    free_at: float = 0.0  # when the link has sent everything given to it so far

    def release_time(self, size: int, now: float, rng: random.Random) -> float:
        sent = now
        if self.bandwidth is not None:
            sent = self.free_at = max(now, self.free_at) + size / self.bandwidth
        delay = self.latency
        if self.jitter:
            delay = max(0.0, delay + rng.uniform(-self.jitter, self.jitter))
        return sent + delay


class _Pipe:
    """One direction of one connection: a delay line from a reader to a writer."""

    def __init__(
        self,
        proxy: FaultProxy,
        direction: Phase,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.direction = direction
        self.src = src
        self.dst = dst
        self.line: deque[tuple[float, bytes]] = deque()  # (release time, bytes); b"" is EOF
        self.held = 0
        self.has_data = asyncio.Event()
        self.has_room = asyncio.Event()
        self.budget: int | None = None  # bytes left before a cut silences this direction
        self.open = asyncio.Event()
        self.cut(proxy._cut[direction])

    def cut(self, budget: int | None) -> None:
        self.budget = budget
        if budget == 0:
            self.open.clear()
        else:
            self.open.set()

    async def read(self) -> None:
        flowing = self.proxy._flowing[self.direction]
        loop = asyncio.get_running_loop()
        while True:
            await flowing.wait()
            while self.held >= self.proxy.max_in_flight:
                self.has_room.clear()
                await self.has_room.wait()
            data = await self.src.read(CHUNK)
            shaping = self.proxy._shaping[self.direction]
            self.line.append((shaping.release_time(len(data), loop.time(), self.proxy._rng), data))
            self.held += len(data)
            self.has_data.set()
            if not data:
                return

    async def write(self) -> None:
        flowing = self.proxy._flowing[self.direction]
        loop = asyncio.get_running_loop()
        while True:
            while not self.line:
                self.has_data.clear()
                await self.has_data.wait()
            release, data = self.line[0]
            if (wait := release - loop.time()) > 0:
                await asyncio.sleep(wait)
            await flowing.wait()
            await self.open.wait()
            if not data:  # the sender's FIN, delayed like its data
                if self.dst.can_write_eof():
                    self.dst.write_eof()
                return
            take = len(data) if self.budget is None else min(len(data), self.budget)
            if take < len(data):
                self.line[0] = (release, data[take:])
            else:
                self.line.popleft()
            self.held -= take
            self.has_room.set()
            if self.budget is not None:
                self.cut(self.budget - take)
            self.proxy._count(self.direction, take)
            self.dst.write(data[:take])
            await self.dst.drain()


class _Conn:
    """A client connection and, once dialled, its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter, task: asyncio.Task[None]) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.pipes: tuple[_Pipe, ...] = ()
        self.task = task
        self.killed = False

    def kill(self, rst: bool) -> None:
        if self.killed:
            return
        self.killed = True
        for writer in (self.client, self.upstream):
            if writer is not None:
                _abort(writer, rst)
        if self.task is not asyncio.current_task():
            self.task.cancel()

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None and not writer.transport.is_closing():
                writer.close()


class FaultProxy:
    """A TCP proxy on an asyncio loop whose faults can be changed while it runs.

    The control methods are plain methods to be called on the proxy's loop; from
    another thread use :class:`ThreadedFaultProxy`.

    Args:
        upstream_host: Where to forward connections, e.g. the hub's host.
        upstream_port: The upstream's port.
        listen_host: Address to accept connections on.
        listen_port: Port to accept connections on; 0 picks a free one.
        seed: Seeds the jitter, so a campaign draws the same delays.
        max_in_flight: Bytes one direction of one connection may hold before
            the proxy stops reading from its sender (a TCP window; see
            ``MAX_IN_FLIGHT``).
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        seed: int = 0,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be ≥ 1 byte, got {max_in_flight!r}")
        self.upstream = (upstream_host, upstream_port)
        self.listen = (listen_host, listen_port)
        self.max_in_flight = max_in_flight
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._port = 0
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._shaping: dict[Phase, _Shaping] = {"up": _Shaping(), "down": _Shaping()}
        self._flowing: dict[Phase, asyncio.Event] = {"up": asyncio.Event(), "down": asyncio.Event()}
        self._cut: dict[Phase, int | None] = {"up": None, "down": None}
        self._refuse_until = 0.0
        self._flap_down = False
        self._flap_task: asyncio.Task[None] | None = None
        self._flap_log: list[tuple[Phase, float]] = []
        self._accepted = self._refused = self._resets = 0
        self._bytes: dict[Phase, int] = {"up": 0, "down": 0}
        for event in self._flowing.values():
            event.set()

    @property
    def port(self) -> int:
        """The port the proxy listens on (0 before :meth:`start`)."""
        return self._port

    async def start(self) -> int:
        """Start listening.

        Returns:
            The bound port.

        Raises:
            OSError: The listen address cannot be bound.
        """
        self._server = await asyncio.start_server(self._handle, *self.listen)
        self._port = self._server.sockets[0].getsockname()[1]
        return self._port

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        self._stop_flapping()
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.kill(rst=False)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._flap_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._flap_task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def set_latency(
        self, latency: float, jitter: float = 0.0, direction: Direction = "both"
    ) -> None:
        """Delay every chunk by ``latency`` ± ``jitter`` seconds from now on.

        Args:
            latency: Added one-way delay in seconds, e.g. 0.125.
            jitter: Each chunk's delay is drawn uniformly from latency ± jitter
                (never below 0); bytes still arrive in order.
            direction: "up", "down" or "both" (each gets the full latency).
        """
        if latency < 0 or jitter < 0:
            raise ValueError(f"latency and jitter must be ≥ 0, got {latency!r}, {jitter!r}")
        for d in _directions(direction):
            self._shaping[d].latency, self._shaping[d].jitter = latency, jitter

    def set_bandwidth(self, bytes_per_s: float | None, direction: Direction = "both") -> None:
        """Cap the link at ``bytes_per_s``, shared by all connections; None lifts the cap."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s, got {bytes_per_s!r}")
        for d in _directions(direction):
            self._shaping[d].bandwidth = bytes_per_s

    def blackhole(self, direction: Direction = "both") -> None:
        """Forward nothing in ``direction`` until :meth:`heal`; connections stay open."""
        for d in _directions(direction):
            self._flowing[d].clear()

    def cut_after(self, n_bytes: int, direction: Direction) -> None:
        """Let ``n_bytes`` more bytes through ``direction`` per connection, then go silent.

        Applies to open connections (counting from now) and to new ones (from
        their start). The connections stay open; what is held is delivered
        after :meth:`heal`.
        """
        if n_bytes < 0:
            raise ValueError(f"n_bytes must be ≥ 0, got {n_bytes!r}")
        for d in _directions(direction):
            self._cut[d] = n_bytes
            for conn in self._conns:
                for pipe in conn.pipes:
                    if pipe.direction == d:
                        pipe.cut(n_bytes)

    def reset(self, refuse_for: float = 0.0) -> int:
        """Reset every open connection (RST both ways); refuse new ones for ``refuse_for`` s.

        Returns:
            How many connections were reset.
        """
        if refuse_for < 0:
            raise ValueError(f"refuse_for must be ≥ 0, got {refuse_for!r}")
        if refuse_for:
            self._refuse_until = max(self._refuse_until, time.monotonic() + refuse_for)
        return self._reset_all()

    def flap(self, up: Span, down: Span, *, seed: int = 0) -> None:
        """Alternate up and down phases (down = reset + refuse) until :meth:`heal`.

        Args:
            up: Length of each up phase in seconds, or a (low, high) range.
            down: Length of each down phase in seconds, or a (low, high) range.
            seed: Seeds the phase lengths; see :func:`flap_schedule`.
        """
        schedule = flap_schedule(up, down, seed)
        self._stop_flapping()
        self._flap_log = []
        self._flap_task = asyncio.get_running_loop().create_task(self._flap(schedule))

    def flap_history(self) -> list[tuple[Phase, float]]:
        """The phases the current or last flapping has entered, with their lengths."""
        return list(self._flap_log)

    def heal(self, *, keep_shaping: bool = False) -> None:
        """Clear every fault: held bytes flow again and new connections are accepted.

        Args:
            keep_shaping: Keep latency, jitter and bandwidth, clearing only
                blackholes, cuts, refusal and flapping.
        """
        self._stop_flapping()
        self._refuse_until = 0.0
        for d in _directions("both"):
            self._flowing[d].set()
            self._cut[d] = None
            if not keep_shaping:
                self._shaping[d] = _Shaping()
        for conn in self._conns:
            for pipe in conn.pipes:
                pipe.cut(None)

    def connections(self) -> int:
        """How many connections are open now."""
        return len(self._conns)

    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        return ProxyStats(
            accepted=self._accepted,
            refused=self._refused,
            resets=self._resets,
            bytes_up=self._bytes["up"],
            bytes_down=self._bytes["down"],
            connections=len(self._conns),
        )

    def _count(self, direction: Phase, n: int) -> None:
        self._bytes[direction] += n

    def _refusing(self) -> bool:
        return self._flap_down or time.monotonic() < self._refuse_until

    def _reset_all(self) -> int:
        conns = list(self._conns)
        self._conns.clear()
        for conn in conns:
            conn.kill(rst=True)
        self._resets += len(conns)
        return len(conns)

    def _stop_flapping(self) -> None:
        if self._flap_task is not None:
            self._flap_task.cancel()
        self._flap_down = False

    async def _flap(self, schedule: Iterator[tuple[Phase, float]]) -> None:
        for phase, seconds in schedule:
            self._flap_log.append((phase, seconds))
            self._flap_down = phase == "down"
            if self._flap_down:
                self._reset_all()
            await asyncio.sleep(seconds)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing():
            self._refused += 1
            _abort(writer, rst=True)
            return
        task = asyncio.current_task()
        assert task is not None  # asyncio runs this callback as a task
        conn = _Conn(writer, task)
        self._conns.add(conn)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._accepted += 1
        pipe_tasks: list[asyncio.Task[None]] = []
        try:
            # A handshake needs both directions: dial only when neither is blackholed.
            await self._flowing["up"].wait()
            await self._flowing["down"].wait()
            up_reader, conn.upstream = await asyncio.open_connection(*self.upstream)
            conn.pipes = (
                _Pipe(self, "up", reader, conn.upstream),
                _Pipe(self, "down", up_reader, writer),
            )
            pipe_tasks = [
                asyncio.create_task(step())
                for pipe in conn.pipes
                for step in (pipe.read, pipe.write)
            ]
            done, _ = await asyncio.wait(pipe_tasks, return_when=asyncio.FIRST_EXCEPTION)
            errors = [t.exception() for t in done if not t.cancelled() and t.exception()]
            for error in errors:
                if not isinstance(error, OSError):
                    log.error("faultproxy connection failed", exc_info=error)
            if errors:
                # One side reset or failed: pass the reset on, as a network would.
                conn.kill(rst=True)
        except OSError:
            conn.kill(rst=True)  # the upstream refused: the client sees a reset
        except asyncio.CancelledError:
            pass  # killed by reset(), flapping or stop(): the sockets are already closed
        finally:
            self._conns.discard(conn)
            for t in pipe_tasks:
                t.cancel()
            await asyncio.gather(*pipe_tasks, return_exceptions=True)
            conn.close()


P = ParamSpec("P")
T = TypeVar("T")


class ThreadedFaultProxy:
    """A :class:`FaultProxy` on its own event loop in a daemon thread.

    For synchronous code: every method is thread-safe, runs on the proxy's
    loop and returns its result. Usable as a context manager. Takes the same
    arguments as :class:`FaultProxy`.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        seed: int = 0,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.proxy = FaultProxy(
            upstream_host,
            upstream_port,
            listen_host,
            listen_port,
            seed=seed,
            max_in_flight=max_in_flight,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on (0 before :meth:`start`)."""
        return self.proxy.port

    def start(self) -> int:
        """Start the loop thread and the proxy; returns the bound port."""
        if self._loop is not None:
            raise RuntimeError("the proxy is already running")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="faultproxy", daemon=True
        )
        self._thread.start()
        try:
            return self._run(self.proxy.start())
        except BaseException:
            self._shutdown()
            raise

    def stop(self) -> None:
        """Stop the proxy, close every connection and end the thread."""
        if self._loop is None:
            return
        try:
            self._run(self.proxy.stop())
        finally:
            self._shutdown()

    def __enter__(self) -> ThreadedFaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def set_latency(
        self, latency: float, jitter: float = 0.0, direction: Direction = "both"
    ) -> None:
        """See :meth:`FaultProxy.set_latency`."""
        self._call(self.proxy.set_latency, latency, jitter, direction)

    def set_bandwidth(self, bytes_per_s: float | None, direction: Direction = "both") -> None:
        """See :meth:`FaultProxy.set_bandwidth`."""
        self._call(self.proxy.set_bandwidth, bytes_per_s, direction)

    def blackhole(self, direction: Direction = "both") -> None:
        """See :meth:`FaultProxy.blackhole`."""
        self._call(self.proxy.blackhole, direction)

    def cut_after(self, n_bytes: int, direction: Direction) -> None:
        """See :meth:`FaultProxy.cut_after`."""
        self._call(self.proxy.cut_after, n_bytes, direction)

    def reset(self, refuse_for: float = 0.0) -> int:
        """See :meth:`FaultProxy.reset`."""
        return self._call(self.proxy.reset, refuse_for)

    def flap(self, up: Span, down: Span, *, seed: int = 0) -> None:
        """See :meth:`FaultProxy.flap`."""
        self._call(self.proxy.flap, up, down, seed=seed)

    def flap_history(self) -> list[tuple[Phase, float]]:
        """See :meth:`FaultProxy.flap_history`."""
        return self._call(self.proxy.flap_history)

    def heal(self, *, keep_shaping: bool = False) -> None:
        """See :meth:`FaultProxy.heal`."""
        self._call(self.proxy.heal, keep_shaping=keep_shaping)

    def connections(self) -> int:
        """See :meth:`FaultProxy.connections`."""
        return self._call(self.proxy.connections)

    def stats(self) -> ProxyStats:
        """See :meth:`FaultProxy.stats`."""
        return self._call(self.proxy.stats)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT)

    def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._loop is None:  # not running: no other thread touches the proxy
            return fn(*args, **kwargs)

        async def on_loop() -> T:
            return fn(*args, **kwargs)

        return self._run(on_loop())

    def _shutdown(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


def _host_port(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:6000
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}", ctx, param)
    return host, int(port)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--listen",
    default="127.0.0.1:0",
    metavar="HOST:PORT",
    callback=_host_port,
    show_default=True,
    help="Where to accept connections; port 0 picks a free one.",
)
@click.option(
    "--upstream",
    required=True,
    metavar="HOST:PORT",
    callback=_host_port,
    help="Where to forward, e.g. the hub.",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Delay added each way, in milliseconds.",
)
@click.option(
    "--jitter-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Each chunk's delay is latency ± up to this many milliseconds.",
)
@click.option(
    "--bandwidth",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Cap each way, in bytes per second (default: none).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the jitter.")
def _cli(
    listen: tuple[str, int],
    upstream: tuple[str, int],
    latency_ms: float,
    jitter_ms: float,
    bandwidth: float | None,
    seed: int,
) -> None:
    """Forward TCP from --listen to --upstream with added latency, jitter and a bandwidth cap.

    Runs until Ctrl-C or SIGTERM. Prints the address it listens on first.

    Example, a Jakarta–Frankfurt link in front of a local hub:

    \b
        python -m stocksync.tools.faultproxy --listen 127.0.0.1:6000 \\
            --upstream 127.0.0.1:50051 --latency-ms 125 --jitter-ms 10
    """
    proxy = FaultProxy(*upstream, *listen, seed=seed)
    proxy.set_latency(latency_ms / 1000, jitter_ms / 1000)
    proxy.set_bandwidth(bandwidth)
    asyncio.run(_serve(proxy))


async def _serve(proxy: FaultProxy) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, port = proxy.listen
    try:
        port = await proxy.start()
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    click.echo(
        f"faultproxy listening on {host}:{port}, forwarding to {':'.join(map(str, proxy.upstream))}"
    )
    try:
        await stop.wait()
    finally:
        s = proxy.stats()
        await proxy.stop()
    click.echo(
        f"faultproxy stopped: {s.accepted} connections,"
        f" {s.bytes_up} bytes up, {s.bytes_down} bytes down"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 after Ctrl-C or SIGTERM, 2 for bad arguments, 1 if
        the listen address cannot be bound.
    """
    try:
        status = _cli.main(
            args=None if argv is None else list(argv),
            prog_name="python -m stocksync.tools.faultproxy",
            standalone_mode=False,
        )
    except click.ClickException as e:
        # One line, not click's usage block: the message names the bad option.
        click.echo(f"faultproxy: {e.format_message()}", err=True)
        return e.exit_code
    except click.Abort:  # Ctrl-C before the signal handlers were in place
        return 130
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
