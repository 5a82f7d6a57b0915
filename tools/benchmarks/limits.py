"""The raw limits each scenario is held against: gRPC alone, in a process of its own.

- **unary echo** (``/stocksync.bench.Echo/Echo``): returns the request bytes.
  Held against ``Reserve`` and the local API's ``Record``.
- **durable unary echo** (``/stocksync.bench.Echo/Durable``, when the server
  is given a database file): returns the request bytes once they are
  committed to a raw sqlite3 table (WAL, ``synchronous=FULL``, as the hub's
  store), the calls waiting meanwhile committed together on one thread, as
  the hub's writer groups commands. What answering only once durable costs
  over gRPC at its rawest: the call's handler must wait (a plain echo never
  does), and a commit runs per group. Shown beside the echo for ``Reserve``.
- **bidi stream** (``/stocksync.bench.Echo/Stream``): reads each message and
  answers a 9-byte ack, as the hub acks a batch; the client keeps as many
  batches in flight as the agent's window allows. Held against catch-up and
  ingest, with the very batch bytes the agent would send.
- The server-stream fan-out is :class:`~stocksync.tools.benchmarks.fanout.PlainFanout`;
  the raw sqlite3 apply is :func:`~stocksync.tools.benchmarks.catchup.raw_apply`.

The server runs as ``python -m stocksync.tools.benchmarks.limits [DB]``, which
prints its port and serves until killed; :func:`echo_server` starts and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from stocksync.events import EventRow
from stocksync.sqlite import connect
from stocksync.tools.benchmarks.common import latency_summary
from stocksync.wire import batch_message

__all__ = [
    "DURABLE_METHOD",
    "ECHO_METHOD",
    "STREAM_METHOD",
    "EchoServer",
    "bidi_round_trips",
    "bidi_stream",
    "echo_server",
    "sync_batches",
]

ECHO_METHOD = "/stocksync.bench.Echo/Echo"
DURABLE_METHOD = "/stocksync.bench.Echo/Durable"
STREAM_METHOD = "/stocksync.bench.Echo/Stream"
ACK = b"\x08" + (1).to_bytes(8, "little")


class EchoServer(NamedTuple):
    """A running echo server: where it listens and its process (for its CPU)."""

    target: str
    """HOST:PORT."""
    pid: int


@contextlib.contextmanager
def echo_server(db: Path | None = None) -> Iterator[EchoServer]:
    """The echo server in a child process (serving the durable echo too if
    given ``db``, a database file to create); kills it after."""
    child = subprocess.Popen(
        [sys.executable, "-m", "stocksync.tools.benchmarks.limits", *([str(db)] if db else [])],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode().strip()
        if not line.isdigit():
            raise RuntimeError(f"the echo server failed to start: {line!r}")
        yield EchoServer(f"127.0.0.1:{line}", child.pid)
    finally:
        child.kill()
        child.wait()


class _GroupCommit:
    """Requests committed to a raw sqlite3 table, those waiting together in
    one transaction on one thread; each call answered once its group is durable."""

    def __init__(self, db: str) -> None:
        self.conn = connect(db, "FULL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS calls (body BLOB NOT NULL)")
        self.waiting: list[tuple[bytes, asyncio.Future[None]]] = []
        self.wake = asyncio.Event()
        self.thread = ThreadPoolExecutor(max_workers=1)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            group, self.waiting = self.waiting, []
            await loop.run_in_executor(self.thread, self._commit, [body for body, _ in group])
            for _, future in group:
                future.set_result(None)

    def _commit(self, bodies: list[bytes]) -> None:
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany("INSERT INTO calls (body) VALUES (?)", [(b,) for b in bodies])

    async def durable(self, request: bytes) -> None:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((request, future))
        self.wake.set()
        await future


async def _serve(db: str | None) -> None:
    server = grpc.aio.server()
    methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    if db is not None:
        commits = _GroupCommit(db)
        committer = asyncio.ensure_future(commits.run())

        async def durable(request: bytes, context: Any) -> bytes:
            await commits.durable(request)
            return request

        methods["Durable"] = grpc.unary_unary_rpc_method_handler(durable)

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield ACK

    handler = grpc.method_handlers_generic_handler(
        "stocksync.bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
            **methods,
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
    if db is not None:
        committer.cancel()


def sync_batches(rows: Sequence[EventRow], batch: int) -> list[tuple[int, bytes]]:
    """The agent's ``SyncRequest`` batches of ``rows``, serialized: (events, bytes) each."""
    return [
        (len(rows[i : i + batch]), batch_message(rows[i : i + batch]).SerializeToString())
        for i in range(0, len(rows), batch)
    ]


async def _bidi(target: str, batches: Sequence[tuple[int, bytes]], window: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        await channel.channel_ready()
        call: Any = channel.stream_stream(STREAM_METHOD)()
        room = asyncio.Semaphore(window)
        sent: list[float] = []
        acked: list[float] = []
        started = time.perf_counter()

        async def send() -> None:
            for _, data in batches:
                await room.acquire()
                sent.append(time.perf_counter())
                await call.write(data)
            await call.done_writing()

        writer = asyncio.ensure_future(send())
        for _ in batches:
            await call.read()
            acked.append(time.perf_counter())
            room.release()
        await writer
        elapsed = time.perf_counter() - started
    events = sum(n for n, _ in batches)
    return {
        "events": events,
        "batches": len(batches),
        "window_batches": window,
        "seconds": elapsed,
        "events_per_s": events / elapsed,
        "ack": latency_summary(a - s for a, s in zip(acked, sent, strict=True)),
    }


def bidi_stream(
    batches: Sequence[tuple[int, bytes]], window: int, target: str | None = None
) -> dict[str, Any]:
    """One bidi stream carrying ``batches``, ``window`` of them unacked at most.

    Args:
        batches: (events, serialized SyncRequest) pairs, from :func:`sync_batches`.
        window: batches in flight at most (the agent's window / batch size).
        target: a running echo server; None starts one for the call.
    """
    if target is not None:
        return asyncio.run(_bidi(target, batches, window))
    with echo_server() as started:
        return asyncio.run(_bidi(started.target, batches, window))


async def _paced(target: str, batches: Sequence[tuple[int, bytes]], interval: float) -> list[float]:
    async with grpc.aio.insecure_channel(target) as channel:
        await channel.channel_ready()
        call: Any = channel.stream_stream(STREAM_METHOD)()
        sent: list[float] = []
        acked: list[float] = []

        async def send() -> None:
            started = time.monotonic()
            for i, (_, data) in enumerate(batches):
                await asyncio.sleep(max(0.0, started + i * interval - time.monotonic()))
                sent.append(time.monotonic())
                await call.write(data)
            await call.done_writing()

        writer = asyncio.ensure_future(send())
        for _ in batches:
            await call.read()
            acked.append(time.monotonic())
        await writer
    return [a - s for a, s in zip(acked, sent, strict=True)]


def bidi_round_trips(batches: Sequence[tuple[int, bytes]], interval: float) -> dict[str, Any]:
    """``batches`` sent one every ``interval`` seconds on one bidi stream; each
    one's send → ack time (the transport's share of a latency)."""
    with echo_server() as server:
        return latency_summary(asyncio.run(_paced(server.target, batches, interval)))


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1] if len(sys.argv) > 1 else None))
