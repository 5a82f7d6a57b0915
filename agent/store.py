"""The agent's local SQLite store: the stock books and the outbox in one.

The ``events`` table *is* the outbox (DESIGN §6): an event is committed with
its seq in one transaction before the producer hears "recorded", and it stays
there; the hub's watermark (``meta.acked_seq``) says how far the hub has it.
Nothing is sent from memory that the store does not hold, so a crash or power
loss can lose nothing that was reported recorded.

Several processes open one store at once (the daemon, ``record``, ``import``,
``status``): WAL lets readers run beside the one writer, every write takes the
write lock up front (``BEGIN IMMEDIATE``) and waits for it up to
``busy_timeout``.

The file says what it is (``PRAGMA application_id``, DESIGN §6): a store is
opened only if it is an agent's, checked before anything is written, so the
wrong file is refused as it was. Opening writes nothing unless a migration is
due, and a store opened ``read_only`` never writes at all: ``status`` and
``check`` work on a full disk.

Acknowledged events are pruned once older than the retention (:meth:`prune`),
oldest first, so the kept events are always one contiguous run up to the
newest; ``meta.pruned_through`` is the last seq pruned. A COUNT is rebased
over the moves after its ``as_of_seq``, so one older than that is refused.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import itertools
import json
import logging
import operator
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from stocksync.agent.compaction import Fold, fold
from stocksync.agent.event_ids import block
from stocksync.agent.wake import notify
from stocksync.clock import wall_ms
from stocksync.errors import Status, StocksyncError
from stocksync.events import (
    MAX_QUANTITY,
    MAX_REASON_LEN,
    WELL_FORMED_SKUS,
    EventRow,
    InvalidEvent,
    Kind,
    NewEvent,
    plain_delta,
    sku_ok,
    validate_new_event,
)
from stocksync.sqlite import (
    AGENT_APPLICATION_ID,
    HUB_APPLICATION_ID,
    check_synchronous,
    connect,
    connect_read_only,
    error_kind,
)

if TYPE_CHECKING:
    # Loaded by the migrations only (~60 ms): short commands on a current
    # store never need it.
    import sqlite_utils

__all__ = [
    "AgentStore",
    "Backlog",
    "DaemonState",
    "StoreError",
    "csv_entries",
    "describe",
    "parse_events_csv",
    "plain_columns_ok",
    "read_csv_entries",
    "status_info",
]

log = logging.getLogger("stocksync.agent")

_EVENT_COLUMNS = ", ".join(EventRow._fields)
_INSERT_ROW = (
    f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES ({', '.join('?' * len(EventRow._fields))})"
)
"""Insert a whole EventRow (a folded one too)."""
_BASE_COLUMNS = frozenset(EventRow._fields) - {"folded_from_seq"}
"""The columns every agent store's events table has (folded_from_seq came later)."""
_SEQ = operator.itemgetter(0)

Entry = tuple[str, int, int, str, str, int | None]
"""A :class:`NewEvent`'s fields as a plain tuple, (sku, kind, quantity,
reason, reservation_id, as_of_seq): what the bulk paths hand
:meth:`AgentStore.record_entries`, so no object is built per event."""

PROGRESS_EVERY = 1000
"""Events recorded between two progress reports (and two ``executemany``)."""

_RECORD_COLUMNS = ", ".join(EventRow._fields[:10])
_INSERT_EVENT = f"INSERT INTO events ({_RECORD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
"""Insert a recorded event (never folded: folded_from_seq keeps its default 0)."""
_ADD_STOCK = (
    "INSERT INTO stock(sku, on_hand) VALUES (?, ?) "
    "ON CONFLICT(sku) DO UPDATE SET on_hand = on_hand + excluded.on_hand"
)
# Plain ints: compared once per event on the recording hot path.
_RECEIVE, _SHIP, _ADJUST, _COUNT = (int(k) for k in Kind)
_PLAIN_KINDS = frozenset((_RECEIVE, _SHIP, _ADJUST))
_KIND_TYPES = frozenset((int, Kind))
_SIGN = {_RECEIVE: 1, _SHIP: -1, _ADJUST: 1}
"""A plain event's delta is its quantity times this."""

PRUNE_BATCH_ROWS = 5000
"""Most events one pruning transaction deletes: short enough that a ``record``
waiting for the write lock hardly notices."""


class StoreError(StocksyncError):
    """The store cannot do what was asked (wrong warehouse, unreadable file...)."""

    status = Status.UNAVAILABLE


_FAILURES = {
    "full": "the disk is full",
    "busy": "another process holds the store's write lock",
    "corrupt": "the store is damaged (see `stocksync-agent check`)",
    "not-a-database": "the file is not an agent store",
    "read-only": "the store is read-only",
    "io": "the store cannot be read or written (I/O error)",
    "cannot-open": "the file cannot be opened",
}


