"""Waking the daemon when another process records an event.

Whoever commits events to a store (``stocksync-agent record``, ``import``,
a warehouse system using :class:`~stocksync.agent.store.AgentStore`) sends
one datagram to the daemon of that store; the daemon looks for new events at
once instead of at its next poll. Without it an event waits up to
``poll_interval_ms``; with it the poll is only the fallback for a lost
datagram or a platform without the socket.

The socket lives in Linux's abstract namespace, named after the store's real
path: no file to create, clean up or protect, and it disappears with the
daemon. Sending is best effort and never blocks or fails a write: no daemon
running, a full queue or another platform are all fine (the poll covers
them).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["WakeListener", "notify", "wake_address"]

log = logging.getLogger("stocksync.agent.wake")

SUPPORTED = sys.platform.startswith("linux")
"""Abstract Unix socket names exist on Linux only; elsewhere the poll does it all."""

_sender: socket.socket | None = None


def wake_address(db: str | Path) -> bytes:
    """The abstract socket name of ``db``'s daemon (the same for every path to the file)."""
    real = os.path.realpath(db).encode()
    return b"\0stocksync-agent-wake:" + hashlib.sha256(real).hexdigest()[:40].encode()


def notify(db: str | Path) -> None:
    """Tell ``db``'s daemon, if one runs, that new events were committed."""
    global _sender
    if not SUPPORTED:
        return
    try:
        if _sender is None:
            _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sender.setblocking(False)
        _sender.sendto(b"!", wake_address(db))
    except OSError:
        pass  # no daemon, or its queue is full (it is awake then): the poll covers it


class WakeListener:
    """The daemon's end: calls ``wake`` whenever a datagram arrives.

    Args:
        db: the store the daemon streams from.
        wake: what to call (on the event loop).
    """

    def __init__(self, db: str | Path, wake: Callable[[], None]) -> None:
        self.db = db
        self.wake = wake
        self.wakes = 0
        """Datagrams received."""
        self._sock: socket.socket | None = None

    def start(self) -> bool:
        """Listen on the event loop; False (and the poll alone) where that cannot be."""
        if not SUPPORTED:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(wake_address(self.db))
        except OSError as e:
            sock.close()
            log.warning("cannot listen for wake-ups (%s); new events are found by polling", e)
            return False
        sock.setblocking(False)
        import asyncio  # here: recorders import this module, and need no event loop

        asyncio.get_running_loop().add_reader(sock.fileno(), self._drain)
        self._sock = sock
        return True

    def _drain(self) -> None:
        assert self._sock is not None
        woke = False
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                self._sock.recv(64)
                self.wakes += 1
                woke = True
        if woke:
            self.wake()

    def stop(self) -> None:
        """Stop listening."""
        if self._sock is not None:
            import asyncio

            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
