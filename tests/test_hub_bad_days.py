"""The hub on an operator's worst day: each finding of the "worst day" issue
that concerns the hub, as a regression test against real processes.

- a second hub on the same address refuses to start (no port sharing), and
  creates no store;
- the hub refuses an agent's store, or any file that is not its own, in one
  line, leaving the file untouched;
- two stores claiming one warehouse: a new epoch is refused while the old
  one is connected; accepted once the old one is silent, recorded as a
  conflict with its backlog; the old one speaking again is a loud conflict
  shown by ``warehouses`` and ``conflicts``;
- a stream that says Hello and then sends no snapshot is closed;
- SIGTERM: agents are told, the store is checkpointed, one line, exit 0;
- a full disk under the hub: agents get UNAVAILABLE "hub store is full" and
  back off, the hub logs the incident once, and everything lands exactly
  once after space comes back.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import (
    AGENT,
    HUB,
    AgentProcess,
    HubProcess,
    agent_on_hand,
    hub_on_hand,
    hub_watermark,
    run_cli,
    wait_until,
)

from stocksync.agent.store import AgentStore
from stocksync.events import Kind, NewEvent
from stocksync.v1 import sync_pb2, sync_pb2_grpc


def hub_json(target: str, *args: str) -> Any:
    out = run_cli(HUB, *args, "--hub", target, "--insecure", "--json", check=True)
    return json.loads(out.stdout)


def record(db: Path, n: int, sku: str = "SKU-1") -> None:
    with AgentStore(db) as store:
        store.record_many([NewEvent(sku, Kind.RECEIVE, 1 + i % 3) for i in range(n)])


def test_a_second_hub_on_the_same_address_refuses_to_start(tmp_path: Path) -> None:
    first = HubProcess(tmp_path / "hub.db", tmp_path / "hub.log").start()
    try:
        out = run_cli(
            HUB, "serve", "--db", str(tmp_path / "other.db"), "--listen", first.target, "--insecure"
        )
        assert out.returncode == 1
        assert "address already in use" in out.stderr and "Traceback" not in out.stderr
        assert not (tmp_path / "other.db").exists(), "the second hub created a store"
    finally:
        first.kill()


def test_the_hub_refuses_an_agent_store_and_leaves_it_untouched(tmp_path: Path) -> None:
    agent_db = tmp_path / "agent.db"
    record(agent_db, 3)
    before = agent_db.read_bytes()
    out = run_cli(HUB, "serve", "--db", str(agent_db), "--listen", "127.0.0.1:0", "--insecure")
    assert out.returncode == 1
    assert "agent store" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert agent_db.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"hello, not a database at all" * 200, "not a database"), (b"", None)],
    ids=["garbage", "empty-is-a-new-store"],
)
def test_the_hub_refuses_a_file_that_is_not_a_database(
    tmp_path: Path, content: bytes, fragment: str | None
) -> None:
    path = tmp_path / "hub.db"
    path.write_bytes(content)
    if fragment is None:  # an empty file is a new store: the hub serves
        hub = HubProcess(path, tmp_path / "hub.log").start()
        hub.kill()
        return
    out = run_cli(HUB, "serve", "--db", str(path), "--listen", "127.0.0.1:0", "--insecure")
    assert out.returncode == 1 and fragment in out.stderr, out.stderr
    assert path.read_bytes() == content


def test_the_hub_refuses_another_applications_sqlite_file(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "hub.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    before = path.read_bytes()
    out = run_cli(HUB, "serve", "--db", str(path), "--listen", "127.0.0.1:0", "--insecure")
    assert out.returncode == 1 and "not a stocksync hub store" in out.stderr, out.stderr
    assert path.read_bytes() == before


def test_two_stores_claiming_one_warehouse_are_never_silent(tmp_path: Path) -> None:
    with contextlib.ExitStack() as cleanup:
        _two_stores(tmp_path, cleanup)


def _two_stores(tmp_path: Path, cleanup: contextlib.ExitStack) -> None:
    def started(p: AgentProcess) -> AgentProcess:
        cleanup.callback(p.kill)
        return p.start()

    hub = HubProcess(tmp_path / "hub.db", tmp_path / "hub.log").start()
    cleanup.callback(hub.kill)
    first_db, second_db = tmp_path / "first.db", tmp_path / "second.db"
    record(first_db, 10)
    with AgentStore(second_db) as store:
        store.record_many([NewEvent("SKU-2", Kind.RECEIVE, 50)])
    first = started(AgentProcess("WH-D", first_db, hub.target, tmp_path / "first.log"))
    wait_until(lambda: hub_watermark(hub.db, "WH-D") == 10, 60, "the first store")
    stock_before = hub_on_hand(hub.db, "WH-D")

    # A second box with its own store says it is WH-D while the first is connected.
    second = started(AgentProcess("WH-D", second_db, hub.target, tmp_path / "second.log"))
    wait_until(
        lambda: "two stores claim WH-D" in (tmp_path / "second.log").read_text(),
        60,
        "the second store to be refused",
    )

    def last_error(db: Path) -> str | None:
        out = run_cli(AGENT, "status", "--db", str(db), "--json", check=True).stdout
        return json.loads(out)["last_error"]  # type: ignore[no-any-return]

    error = wait_until(lambda: last_error(second_db), 30, "status to show the refusal")
    assert "FAILED_PRECONDITION" in error and "two stores claim WH-D" in error
    assert hub_on_hand(hub.db, "WH-D") == stock_before, "the second store changed nothing"

    # The first goes silent (a dead box): the second takes over, and it is recorded.
    first.kill()
    wait_until(lambda: hub_on_hand(hub.db, "WH-D") == {"SKU-2": 50}, 60, "the new epoch")
    conflicts = hub_json(hub.target, "conflicts")
    replaced = [c for c in conflicts if c["kind"] == "epoch_replaced"]
    assert replaced and "replaced epoch" in replaced[0]["cause"]
    second.stop()

    # The first box comes back: refused, loudly, and shown by warehouses and conflicts.
    again = started(AgentProcess("WH-D", first_db, hub.target, tmp_path / "again.log"))
    wait_until(
        lambda: any(c["kind"] == "two_stores" for c in hub_json(hub.target, "conflicts")),
        60,
        "the two-stores conflict",
    )
    [alarm] = [c for c in hub_json(hub.target, "conflicts", "--open") if c["kind"] == "two_stores"]
    assert "two stores claim WH-D" in alarm["cause"] and alarm["open"]
    [wh] = hub_json(hub.target, "warehouses")
    assert any("two stores claim WH-D" in a for a in wh["alerts"])
    text = run_cli(HUB, "warehouses", "--hub", hub.target, "--insecure", check=True).stdout
    assert "ALERT" in text and "two stores claim WH-D" in text
    assert hub_on_hand(hub.db, "WH-D") == {"SKU-2": 50}
    # Reconnect attempts do not flood the list: one alarm per store.
    wait_until(lambda: (tmp_path / "again.log").read_text().count("attempt") >= 3, 60, "retries")
    assert len([c for c in hub_json(hub.target, "conflicts") if c["kind"] == "two_stores"]) == 1
    # The operator stops the old box, then closes the alarm.
    again.kill()
    run_cli(
        HUB,
        "conflicts",
        "--resolve",
        str(alarm["id"]),
        "--hub",
        hub.target,
        "--insecure",
        check=True,
    )
    assert not [c for c in hub_json(hub.target, "conflicts", "--open") if c["kind"] == "two_stores"]


def test_a_stream_that_never_sends_its_snapshot_is_closed(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("snapshot_timeout_s = 0.5\n")
    hub = HubProcess(tmp_path / "hub.db", tmp_path / "hub.log", 0, "--config", str(config))
    hub.start()
    try:
        requests: queue.Queue[sync_pb2.SyncRequest | None] = queue.Queue()
        with grpc.insecure_channel(hub.target) as channel:
            call = sync_pb2_grpc.SyncServiceStub(channel).Sync(iter(requests.get, None), timeout=60)
            requests.put(
                sync_pb2.SyncRequest(
                    hello=sync_pb2.Hello(
                        warehouse="WH-Q", epoch="e-new", high_seq=3, protocol_version=1
                    )
                )
            )
            assert next(call).welcome.snapshot_required
            with pytest.raises(grpc.RpcError) as caught:
                for _ in call:  # pings only, until the deadline
                    pass
            err: Any = caught.value
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no snapshot received within 0.5 s" in err.details()
            requests.put(None)
    finally:
        hub.kill()


def test_sigterm_tells_agents_checkpoints_and_exits_cleanly(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub.db", tmp_path / "hub.log").start()
    db = tmp_path / "a.db"
    record(db, 200_000)
    agent = AgentProcess("WH-A", db, hub.target, tmp_path / "a.log").start()
    wait_until(lambda: hub_watermark(hub.db, "WH-A") > 0, 60, "streaming")
    assert hub.stop() == 0
    log = (tmp_path / "hub.log").read_text()
    assert "Traceback" not in log and "CancelledError" not in log
    assert "stopped:" in log and "checkpointed" in log
    wal = Path(f"{hub.db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "the WAL was folded in"
    wait_until(
        lambda: "hub is stopping" in (tmp_path / "a.log").read_text(), 30, "the agent to be told"
    )
    # Nothing acknowledged is lost: the restarted hub resumes where it stopped.
    hub.start()
    wait_until(lambda: hub_watermark(hub.db, "WH-A") == 200_000, 120, "the rest")
    assert hub_on_hand(hub.db, "WH-A") == agent_on_hand(db)
    agent.stop()
    hub.kill()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB filesystem of its own (tmpfs), for a full disk that is real."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_under_the_hub_is_one_clear_status_and_heals(
    tmp_path: Path, small_disk: Path
) -> None:
    hub = HubProcess(small_disk / "hub.db", tmp_path / "hub.log").start()
    filler = small_disk / "filler"
    # Leave the hub about 1 MiB: enough to start, not for what follows.
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(0, free - (1 << 20)))
    db = tmp_path / "a.db"
    record(db, 30_000)
    agent = AgentProcess("WH-F", db, hub.target, tmp_path / "a.log").start()
    try:
        wait_until(
            lambda: "hub store is full" in (tmp_path / "a.log").read_text(), 120, "a full disk"
        )

        def last_error() -> str:
            out = run_cli(AGENT, "status", "--db", str(db), "--json", check=True).stdout
            return json.loads(out)["last_error"] or ""  # type: ignore[no-any-return]

        wait_until(lambda: "UNAVAILABLE: hub store is full" in last_error(), 30, "status")
        wait_until(
            lambda: (tmp_path / "a.log").read_text().count("hub store is full") >= 3,
            120,
            "a few refused attempts",
        )
        hub_log = (tmp_path / "hub.log").read_text()
        assert "Traceback" not in hub_log
        # One line for the incident, not one per attempt.
        assert hub_log.count("ERROR") == 1, hub_log
        assert "hub store is full: " in hub_log
        filler.unlink()  # space again
        wait_until(lambda: hub_watermark(hub.db, "WH-F") == 30_000, 180, "the backlog")
        assert hub_on_hand(hub.db, "WH-F") == agent_on_hand(db)
    finally:
        agent.kill()
        hub.kill()