@dataclass
class DaemonState:
    """What the running daemon last said about itself, for ``status``."""

    connected: bool = False
    pid: int = 0
    hub: str = ""
    since_unix_ms: int = 0
    """When ``connected`` last changed."""
    last_error: str = ""
    """The last failure talking to the hub: a gRPC status and its detail."""
    last_error_unix_ms: int = 0
    metrics: str = ""
    """Where the daemon serves /metrics (HOST:PORT, the port as bound), if it does."""

    def to_json(self) -> str:
        """The state as one JSON object."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: str | None) -> DaemonState:
        """Parse :meth:`to_json`'s output; unknown keys are ignored."""
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except ValueError:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        return (
            cls(**{k: v for k, v in data.items() if k in names})
            if isinstance(data, dict)
            else cls()
        )


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the hub does not have yet."""

    high_seq: int
    acked_seq: int
    pending: int
    oldest_pending_age_s: float | None


def _now_ms() -> int:
    return wall_ms()


def _migrate_1(db: sqlite_utils.Database) -> None:
    """The books: meta, events (the outbox) and stock."""
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("events").create(
        {
            "seq": int,
            "event_id": str,
            "sku": str,
            "kind": int,
            "quantity": int,
            "delta": int,
            "reason": str,
            "reservation_id": str,
            "as_of_seq": int,
            "recorded_at_ms": int,
        },
        pk="seq",
        not_null={"event_id", "sku", "kind", "quantity", "delta", "recorded_at_ms"},
        defaults={"reason": "", "reservation_id": "", "as_of_seq": 0},
    )
    db.table("stock").create({"sku": str, "on_hand": int}, pk="sku", not_null={"on_hand"})
    db.table("meta").insert_all(
        [
            {"key": "epoch", "value": str(uuid.uuid4())},
            {"key": "acked_seq", "value": "0"},
            {"key": "created_at_ms", "value": str(_now_ms())},
        ]
    )


def _migrate_2(db: sqlite_utils.Database) -> None:
    """Say what the file is: stores made before this step had no application id."""
    db.execute(f"PRAGMA application_id = {AGENT_APPLICATION_ID}")


def _migrate_3(db: sqlite_utils.Database) -> None:
    """Pick commands from the hub: what to pick and ship for paid reservations."""
    db.table("picks").create(
        {
            "command_id": str,
            "reservation_id": str,
            "sku": str,
            "qty": int,
            "shipped": int,
            "state": str,
            "received_at_ms": int,
        },
        pk="command_id",
        not_null={"reservation_id", "sku", "qty", "shipped", "state", "received_at_ms"},
    )
    db.execute("CREATE INDEX picks_open ON picks (reservation_id, sku) WHERE state = 'open'")


def _migrate_4(db: sqlite_utils.Database) -> None:
    """Compaction (DESIGN §6): a folded row stands for ``folded_from_seq..seq``;
    ``folds`` lists the seq ranges whose events were folded."""
    if "folded_from_seq" not in db.table("events").columns_dict:
        db.execute("ALTER TABLE events ADD COLUMN folded_from_seq INTEGER NOT NULL DEFAULT 0")
    db.table("folds").create(
        {"first_seq": int, "last_seq": int, "events": int, "rows": int, "folded_at_ms": int},
        pk="first_seq",
        if_not_exists=True,
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _migrate_1,
    _migrate_2,
    _migrate_3,
    _migrate_4,
]
"""Schema steps; ``PRAGMA user_version`` records how many have run."""


F = TypeVar("F", bound=Callable[..., Any])


def _reads(method: F) -> F:
    """A read that fails with SQLite's error raises :class:`StoreError` instead."""

    @functools.wraps(method)
    def wrapper(self: AgentStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            raise StoreError(f"cannot read agent store {self.path}: {describe(e)}") from None

    return wrapper  # type: ignore[return-value]


class AgentStore:
    """One warehouse's books in one SQLite file.

    Args:
        path: the database file; created (with a fresh epoch) if missing or
            empty, unless ``read_only``.
        synchronous: SQLite's ``synchronous`` pragma. ``FULL`` (the default)
            makes every commit survive power loss, which "recorded" promises.
        busy_timeout_ms: how long a writer waits for another one.
        read_only: open for reading only; nothing is ever written (no
            migration either), so it works on a full disk.

    Raises:
        StoreError: if the file is missing (``read_only``), is not an agent
            store (another program's, a hub's, not SQLite), or cannot be opened.
    """

    def __init__(
        self,
        path: str | Path,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 10_000,
        *,
        read_only: bool = False,
    ) -> None:
        try:
            sync = check_synchronous(synchronous)
        except ValueError as e:
            raise StoreError(str(e)) from None
        self.path = Path(path)
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise StoreError(f"no agent store at {self.path}")
        conn: sqlite3.Connection | None = None
        try:
            if read_only:
                conn = connect_read_only(self.path, busy_timeout_ms)
                if _identify(conn, self.path) == 0:
                    raise StoreError(f"{self.path} is an empty database, not an agent store yet")
            else:
                if self.path.exists() and self.path.stat().st_size > 0:
                    # Checked before connect() sets WAL: the wrong file stays as it was.
                    with closing(connect_read_only(self.path, busy_timeout_ms)) as probe:
                        _identify(probe, self.path)
                conn = connect(self.path, sync, busy_timeout_ms)
            self.conn = conn
            if not read_only:
                self._migrate()
        except (sqlite3.Error, StoreError) as e:
            if conn is not None:
                conn.close()
            if isinstance(e, StoreError):
                raise
            raise StoreError(_open_failure(self.path, e)) from None

    # -- lifecycle ---------------------------------------------------------

    def _migrate(self) -> None:
        # Opening writes nothing unless a migration is due, so commands work
        # on a full disk as long as they only read.
        if self.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS):
            return
        import sqlite_utils

        with self.write():
            # Again under the write lock: another process may have got here first.
            version = _identify(self.conn, self.path)
            db = sqlite_utils.Database(self.conn)
            for step in MIGRATIONS[version:]:
                step(db)
            self.conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> AgentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the write lock from its start.

        Raises:
            StoreError: if SQLite fails (disk full, lock held too long...);
                nothing of the transaction is stored then.
        """
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreError(f"cannot write agent store {self.path}: {describe(e)}") from None

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One consistent read snapshot.

        Raises:
            StoreError: if SQLite fails (a damaged file, say).
        """
        try:
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            finally:
                self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"cannot read agent store {self.path}: {describe(e)}") from None

    # -- meta --------------------------------------------------------------

    @_reads
    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @property
    def epoch(self) -> str:
        """The random id this store got when it was created."""
        return self._meta("epoch") or ""

    @property
    def warehouse(self) -> str | None:
        """The warehouse this store belongs to, once a daemon has claimed it."""
        return self._meta("warehouse")

    def claim(self, warehouse: str) -> None:
        """Bind the store to ``warehouse``; a store serves one warehouse forever.

        Writes only the first time, so a daemon restarting while an
        ``import`` holds the write lock does not wait for it.

        Raises:
            StoreError: if it already belongs to another warehouse.
        """
        current = self._meta("warehouse")
        if current is None:
            with self.write():
                current = self._meta("warehouse")
                if current is None:
                    self._set_meta("warehouse", warehouse)
                    return
        if current != warehouse:
            raise StoreError(
                f"{self.path} holds the books of {current}, not {warehouse}; "
                "each warehouse needs its own store"
            )

    def acked_seq(self) -> int:
        """The highest seq a hub has acknowledged, as last saved."""
        return int(self._meta("acked_seq") or 0)

    def set_acked_seq(self, seq: int) -> None:
        """Save the hub's acknowledgement (it only ever moves forward)."""
        with self.write():
            if seq > self.acked_seq():
                self._set_meta("acked_seq", str(seq))

    def set_daemon_state(self, state: DaemonState) -> None:
        """Record what the daemon says about itself, for ``status``."""
        with self.write():
            self._set_meta("daemon", state.to_json())

    def daemon_state(self) -> DaemonState:
        """The daemon's last recorded state."""
        return DaemonState.from_json(self._meta("daemon"))

    # -- recording ---------------------------------------------------------

    @_reads
    def high_seq(self) -> int:
        """The highest recorded seq (0 for an empty store).

        Pruning never deletes the newest event, so this stays right after it.
        """
        row = self.conn.execute("SELECT max(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def record(self, event: NewEvent) -> int:
        """Record one event durably; returns its seq.

        Raises:
            InvalidEvent: if it is malformed; nothing is stored then.
        """
        return self.record_many([event])[-1]

    def record_many(
        self,
        events: Iterable[NewEvent],
        on_progress: Callable[[int], None] | None = None,
        now_ms: int | None = None,
    ) -> list[int]:
        """Record events all-or-nothing, in order, in one transaction.

        Each is validated first; a COUNT is rebased over the moves recorded
        after its ``as_of_seq`` (DESIGN §4) and stored with its delta.

        Args:
            events: the events, oldest first.
            on_progress: called with the number of events done so far.
            now_ms: the agent's clock (informational only).

        Raises:
            InvalidEvent: for the first bad event; nothing is stored then.
        """
        return self.record_entries(
            ((e.sku, e.kind, e.quantity, e.reason, e.reservation_id, e.as_of_seq) for e in events),
            on_progress,
            now_ms,
        )

    def record_entries(
        self,
        entries: Iterable[Entry],
        on_progress: Callable[[int], None] | None = None,
        now_ms: int | None = None,
    ) -> list[int]:
        """:meth:`record_many` for events given as :data:`Entry` tuples.

        The bulk path (``import``, the local API): no object per event. The
        entries go ``PROGRESS_EVERY`` at a time; a run of plain RECEIVE, SHIP
        and ADJUST events is checked a column at a time and its rows built
        with ``zip`` (:func:`_plain_rows`); anything else (a COUNT, a
        settling SHIP, a bad event) goes one by one through the full rules,
        so errors read the same. Stock changes are summed per SKU and
        written once, before the next COUNT (which reads them) or at the end.

        Raises:
            InvalidEvent: for the first bad event; nothing is stored then.
        """
        stamp = _now_ms() if now_ms is None else now_ms
        moved: dict[str, int] = {}
        with self.write() as conn:
            high = self.high_seq()
            first = high + 1
            pruned = self.pruned_through()
            it = iter(entries)
            while chunk := list(itertools.islice(it, PROGRESS_EVERY)):
                ids = block(len(chunk))
                rows = _plain_rows(chunk, high, ids, stamp, moved)
                if rows is None:
                    rows = self._rows_one_by_one(conn, chunk, high, pruned, ids, stamp, moved)
                conn.executemany(_INSERT_EVENT, rows)
                high += len(chunk)
                if on_progress is not None:
                    on_progress(high - first + 1)
            conn.executemany(_ADD_STOCK, moved.items())
        if high >= first:
            notify(self.path)  # the daemon sends them now, not at its next poll
            self.compact_if_due()
        return list(range(first, high + 1))

    def _rows_one_by_one(
        self,
        conn: sqlite3.Connection,
        chunk: list[Entry],
        high: int,
        pruned: int,
        ids: list[str],
        stamp: int,
        moved: dict[str, int],
    ) -> list[tuple[Any, ...]]:
        """The rows of ``chunk`` (seqs from ``high + 1``), each by every rule;
        ``moved`` gains their stock changes (and is written before a COUNT)."""
        rows: list[tuple[Any, ...]] = []
        for entry, event_id in zip(chunk, ids, strict=True):
            # Any int as the kind: the rules name an unknown one.
            event = validate_new_event(NewEvent(*entry))  # type: ignore[arg-type]
            sku, kind, quantity, reason, reservation_id, as_of = entry
            if kind == _COUNT:
                # The rebase reads stock and events as they stand.
                conn.executemany(_INSERT_EVENT, rows)
                rows.clear()
                conn.executemany(_ADD_STOCK, moved.items())
                moved.clear()
                delta = self._delta(conn, event, high, pruned)
                as_of = high if as_of is None else as_of
            else:
                delta = plain_delta(kind, quantity)
                as_of = 0
            high += 1
            rows.append(
                (
                    high,
                    event_id,
                    sku,
                    int(kind),
                    quantity,
                    delta,
                    reason,
                    reservation_id,
                    as_of,
                    stamp,
                )
            )
            moved[sku] = moved.get(sku, 0) + delta
            if reservation_id and kind == _SHIP:
                _close_picks(conn, reservation_id, sku, quantity)
        return rows

    # -- pick commands -----------------------------------------------------

    def store_pick(
        self,
        command_id: str,
        reservation_id: str,
        sku: str,
        qty: int,
        cancels: str = "",
        now_ms: int | None = None,
    ) -> None:
        """Keep a pick command (or withdraw one, with ``cancels``) durably.

        Idempotent by ``command_id``: the hub resends until acknowledged.
        """
        stamp = _now_ms() if now_ms is None else now_ms
        with self.write() as conn:
            if cancels:
                conn.execute(
                    "UPDATE picks SET state = 'cancelled' WHERE command_id = ? AND state = 'open'",
                    (cancels,),
                )
                return
            conn.execute(
                "INSERT INTO picks (command_id, reservation_id, sku, qty, shipped, state, "
                "received_at_ms) VALUES (?, ?, ?, ?, 0, 'open', ?) "
                "ON CONFLICT(command_id) DO NOTHING",
                (command_id, reservation_id, sku, qty, stamp),
            )
            # Shipped before the command arrived (the WMS was ahead): count it.
            shipped = conn.execute(
                "SELECT coalesce(sum(quantity), 0) FROM events WHERE kind = ? "
                "AND reservation_id = ? AND sku = ?",
                (int(Kind.SHIP), reservation_id, sku),
            ).fetchone()[0]
            taken = conn.execute(
                "SELECT coalesce(sum(shipped), 0) FROM picks WHERE reservation_id = ? "
                "AND sku = ? AND command_id != ?",
                (reservation_id, sku, command_id),
            ).fetchone()[0]
            if shipped - taken > 0:
                _close_picks(conn, reservation_id, sku, int(shipped - taken))

    @_reads
    def open_picks(self) -> list[dict[str, Any]]:
        """Pick commands still to ship, oldest first."""
        rows = self.conn.execute(
            "SELECT command_id, reservation_id, sku, qty - shipped, received_at_ms FROM picks "
            "WHERE state = 'open' ORDER BY received_at_ms, command_id"
        ).fetchall()
        return [
            {
                "command_id": c,
                "reservation_id": r,
                "sku": s,
                "qty": q,
                "received_at_ms": t,
            }
            for c, r, s, q, t in rows
        ]

    @staticmethod
    def _delta(conn: sqlite3.Connection, event: NewEvent, high: int, pruned: int) -> int:
        if event.kind != Kind.COUNT:
            return plain_delta(event.kind, event.quantity)
        as_of = high if event.as_of_seq is None else event.as_of_seq
        if as_of > high:
            raise InvalidEvent(f"as_of_seq {as_of} is past the last recorded seq {high}")
        if as_of < pruned:
            # Rebasing needs every move after as_of_seq, and those up to
            # `pruned` are gone: refuse rather than rebase on half of them.
            raise InvalidEvent(
                f"as_of_seq {as_of} is older than the events this store keeps: events up "
                f"to seq {pruned} were pruned after the retention (retention_hours), so a "
                f"count can be taken as of seq {pruned} or later"
            )
        fold = conn.execute(
            "SELECT first_seq, last_seq FROM folds WHERE first_seq <= ? AND ? < last_seq",
            (as_of, as_of),
        ).fetchone()
        if fold is not None:
            # The moves after as_of_seq are netted with those before it.
            raise InvalidEvent(
                f"as_of_seq {as_of} falls inside seqs {fold[0]}..{fold[1]}, whose events were "
                f"compacted while the hub was out of reach (max_pending_events), so a count "
                f"can be taken as of seq {fold[0] - 1} or {fold[1]} or later"
            )
        row = conn.execute("SELECT on_hand FROM stock WHERE sku = ?", (event.sku,)).fetchone()
        on_hand_now = int(row[0]) if row else 0
        moved_since = conn.execute(
            "SELECT coalesce(sum(delta), 0) FROM events WHERE seq > ? AND sku = ?",
            (as_of, event.sku),
        ).fetchone()[0]
        # on_hand as of as_of_seq = now minus what moved since; the count
        # replaces that, and the moves after it survive (rebased count).
        return event.quantity - (on_hand_now - int(moved_since))

    # -- reading -------------------------------------------------------------

    @_reads
    def events(self, first: int, last: int) -> list[EventRow]:
        """Events ``first..last`` inclusive, oldest first."""
        cursor = self.conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq",
            (first, last),
        )
        # tuple.__new__ mapped in C: EventRows without a Python call per row.
        return list(map(tuple.__new__, itertools.repeat(EventRow), cursor))

    def outbox(self, first: int, last: int) -> list[EventRow]:
        """Events ``first..last`` to send, every one of them, whole.

        A folded row (DESIGN §6) stands for a range of seqs: the rows run
        from ``first`` and may end past ``last`` (a fold that starts within
        ``first..last``) or before it (one that starts past it). Only rows
        starting at or before ``last`` are read, so a caller that reserved
        ``last`` (:meth:`reserve_sent`) sends no row a compaction may change.

        A damaged page need not make SQLite fail: it can return too few
        rows, or rows of NULLs. Those never reach the hub.

        Raises:
            StoreError: if a read fails, or the rows are not one contiguous
                run from ``first`` with every field set.
        """
        rows = self.events(first, last)
        # Both scans run in C: about 0.25 µs an event, against ~2 µs to read
        # and encode it.
        whole = list(map(_SEQ, rows)) == list(range(first, last + 1)) and not any(
            map(operator.contains, rows, itertools.repeat(None))
        )
        if whole:
            return rows
        if self._has_folds():
            rows = self._folded_outbox(first, last, rows)
            if rows:
                return rows
        pruned = self.pruned_through()
        if first <= pruned:
            raise StoreError(
                f"events {first}..{last} are no longer in {self.path}: events up to seq "
                f"{pruned} were pruned after the hub acknowledged them"
            )
        raise StoreError(
            f"cannot read agent store {self.path}: the store is damaged (events "
            f"{first}..{last} do not read back whole; see `stocksync-agent check`)"
        )

    @_reads
    def _has_folds(self) -> bool:
        return self.conn.execute("SELECT 1 FROM folds LIMIT 1").fetchone() is not None

    @_reads
    def _folded_outbox(self, first: int, last: int, rows: list[EventRow]) -> list[EventRow]:
        """``rows`` (seqs ``first..last``) if they chain by seq range, plus the
        fold that starts within ``first..last`` and ends past it; [] if not whole."""
        nxt = self.conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (last,)
        ).fetchone()
        if nxt is not None and 0 < int(nxt[-1] or 0) <= last:
            rows = [*rows, tuple.__new__(EventRow, nxt)]
        expected = first
        for row in rows:
            if None in row or row.first_seq != expected:
                return []
            expected = row.seq + 1
        return rows

    @_reads
    def on_hand(self, sku: str | None = None) -> dict[str, int]:
        """Current on_hand per SKU (or of one SKU)."""
        if sku is None:
            rows = self.conn.execute("SELECT sku, on_hand FROM stock ORDER BY sku").fetchall()
        else:
            rows = self.conn.execute(
                "SELECT sku, on_hand FROM stock WHERE sku = ?", (sku,)
            ).fetchall()
        return {str(s): int(q) for s, q in rows}

    def snapshot(self, as_of_seq: int) -> list[tuple[str, int]]:
        """on_hand per SKU as of ``as_of_seq``: now, minus every later move.

        Read in one transaction, so it is consistent with the events after
        ``as_of_seq`` that will follow it.
        """
        if as_of_seq == 0:
            return []  # nothing had moved before seq 1
        pruned = self.pruned_through()
        if as_of_seq < pruned:
            raise StoreError(
                f"cannot take a snapshot as of seq {as_of_seq} from {self.path}: "
                f"events up to seq {pruned} were pruned"
            )
        with self.read() as conn:
            now = dict(conn.execute("SELECT sku, on_hand FROM stock").fetchall())
            for sku, moved in conn.execute(
                "SELECT sku, sum(delta) FROM events WHERE seq > ? GROUP BY sku", (as_of_seq,)
            ):
                now[sku] = now.get(sku, 0) - moved
        return sorted((s, int(q)) for s, q in now.items() if q != 0)

    def backlog(self, acked_seq: int | None = None, now_ms: int | None = None) -> Backlog:
        """What the hub does not have yet, from ``acked_seq`` (default: the saved one)."""
        with self.read() as conn:
            acked = self.acked_seq() if acked_seq is None else acked_seq
            high = self.high_seq()
            row = conn.execute(
                "SELECT recorded_at_ms FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (acked,)
            ).fetchone()
        age = None
        if row is not None:
            age = max(0.0, ((_now_ms() if now_ms is None else now_ms) - row[0]) / 1000)
        return Backlog(high, acked, max(0, high - acked), age)

    # -- pruning, size, integrity ---------------------------------------------

    def pruned_through(self) -> int:
        """The last seq pruned (0 if none was): events up to it are gone."""
        return int(self._meta("pruned_through") or 0)

    @_reads
    def oldest_seq(self) -> int | None:
        """The oldest event kept (None for an empty store)."""
        row = self.conn.execute("SELECT min(seq) FROM events").fetchone()
        return None if row[0] is None else int(row[0])

    def size_bytes(self) -> int:
        """What the store takes on disk: the database file and its WAL."""
        total = 0
        for part in (self.path, Path(f"{self.path}-wal")):
            with contextlib.suppress(OSError):
                total += part.stat().st_size
        return total

    def prune(self, older_than_ms: int, limit: int = PRUNE_BATCH_ROWS) -> int:
        """Delete, in one transaction, up to ``limit`` of the oldest events the
        hub has acknowledged that were recorded before ``older_than_ms``.

        Only a run from the oldest kept event is pruned (an event younger than
        the cutoff ends it), so the kept events stay contiguous; never an
        event past the saved acknowledgement, and never the newest event.
        Call again until it returns 0.

        Returns:
            How many events were deleted.

        Raises:
            StoreError: if SQLite fails (a full disk, say); nothing is deleted then.
        """
        with self.read():
            if self._prunable(older_than_ms, limit) is None:
                return 0  # the common case: no write lock taken at all
        with self.write() as conn:
            span = self._prunable(older_than_ms, limit)
            if span is None:
                return 0
            first, last = span
            deleted = conn.execute(
                "DELETE FROM events WHERE seq BETWEEN ? AND ?", (first, last)
            ).rowcount
            self._set_meta("pruned_through", str(last))
        return int(deleted)

    def _prunable(self, older_than_ms: int, limit: int) -> tuple[int, int] | None:
        """The seqs :meth:`prune` would delete now, or None (inside a transaction)."""
        first = self.pruned_through() + 1
        last = min(self.acked_seq(), self.high_seq() - 1, first + limit - 1)
        if last < first:
            return None
        young = self.conn.execute(
            "SELECT min(seq) FROM events WHERE seq BETWEEN ? AND ? AND recorded_at_ms >= ?",
            (first, last, older_than_ms),
        ).fetchone()[0]
        if young is not None:
            last = int(young) - 1
        return (first, last) if last >= first else None

    # -- compaction of the offline buffer (DESIGN §6) -------------------------

    def max_pending_events(self) -> int:
        """The cap on pending rows past which never-sent events are folded (0: off).

        Kept in the store, set by the daemon from its configuration, so that
        every process that records (``record``, ``import``, the local API)
        holds the store to it.
        """
        return int(self._meta("max_pending_events") or 0)

    def set_max_pending_events(self, cap: int) -> None:
        """Keep ``cap`` (see :meth:`max_pending_events`); writes only if it changed.

        While the cap is 0 nothing compacts, so the daemon sends without
        keeping a sent horizon (a process holding the write lock cannot hold
        up the stream). Turning compaction on therefore first counts every
        event recorded so far as possibly sent: they are never folded.
        """
        previous = self.max_pending_events()
        if cap != previous:
            with self.write():
                if previous <= 0 < cap:
                    horizon = max(self.sent_horizon(), self.high_seq())
                    self._set_meta("sent_through", str(horizon))
                self._set_meta("max_pending_events", str(int(cap)))

    def sent_horizon(self) -> int:
        """No seq above this was ever sent: rows starting past it may be folded."""
        return max(int(self._meta("sent_through") or 0), self.acked_seq())

    def reserve_sent(self, last: int, ahead: int = 0) -> int:
        """Before sending up to seq ``last``: make the sent horizon reach it,
        durably. Writes (moving it ``ahead`` further, so it writes once per
        that many seqs) only when it is below ``last``. Returns the horizon.

        Raises:
            StoreError: if it cannot be written; send nothing past the horizon then.
        """
        horizon = self.sent_horizon()
        if last <= horizon:
            return horizon
        with self.write():
            horizon = max(self.sent_horizon(), last + max(0, ahead))
            self._set_meta("sent_through", str(horizon))
        return horizon

    @_reads
    def pending_rows(self) -> int:
        """Rows past the acknowledgement: events, or folds of them, to send."""
        row = self.conn.execute(
            "SELECT count(*) FROM events WHERE seq > ?", (self.acked_seq(),)
        ).fetchone()
        return int(row[0])

    def compaction_stats(self) -> dict[str, int]:
        """Compactions so far and the rows they folded away."""
        return {
            "compactions": int(self._meta("compactions") or 0),
            "events_folded": int(self._meta("events_folded") or 0),
        }

    def compact_if_due(self) -> Fold | None:
        """Compact if the pending rows are past the cap; never raises.

        A compaction that could not get below the cap (too many SKUs, or
        reservation shipments) is not retried until a tenth of the cap more
        rows came in. A failure is logged: what was recorded stays recorded.
        """
        try:
            cap = self.max_pending_events()
            if cap <= 0 or self.high_seq() - self.acked_seq() <= cap:
                return None  # the common case: two reads, no count
            rows = self.pending_rows()
            floor = int(self._meta("compaction_floor") or 0)
            if rows <= cap or rows - floor < max(1, cap // 10):
                return None
            return self.compact(cap)
        except StoreError as e:
            log.warning("cannot compact the offline buffer (will retry): %s", e)
            return None

    def compact(self, cap: int = 0) -> Fold | None:
        """Fold the never-sent rows, one net event per SKU (:func:`fold`), in
        one transaction; returns what was done, or None if nothing could be
        folded. Rows the hub may hold or have in flight (starting at or below
        :meth:`sent_horizon`) are never touched.

        Args:
            cap: compact only if more rows than this are pending (0: always).

        Raises:
            StoreError: if SQLite fails; nothing changes then.
        """
        with self.write() as conn:
            if cap and self.pending_rows() <= cap:
                return None
            horizon = self.sent_horizon()
            cursor = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq", (horizon,)
            )
            run = [r for r in map(tuple.__new__, itertools.repeat(EventRow), cursor)]
            while run and run[0].first_seq <= horizon:
                run.pop(0)  # a fold that straddles the horizon: in flight
            result = fold(run, lambda: block(1)[0]) if len(run) > 1 else None
            pending = self.pending_rows()
            if result is None or len(result.rows) >= len(run):
                self._set_meta("compaction_floor", str(pending))
                return None
            conn.execute(
                "DELETE FROM events WHERE seq BETWEEN ? AND ?", (result.first_seq, result.last_seq)
            )
            conn.executemany(_INSERT_ROW, result.rows)
            conn.execute(
                "INSERT INTO folds (first_seq, last_seq, events, rows, folded_at_ms) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(first_seq) DO UPDATE SET "
                "last_seq = max(last_seq, excluded.last_seq), events = excluded.events, "
                "rows = excluded.rows, folded_at_ms = excluded.folded_at_ms",
                (
                    result.first_seq,
                    result.last_seq,
                    result.last_seq - result.first_seq + 1,
                    len(result.rows),
                    _now_ms(),
                ),
            )
            folded = len(run) - len(result.rows)
            stats = self.compaction_stats()
            self._set_meta("compactions", str(stats["compactions"] + 1))
            self._set_meta("events_folded", str(stats["events_folded"] + folded))
            self._set_meta("compaction_floor", str(pending - folded))
        log.info(
            "compacted the offline buffer: %d never-sent rows of seqs %d..%d folded into %d "
            "(%d pending, cap %d)",
            len(run),
            result.first_seq,
            result.last_seq,
            len(result.rows),
            pending - folded,
            cap,
        )
        return result

    def integrity(self, full: bool = True) -> list[str]:
        """What SQLite finds wrong with the file: ``PRAGMA integrity_check``
        (every page and index), or ``quick_check`` (pages only, much faster).

        Returns:
            The problems, one per line; empty for a sound store.
        """
        pragma = "integrity_check" if full else "quick_check"
        try:
            rows = self.conn.execute(f"PRAGMA {pragma}").fetchall()
        except sqlite3.Error as e:  # damage can stop the check itself
            return [f"{pragma} failed: {e}"]
        lines = [line.strip() for (text,) in rows for line in str(text).splitlines()]
        problems = [line for line in lines if line and not line.startswith("*** in database")]
        return [] if problems == ["ok"] else problems


