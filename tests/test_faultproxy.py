"""The fault proxy, with real sockets on 127.0.0.1: an echo server (or a gRPC
health service) behind it, clients in front of it.

Timing is only ever asserted as a lower bound (the proxy must hold bytes at
least as long as asked); everything else is asserted on outcomes.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import random
import re
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from stocksync.tools.faultproxy import FaultProxy, ThreadedFaultProxy, flap_schedule

# How long a read must stay empty to count as silence. Only a leak of bytes the
# proxy should hold could end it early, so a slow machine cannot fail it.
SILENCE = 0.3
# A sleep or a timer may fire up to the clock's resolution early.
EPSILON = 0.005


class Echo(socketserver.ThreadingTCPServer):
    """An upstream that echoes every byte and counts what it got and how it ended."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.received = 0
        self.resets = 0
        self.first_byte_at: float | None = None
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.port: int = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _EchoHandler(socketserver.BaseRequestHandler):
    server: Echo

    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                if self.server.first_byte_at is None:
                    self.server.first_byte_at = time.monotonic()
                self.server.received += len(data)
                self.request.sendall(data)
        except ConnectionResetError:
            self.server.resets += 1


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    yield server
    server.close()


# The client connections of the running scenario, closed when it ends.
_clients: list[asyncio.StreamWriter] = []


def run(scenario: Coroutine[Any, Any, None]) -> None:
    """Run an async scenario; a hang fails the test instead of the suite."""

    async def main() -> None:
        try:
            await asyncio.wait_for(scenario, 30)
        finally:
            for writer in _clients:
                writer.close()
            _clients.clear()

    asyncio.run(main())


