"""What both SQLite stores (the agent's and the hub's) share: opening a file
with the right pragmas, the one check of the ``synchronous`` setting, and
naming what a ``sqlite3.Error`` means for an operator.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

__all__ = [
    "AGENT_APPLICATION_ID",
    "HUB_APPLICATION_ID",
    "SYNCHRONOUS_LEVELS",
    "check_synchronous",
    "connect",
    "connect_read_only",
    "error_kind",
    "use_wal",
]

SYNCHRONOUS_LEVELS = ("NORMAL", "FULL", "EXTRA")
"""Accepted values of the ``synchronous`` setting. OFF is refused everywhere:
"recorded" and "acknowledged" promise that a power loss loses nothing."""

UNSAFE_OFF_ENV = "STOCKSYNC_TEST_ALLOW_SYNCHRONOUS_OFF"
"""Set to 1 to accept OFF as well: only for the power-loss campaign's control
run, which must show that the test can see a loss."""


def check_synchronous(value: str) -> str:
    """Return ``value`` upper-cased if it is an accepted ``synchronous`` level.

    Raises:
        ValueError: naming the accepted levels.
    """
    level = str(value).strip().upper()
    if level == "OFF" and os.environ.get(UNSAFE_OFF_ENV) == "1":
        return level
    if level not in SYNCHRONOUS_LEVELS:
        raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {value!r}")
    return level


def connect(
    path: str | Path, synchronous: str, busy_timeout_ms: int = 10_000, wal: bool = True
) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode (transactions are explicit), WAL, and
    the given ``synchronous`` level, usable from any one thread at a time.

    With ``wal=False`` the journal mode is left alone: switching to WAL
    rewrites the file's header, so a caller that must first check what the
    file is calls :func:`use_wal` after the check.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    if wal:
        use_wal(conn)
    conn.execute(f"PRAGMA synchronous = {check_synchronous(synchronous)}")
    # Savepoints keep a statement journal; in memory it costs no file I/O.
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def use_wal(conn: sqlite3.Connection) -> None:
    """Put the database in write-ahead-log mode (a no-op if it is already).

    When two processes open the same new file at once (a daemon starting as
    ``import`` runs, say), SQLite refuses one of them the switch with
    "database is locked" at once, without calling the busy handler; the
    switch is tried again until the connection's ``busy_timeout`` is spent.
    """
    if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    patience = conn.execute("PRAGMA busy_timeout").fetchone()[0] / 1000
    deadline = time.monotonic() + patience
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode not in _BUSY or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


_KINDS = {
    5: "busy",  # SQLITE_BUSY: another process holds the write lock
    6: "busy",  # SQLITE_LOCKED
    8: "read-only",  # SQLITE_READONLY
    10: "io",  # SQLITE_IOERR
    11: "corrupt",  # SQLITE_CORRUPT
    13: "full",  # SQLITE_FULL
    14: "cannot-open",  # SQLITE_CANTOPEN
    26: "not-a-database",  # SQLITE_NOTADB
}


def error_kind(error: sqlite3.Error) -> str:
    """What a SQLite error means: ``full``, ``busy``, ``corrupt``, ``io``,
    ``read-only``, ``cannot-open``, ``not-a-database`` or ``other``."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return _KINDS.get(code & 0xFF, "other")
    text = str(error)
    if "disk is full" in text:
        return "full"
    if "locked" in text:
        return "busy"
    return "other"


AGENT_APPLICATION_ID = 0x53534147
"""``PRAGMA application_id`` of an agent's store: ASCII "SSAG". Each file says
what it is (DESIGN §6), so neither end opens the other's store."""

HUB_APPLICATION_ID = 0x53534855
"""``PRAGMA application_id`` of a hub's store: ASCII "SSHU"."""

_SHARED_MEMORY_FAILURES = frozenset(
    {"SQLITE_IOERR_SHMSIZE", "SQLITE_IOERR_SHMOPEN", "SQLITE_IOERR_SHMMAP", "SQLITE_FULL"}
)


def connect_read_only(path: str | Path, busy_timeout_ms: int = 10_000) -> sqlite3.Connection:
    """Open ``path`` for reading only; nothing it does can change the database.

    A reader of a WAL database needs the ``-shm`` file that indexes the WAL.
    When there is no room to create it (a full disk) and the WAL is empty, the
    main file alone holds every committed transaction, so it is read as
    immutable instead: that needs no ``-shm`` at all.

    Raises:
        sqlite3.Error: if the file cannot be read as a database.
    """
    base = Path(path).absolute().as_uri()
    conn = sqlite3.connect(
        f"{base}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, timeout=0
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as e:
        conn.close()
        wal = Path(f"{path}-wal")
        wal_empty = not wal.exists() or wal.stat().st_size == 0
        if getattr(e, "sqlite_errorname", "") not in _SHARED_MEMORY_FAILURES or not wal_empty:
            raise
        conn = sqlite3.connect(
            f"{base}?mode=ro&immutable=1",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
    conn.execute("PRAGMA query_only = 1")
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn
