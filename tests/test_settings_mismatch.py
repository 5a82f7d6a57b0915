"""The two ends' settings never turn into a silent retry loop.

- A hub whose batch limit is below the agent's: the agent sends batches the
  hub accepts (the Welcome's ``max_batch_events``), end to end.
- A hub that refuses what the agent sends: every attempt is logged once,
  ``status`` shows the hub's status and detail, and the backoff keeps growing
  (attempt numbers never start over) instead of a fresh pause per refusal.
- The daemon's bookkeeping never freezes the stream: with another process
  holding the store's write lock, buffered events still reach the hub.
- ``serve`` loads neither the demo, the bench nor the agent's store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import (
    AGENT,
    AgentProcess,
    HubProcess,
    hub_on_hand,
    hub_watermark,
    run_cli,
    wait_until,
)

from stocksync.agent.link import AgentLink
from stocksync.agent.store import AgentStore, status_info
from stocksync.config import AgentConfig
from stocksync.events import Kind, NewEvent
from stocksync.v1 import sync_pb2, sync_pb2_grpc


def record_offline(db: Path, n: int, warehouse: str = "WH-LAX") -> None:
    with AgentStore(db) as store:
        store.claim(warehouse)
        store.record_many([NewEvent(f"SKU-{i % 17}", Kind.RECEIVE, 1 + i % 5) for i in range(n)])


def test_agent_sends_no_batch_larger_than_the_hubs_limit(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("max_batch_events = 100\n")
    hub = HubProcess(tmp_path / "hub.db", tmp_path / "hub.log", 0, "--config", str(config))
    hub.start()
    db = tmp_path / "lax.db"
    record_offline(db, 500)
    agent = AgentProcess("WH-LAX", db, hub.target, tmp_path / "agent.log").start()
    try:
        wait_until(lambda: hub_watermark(hub.db, "WH-LAX") == 500, 60, "all 500 events")
        with AgentStore(db) as store:
            expected = {s: q for s, q in store.on_hand().items() if q}
        assert hub_on_hand(hub.db, "WH-LAX") == expected
        log = (tmp_path / "agent.log").read_text()
        assert "batches of up to 100 events" in log
        assert "exceeds the limit" not in log and "INVALID_ARGUMENT" not in log
        assert "exceeds the limit" not in (tmp_path / "hub.log").read_text()
    finally:
        agent.kill()
        hub.kill()


class RefusingHub(sync_pb2_grpc.SyncServiceServicer):
    """A working SyncService that welcomes every agent and refuses its first batch
    the way the protocol says: a Goodbye naming the status, then the status."""

    def __init__(self) -> None:
        self.streams = 0

    async def Sync(
        self, request_iterator: AsyncIterator[sync_pb2.SyncRequest], context: Any
    ) -> AsyncIterator[sync_pb2.SyncResponse]:
        self.streams += 1
        async for request in request_iterator:
            kind = request.WhichOneof("message")
            if kind == "hello":
                yield sync_pb2.SyncResponse(
                    welcome=sync_pb2.Welcome(watermark=0, protocol_version=1, max_batch_events=50)
                )
            elif kind == "batch":
                detail = "batch refused: event seq 1: sku is cursed"
                yield sync_pb2.SyncResponse(
                    goodbye=sync_pb2.Goodbye(code="INVALID_ARGUMENT", detail=detail)
                )
                # As the hub does: the agent hangs up once it has read the
                # Goodbye; ending the call first could reset the stream over it.
                ended = asyncio.Event()
                context.add_done_callback(lambda _, e=ended: e.set())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1):
                        await ended.wait()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, detail)


def test_a_refusal_backs_off_more_each_time_and_is_shown_by_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stocksync.agent")
    db = tmp_path / "lax.db"
    record_offline(db, 20)
    # The agent's store claims an epoch the hub knows (watermark 0), so it streams.
    servicer = RefusingHub()
    attempts: list[int] = []

    async def main() -> AgentLink:
        server = grpc.aio.server()
        sync_pb2_grpc.add_SyncServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        config = AgentConfig(
            warehouse="WH-LAX",
            hub=f"127.0.0.1:{port}",
            db=str(db),
            insecure=True,
            backoff_initial_s=0.02,
            backoff_max_s=0.3,
        ).validate()
        store = AgentStore(db)
        link = AgentLink(config, store)
        task = asyncio.ensure_future(link.run())
        while servicer.streams < 6:
            await asyncio.sleep(0.01)
            if link.failed_attempts and (not attempts or attempts[-1] != link.failed_attempts):
                attempts.append(link.failed_attempts)
        link.stop()
        await task
        store.close()
        await server.stop(None)
        return link

    link = asyncio.run(main())
    # Never a fresh start: attempt numbers only grow while the hub refuses
    # (sampled above, and every one of them as the agent logged it: the
    # sampling may miss the first, the log does not).
    assert attempts == sorted(attempts) and attempts[-1] >= 4, attempts
    logged = [
        int(m[1])
        for r in caplog.records
        if r.name == "stocksync.agent" and (m := re.match(r"attempt (\d+):", r.getMessage()))
    ]
    assert logged == list(range(1, len(logged) + 1)) and len(logged) >= 5, logged
    assert link.reconnects >= 5
    # Each counted as a refusal, under the hub's status.
    wh = {"warehouse": "WH-LAX"}
    registry = link.metrics.registry
    refused = registry.get_sample_value(
        "stocksync_agent_reconnects_total", {**wh, "reason": "refused"}
    )
    assert refused == link.reconnects
    errors = {**wh, "code": "INVALID_ARGUMENT"}
    assert registry.get_sample_value("stocksync_agent_errors_total", errors) >= link.reconnects
    with AgentStore(db) as store:
        info = status_info(store)
    assert "INVALID_ARGUMENT: batch refused: event seq 1: sku is cursed" in info["last_error"]
    assert info["last_error_unix_ms"] > 0
    assert info["pending"] == 20  # nothing was lost or marked sent


def test_status_shows_the_last_error_of_a_refused_agent(tmp_path: Path) -> None:
    """A retired epoch, refused at the Hello: `status` says why, attempt after attempt."""
    hub = HubProcess(tmp_path / "hub.db", tmp_path / "hub.log").start()
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    record_offline(old, 3)
    a = AgentProcess("WH-LAX", old, hub.target, tmp_path / "old.log").start()
    wait_until(lambda: hub_watermark(hub.db, "WH-LAX") == 3, 60, "the old store")
    a.stop()
    record_offline(new, 2)
    b = AgentProcess("WH-LAX", new, hub.target, tmp_path / "new.log").start()
    wait_until(lambda: hub_watermark(hub.db, "WH-LAX") == 2, 60, "the new store")
    b.stop()
    again = AgentProcess("WH-LAX", old, hub.target, tmp_path / "again.log").start()
    try:

        def refused() -> dict[str, Any] | None:
            out = run_cli(AGENT, "status", "--db", str(old), "--json", check=True).stdout
            info: dict[str, Any] = json.loads(out)
            return info if info["last_error"] else None

        info = wait_until(refused, 60, "status to show the refusal")
        assert "FAILED_PRECONDITION" in info["last_error"]
        assert "replaced by a newer store" in info["last_error"]
        text = run_cli(AGENT, "status", "--db", str(old), check=True).stdout
        assert re.search(r"last error\s+hub 127\.0\.0\.1:\d+: FAILED_PRECONDITION", text), text
        wait_until(
            lambda: len(re.findall(r"attempt \d+:", (tmp_path / "again.log").read_text())) >= 3,
            60,
            "three attempts",
        )
        numbers = [
            int(n) for n in re.findall(r"attempt (\d+):", (tmp_path / "again.log").read_text())
        ]
        assert numbers == list(range(1, len(numbers) + 1)), numbers
    finally:
        again.kill()
        hub.kill()


def test_a_held_write_lock_does_not_freeze_the_stream(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub.db", tmp_path / "hub.log").start()
    db = tmp_path / "lax.db"
    record_offline(db, 20_000)
    # Another process (an import, say) takes the store's write lock and keeps it.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    agent = AgentProcess("WH-LAX", db, hub.target, tmp_path / "agent.log").start()
    try:
        try:
            # Every buffered event reaches the hub while the lock is still held.
            wait_until(lambda: hub_watermark(hub.db, "WH-LAX") == 20_000, 120, "all events")
            assert holder.poll() is None, "the lock holder is still running"
            assert agent.proc is not None and agent.proc.poll() is None
        finally:
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.close()
            holder.wait(10)
        # Once the lock is free, the daemon's bookkeeping catches up.
        wait_until(
            lambda: status_of(db)["hub_watermark"] == 20_000, 60, "the acked watermark to be saved"
        )
        assert agent.stop() == 0
        assert "Traceback" not in (tmp_path / "agent.log").read_text()
    finally:
        agent.kill()  # whatever failed above: no daemon outlives the test
        hub.kill()


def status_of(db: Path) -> dict[str, Any]:
    with AgentStore(db) as store:
        return status_info(store)


def test_serve_loads_no_demo_bench_or_agent_store(tmp_path: Path) -> None:
    code = f"""
import asyncio, sys
from stocksync.hub import cli
from stocksync.config import HubConfig
from stocksync.hub.server import Hub

async def main():
    hub = Hub(HubConfig(listen="127.0.0.1:0", db={str(tmp_path / "hub.db")!r}, insecure=True))
    await hub.start()
    await hub.stop()

asyncio.run(main())
cli.main.get_command(None, "serve")
loaded = sorted(
    m for m in sys.modules if m.startswith(("stocksync.tools", "stocksync.agent", "aiohttp"))
)
print(loaded)
"""
    # aiohttp too: a hub with no --http and no webhook subscriptions never needs it.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_client_commands_load_no_server() -> None:
    """`stocksync-hub stock` and its kind answer in a third of the time `serve` takes to load."""
    code = """
import sys
from stocksync.hub import cli
for name in ("stock", "warehouses", "reserve", "conflicts"):
    cli.main.get_command(None, name)
heavy = ("stocksync.hub.server", "stocksync.hub.inventory", "aiohttp", "cryptography")
print(sorted(m for m in sys.modules if m.startswith(heavy)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_demo_and_bench_are_still_commands() -> None:
    for name in ("demo", "bench"):
        out = run_cli(str(Path(sys.executable).parent / "stocksync-hub"), name, "--help")
        assert out.returncode == 0, out.stderr
        assert "Example:" in out.stdout


def test_one_check_for_synchronous_and_one_name_for_the_batch_limit(tmp_path: Path) -> None:
    from stocksync.agent.store import StoreError as AgentStoreError
    from stocksync.config import ConfigError, HubConfig
    from stocksync.hub.sqlite_store import SqliteHubStore
    from stocksync.hub.storage import StoreError as HubStoreError

    messages = []
    for attempt in (
        lambda: AgentStore(tmp_path / "a.db", synchronous="OFF"),
        lambda: SqliteHubStore(tmp_path / "h.db", synchronous="OFF"),
        lambda: AgentConfig(warehouse="WH-A", insecure=True, synchronous="OFF").validate(),
        lambda: HubConfig(insecure=True, synchronous="OFF").validate(),
    ):
        with pytest.raises((AgentStoreError, HubStoreError, ConfigError)) as caught:
            attempt()
        messages.append(str(caught.value))
    assert all("must be NORMAL, FULL or EXTRA, not 'OFF'" in m for m in messages), messages
    assert AgentConfig.__dataclass_fields__["max_batch_events"]
    assert HubConfig.__dataclass_fields__["max_batch_events"]
    assert "batch_max_events" not in AgentConfig.__dataclass_fields__
