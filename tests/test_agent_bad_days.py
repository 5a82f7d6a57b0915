"""An operator's worst day at the warehouse, for real: a full disk, a second
daemon on the same store, the wrong file, a damaged file, a store that only
grows.

Every refusal is one line on stderr, a non-zero exit, no traceback, and the
store exactly as it was (every table dumped before and after). A full disk is
a real one: a small tmpfs filled up with a file (the tests that need it are
skipped, saying why, where ``mount`` is not permitted), or SQLite's
``max_page_count`` in-process. Damage is real too: garbage written over whole
pages of the store file, found by walking the events table's b-tree in the
file itself.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    HubProcess,
    agent_on_hand,
    hub_on_hand,
    hub_watermark,
    read_only,
    wait_until,
)
from test_cli import agent, assert_clean_error, closed_port, write_csv

from stocksync.agent.store import AgentStore, StoreError, status_info
from stocksync.events import InvalidEvent, Kind, NewEvent
from stocksync.tools.procs import AgentChild

AGENT_ID = 0x53534147  # "SSAG"
HUB_ID = 0x53534855  # "SSHU"

Dump = dict[str, list[tuple[Any, ...]]]


# -- helpers -----------------------------------------------------------------


def dump(db: Path) -> Dump:
    """Every row of every table, read without writing."""
    with contextlib.closing(read_only(db)) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return {n: conn.execute(f'SELECT * FROM "{n}" ORDER BY rowid').fetchall() for n in names}


def receive(sku: str, n: int) -> NewEvent:
    return NewEvent(sku=sku, kind=Kind.RECEIVE, quantity=n)


def ship(sku: str, n: int) -> NewEvent:
    return NewEvent(sku=sku, kind=Kind.SHIP, quantity=n)


def count(sku: str, counted: int, as_of_seq: int | None = None) -> NewEvent:
    return NewEvent(sku=sku, kind=Kind.COUNT, quantity=counted, as_of_seq=as_of_seq)


def some_events(n: int, skus: int = 7) -> list[NewEvent]:
    """``n`` receives and ships over a few SKUs, never below zero per SKU."""
    return [
        receive(f"SKU-{i % skus}", 5) if i % 3 else ship(f"SKU-{i % skus}", 1) for i in range(n)
    ]


def new_store(db: Path, events: list[NewEvent], **kw: Any) -> None:
    with AgentStore(db) as store:
        store.record_many(events, **kw)


def application_id(db: Path) -> int:
    with contextlib.closing(read_only(db)) as conn:
        return int(conn.execute("PRAGMA application_id").fetchone()[0])


def meta(db: Path, key: str) -> str | None:
    with contextlib.closing(read_only(db)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def saved_acked(db: Path) -> int:
    return int(meta(db, "acked_seq") or 0)


def status_json(db: Path) -> dict[str, Any]:
    out = agent("status", "--db", str(db), "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def run_args(db: Path, warehouse: str, hub: str) -> list[str]:
    return ["run", "--warehouse", warehouse, "--db", str(db), "--hub", hub, "--insecure"]


def wait_exit(child: AgentChild, timeout: float = 60.0) -> int:
    """The exit code of a daemon expected to stop on its own."""
    try:
        return child.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        raise AssertionError(f"{child.name} kept running: {child.text()[-1500:]}") from None


def assert_one_line_exit(child: AgentChild, *fragments: str) -> None:
    """The daemon exited non-zero, saying why in one line (no traceback)."""
    code = wait_exit(child)
    text = child.text()
    assert code != 0, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), (fragment, errors[0])


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentChild]]:
    """Daemons a test starts by hand; any still running are killed afterwards."""
    started: list[AgentChild] = []
    yield started
    for child in started:
        child.kill()


def start_daemon(
    agents: list[AgentChild], db: Path, hub: str, log: Path, *extra: str, wh: str = "WH-BAD"
) -> AgentChild:
    child = AgentChild(wh, db, hub, log, extra, env={"STOCKSYNC_AGENT_BACKOFF_MAX_S": "1"})
    agents.append(child)
    return child


# -- a full disk ----------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 8 MiB tmpfs of our own, to fill up; skipped (saying why) where mount is refused."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"a full disk needs a small tmpfs, and mount cannot run here: {e}")
    if done.returncode != 0:
        pytest.skip(
            "a full disk needs a small tmpfs, and mount was refused "
            f"({done.stderr.strip() or done.returncode}); run as root to test it"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (1 << 20, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return filler


def test_opening_an_existing_store_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    new_store(db, some_events(5))
    wal = Path(f"{db}-wal")
    # A connection held open keeps the WAL file, so any write would show in it.
    with contextlib.closing(sqlite3.connect(db)) as holder:
        holder.execute("SELECT count(*) FROM events").fetchone()
        before = (db.read_bytes(), wal.stat().st_size)
        for read_only_ in (False, True):
            with AgentStore(db, read_only=read_only_) as store:
                assert store.high_seq() == 5
                assert store.epoch
        assert (db.read_bytes(), wal.stat().st_size) == before


def test_a_full_store_refuses_the_write_and_keeps_everything(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    new_store(db, some_events(5))
    before = dump(db)
    with AgentStore(db) as store:
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        # SQLite's own limit stands in for the disk: no page more than there is.
        store.conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreError, match="the disk is full"):
            store.record_many(some_events(5000))
        with pytest.raises(StoreError, match="the disk is full"):
            store.record_many([receive("SKU-X", 1)] * 3000)
        assert store.high_seq() == 5
    assert dump(db) == before


def test_read_only_commands_work_on_a_full_disk(small_disk: Path) -> None:
    db = small_disk / "agent.db"
    new_store(db, some_events(40))
    with AgentStore(db) as store:
        store.claim("WH-FULL")
        expected = store.on_hand()
    before = dump(db)
    fill(small_disk)  # no process has the store open: its -shm file is gone too

    info = status_json(db)
    assert (info["warehouse"], info["high_seq"], info["pending"]) == ("WH-FULL", 40, 40)
    assert info["size_bytes"] > 0
    assert info["oldest_seq"] == 1
    text = agent("status", "--db", str(db))
    assert text.returncode == 0, text.stderr
    assert "pending events" in text.stdout

    out = agent("check", "--db", str(db), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["sound"] is True

    with AgentStore(db, read_only=True) as store:
        assert store.on_hand() == expected
    (small_disk / "filler").unlink()
    assert dump(db) == before


@pytest.mark.parametrize("held", [True, False], ids=["store-held-open", "store-closed"])
def test_writes_on_a_full_disk_fail_in_one_line_and_store_nothing(
    small_disk: Path, tmp_path: Path, held: bool
) -> None:
    """With the store held open (a daemon running) the write fails at COMMIT;
    with it closed, opening it for writing fails. Either way: one line."""
    db = small_disk / "agent.db"
    new_store(db, some_events(12))
    before = dump(db)
    csv = write_csv(tmp_path / "in.csv", [f"SKU-{i},receive,{i + 1}" for i in range(3000)])
    with contextlib.ExitStack() as stack:
        if held:
            holder = stack.enter_context(contextlib.closing(sqlite3.connect(db)))
            holder.execute("SELECT count(*) FROM events").fetchone()
        filler = fill(small_disk)
        for args in (
            ["record", "receive", "SKU-1", "5"],
            ["record", "count", "SKU-1", "7", "--as-of-seq", "3"],
            ["import", str(csv)],
        ):
            out = agent(*args, "--db", str(db))
            assert_clean_error(out, "disk is full")
            assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        filler.unlink()
    assert dump(db) == before
    # Room again: the same command works.
    out = agent("record", "receive", "SKU-1", "5", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "recorded seq 13" in out.stdout


def test_the_daemon_streams_on_a_full_disk_and_saves_its_books_once_there_is_room(
    small_disk: Path, hub: HubProcess, agents: list[AgentChild], tmp_path: Path
) -> None:
    db = small_disk / "agent.db"
    warehouse = "WH-FULL"
    new_store(db, some_events(3))
    daemon = start_daemon(agents, db, hub.target, tmp_path / "agent.log", wh=warehouse)
    wait_until(lambda: saved_acked(db) == 3, 60, "the first events acknowledged and saved")

    # The hub goes away; events pile up in the outbox; then the disk fills.
    hub.kill()
    wait_until(lambda: "retrying" in daemon.text(), 60, "the daemon to notice")
    new_store(db, some_events(500))
    filler = fill(small_disk)
    assert_clean_error(agent("record", "receive", "SKU-1", "1", "--db", str(db)), "disk is full")

    hub.start()  # same port, same store
    wait_until(lambda: hub_watermark(hub.db, warehouse) == 503, 60, "the hub to get every event")
    wait_until(
        lambda: "cannot save the daemon's state (will retry)" in daemon.text(),
        60,
        "the daemon to find it cannot save its books",
    )
    daemon.check_alive()
    assert saved_acked(db) == 3, "nothing could be saved on a full disk"
    assert status_json(db)["high_seq"] == 503

    filler.unlink()
    wait_until(lambda: saved_acked(db) == 503, 60, "the daemon to save its books again")
    assert "daemon state saved again" in daemon.text()
    assert hub_on_hand(hub.db, warehouse) == agent_on_hand(db)
    assert daemon.stop(30) == 0
    assert "Traceback" not in daemon.text()


# -- two daemons on one store ---------------------------------------------------------


def test_a_second_daemon_on_one_store_refuses_naming_the_first(
    hub: HubProcess, agents: list[AgentChild], tmp_path: Path
) -> None:
    db = tmp_path / "agent.db"
    new_store(db, some_events(10))
    first = start_daemon(agents, db, hub.target, tmp_path / "first.log")
    first.wait_connected()
    before = hub_watermark(hub.db, "WH-BAD")

    second = start_daemon(agents, db, hub.target, tmp_path / "second.log")
    assert_one_line_exit(second, f"pid {first.pid}", str(db))
    first.check_alive()

    # kill -9 leaves the lock file behind, naming a dead pid: it must not block.
    first.kill()
    lock = Path(f"{db}.lock")
    assert lock.read_text().strip() == str(first.pid)
    third = start_daemon(agents, db, hub.target, tmp_path / "third.log")
    third.wait_connected()
    assert status_json(db)["daemon_pid"] == third.pid
    assert hub_watermark(hub.db, "WH-BAD") >= before
    # A clean stop releases it too.
    assert third.stop(30) == 0
    fourth = start_daemon(agents, db, hub.target, tmp_path / "fourth.log")
    fourth.wait_connected()


def test_a_lock_file_naming_a_dead_process_does_not_block(
    hub: HubProcess, agents: list[AgentChild], tmp_path: Path
) -> None:
    db = tmp_path / "agent.db"
    Path(f"{db}.lock").write_text("999999999\n")
    child = start_daemon(agents, db, hub.target, tmp_path / "agent.log")
    child.wait_connected()
    assert Path(f"{db}.lock").read_text().strip() == str(child.pid)


# -- the wrong file -------------------------------------------------------------------


def test_a_new_store_says_it_is_an_agent_store(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    AgentStore(db).close()
    assert application_id(db) == AGENT_ID


def test_an_older_store_gets_its_application_id_when_opened_for_writing(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    new_store(db, some_events(4))
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA application_id = 0")
        conn.execute("DROP TABLE picks")
        conn.execute("PRAGMA user_version = 1")  # as a store made before either existed
    before = dump(db)
    with AgentStore(db, read_only=True) as store:
        assert store.high_seq() == 4
    picks = agent("picks", "--db", str(db), "--json")
    assert (picks.returncode, picks.stdout.strip()) == (0, "[]"), picks.stderr
    assert application_id(db) == 0, "reading changes nothing"
    assert dump(db) == before
    with AgentStore(db) as store:
        assert store.high_seq() == 4
        assert store.open_picks() == []
    assert application_id(db) == AGENT_ID
    after = dump(db)
    assert after.pop("picks") == []
    assert after == before


def hub_store(path: Path) -> None:
    """A hub's store as the hub makes it, marked as one."""
    from stocksync.hub.sqlite_store import SqliteHubStore

    SqliteHubStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA application_id = {HUB_ID}")


