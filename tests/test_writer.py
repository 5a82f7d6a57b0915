"""The hub's single writer (``hub/writer.py``) over a real SQLite store:
group commit, and a failing command undone alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stocksync.errors import InvalidArgument
from stocksync.hub.rooms import RoomRecord
from stocksync.hub.sqlite_store import SqliteHubStore
from stocksync.hub.writer import HaltedError, Writer


def saving(room: str) -> object:
    return lambda tx: tx.save_room(RoomRecord(room, ("SKU-1",)))


def failing_after_saving(room: str) -> object:
    def command(tx: object) -> None:
        tx.save_room(RoomRecord(room, ("SKU-1",)))  # type: ignore[attr-defined]
        raise InvalidArgument("this command fails after writing")

    return command


def test_a_group_commits_together_and_a_failing_command_is_undone_alone(tmp_path: Path) -> None:
    store = SqliteHubStore(tmp_path / "hub.db")

    async def go() -> tuple[list[object], int]:
        writer = Writer(store)
        writer.start()
        # Queued in one turn of the loop: one group, one transaction.
        futures = [writer.submit(saving(f"room-{i}")) for i in range(5)]  # type: ignore[arg-type]
        await asyncio.gather(*futures)
        assert writer.commits == 1
        futures = [
            writer.submit(saving("before")),  # type: ignore[arg-type]
            writer.submit(failing_after_saving("failed")),  # type: ignore[arg-type]
            writer.submit(saving("after")),  # type: ignore[arg-type]
        ]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        commits = writer.commits
        await writer.close()
        return outcomes, commits

    outcomes, commits = asyncio.run(go())
    assert outcomes[0] is None
    assert isinstance(outcomes[1], InvalidArgument)
    assert isinstance(outcomes[2], HaltedError)  # decided assuming the failed one committed
    assert commits == 2
    rooms = {r.room for r in store.rooms()}
    assert rooms == {f"room-{i}" for i in range(5)} | {"before"}
    store.close()


@pytest.mark.parametrize("size", [1, 3])
def test_a_lone_failing_command_changes_nothing(tmp_path: Path, size: int) -> None:
    store = SqliteHubStore(tmp_path / "hub.db")

    async def go() -> list[object]:
        writer = Writer(store)
        writer.start()
        futures = [writer.submit(failing_after_saving(f"r{i}")) for i in range(size)]  # type: ignore[arg-type]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        await writer.close()
        return outcomes

    outcomes = asyncio.run(go())
    assert isinstance(outcomes[0], InvalidArgument)
    assert all(isinstance(o, HaltedError) for o in outcomes[1:])
    assert store.rooms() == []
    store.close()
