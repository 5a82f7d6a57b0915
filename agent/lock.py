"""One daemon per store (DESIGN §6): an OS lock on ``<db>.lock``.

Two daemons streaming one store would each say Hello for the same epoch and
supersede each other at the hub over and over. ``stocksync-agent run`` takes
an exclusive ``flock`` on a file beside the store and holds it for as long as
it runs. The kernel drops the lock when the process ends however it ends
(kill -9 included), so a lock file left behind by a dead daemon never blocks
the next one; the pid written in it only names the holder in the message.

The file is never deleted: removing it while another process waits to lock
it would let two daemons hold locks on two different files.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from stocksync.agent.store import StoreError

__all__ = ["DaemonLock"]


class DaemonLock:
    """The lock ``stocksync-agent run`` holds on its store.

    Args:
        db: the store's path; the lock is ``<db>.lock``.
    """

    def __init__(self, db: str | Path) -> None:
        self.db = Path(db)
        self.path = Path(f"{db}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or say who holds it.

        Raises:
            StoreError: if another process holds it (naming its pid), or the
                lock file cannot be created.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StoreError(f"cannot create the daemon lock {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StoreError(
                f"another stocksync-agent run ({f'pid {holder}' if holder else 'pid unknown'}) "
                f"is already streaming {self.db}: one daemon per store; stop that one first"
            ) from None
        pid = f"{os.getpid()}\n".encode()
        try:
            # Written over the old text, then cut: no moment with no room for it.
            os.pwrite(fd, pid, 0)
            os.ftruncate(fd, len(pid))
        except OSError:
            # A full disk: the lock holds all the same; only a second daemon's
            # message will lack our pid.
            pass
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (exiting does the same)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DaemonLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
