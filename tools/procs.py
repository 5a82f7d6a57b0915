"""Real hub and agent processes, started and watched the same way by the demo,
the benchmark harness and the tests.

Readiness is asked, never guessed from log text: the hub writes a ready file
(``serve --ready-file``) naming its pid and bound port once it serves, and
then answers the gRPC health service; an agent is connected when its store
says so (what ``stocksync-agent status --json`` shows).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = [
    "AgentChild",
    "Child",
    "ChildDied",
    "EdgeChild",
    "HubChild",
    "agent_status",
    "command",
    "health_serving",
    "wait_for",
]


class ChildDied(RuntimeError):
    """A subprocess exited while it was expected to run; the text has its log's tail."""


def command(name: str) -> list[str]:
    """The console script ``name`` beside this interpreter, else on PATH, else
    ``python -m`` its module."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    if found:
        return [found]
    module = {"stocksync-hub": "stocksync.hub.cli", "stocksync-agent": "stocksync.agent.cli"}
    return [sys.executable, "-m", module[name]]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return it.

    Raises:
        TimeoutError: after ``timeout`` seconds, naming ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


class Child:
    """A subprocess whose stdout and stderr go to a log file.

    Args:
        name: what to call it in messages.
        args: the command line.
        log: the log file (appended to).
        env: extra environment variables.
        new_session: start it in a session of its own, so a terminal's
            Ctrl-C reaches only the parent (which stops it itself).
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log = log
        self.started = time.perf_counter()
        self.started_wall = time.time()
        self._log_offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=new_session,
            )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.proc.poll()

    def text(self) -> str:
        """What this run of the process has logged so far."""
        return self.log.read_text(errors="replace")[self._log_offset :]

    def check_alive(self) -> None:
        """Raise :class:`ChildDied` with the log's tail if the process has exited."""
        if self.proc.poll() is not None:
            tail = self.text()[-2000:]
            raise ChildDied(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)

    def kill(self) -> None:
        """kill -9: no chance to flush or say goodbye."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def health_serving(target: str, timeout: float = 1.0) -> bool:
    """True if the gRPC server at ``target`` (plaintext) answers SERVING."""
    with grpc.insecure_channel(target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class _Serving(Child):
    """A child that writes a ready file with its port once it serves gRPC health."""

    ready_file: Path
    port: int = 0
    http_port: int = 0

    def ready(self) -> dict[str, Any] | None:
        """The ready file's contents once the child serves and answers health, else None."""
        self.check_alive()
        try:
            info: dict[str, Any] = json.loads(self.ready_file.read_text())
        except (OSError, ValueError):
            return None
        if info.get("pid") != self.pid:
            return None  # a previous run's file
        port = int(info["port"])
        return info if health_serving(f"127.0.0.1:{port}") else None

    def wait_ready(self, timeout: float = 60.0) -> int:
        """Wait until the child serves; returns its port."""
        info = wait_for(self.ready, timeout, f"the {self.name} to serve", poll=0.02)
        self.port = int(info["port"])
        self.http_port = int(info.get("http_port") or 0)
        return self.port

    @property
    def target(self) -> str:
        """HOST:PORT to reach it."""
        return f"127.0.0.1:{self.port}"


class HubChild(_Serving):
    """``stocksync-hub serve`` (plaintext) on ``listen``; :meth:`wait_ready` gives its port.

    Args:
        db: the hub's store.
        log: its log file; the ready file goes beside it.
        listen: HOST:PORT, port 0 for any free one.
        extra: more ``serve`` options.
        env: extra environment variables.
    """

    def __init__(
        self,
        db: Path,
        log: Path,
        listen: str = "127.0.0.1:0",
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.db = db
        self.ready_file = log.with_suffix(".ready.json")
        self.ready_file.unlink(missing_ok=True)
        self.port = 0
        self.http_port = 0
        """The HTTP listener's port, when started with ``--http``."""
        super().__init__(
            "hub",
            [
                *command("stocksync-hub"),
                "serve",
                "--db",
                str(db),
                "--listen",
                listen,
                "--insecure",
                "--ready-file",
                str(self.ready_file),
                *extra,
            ],
            log,
            env,
        )


class EdgeChild(_Serving):
    """``stocksync-hub edge`` (plaintext, gRPC and HTTP) in front of the hub at ``hub``.

    Args:
        hub: the hub's HOST:PORT.
        log: its log file; the ready file goes beside it.
    """

    def __init__(self, hub: str, log: Path, env: Mapping[str, str] | None = None) -> None:
        self.ready_file = log.with_suffix(".ready.json")
        self.ready_file.unlink(missing_ok=True)
        args = ["edge", "--hub", hub, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]
        args.append("--insecure")
        super().__init__(
            "edge",
            [*command("stocksync-hub"), *args, "--ready-file", str(self.ready_file)],
            log,
            env,
        )


class AgentChild(Child):
    """``stocksync-agent run`` (plaintext) for one warehouse.

    Args:
        warehouse: the warehouse id.
        db: its store.
        hub: the hub's HOST:PORT.
        log: its log file.
        extra: more ``run`` options.
        env: extra environment variables.
        new_session: see :class:`Child`.
    """

    def __init__(
        self,
        warehouse: str,
        db: Path,
        hub: str,
        log: Path,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
    ) -> None:
        self.warehouse = warehouse
        self.db = db
        super().__init__(
            f"agent {warehouse}",
            [
                *command("stocksync-agent"),
                "run",
                "--warehouse",
                warehouse,
                "--hub",
                hub,
                "--db",
                str(db),
                "--insecure",
                *extra,
            ],
            log,
            env,
            new_session,
        )

    def status(self) -> dict[str, Any]:
        """What ``stocksync-agent status --json`` says of its store."""
        self.check_alive()
        return agent_status(self.db)

    def wait_connected(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the daemon says it is connected to the hub."""
        return dict(
            wait_for(
                lambda: (s := self.status()).get("connected") and s,
                timeout,
                f"{self.name} to connect",
                poll=0.05,
            )
        )


def agent_status(db: Path) -> dict[str, Any]:
    """The status of an agent store, as ``stocksync-agent status --json`` prints it
    ({} while the store does not exist yet)."""
    from stocksync.agent.store import AgentStore, StoreError, status_info

    if not db.exists():
        return {}
    try:
        with AgentStore(db) as store:
            return status_info(store)
    except StoreError:
        return {}
