"""A shop's webhook receiver for tests: a real aiohttp server on a real port,
in a thread of its own, that records every request it gets.

It can be stopped and started again on the same port (a receiver that is
down, then back), and told to answer a status other than 200 for a while.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from stocksync.webhooks import SIGNATURE_HEADER, verify


def free_port() -> int:
    """A port nobody listens on now (the receiver binds it later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Received:
    """One request as the receiver got it."""

    headers: dict[str, str]
    body: bytes
    status: int
    """What the receiver answered."""
    unix_s: int
    """The receiver's own clock when it got it (for the signature's tolerance)."""

    @property
    def event(self) -> dict[str, Any]:
        """The JSON event."""
        return json.loads(self.body)  # type: ignore[no-any-return]

    def signed_by(self, secret: str) -> bool:
        """Whether the signature header is valid for ``secret``."""
        return verify(secret, self.headers.get(SIGNATURE_HEADER, ""), self.body, self.unix_s)


class Receiver:
    """The receiver at ``http://127.0.0.1:<port>/hook``."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[Received] = []
        self.answer = 200
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.answer
        with self._lock:
            self.received.append(Received(dict(request.headers), body, status, int(time.time())))
        return web.Response(status=status, text="ok" if status == 200 else "not now")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> Receiver:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def events(self, type_: str | None = None, status: int | None = 200) -> list[dict[str, Any]]:
        """Events received (answered ``status``; None: however answered), optionally of one type."""
        with self._lock:
            got = [r for r in self.received if status is None or r.status == status]
        return [r.event for r in got if type_ is None or r.event["type"] == type_]

    def requests(self, type_: str) -> list[Received]:
        """Every request carrying an event of ``type_``, however answered."""
        with self._lock:
            return [r for r in self.received if r.event["type"] == type_]