def _open_pick_count(store: AgentStore) -> int | None:
    try:
        row = store.conn.execute("SELECT count(*) FROM picks WHERE state = 'open'").fetchone()
    except sqlite3.OperationalError:  # a store from before pick commands, opened read-only
        return None
    return int(row[0])


def _close_picks(conn: sqlite3.Connection, reservation_id: str, sku: str, units: int) -> None:
    """A SHIP of ``units`` for the reservation: its open picks of ``sku`` are
    done as far as the units go, oldest first."""
    for command_id, left in conn.execute(
        "SELECT command_id, qty - shipped FROM picks WHERE reservation_id = ? AND sku = ? "
        "AND state = 'open' ORDER BY received_at_ms, command_id",
        (reservation_id, sku),
    ).fetchall():
        if units <= 0:
            return
        take = min(units, int(left))
        conn.execute(
            "UPDATE picks SET shipped = shipped + ?, "
            "state = CASE WHEN shipped + ? >= qty THEN 'shipped' ELSE 'open' END "
            "WHERE command_id = ?",
            (take, take, command_id),
        )
        units -= take


def plain_columns_ok(
    skus: Sequence[object],
    kinds: Sequence[object],
    quantities: Sequence[object],
    reasons: Sequence[str],
) -> bool:
    """Whether every event of these columns is a well-formed plain RECEIVE,
    SHIP or ADJUST, checked a column at a time (no Python call per event for
    most of it). False says only "look one by one", not what is wrong.
    """
    if (
        not set(map(type, kinds)) <= _KIND_TYPES
        or set(map(type, quantities)) != {int}
        or set(map(type, skus)) != {str}
        or not set(kinds) <= _PLAIN_KINDS
    ):
        return False
    qty: Sequence[int] = quantities  # type: ignore[assignment]
    if 0 in qty or max(qty) > MAX_QUANTITY or min(qty) < -MAX_QUANTITY:
        return False
    # Only an ADJUST may take units away: the kinds of the negative ones.
    if min(qty) < 0 and set(
        itertools.compress(kinds, map(operator.lt, qty, itertools.repeat(0)))
    ) != {_ADJUST}:
        return False
    if reasons and max(map(len, reasons)) > MAX_REASON_LEN:
        return False
    distinct: set[str] = set(skus)  # type: ignore[arg-type]
    return distinct <= WELL_FORMED_SKUS or all(map(sku_ok, distinct - WELL_FORMED_SKUS))


