"""The hub's single writer: every change to durable state goes through it.

SQLite has one writer anyway, and a commit costs an fsync. So every write —
agent batches from every stream, snapshots, and (as they come) reservations —
is a *command* queued here, and one writer thread commits whatever has queued
up while the previous commit was waiting for its fsync as **one transaction**
(group commit). Each command runs inside its own savepoint: one that fails
(a moved watermark, say) is undone alone and its caller gets the error; the
others commit. A caller hears the result only once it is durable.

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

__all__ = ["MAX_GROUP_COMMANDS", "Command", "Writer"]

log = logging.getLogger("stocksync.hub.writer")

T = TypeVar("T")

Command = Callable[[WriteTx], Any]
"""A write: a function of the open transaction, run on the writer thread."""

MAX_GROUP_COMMANDS = 512
"""Most commands committed in one transaction; bounds a commit's duration."""


class Writer:
    """Serialises and group-commits every write to ``store``.

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
            try:
                outcomes = await loop.run_in_executor(self._thread, self._commit, group)
            except StocksyncError as e:
                # The transaction as a whole failed (begin or commit): nothing
                # of the group was applied.
                _fail(group, e)
                continue
            except Exception:  # a bug: fail the callers, keep the writer going
                log.exception("commit failed")
                _fail(group, StoreError("hub store failed (the hub's log says why)"))
                continue
            self.commits += 1
            for (_, future), (ok, value) in zip(group, outcomes, strict=True):
                if future.done():  # the caller went away; the write stands
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _commit(self, group: list[tuple[Command, asyncio.Future[Any]]]) -> list[tuple[bool, Any]]:
        """Run on the writer thread: one transaction, one savepoint per command."""
        outcomes: list[tuple[bool, Any]] = []
        if len(group) == 1:
            # Alone in its transaction: a failure rolls back only this command
            # anyway, and a savepoint would cost a statement journal.
            ((command, _),) = group
            try:
                with self._store.transaction() as tx:
                    return [(True, command(tx))]
            except StocksyncError as e:
                return [(False, e)]
        with self._store.transaction() as tx:
            for command, _ in group:
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