async def until(predicate: Callable[[], object], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _clients.append(writer)
    return reader, writer


async def round_trip(
    port: int, payload: bytes = b"ping"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that has echoed ``payload`` once, so it is surely established."""
    reader, writer = await connect(port)
    writer.write(payload)
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
    return reader, writer


async def is_silent(reader: asyncio.StreamReader) -> bool:
    try:
        await asyncio.wait_for(reader.read(1), SILENCE)
    except TimeoutError:
        return True
    return False


async def is_reset(reader: asyncio.StreamReader) -> bool:
    """The peer went away: a reset, or EOF if the RST raced our read."""
    try:
        return await asyncio.wait_for(reader.read(65536), 10) == b""
    except ConnectionResetError:
        return True


# Shaping


def test_bytes_arrive_intact_and_in_order_under_latency_and_jitter(echo: Echo) -> None:
    data = random.Random(1).randbytes(4 * 1024 * 1024)

    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", echo.port, seed=3) as proxy:
            # Jitter larger than the gap between chunks: only a FIFO keeps the order.
            proxy.set_latency(0.02, jitter=0.015)
            reader, writer = await connect(proxy.port)

            async def send() -> None:
                rng, sent = random.Random(2), 0
                while sent < len(data):
                    size = rng.randint(1, 200_000)
                    writer.write(data[sent : sent + size])
                    await writer.drain()
                    sent += size
                writer.write_eof()

            _, back = await asyncio.gather(send(), reader.read())
            assert back == data  # and the FIN came through after the last byte
            stats = proxy.stats()
            assert stats.bytes_up == stats.bytes_down == len(data)
            assert stats.accepted == 1

    run(scenario())


def test_latency_is_added_in_each_direction(echo: Echo) -> None:
    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            proxy.set_latency(0.15, direction="up")
            proxy.set_latency(0.10, direction="down")
            reader, writer = await connect(proxy.port)
            sent = time.monotonic()
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            back = time.monotonic()
            assert echo.first_byte_at is not None
            assert echo.first_byte_at - sent >= 0.15 - EPSILON
            assert back - echo.first_byte_at >= 0.10 - EPSILON

    run(scenario())


def test_bandwidth_cap_spreads_bytes_over_time(echo: Echo) -> None:
    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            proxy.set_bandwidth(256 * 1024, direction="up")
            reader, writer = await connect(proxy.port)
            start = time.monotonic()
            writer.write(bytes(128 * 1024))
            await reader.readexactly(128 * 1024)
            assert time.monotonic() - start >= 0.5 - EPSILON  # 128 KiB at 256 KiB/s

    run(scenario())


# Blackhole


def test_blackhole_holds_bytes_silently_and_heal_delivers_them(echo: Echo) -> None:
    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            old, old_writer = await round_trip(proxy.port)
            before = echo.received
            proxy.blackhole()
            old_writer.write(b"held")
            assert await is_silent(old)
            assert echo.received == before  # nothing reached the upstream either

            # A new connection is accepted, and goes nowhere.
            reader, writer = await connect(proxy.port)
            writer.write(b"new")
            assert await is_silent(reader)
            assert proxy.connections() == 2

            proxy.heal()
            assert await asyncio.wait_for(old.readexactly(4), 10) == b"held"
            assert await asyncio.wait_for(reader.readexactly(3), 10) == b"new"
            await round_trip(proxy.port, b"after")
            assert proxy.stats().resets == 0

    run(scenario())


def test_blackhole_down_lets_the_request_through_but_not_the_answer(echo: Echo) -> None:
    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            reader, writer = await round_trip(proxy.port)
            proxy.blackhole("down")
            writer.write(b"question")
            await until(lambda: echo.received == len(b"ping") + len(b"question"), "the request")
            assert await is_silent(reader)
            proxy.heal()
            assert await asyncio.wait_for(reader.readexactly(8), 10) == b"question"

    run(scenario())


# Reset and refusal


def test_reset_kills_connections_on_both_sides(echo: Echo) -> None:
    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            reader, _ = await round_trip(proxy.port)
            assert proxy.reset() == 1
            assert await is_reset(reader)
            await until(lambda: echo.resets == 1, "the upstream to see the RST")
            assert proxy.connections() == 0
            await round_trip(proxy.port)  # no refusal asked for: new connections work
            assert proxy.stats().resets == 1

    run(scenario())


def test_reset_can_refuse_new_connections_until_healed(echo: Echo) -> None:
    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            proxy.reset(refuse_for=60)
            reader, writer = await connect(proxy.port)
            writer.write(b"anyone?")
            assert await is_reset(reader)
            assert proxy.stats().refused == 1
            assert echo.received == 0
            proxy.heal()
            await round_trip(proxy.port)

    run(scenario())


def test_an_upstream_that_refuses_resets_the_client() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", port) as proxy:
            reader, _ = await connect(proxy.port)
            assert await is_reset(reader)

    run(scenario())


# Cut


def test_cut_up_lets_exactly_n_bytes_through_then_heal_sends_the_rest(echo: Echo) -> None:
    payload = random.Random(4).randbytes(10_000)

    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            proxy.cut_after(3000, "up")
            reader, writer = await connect(proxy.port)
            writer.write(payload)
            assert await asyncio.wait_for(reader.readexactly(3000), 10) == payload[:3000]
            assert await is_silent(reader)
            assert echo.received == 3000
            assert proxy.connections() == 1  # still open, just silent
            proxy.heal()
            assert await asyncio.wait_for(reader.readexactly(7000), 10) == payload[3000:]

    run(scenario())


def test_cut_down_on_an_open_connection_counts_from_now(echo: Echo) -> None:
    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            reader, writer = await round_trip(proxy.port)
            proxy.cut_after(1234, "down")
            writer.write(bytes(10_000))
            await until(lambda: echo.received == 4 + 10_000, "the whole request upstream")
            assert len(await asyncio.wait_for(reader.readexactly(1234), 10)) == 1234
            assert await is_silent(reader)
            assert proxy.stats().bytes_down == 4 + 1234

    run(scenario())


# Flapping


def test_flap_schedule_is_deterministic_per_seed() -> None:
    first = list(itertools.islice(flap_schedule((0.5, 2.0), (0.1, 0.3), seed=7), 20))
    assert first == list(itertools.islice(flap_schedule((0.5, 2.0), (0.1, 0.3), seed=7), 20))
    assert first != list(itertools.islice(flap_schedule((0.5, 2.0), (0.1, 0.3), seed=8), 20))
    assert [phase for phase, _ in first] == ["up", "down"] * 10
    assert all(0.5 <= s <= 2.0 for p, s in first if p == "up")
    assert all(0.1 <= s <= 0.3 for p, s in first if p == "down")
    fixed = list(itertools.islice(flap_schedule(1, 2), 4))
    assert fixed == [("up", 1.0), ("down", 2.0), ("up", 1.0), ("down", 2.0)]
    with pytest.raises(ValueError, match="down"):
        flap_schedule(1, (0.3, 0.1))


def test_flapping_follows_the_seeded_schedule(echo: Echo) -> None:
    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            proxy.flap((0.05, 0.1), (0.05, 0.1), seed=11)
            await until(lambda: len(proxy.flap_history()) >= 6, "six phases")
            proxy.heal()
            history = proxy.flap_history()
            assert history == list(
                itertools.islice(flap_schedule((0.05, 0.1), (0.05, 0.1), 11), len(history))
            )
            await round_trip(proxy.port)  # healed: no refusal left behind

    run(scenario())


def test_a_down_phase_resets_and_refuses(echo: Echo) -> None:
    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            reader, _ = await round_trip(proxy.port)
            proxy.flap(up=0.05, down=60)
            assert await is_reset(reader)
            assert proxy.flap_history()[-1][0] == "down"
            refused, _ = await connect(proxy.port)
            assert await is_reset(refused)
            stats = proxy.stats()
            assert (stats.resets, stats.refused) == (1, 1)
            proxy.heal()
            await round_trip(proxy.port)

    run(scenario())


# gRPC through the proxy


def test_grpc_works_through_latency_and_a_blackhole_exceeds_the_deadline() -> None:
    async def scenario() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with FaultProxy("127.0.0.1", port) as proxy:
                proxy.set_latency(0.1)
                async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    request = health_pb2.HealthCheckRequest()
                    reply = await stub.Check(request, timeout=10)
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
                    start = time.monotonic()
                    await stub.Check(request, timeout=10)
                    assert time.monotonic() - start >= 0.2 - EPSILON  # one round trip

                    proxy.blackhole()
                    with pytest.raises(grpc.aio.AioRpcError) as failed:
                        await stub.Check(request, timeout=0.5)
                    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

                    proxy.heal()
                    reply = await stub.Check(request, timeout=10)
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await server.stop(None)

    run(scenario())


def test_tls_passes_through_untouched(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_ctx = ssl.create_default_context(cafile=tmp_path / "cert.pem")
    data = random.Random(5).randbytes(300_000)

    async def echo_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(len(data)))
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(echo_tls, "127.0.0.1", 0, ssl=server_ctx)
        async with server, FaultProxy("127.0.0.1", server.sockets[0].getsockname()[1]) as proxy:
            proxy.set_latency(0.02, jitter=0.01)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", proxy.port, ssl=client_ctx, server_hostname="localhost"
            )
            _clients.append(writer)
            writer.write(data)
            assert await asyncio.wait_for(reader.readexactly(len(data)), 10) == data

    run(scenario())


# From synchronous code


def test_threaded_proxy_from_blocking_sockets(echo: Echo) -> None:
    proxy = ThreadedFaultProxy("127.0.0.1", echo.port)
    proxy.set_latency(0.01)  # may be set before it starts
    with proxy, socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        proxy.blackhole("up")
        sock.sendall(b"held")
        sock.settimeout(SILENCE)
        with pytest.raises(TimeoutError):
            sock.recv(4)
        proxy.heal()
        sock.settimeout(10)
        assert sock.recv(4) == b"held"
        assert proxy.connections() == 1
        assert proxy.stats().bytes_down == 8
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(4)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=10)  # stopped


def test_threaded_proxy_that_cannot_bind_raises_and_leaves_no_thread() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        threads = threading.active_count()
        proxy = ThreadedFaultProxy("127.0.0.1", 1, listen_port=busy.getsockname()[1])
        with pytest.raises(OSError):
            proxy.start()
        assert threading.active_count() == threads
        proxy.stop()  # nothing to stop: no error


def test_bad_arguments_are_refused() -> None:
    proxy = FaultProxy("127.0.0.1", 1)
    with pytest.raises(ValueError, match="direction"):
        proxy.blackhole("sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="latency"):
        proxy.set_latency(-1)
    with pytest.raises(ValueError, match="bandwidth"):
        proxy.set_bandwidth(0)
    with pytest.raises(ValueError, match="n_bytes"):
        proxy.cut_after(-1, "up")
    with pytest.raises(ValueError, match="max_in_flight"):
        FaultProxy("127.0.0.1", 1, max_in_flight=0)


# The command line

CLI = [sys.executable, "-m", "stocksync.tools.faultproxy"]


def test_cli_forwards_until_ctrl_c(echo: Echo) -> None:
    proc = subprocess.Popen(
        [*CLI, "--upstream", f"127.0.0.1:{echo.port}", "--latency-ms", "20", "--jitter-ms", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(
            r"faultproxy listening on 127\.0\.0\.1:(\d+), forwarding to .*\n", line
        )
        assert match, line
        with socket.create_connection(("127.0.0.1", int(match[1])), timeout=10) as sock:
            sock.sendall(b"hello")
            assert sock.recv(5) == b"hello"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "1 connections, 5 bytes up, 5 bytes down" in out
    assert err == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upstream", "nowhere"], "Invalid value for '--upstream'"),
        (["--upstream", "127.0.0.1:1", "--listen", "127.0.0.1:99999"], "'--listen'"),
        (["--upstream", "127.0.0.1:1", "--latency-ms", "-5"], "'--latency-ms'"),
        ([], "Missing option '--upstream'"),
    ],
)
def test_cli_bad_arguments_give_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_cli_busy_port_is_one_line_and_exit_1() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*CLI, "--upstream", "127.0.0.1:1", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.startswith(f"faultproxy: cannot listen on 127.0.0.1:{port}")
    assert result.stderr.count("\n") == 1, result.stderr