def _plain_rows(
    chunk: list[Entry], high: int, ids: list[str], stamp: int, moved: dict[str, int]
) -> list[tuple[Any, ...]] | None:
    """The rows of ``chunk`` (seqs from ``high + 1``) if every event in it is
    plainly well-formed and settles no reservation, ``moved`` gaining their
    stock changes; else None, ``moved`` untouched."""
    skus, kinds, quantities, reasons, reservation_ids, as_ofs = zip(*chunk, strict=True)
    if any(reservation_ids) or as_ofs.count(None) != len(as_ofs):
        return None
    if not plain_columns_ok(skus, kinds, quantities, reasons):
        return None
    kinds = tuple(map(int, kinds))
    deltas = list(map(operator.mul, quantities, map(_SIGN.__getitem__, kinds)))
    get = moved.get
    for sku, delta in zip(skus, deltas, strict=True):
        moved[sku] = get(sku, 0) + delta
    n = len(chunk)
    return list(
        zip(
            range(high + 1, high + 1 + n),
            ids,
            skus,
            kinds,
            quantities,
            deltas,
            reasons,
            itertools.repeat("", n),
            itertools.repeat(0, n),
            itertools.repeat(stamp, n),
            strict=False,
        )
    )


def status_info(store: AgentStore) -> dict[str, Any]:
    """What ``stocksync-agent status --json`` prints about ``store``."""
    daemon = store.daemon_state()
    backlog = store.backlog()
    running = daemon.pid > 0 and _pid_alive(daemon.pid)
    return {
        "warehouse": store.warehouse,
        "epoch": store.epoch,
        "connected": daemon.connected and running,
        "daemon_pid": daemon.pid if running else None,
        "hub": daemon.hub or None,
        "high_seq": backlog.high_seq,
        "hub_watermark": backlog.acked_seq,
        "pending": backlog.pending,
        "open_picks": _open_pick_count(store),
        "oldest_pending_age_s": backlog.oldest_pending_age_s,
        "last_error": daemon.last_error or None,
        "last_error_unix_ms": daemon.last_error_unix_ms or None,
        "oldest_seq": store.oldest_seq(),
        "size_bytes": store.size_bytes(),
        **_compaction_info(store),
        "metrics": daemon.metrics if running and daemon.metrics else None,
    }


