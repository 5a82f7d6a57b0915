"""systemd's notify protocol (sd_notify(3)), in the few lines it takes.

Under a ``Type=notify`` unit systemd sets ``NOTIFY_SOCKET``, an AF_UNIX
datagram socket (a path, or ``@name`` for the abstract namespace); a daemon
sends ``READY=1`` once it serves, ``STOPPING=1`` when it begins to stop,
and, when the unit has ``WatchdogSec=`` (systemd then sets
``WATCHDOG_USEC``), ``WATCHDOG=1`` at least that often or systemd restarts
it. The pings come from the daemon's event loop, so a loop that hangs stops
them: that is the point. Without ``NOTIFY_SOCKET`` everything here does
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger("stocksync.sdnotify")


class Notifier:
    """Talks to systemd when it listens (``NOTIFY_SOCKET`` is set).

    Args:
        env: the environment (default ``os.environ``).
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self.watchdog_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000
        self._pinger: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        """Whether systemd (or a test) listens."""
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``KEY=value``) in one datagram; returns whether it was sent.

        The send never blocks (a listener that does not read must not freeze
        the event loop). A failure is logged once until a send succeeds again,
        never raised: systemd not listening must not stop the daemon.
        """
        if self.address is None:
            return False
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        try:
            with socket.socket(socket.AF_UNIX, kind) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as e:
            if not self._failing:
                log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), e)
            self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd again")
        self._failing = False
        return True

    def ready(self, status: str = "") -> None:
        """The daemon serves; start the watchdog pings if systemd wants them."""
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))
        if self.watchdog_s is not None and self._pinger is None and self.enabled:
            self._pinger = asyncio.ensure_future(self._ping(self.watchdog_s / 2))

    async def _ping(self, every_s: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(every_s)

    async def stopping(self, status: str = "") -> None:
        """The daemon begins to stop: stop the pings and say so."""
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
            self._pinger = None
        self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))
