"""Rooms kept in the hub's own store, written through its single writer.

:meth:`RoomHub.set_featured` and friends are synchronous and run on the event
loop; the loop must never wait on SQLite. So :meth:`WriterRoomStore.save`
queues the record to the :class:`~stocksync.hub.writer.Writer` and returns,
and the gRPC service awaits :meth:`flushed` before it answers: the host hears
"done" only once the change is durable. A failed save is kept and written
again with the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from stocksync.hub.rooms import RoomRecord
from stocksync.hub.writer import Writer

__all__ = ["WriterRoomStore"]


class WriterRoomStore:
    """A :class:`~stocksync.hub.rooms.RoomStore` over the hub's writer.

    Args:
        records: the rooms as loaded from the store at start-up.
        writer: the hub's single writer.
    """

    def __init__(self, records: Iterable[RoomRecord], writer: Writer) -> None:
        self._records = {r.room: r for r in records}
        self._writer = writer
        self._pending: list[asyncio.Future[Any]] = []
        self._unsaved: dict[str, RoomRecord] = {}

    def load(self) -> list[RoomRecord]:
        """The rooms loaded at start-up (read off the event loop by the hub)."""
        return list(self._records.values())

    def save(self, record: RoomRecord) -> None:
        """Queue ``record`` (and any record a failed save left behind)."""
        self._records[record.room] = record
        self._unsaved[record.room] = record
        records = list(self._unsaved.values())
        self._unsaved.clear()

        def write(tx: Any) -> None:
            for r in records:
                tx.save_room(r)

        future = self._writer.submit(write)
        future.add_done_callback(lambda f: self._settled(f, records))
        self._pending.append(future)

    def _settled(self, future: asyncio.Future[Any], records: list[RoomRecord]) -> None:
        if future.cancelled() or future.exception() is not None:
            for r in records:
                self._unsaved.setdefault(r.room, self._records.get(r.room, r))

    async def flushed(self) -> None:
        """Wait until every queued save is durable; raise the first failure."""
        pending, self._pending = self._pending, []
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
