"""The peer: the pipeline a team would build from off-the-shelf parts instead.

Each warehouse event is committed to a local SQLite **outbox** (WAL,
``synchronous=FULL``, as durable as the agent's store) and published to
**NATS JetStream** with an ack (``publish_async``; a row counts as sent once
JetStream has acked it, and is marked so in the outbox). One **consumer**
process takes what a durable JetStream push consumer delivers, up to 1,000 at a time,
applies each batch to SQLite in one transaction (the hub's own schema and
statements: the event log plus one stock upsert per event, with a watermark
row), acks the batch (``AckPolicy.ALL``: the last message acks the rest), and
publishes the room's changed values on a **NATS core subject** that the
watchers subscribe to.

NATS is not started here: it is expected at ``127.0.0.1:4222`` with
JetStream on (:func:`unavailable` says why not, for a visible skip). Every
run makes its own stream and consumer under a fresh name and deletes the
stream at the end.

The consumer runs as ``python -m stocksync.tools.benchmarks.peer DB STREAM
SUBJECT ROOM_SUBJECT SKU...`` and prints ``ready`` once subscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stocksync.events import EventRow
from stocksync.hub.sqlite_schema import MIGRATIONS
from stocksync.hub.sqlite_store import UPSERT_STOCK, insert_event_sql

__all__ = [
    "NATS_URL",
    "Outbox",
    "PeerNames",
    "consumer",
    "jetstream",
    "nats_server_pids",
    "publish_outbox",
    "unavailable",
]

NATS_URL = os.environ.get("STOCKSYNC_BENCH_NATS", "nats://127.0.0.1:4222")
WAREHOUSE = "WH-PEER"
FETCH = 1000
WATERMARK_SQL = "SELECT seq FROM peer_watermark WHERE id = 1"


def unavailable(url: str = NATS_URL) -> str:
    """Why the peer cannot run here (no nats-py, NATS not answering, no JetStream); '' if it can."""
    try:
        import nats  # noqa: F401
    except ImportError:
        return "nats-py is not installed (pip install 'stocksync[bench]')"
    host, _, port = url.removeprefix("nats://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            pass
    except OSError as e:
        return f"NATS is not reachable at {host}:{port} ({e.strerror or e})"

    async def probe() -> str:
        async with jetstream(url) as (_, js):
            try:
                await js.account_info()
            except Exception as e:
                return f"NATS at {host}:{port} has no JetStream ({e})"
        return ""

    try:
        return asyncio.run(asyncio.wait_for(probe(), 10))
    except Exception as e:
        return f"NATS at {host}:{port} did not answer ({e})"


def nats_server_pids() -> dict[str, int]:
    """``{"nats-server": pid}`` when one NATS server runs on this machine (the
    peer's broker, for its CPU figures); else nothing: a broker elsewhere,
    or several here, cannot be told apart."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "nats-server":
                    found.append(int(entry.name))
    return {"nats-server": found[0]} if len(found) == 1 else {}


@contextlib.asynccontextmanager
async def jetstream(url: str = NATS_URL) -> AsyncIterator[tuple[Any, Any]]:
    """A NATS connection and its JetStream context; closed after."""
    import nats

    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        yield nc, nc.jetstream(publish_async_max_pending=20_000)
    finally:
        await nc.close()


@dataclass(frozen=True)
class PeerNames:
    """A run's own stream, subjects and consumer."""

    token: str

    @classmethod
    def fresh(cls) -> PeerNames:
        """Names no other run uses."""
        return cls(f"{os.getpid()}{secrets.token_hex(4)}")

    @property
    def stream(self) -> str:
        return f"SSBENCH{self.token}"

    @property
    def subject(self) -> str:
        return f"ssbench.{self.token}.events"

    @property
    def room_subject(self) -> str:
        return f"ssbench.{self.token}.room"


# -- the outbox ---------------------------------------------------------------------


class Outbox:
    """The producer's SQLite outbox: events committed here, then published.

    Args:
        path: the file (created).
    """

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, "
            "payload BLOB NOT NULL, published INTEGER NOT NULL DEFAULT 0)"
        )
        self.high = int(self.conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0])

    def commit(self, rows: Sequence[EventRow]) -> list[tuple[int, bytes]]:
        """Commit ``rows`` (their seqs are taken as they are) in one transaction."""
        out = [(r.seq, json.dumps(r, separators=(",", ":")).encode()) for r in rows]
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany("INSERT INTO outbox(seq, payload) VALUES (?, ?)", out)
        self.conn.execute("COMMIT")
        if out:
            self.high = out[-1][0]
        return out

    def unpublished(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` rows not yet marked published, after seq ``after``."""
        return [
            (int(s), bytes(p))
            for s, p in self.conn.execute(
                "SELECT seq, payload FROM outbox WHERE seq > ? AND published = 0 "
                "ORDER BY seq LIMIT ?",
                (after, limit),
            )
        ]

    def mark_published(self, through: int) -> None:
        """Every row up to ``through`` has JetStream's ack."""
        self.conn.execute(
            "UPDATE outbox SET published = 1 WHERE seq <= ? AND published = 0", (through,)
        )

    def close(self) -> None:
        self.conn.close()


class Publisher:
    """Publishes outbox rows to JetStream; marks them once acked, in order."""

    def __init__(self, js: Any, outbox: Outbox, subject: str) -> None:
        self.js = js
        self.outbox = outbox
        self.subject = subject
        self.pending: deque[tuple[int, list[asyncio.Future[Any]]]] = deque()

    async def publish(self, rows: Sequence[tuple[int, bytes]]) -> None:
        """Publish ``rows``; their acks are awaited by :meth:`settle`."""
        if not rows:
            return
        futures = [await self.js.publish_async(self.subject, payload) for _, payload in rows]
        self.pending.append((rows[-1][0], futures))

    async def settle(self, keep: int = 0) -> None:
        """Wait for acks until at most ``keep`` published chunks are unacked; mark them."""
        through = 0
        while len(self.pending) > keep:
            last, futures = self.pending.popleft()
            await asyncio.gather(*futures)
            through = last
        if through:
            self.outbox.mark_published(through)


async def publish_outbox(js: Any, outbox: Outbox, subject: str, chunk: int = 1000) -> int:
    """The relay for a backlog: publish every unpublished row, a few chunks in flight."""
    publisher = Publisher(js, outbox, subject)
    after = sent = 0
    while rows := outbox.unpublished(after, chunk):
        await publisher.publish(rows)
        after = rows[-1][0]
        sent += len(rows)
        await publisher.settle(keep=4)
    await publisher.settle()
    return sent


async def make_stream(js: Any, names: PeerNames) -> None:
    """A file-backed stream for the run's subject."""
    from nats.js.api import StorageType, StreamConfig

    await js.add_stream(
        StreamConfig(name=names.stream, subjects=[names.subject], storage=StorageType.FILE)
    )


async def drop_stream(js: Any, names: PeerNames) -> None:
    """Delete the run's stream (and its consumer)."""
    with contextlib.suppress(Exception):
        await js.delete_stream(names.stream)


def watermark(path: Path) -> int:
    """The consumer's applied watermark, read from its file (0 before it exists)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as c:
            row = c.execute(WATERMARK_SQL).fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


class WatermarkReader:
    """Reads the consumer's watermark with one read-only connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def __call__(self) -> int:
        try:
            if self.conn is None:
                self.conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, check_same_thread=False
                )
            row = self.conn.execute(WATERMARK_SQL).fetchone()
        except sqlite3.Error:
            return 0
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@contextlib.contextmanager
def consumer(
    db: Path, names: PeerNames, room_skus: Sequence[str]
) -> Iterator[subprocess.Popen[str]]:
    """The consumer process, ready (subscribed); stopped after."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stocksync.tools.benchmarks.peer",
            str(db),
            names.stream,
            names.subject,
            names.room_subject,
            *room_skus,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"the peer's consumer failed to start: {line!r}")
        yield child
    finally:
        if child.stdin is not None:
            with contextlib.suppress(OSError):
                child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# -- the consumer process ---------------------------------------------------------------


def _open_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    for script in MIGRATIONS:  # the hub's tables as they are now
        conn.executescript(script)
    conn.execute("CREATE TABLE peer_watermark (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL)")
    conn.execute("INSERT INTO peer_watermark VALUES (1, 0)")
    return conn


async def _consume(db: Path, names: PeerNames, room: set[str]) -> None:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    conn = _open_db(db)
    insert = insert_event_sql(1)
    on_hand: dict[str, int] = {}
    async with jetstream() as (nc, js):
        inbox: list[Any] = []
        arrived = asyncio.Event()

        async def take(msg: Any) -> None:
            inbox.append(msg)
            arrived.set()

        await js.subscribe(
            names.subject,
            durable=f"apply{names.token}",
            stream=names.stream,
            cb=take,
            manual_ack=True,
            pending_msgs_limit=1_000_000,
            config=ConsumerConfig(
                ack_policy=AckPolicy.ALL,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=100_000,
            ),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(sys.stdin.fileno(), stop.set)  # the parent closes stdin: stop
        print("ready", flush=True)
        while not stop.is_set():
            if not inbox:
                arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), 0.5)
                continue
            msgs, inbox[:] = inbox[:FETCH], inbox[FETCH:]
            rows = [tuple(json.loads(m.data)) for m in msgs]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, rows)
            conn.executemany(UPSERT_STOCK, [(WAREHOUSE, r[2], r[5]) for r in rows])
            conn.execute("UPDATE peer_watermark SET seq = ? WHERE id = 1", (rows[-1][0],))
            conn.execute("COMMIT")
            await msgs[-1].ack()
            changed: dict[str, int] = {}
            for r in rows:
                sku = r[2]
                value = on_hand[sku] = on_hand.get(sku, 0) + int(r[5])
                if sku in room:
                    changed[sku] = value
            if changed:
                message = {"seq": rows[-1][0], "skus": changed}
                await nc.publish(names.room_subject, json.dumps(message).encode())
        loop.remove_reader(sys.stdin.fileno())
    conn.close()


def _main(argv: list[str]) -> None:
    db, stream, subject, room_subject, *skus = argv
    token = stream.removeprefix("SSBENCH")
    names = PeerNames(token)
    assert (names.subject, names.room_subject) == (subject, room_subject)
    asyncio.run(_consume(Path(db), names, set(skus)))


# -- catch-up -----------------------------------------------------------------------------


def catchup(rows: Sequence[EventRow], workdir: Path, timeout: float = 600.0) -> dict[str, Any]:
    """A backlog of ``rows`` in the outbox (committed untimed), then timed from the
    relay's start until the consumer has applied the last one."""
    names = PeerNames.fresh()
    outbox = Outbox(workdir / "peer-outbox.db")
    for i in range(0, len(rows), 10_000):
        outbox.commit(rows[i : i + 10_000])
    last = rows[-1].seq
    hub_db = workdir / "peer-hub.db"

    async def run() -> dict[str, Any]:
        async with jetstream() as (_, js):
            await make_stream(js, names)
            try:
                with consumer(hub_db, names, []) as child:
                    reader = WatermarkReader(hub_db)
                    try:
                        started = time.perf_counter()
                        relay = asyncio.ensure_future(publish_outbox(js, outbox, names.subject))
                        while reader() < last:
                            if child.poll() is not None:
                                raise RuntimeError("the peer's consumer exited")
                            if time.perf_counter() - started > timeout:
                                raise RuntimeError(f"peer catch-up timed out at {reader()}")
                            await asyncio.sleep(0.002)
                        seconds = time.perf_counter() - started
                        await relay
                    finally:
                        reader.close()
            finally:
                await drop_stream(js, names)
        return {"events": len(rows), "seconds": seconds, "events_per_s": len(rows) / seconds}

    try:
        return asyncio.run(run())
    finally:
        outbox.close()


if __name__ == "__main__":
    _main(sys.argv[1:])