def unmarked_hub_store(path: Path) -> None:
    """A hub's store from before application ids: hub tables, id 0."""
    from stocksync.hub.sqlite_store import SqliteHubStore

    SqliteHubStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA application_id = 0")


def other_program(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA application_id = {0x4D504252}")  # "MPBR": someone else's
        conn.execute("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO things (name) VALUES ('x')")
        conn.commit()


def foreign_tables(path: Path) -> None:
    # A rollback-journal database: opening it as a store must not turn it to WAL.
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)")
        conn.execute("INSERT INTO events (what) VALUES ('a birthday')")
        conn.commit()


def not_sqlite(path: Path) -> None:
    path.write_bytes(b"sku,kind,qty\nSKU-1,receive,5\n" * 200)


WRONG_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "hub-store": (hub_store, "is a stocksync hub store, not an agent store"),
    "unmarked-hub-store": (unmarked_hub_store, "without the agent's tables"),
    "other-program": (other_program, "application_id is 0x4d504252"),
    "foreign-tables": (foreign_tables, "without the agent's tables"),
    "not-sqlite": (not_sqlite, "not a SQLite database"),
}


@pytest.mark.parametrize("case", sorted(WRONG_FILES))
def test_the_wrong_file_is_refused_in_one_line_and_left_as_it_was(
    case: str, tmp_path: Path
) -> None:
    make, fragment = WRONG_FILES[case]
    path = tmp_path / "wrong.db"
    make(path)
    before = path.read_bytes()
    csv = write_csv(tmp_path / "in.csv", ["SKU-1,receive,5"])
    commands = [
        ["record", "receive", "SKU-1", "5", "--db", str(path)],
        ["import", str(csv), "--db", str(path)],
        ["status", "--db", str(path)],
        ["check", "--db", str(path)],
        ["salvage", "--db", str(path), "--out", str(tmp_path / "new.db")],
        run_args(path, "WH-BAD", f"127.0.0.1:{closed_port()}"),
    ]
    for args in commands:
        out = agent(*args)
        assert_clean_error(out, fragment, str(path))
        assert len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
        assert path.read_bytes() == before, f"{args[0]} changed the file"
    assert not (tmp_path / "new.db").exists()
    with pytest.raises(StoreError, match=fragment):
        AgentStore(path)
    assert path.read_bytes() == before


