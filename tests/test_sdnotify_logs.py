"""systemd's notify protocol and the log formats, from real daemons.

- ``NOTIFY_SOCKET`` pointing at a test's own datagram socket (a path, and an
  abstract ``@`` name): ``stocksync-hub serve`` and ``stocksync-agent run``
  send READY=1 once they serve, WATCHDOG=1 every WATCHDOG_USEC/2 after it,
  and STOPPING=1 on SIGTERM, nothing after.
- ``--log-format json``: every line either daemon writes is one JSON object
  with ts, level, logger, message; a line about a warehouse names it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until

from stocksync.sdnotify import Notifier
from stocksync.tools.procs import AgentChild, HubChild, wait_for

WATCHDOG_USEC = "300000"
"""0.3 s: the daemons ping every 0.15 s."""


class NotifyListener:
    """The systemd end: a datagram socket collecting what daemons send."""

    def __init__(self, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"stocksync-test-{secrets.token_hex(6)}"
            self.sock.bind(b"\0" + name.encode())
            self.address = "@" + name
        else:
            # A short directory: socket paths are limited to 107 bytes.
            self._dir = tempfile.TemporaryDirectory(prefix="sdn-")
            self.address = os.path.join(self._dir.name, "notify")
            self.sock.bind(self.address)
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        """Every message received so far (each a datagram's text)."""
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def states(self) -> list[str]:
        """The KEY=value lines in order, STATUS lines left out."""
        return [
            line
            for message in self.drain()
            for line in message.splitlines()
            if not line.startswith("STATUS=")
        ]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def listener(request: pytest.FixtureRequest) -> Iterator[NotifyListener]:
    listen = NotifyListener(abstract=request.param)
    yield listen
    listen.close()


def _check_sequence(states: list[str]) -> None:
    assert states[0] == "READY=1", states
    assert states[-1] == "STOPPING=1", states
    middle = states[1:-1]
    assert middle.count("WATCHDOG=1") >= 3 and set(middle) == {"WATCHDOG=1"}, states


def test_the_hub_says_ready_pings_the_watchdog_and_says_stopping(
    tmp_path: Path, listener: NotifyListener
) -> None:
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": WATCHDOG_USEC}
    hub = HubChild(tmp_path / "hub.db", tmp_path / "hub.log", env=env)
    try:
        hub.wait_ready(30)
        wait_for(lambda: "READY=1" in listener.states(), 10, "READY=1")
        wait_for(lambda: listener.states().count("WATCHDOG=1") >= 3, 10, "watchdog pings")
    finally:
        assert hub.stop() == 0
    _check_sequence(listener.states())
    assert any(m.startswith("READY=1\nSTATUS=serving on port") for m in listener.messages)


def test_the_agent_says_ready_pings_the_watchdog_and_says_stopping(
    tmp_path: Path, listener: NotifyListener
) -> None:
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": WATCHDOG_USEC}
    # No hub: the daemon runs (and is ready) whether or not its hub answers.
    agent = AgentChild("WH-LAX", tmp_path / "lax.db", "127.0.0.1:9", tmp_path / "a.log", env=env)
    try:
        wait_for(lambda: "READY=1" in listener.states(), 30, "READY=1")
        wait_for(lambda: listener.states().count("WATCHDOG=1") >= 3, 10, "watchdog pings")
    finally:
        assert agent.stop() == 0
    _check_sequence(listener.states())


def test_without_notify_socket_nothing_is_sent_and_another_pids_watchdog_is_ignored() -> None:
    assert not Notifier({}).enabled
    assert Notifier({}).notify("READY=1") is False
    other = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.enabled and other.watchdog_s is None
    mine = Notifier(
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert mine.watchdog_s == 1.0
    assert Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled is False


def test_a_listener_that_never_reads_does_not_block_the_daemon(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Linux queues a few datagrams per socket; past that a blocking send would
    freeze the daemon's event loop. Sends fail at once instead, logged once."""
    listener = NotifyListener(abstract=True)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": listener.address})
        with caplog.at_level("WARNING", logger="stocksync.sdnotify"):
            results = [notifier.notify("WATCHDOG=1") for _ in range(500)]
        assert results[0] is True
        assert results.count(False) > 0  # the queue filled: sends refused, not waited on
        assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
        listener.drain()  # systemd reads again
        assert notifier.notify("WATCHDOG=1") is True
    finally:
        listener.close()


def _json_lines(text: str) -> list[dict[str, object]]:
    lines = []
    for line in text.splitlines():
        if not line.strip() or (line[:1] in "IWE" and ".cc:" in line[:40]):
            continue  # gRPC's C core writes its own lines (rare; not ours)
        lines.append(json.loads(line))  # every line of ours is one JSON object
    return lines


def test_json_logs_are_one_object_a_line_and_name_the_warehouse(tmp_path: Path) -> None:
    hub = HubChild(tmp_path / "hub.db", tmp_path / "hub.log", extra=("--log-format", "json"))
    agent: AgentChild | None = None
    try:
        hub.wait_ready(30)
        agent = AgentChild(
            "WH-JSON",
            tmp_path / "json.db",
            hub.target,
            tmp_path / "agent.log",
            extra=("--log-format", "json"),
        )
        agent.wait_connected(30)
        wait_for(lambda: "WH-JSON: connected" in hub.text(), 10, "the hub's connect line")
    finally:
        if agent is not None:
            agent.stop()
        hub.stop()
    hub_lines = _json_lines(hub.text())
    agent_lines = _json_lines(agent.text() if agent else "")
    for line in hub_lines + agent_lines:
        assert {"ts", "level", "logger", "message"} <= set(line), line
        assert str(line["ts"]).endswith("+00:00")
    assert all(line["warehouse"] == "WH-JSON" for line in agent_lines)
    about = [line for line in hub_lines if "WH-JSON" in str(line["message"])]
    assert about and all(line.get("warehouse") == "WH-JSON" for line in about)
    assert any("serving on port" in str(line["message"]) for line in hub_lines)


def test_text_logs_name_the_agents_warehouse_on_every_line(tmp_path: Path) -> None:
    agent = AgentChild("WH-TXT", tmp_path / "t.db", "127.0.0.1:9", tmp_path / "t.log")
    with contextlib.ExitStack() as stack:
        stack.callback(agent.stop)
        wait_until(lambda: "retrying in" in agent.text(), 30, "a failed attempt")
    lines = [ln for ln in agent.text().splitlines() if " stocksync." in ln]
    assert lines and all("[WH-TXT]" in ln for ln in lines), lines
