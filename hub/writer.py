"""The hub's single writer: every change to durable state goes through it.

SQLite has one writer anyway, and a commit costs an fsync. So every write —
agent batches from every stream, snapshots, and (as they come) reservations —
is a *command* queued here, and one writer thread commits whatever has queued
up while the previous commit was waiting for its fsync as **one transaction**
(group commit). A command that fails (a moved watermark, say) is undone
alone and its caller gets the error; the ones before it commit (the group
is then run again with a savepoint per command; the common path, where none
fails, pays for no savepoints). A caller hears the result only once it is
durable.

Commands from one caller keep their order (the queue is FIFO), which is what
lets an agent stream pipeline batches: batch n+1 is queued while batch n is
still committing.

Nothing here blocks the event loop: the commit runs on the writer thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from stocksync.errors import StocksyncError
from stocksync.hub.storage import HubStore, StoreError, WriteTx

__all__ = ["MAX_GROUP_COMMANDS", "Command", "HaltedError", "Writer"]

log = logging.getLogger("stocksync.hub.writer")

T = TypeVar("T")

Command = Callable[[WriteTx], Any]
"""A write: a function of the open transaction, run on the writer thread."""

MAX_GROUP_COMMANDS = 512
"""Most commands committed in one transaction; bounds a commit's duration."""


class HaltedError(StoreError):
    """Not written: an earlier write failed and the hub is rebuilding its state."""


class Writer:
    """Serialises and group-commits every write to ``store``.

    Every command was decided on the hub's in-memory state before it was
    queued, on the understanding that the commands before it commit. So the
    first command that fails **halts** the writer: the commands after it are
    not run (they fail with :class:`HaltedError`), nothing new is accepted,
    and ``on_halt`` is called; it rebuilds the in-memory state from the store
    and calls :meth:`resume`. Failures are rare (a full disk, an I/O error).

    Args:
        store: the hub's store.
        max_group: most commands per transaction.
    """

    def __init__(self, store: HubStore, max_group: int = MAX_GROUP_COMMANDS) -> None:
        self._store = store
        self._max_group = max_group
        self._queue: list[tuple[Command, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-writer")
        self._task: asyncio.Future[None] | None = None
        self._closing = False
        self.halted: StocksyncError | None = None
        """Why the writer stopped accepting commands, until :meth:`resume`."""
        self.on_halt: Callable[[StocksyncError], None] | None = None
        self.commits = 0
        """Transactions committed so far (for tests and metrics)."""

    def start(self) -> None:
        """Start committing (call from the event loop)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def submit(self, command: Callable[[WriteTx], T]) -> asyncio.Future[T]:
        """Queue ``command``; the future resolves once it is durable (or failed).

        Raises:
            StoreError: if the writer is stopped.
        """
        if self._task is None or self._task.done() or self._closing:
            raise StoreError("hub is stopping; nothing more can be written")
        if self.halted is not None:
            raise HaltedError(f"hub is recovering from a failed write ({self.halted}); retry")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((command, future))
        self._wake.set()
        return future

    async def write(self, command: Callable[[WriteTx], T]) -> T:
        """Queue ``command`` and wait until it is durable; returns its result."""
        return await self.submit(command)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            group = self._queue[: self._max_group]
            del self._queue[: self._max_group]
            if self.halted is not None:
                _fail(group, HaltedError(f"not written: an earlier write failed ({self.halted})"))
                continue
            try:
                outcomes = await loop.run_in_executor(self._thread, self._commit, group)
            except StocksyncError as e:
                # The transaction as a whole failed (begin or commit): nothing
                # of the group was applied.
                _fail(group, e)
                self._halt(e)
                continue
            except Exception:  # a bug: fail the callers, keep the writer going
                log.exception("commit failed")
                error = StoreError("hub store failed (the hub's log says why)")
                _fail(group, error)
                self._halt(error)
                continue
            self.commits += 1
            for (_, future), (ok, value) in zip(group, outcomes, strict=True):
                if future.done():  # the caller went away; the write stands
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            failed = next((value for ok, value in outcomes if not ok), None)
            if failed is not None:
                self._halt(failed)

    def _halt(self, error: StocksyncError) -> None:
        if self.halted is not None:
            return
        self.halted = error
        log.info("a write failed (%s): the hub rebuilds its state from the store", error)
        _fail(self._queue, HaltedError(f"not written: an earlier write failed ({error})"))
        self._queue.clear()
        if self.on_halt is not None:
            self.on_halt(error)
        else:
            self.halted = None  # no in-memory state to rebuild

    def resume(self) -> None:
        """Accept commands again (the in-memory state matches the store)."""
        self.halted = None

    async def idle(self) -> None:
        """Wait until nothing is queued or being committed."""
        while self._queue:
            await asyncio.sleep(0.001)
        await asyncio.get_running_loop().run_in_executor(self._thread, lambda: None)

    async def read(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the writer thread, between transactions."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _commit(self, group: list[tuple[Command, asyncio.Future[Any]]]) -> list[tuple[bool, Any]]:
        """Run on the writer thread: one transaction for the group; when a
        command fails, its writes alone are undone (it is run again with one
        savepoint per command).

        After a command fails, the rest of the group is not run: it was decided
        on the understanding that the failed one would commit.
        """
        if len(group) == 1:
            # Alone in its transaction: a failure rolls back only this command
            # anyway, and a savepoint would cost a statement journal.
            ((command, _),) = group
            try:
                with self._store.transaction() as tx:
                    return [(True, command(tx))]
            except StocksyncError as e:
                return [(False, e)]
        # Commands rarely fail: run the group straight through first, and
        # only if one raises, roll it all back and run it again with a
        # savepoint per command (two statements and a statement journal per
        # command saved on the common path).
        outcomes: list[tuple[bool, Any]] = []
        command_failed = False
        try:
            with self._store.transaction() as tx:
                for command, _ in group:
                    try:
                        outcomes.append((True, command(tx)))
                    except BaseException:
                        command_failed = True
                        raise
            return outcomes
        except Exception:
            if not command_failed:
                raise  # the transaction itself failed (BEGIN or COMMIT): as before
        outcomes = []
        with self._store.transaction() as tx:
            for command, _ in group:
                if outcomes and not outcomes[-1][0]:
                    outcomes.append((False, HaltedError("not written: an earlier write failed")))
                    continue
                try:
                    with tx.savepoint():
                        outcomes.append((True, command(tx)))
                except StocksyncError as e:
                    outcomes.append((False, e))
                except Exception:
                    log.exception("a write command failed")
                    failed = StoreError("hub store failed (the hub's log says why)")
                    outcomes.append((False, failed))
        return outcomes

    async def close(self) -> None:
        """Commit what is queued, refuse anything new, stop the writer thread."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._thread.shutdown(wait=True)


def _fail(group: list[tuple[Command, asyncio.Future[Any]]], error: BaseException) -> None:
    for _, future in group:
        if not future.done():
            future.set_exception(error)