def _open_at_once(path: str, claim: bool, delay: float, errors: Any) -> None:
    time.sleep(delay)
    try:
        with AgentStore(path) as store:
            if claim:
                store.claim("WH-NEW")
    except StoreError as e:
        errors.put(str(e))


def test_processes_creating_one_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    """A daemon starting (and claiming its store) as an ``import`` runs: SQLite
    refuses one of two new connections the switch to WAL at once ("database
    is locked", without waiting); it is tried again instead of failing."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for round_ in range(60):
        path = str(tmp_path / f"store-{round_}.db")
        processes = [
            # The second a few milliseconds after the first, to catch it mid-setup.
            context.Process(target=_open_at_once, args=(path, claim, delay, errors))
            for claim, delay in ((True, 0.0), (False, (round_ % 20) * 0.0002))
        ]
        for p in processes:
            p.start()
        for p in processes:
            p.join(60)
            assert p.exitcode == 0
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []


def test_an_empty_file_becomes_a_store(tmp_path: Path) -> None:
    # What `touch agent.db` leaves, or a crash before the first commit.
    db = tmp_path / "agent.db"
    db.touch()
    out = agent("record", "receive", "SKU-1", "5", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert application_id(db) == AGENT_ID


# -- a damaged file ----------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """SQLite's big-endian varint at ``pos``: (value, position after it)."""
    value = 0
    for i in range(8):
        byte = buf[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    return (value << 8) | buf[pos + 8], pos + 9


def leaf_pages(db: Path, table: str) -> dict[int, list[int]]:
    """Page number -> rowids, for every leaf page of ``table``, read from the file itself.

    Checkpoints first, so every page is in the main file.
    """
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        busy = wait_until(
            lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0 or None,
            30,
            "a checkpoint",
        )
        assert busy
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,))
    data = db.read_bytes()
    leaves: dict[int, list[int]] = {}
    todo = [int(root[0])]
    while todo:
        number = todo.pop()
        page = data[(number - 1) * page_size : number * page_size]
        head = 100 if number == 1 else 0
        kind, cells = page[head], int.from_bytes(page[head + 3 : head + 5], "big")
        pointers = head + (12 if kind == 0x05 else 8)
        offsets = [
            int.from_bytes(page[pointers + 2 * i : pointers + 2 * i + 2], "big")
            for i in range(cells)
        ]
        if kind == 0x05:  # interior: child page numbers, then the right-most child
            todo += [int.from_bytes(page[o : o + 4], "big") for o in offsets]
            todo.append(int.from_bytes(page[head + 8 : head + 12], "big"))
        else:
            assert kind == 0x0D, f"page {number} is not a table b-tree page"
            leaves[number] = [_varint(page, _varint(page, o)[1])[0] for o in offsets]
    return leaves