def _compaction_info(store: AgentStore) -> dict[str, Any]:
    try:
        return {
            "pending_rows": store.pending_rows(),
            "max_pending_events": store.max_pending_events() or None,
            **store.compaction_stats(),
        }
    except StoreError:
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(error: sqlite3.Error) -> str:
    """What a SQLite error means, in words for an operator."""
    if getattr(error, "sqlite_errorname", "") == "SQLITE_IOERR_SHMSIZE":
        # The WAL index cannot grow: what a full disk does to a store no
        # process has open.
        return "the disk is full (no room for the store's -shm file)"
    return _FAILURES.get(error_kind(error), str(error))


_AGENT_TABLES = frozenset({"meta", "events", "stock"})


def _identify(conn: sqlite3.Connection, path: Path) -> int:
    """Check that ``conn`` holds an agent store, or an empty database that may
    become one; returns its schema version (0: empty). Only reads.

    Raises:
        StoreError: for a hub's store, another program's file, a database
            without the agent's tables, or a newer schema.
        sqlite3.Error: if the file cannot be read (not SQLite at all, say).
    """
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if app_id == HUB_APPLICATION_ID:
        raise StoreError(f"{path} is a stocksync hub store, not an agent store")
    if app_id not in (0, AGENT_APPLICATION_ID):
        raise StoreError(
            f"{path} is not an agent store: its application_id is 0x{app_id:08x} "
            f"(an agent store's is 0x{AGENT_APPLICATION_ID:08x})"
        )
    tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables and version == 0:
        return 0  # nothing in it yet: `touch`, or a crash before the first commit
    columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(events)")}
    # A hub's log has an events table too, keyed by source: its columns tell.
    if (
        not (_AGENT_TABLES.issubset(tables) and columns.issuperset(_BASE_COLUMNS))
        or "source_id" in columns
        or "sources" in tables
    ):
        raise StoreError(
            f"{path} is a SQLite database without the agent's tables, not an agent store"
        )
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{path} has schema version {version}; this agent knows "
            f"{len(MIGRATIONS)}: upgrade stocksync"
        )
    return version