GARBAGE = b"\xde\xad\xbe\xef"
"""0xDE is no b-tree page type: a page starting with it cannot be read at all."""


def damage(db: Path, pages: list[int], start: int = 0, pattern: bytes = GARBAGE) -> None:
    """Write ``pattern`` over ``pages``, from byte ``start`` of each to its end.

    From 0 the page is unreadable and SQLite says so. From the middle, the page
    header and cell pointers survive and the cells are garbage: SQLite then
    returns rows silently, wrong (zeros: rows of NULLs) or too few (0xDEADBEEF:
    rowids out of range).
    """
    with contextlib.closing(sqlite3.connect(db)) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    with db.open("r+b") as f:
        for number in pages:
            f.seek((number - 1) * page_size + start)
            f.write((pattern * page_size)[: page_size - start])


def unsent_pages(db: Path, acked: int, n: int = 2) -> tuple[list[int], int]:
    """``n`` adjacent leaf pages of events in the middle of the unsent ones,
    and the lowest seq they hold."""
    leaves = sorted(
        (rowids[0], number)
        for number, rowids in leaf_pages(db, "events").items()
        if rowids and rowids[0] > acked + 1
    )
    assert len(leaves) >= n + 4, "too few pages of unsent events to damage the middle"
    middle = leaves[len(leaves) // 2 : len(leaves) // 2 + n]
    return [number for _, number in middle], middle[0][0]


def stream_some(hub: HubProcess, agents: list[AgentChild], db: Path, log: Path) -> int:
    """Let a daemon stream what the store holds, then stop it; returns the hub's watermark."""
    daemon = start_daemon(agents, db, hub.target, log)
    with AgentStore(db, read_only=True) as store:
        high = store.high_seq()
    wait_until(lambda: saved_acked(db) == high, 60, "the events to be acknowledged")
    assert daemon.stop(30) == 0
    return high


def test_run_refuses_a_damaged_store_and_check_reports_it(
    hub: HubProcess, agents: list[AgentChild], tmp_path: Path
) -> None:
    db = tmp_path / "agent.db"
    new_store(db, some_events(100))
    acked = stream_some(hub, agents, db, tmp_path / "first.log")
    new_store(db, some_events(6000))
    pages, _ = unsent_pages(db, acked)
    damage(db, pages)
    before = db.read_bytes()

    daemon = start_daemon(agents, db, hub.target, tmp_path / "agent.log")
    assert_one_line_exit(daemon, "damaged", str(db))
    assert hub_watermark(hub.db, "WH-BAD") == acked, "nothing is sent from a damaged store"

    out = agent("check", "--db", str(db))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "damaged" in out.stdout
    out = agent("check", "--db", str(db), "--json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["sound"] is False
    assert report["problems"]
    assert db.read_bytes() == before, "run and check change nothing"


@pytest.mark.parametrize(
    ("start", "pattern"),
    [(0, GARBAGE), (2048, b"\0"), (2048, GARBAGE)],
    ids=["unreadable-pages", "cells-of-nulls", "cells-out-of-range"],
)
def test_a_read_that_fails_mid_stream_stops_the_daemon_in_one_line(
    hub: HubProcess, agents: list[AgentChild], tmp_path: Path, start: int, pattern: bytes
) -> None:
    db = tmp_path / "agent.db"
    new_store(db, some_events(100))
    daemon = start_daemon(agents, db, hub.target, tmp_path / "agent.log")
    wait_until(lambda: saved_acked(db) == 100, 60, "the first events acknowledged")
    hub.kill()
    wait_until(lambda: "retrying" in daemon.text(), 60, "the daemon to notice")
    # Recorded and damaged while the daemon runs: its start-up check saw none of it.
    new_store(db, some_events(6000))
    pages, first_damaged = unsent_pages(db, 100)
    damage(db, pages, start, pattern)

    hub.start()
    assert_one_line_exit(daemon, "damaged", str(db))
    sent = hub_watermark(hub.db, "WH-BAD")
    assert 100 <= sent < first_damaged


def test_check_says_a_sound_store_is_sound(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    new_store(db, some_events(300))
    before = dump(db)
    out = agent("check", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "sound" in out.stdout
    assert dump(db) == before
    assert_clean_error(agent("check", "--db", str(tmp_path / "missing.db")), "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_salvage_starts_a_new_epoch_from_the_readable_stock(
    hub: HubProcess, agents: list[AgentChild], tmp_path: Path
) -> None:
    db = tmp_path / "agent.db"
    events = [*some_events(5000, skus=40), ship("SKU-NEG", 3), receive("SKU-ZERO", 1)]
    new_store(db, [*events, ship("SKU-ZERO", 1)])
    with AgentStore(db) as store:
        store.claim("WH-BAD")
        old_epoch = store.epoch
        stock = {s: q for s, q in store.on_hand().items() if q}
    assert stock["SKU-NEG"] == -3
    pages, _ = unsent_pages(db, 0)
    damage(db, pages)
    before = db.read_bytes()

    new = tmp_path / "new.db"
    out = agent("salvage", "--db", str(db), "--out", str(new))
    assert out.returncode == 0, out.stderr
    assert str(len(stock)) in out.stdout
    assert db.read_bytes() == before, "the damaged file is kept as it was"
    assert application_id(new) == AGENT_ID
    with AgentStore(new, read_only=True) as store:
        assert store.epoch != old_epoch
        assert store.warehouse == "WH-BAD"
        assert {s: q for s, q in store.on_hand().items() if q} == stock
        rows = store.events(1, store.high_seq())
    assert len(rows) == len(stock)
    assert {r.kind for r in rows if r.sku != "SKU-NEG"} == {int(Kind.COUNT)}
    assert agent("check", "--db", str(new)).returncode == 0

    # It refuses to overwrite anything, and leaves what is there alone.
    new_before = new.read_bytes()
    assert_clean_error(agent("salvage", "--db", str(db), "--out", str(new)), "exists")
    assert new.read_bytes() == new_before
    assert_clean_error(agent("salvage", "--db", str(db), "--out", str(db)), "exists")
    assert db.read_bytes() == before

    # The hub takes the new epoch's snapshot and stock.
    daemon = start_daemon(agents, new, hub.target, tmp_path / "new.log")
    wait_until(lambda: saved_acked(new) == len(stock), 60, "the new store to stream")
    assert hub_on_hand(hub.db, "WH-BAD") == stock
    daemon.check_alive()


def test_salvage_reports_stock_it_cannot_read(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    new_store(db, [receive(f"SKU-{i:05d}", i + 1) for i in range(3000)])
    leaves = leaf_pages(db, "stock")
    assert len(leaves) > 4
    lost_page = sorted(leaves)[len(leaves) // 2]
    damage(db, [lost_page])
    new = tmp_path / "new.db"
    out = agent("salvage", "--db", str(db), "--out", str(new))
    assert out.returncode == 0, out.stderr
    lost = len(leaves[lost_page])
    assert f"{lost} SKUs" in out.stderr, out.stderr
    with AgentStore(new, read_only=True) as store:
        assert len(store.on_hand()) == 3000 - lost


def test_salvage_on_a_full_disk_leaves_nothing_behind(small_disk: Path, tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    new_store(db, some_events(2000, skus=1500))
    out = small_disk / "new.db"
    filler = fill(small_disk)
    assert_clean_error(agent("salvage", "--db", str(db), "--out", str(out)), "disk is full")
    filler.unlink()
    assert sorted(p.name for p in small_disk.iterdir()) == []


# -- a store that only grew -------------------------------------------------------------

HOUR_MS = 3_600_000
NOW_MS = 1_800_000_000_000


def test_prune_removes_old_acknowledged_events_in_small_steps(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    with AgentStore(db) as store:
        store.record_many(some_events(12_000), now_ms=NOW_MS - 200 * HOUR_MS)
        store.record_many(some_events(50), now_ms=NOW_MS - 1 * HOUR_MS)
        stock = store.on_hand()
        cutoff = NOW_MS - 168 * HOUR_MS
        assert store.prune(cutoff, limit=5000) == 0, "nothing acknowledged: nothing pruned"

        store.set_acked_seq(11_000)
        steps = []
        while n := store.prune(cutoff, limit=5000):
            steps.append(n)
        assert steps == [5000, 5000, 1000], "never past the hub's acknowledgement"
        assert store.oldest_seq() == 11_001
        assert store.pruned_through() == 11_000

        store.set_acked_seq(12_050)
        assert store.prune(cutoff, limit=5000) == 1000, "never a young event"
        assert store.oldest_seq() == 12_001
        # Everything acknowledged and old: the newest event stays, so seqs go on.
        assert store.prune(NOW_MS, limit=5000) == 49
        assert store.oldest_seq() == store.high_seq() == 12_050
        assert store.on_hand() == stock, "pruning changes no stock"
        assert store.record(receive("SKU-1", 1)) == 12_051
        assert store.snapshot(12_050) == sorted((s, q) for s, q in stock.items() if q)


def test_a_count_older_than_what_was_kept_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    with AgentStore(db) as store:
        store.record_many(some_events(300), now_ms=NOW_MS - 200 * HOUR_MS)
        store.record_many([receive("SKU-1", 10), ship("SKU-1", 4)], now_ms=NOW_MS)
        store.set_acked_seq(302)
        while store.prune(NOW_MS - 168 * HOUR_MS, limit=100):
            pass
        assert store.pruned_through() == 300
    before = dump(db)
    out = agent("record", "count", "SKU-1", "5", "--as-of-seq", "299", "--db", str(db))
    assert_clean_error(out, "as_of_seq 299", "pruned", "300")
    assert dump(db) == before
    with AgentStore(db) as store, pytest.raises(InvalidEvent, match="pruned"):
        store.record(count("SKU-1", 5, as_of_seq=12))
    assert dump(db) == before
    # As of the horizon itself, every move after it is still there to rebase on.
    with AgentStore(db) as store:
        on_hand_at_300 = store.on_hand("SKU-1")["SKU-1"] - 6
        store.record(count("SKU-1", on_hand_at_300 + 2, as_of_seq=300))
        assert store.on_hand("SKU-1")["SKU-1"] == on_hand_at_300 + 2 + 6


def test_status_shows_the_size_and_the_oldest_kept_seq(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    new_store(db, some_events(2000), now_ms=NOW_MS - 500 * HOUR_MS)
    with AgentStore(db) as store:
        store.set_acked_seq(1500)
        store.prune(NOW_MS, limit=5000)
        info = status_info(store)
    assert info["oldest_seq"] == 1501
    assert info["size_bytes"] >= os.path.getsize(db)
    text = agent("status", "--db", str(db))
    assert text.returncode == 0, text.stderr
    assert "oldest kept seq 1501" in " ".join(text.stdout.split())
    assert "store size" in text.stdout


def test_the_daemon_prunes_what_the_hub_has_and_retention_allows(
    hub: HubProcess, agents: list[AgentChild], tmp_path: Path
) -> None:
    db = tmp_path / "agent.db"
    with AgentStore(db) as store:
        long_ago = time.time_ns() // 1_000_000 - 1000 * HOUR_MS
        store.record_many(some_events(12_000), now_ms=long_ago)
        store.record_many(some_events(30))  # recorded now: younger than any retention
        stock = store.on_hand()
    daemon = start_daemon(agents, db, hub.target, tmp_path / "agent.log")
    wait_until(lambda: status_json(db)["oldest_seq"] == 12_001, 120, "the old events pruned")
    assert saved_acked(db) == 12_030
    assert hub_on_hand(hub.db, "WH-BAD") == {s: q for s, q in stock.items() if q}
    assert agent_on_hand(db) == {s: q for s, q in stock.items() if q}
    daemon.check_alive()
    assert daemon.stop(30) == 0


def test_the_daemon_keeps_events_the_hub_has_not_acknowledged(
    agents: list[AgentChild], tmp_path: Path
) -> None:
    db = tmp_path / "agent.db"
    new_store(db, some_events(50), now_ms=NOW_MS - 10_000 * HOUR_MS)
    config = tmp_path / "agent.toml"
    config.write_text("retention_hours = 0\n")
    # No hub answers, so nothing is ever acknowledged.
    daemon = start_daemon(
        agents, db, f"127.0.0.1:{closed_port()}", tmp_path / "agent.log", "--config", str(config)
    )
    # The bookkeeper saves, prunes, then saves again: two saved failures mean
    # a pruning pass ran in between.
    seen: set[int] = set()

    def saved_twice() -> bool:
        raw = meta(db, "daemon")
        if raw:
            seen.add(int(json.loads(raw)["last_error_unix_ms"]))
        return len(seen - {0}) >= 2

    wait_until(saved_twice, 60, "the daemon to save its state twice")
    daemon.check_alive()
    assert status_json(db)["oldest_seq"] == 1
    assert daemon.stop(30) == 0
    assert len(dump(db)["events"]) == 50


def test_a_hub_that_lost_pruned_events_is_told_to_take_a_new_epoch(
    hub: HubProcess, agents: list[AgentChild], tmp_path: Path
) -> None:
    """The hub's store restored from an older copy asks again for events this
    store has pruned: resending cannot heal that, and the daemon says so."""
    db = tmp_path / "agent.db"
    new_store(db, some_events(100))
    config = tmp_path / "agent.toml"
    config.write_text("retention_hours = 0\n")
    daemon = start_daemon(agents, db, hub.target, tmp_path / "agent.log", "--config", str(config))
    wait_until(lambda: saved_acked(db) == 100, 60, "the first events acknowledged")
    assert hub.stop() == 0
    backup = {p.name: p.read_bytes() for p in tmp_path.glob("hub.db*")}
    hub.start()
    new_store(db, some_events(200))
    wait_until(lambda: status_json(db)["oldest_seq"] == 300, 60, "acknowledged events pruned")

    assert hub.stop() == 0
    for p in tmp_path.glob("hub.db*"):
        p.unlink()
    for name, data in backup.items():
        (tmp_path / name).write_bytes(data)
    hub.start()
    wait_until(
        lambda: "the hub lost acknowledged events" in (status_json(db)["last_error"] or ""),
        60,
        "the daemon to say why it cannot resume",
    )
    daemon.check_alive()
    assert hub_watermark(hub.db, "WH-BAD") == 100, "nothing is sent over the hole"