def _open_failure(path: Path, error: sqlite3.Error) -> str:
    if error_kind(error) == "not-a-database":
        return f"{path} is not a SQLite database, so not an agent store"
    return f"cannot open agent store {path}: {describe(error)}"


def read_csv_entries(text: str) -> list[Entry]:
    """Every row of a whole CSV text (``sku,kind,qty[,reason]``, a header
    allowed) as checked :data:`Entry` tuples, for ``import``.

    A file of plain RECEIVE, SHIP and ADJUST rows is read a column at a time;
    anything else (a COUNT, a blank line, odd spacing, a bad row) is read row
    by row by :func:`csv_entries`, which names the line of a bad one.

    Raises:
        InvalidEvent: naming the line of the first malformed row.
    """
    rows = _split_csv(text)
    entries = _plain_csv(rows) if rows else None
    if entries is None:
        entries = list(csv_entries(io.StringIO(text, newline="")))
    return entries


def _split_csv(text: str) -> list[list[str]] | None:
    """The cells of each line, split at commas: what ``csv.reader`` returns
    for a text without quotes, carriage returns (but in CRLF endings) or NULs,
    about three times faster. None for any other text, or if it does not
    parse (the row-by-row reader then says where)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if '"' in text or "\r" in text or "\0" in text:
        try:
            return list(csv.reader(io.StringIO(text, newline="")))
        except csv.Error:
            return None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return list(map(str.split, lines, itertools.repeat(",")))


def _plain_csv(rows: list[list[str]]) -> list[Entry] | None:
    """The entries of ``rows`` if every one is a plain, well-formed event."""
    if [c.strip().lower() for c in rows[0][:3]] == ["sku", "kind", "qty"]:
        del rows[0]
    if not rows:
        return []
    widths = set(map(len, rows))
    if not widths <= {3, 4}:
        return None
    skus = list(map(str.strip, map(operator.itemgetter(0), rows)))
    kinds = list(map(_FAST_KIND_NAMES.get, map(operator.itemgetter(1), rows)))
    if None in kinds:
        return None
    try:
        quantities = list(map(int, map(operator.itemgetter(2), rows)))
    except ValueError:
        return None
    if widths == {4}:
        reasons = list(map(str.strip, map(operator.itemgetter(3), rows)))
    elif widths == {3}:
        reasons = [""] * len(rows)
    else:
        reasons = [r[3].strip() if len(r) == 4 else "" for r in rows]
    if not plain_columns_ok(skus, kinds, quantities, reasons):
        return None
    n = len(rows)
    return list(
        zip(
            skus,
            kinds,
            quantities,
            reasons,
            itertools.repeat("", n),
            itertools.repeat(None, n),
            strict=False,
        )
    )


def parse_events_csv(lines: Iterable[str]) -> Iterator[NewEvent]:
    """Parse ``sku,kind,qty[,reason]`` rows (a header row is allowed).

    Raises:
        InvalidEvent: naming the line of the first malformed row.
    """
    for sku, kind, quantity, reason, _, _ in csv_entries(lines):
        yield NewEvent(sku=sku, kind=Kind(kind), quantity=quantity, reason=reason)


_KIND_NAMES = {k.name.lower(): int(k) for k in Kind}
_FAST_KIND_NAMES = {name: k for name, k in _KIND_NAMES.items() if k != _COUNT}


def csv_entries(lines: Iterable[str]) -> Iterator[Entry]:
    """:func:`parse_events_csv` as :data:`Entry` tuples, each checked, lazily.

    A well-formed plain row takes the short way (a dict lookup for its kind,
    the inline checks); anything else, a header or a blank row included,
    goes through :func:`_csv_entry`, which says what is wrong with it.

    Raises:
        InvalidEvent: naming the line of the first malformed row.
    """
    reader = csv.reader(lines)
    kinds = _KIND_NAMES
    good_skus = WELL_FORMED_SKUS
    try:
        for row in reader:
            if len(row) == 3:
                sku, kind_name, qty = row
                reason = ""
            elif len(row) == 4:
                sku, kind_name, qty, reason = row
                reason = reason.strip()
            else:
                kind_name = ""
            kind = kinds.get(kind_name)
            if kind is not None and kind != _COUNT:
                sku = sku.strip()
                try:
                    quantity = int(qty)
                except ValueError:
                    quantity = 0  # the full check below names it
                if (
                    (
                        0 < quantity <= MAX_QUANTITY
                        if kind != _ADJUST
                        else quantity != 0 and -MAX_QUANTITY <= quantity <= MAX_QUANTITY
                    )
                    and (sku in good_skus or sku_ok(sku))
                    and len(reason) <= MAX_REASON_LEN
                ):
                    yield (sku, kind, quantity, reason, "", None)
                    continue
            entry = _csv_entry(row, reader.line_num)
            if entry is not None:
                yield entry
    except csv.Error as e:
        raise InvalidEvent(f"line {reader.line_num}: {e}") from None


def _csv_entry(row: list[str], lineno: int) -> Entry | None:
    """One CSV row by every rule: its entry, or None for a header or blank row.

    Raises:
        InvalidEvent: naming the line and what is wrong.
    """
    if not row or all(not c.strip() for c in row):
        return None
    cells = [c.strip() for c in row]
    if lineno == 1 and [c.lower() for c in cells[:3]] == ["sku", "kind", "qty"]:
        return None
    if len(cells) not in (3, 4):
        raise InvalidEvent(
            f"line {lineno}: expected sku,kind,qty[,reason], got {len(cells)} columns"
        )
    try:
        kind = Kind.parse(cells[1])
        try:
            qty = int(cells[2])
        except ValueError:
            raise InvalidEvent(f"quantity {cells[2]!r} is not a whole number") from None
        event = NewEvent(
            sku=cells[0], kind=kind, quantity=qty, reason=cells[3] if len(cells) == 4 else ""
        )
        validate_new_event(event)
    except InvalidEvent as e:
        raise InvalidEvent(f"line {lineno}: {e}") from None
    return (event.sku, int(kind), qty, event.reason, "", None)
