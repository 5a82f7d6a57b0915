"""The agent daemon's local API (agent/local_api.py) with a real hub and a
real daemon: recording through it, refusals that store nothing, the
addresses it accepts, and a second daemon on the same socket."""

from __future__ import annotations

import functools
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import (
    AGENT,
    AgentProcess,
    HubProcess,
    hub_on_hand,
    hub_watermark,
    run_cli,
    wait_until,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_agent_bad_days import Dump, dump
from test_cli import agent as agent_cli

from stocksync.agent.local_api import MAX_RECORD_EVENTS
from stocksync.agent.store import AgentStore
from stocksync.v1 import agent_pb2, agent_pb2_grpc, sync_pb2

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    h = HubProcess(tmp_path / "hub.db", tmp_path / "hub.log").start()
    yield h
    h.kill()


def start_agent(tmp_path: Path, hub: HubProcess, address: str, *extra: str) -> AgentProcess:
    db = tmp_path / "lax.db"
    a = AgentProcess(
        "WH-LAX", db, hub.target, tmp_path / "agent.log", "--local-api", address, *extra
    ).start()

    def serving() -> bool:
        assert a.child is not None
        a.child.check_alive()
        return serving_at(address)

    wait_until(serving, 30, "the local API")
    return a


def serving_at(address: str) -> bool:
    """Whether the agent's health service says the local API serves at ``address``."""
    with grpc.insecure_channel(address) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="stocksync.v1.AgentService"), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def acked_seq(db: Path) -> int:
    with AgentStore(db, read_only=True) as store:
        return store.acked_seq()


def books(db: Path) -> Dump:
    """Every row of the agent's store but the daemon's report on itself (connected,
    last error), which it rewrites as its link to the hub comes and goes."""
    rows = dump(db)
    rows["meta"] = [r for r in rows["meta"] if r[0] != "daemon"]
    return rows


def stub(address: str) -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(grpc.insecure_channel(address))


def new(sku: str, kind: int, qty: int, **kw: object) -> agent_pb2.NewEvent:
    return agent_pb2.NewEvent(sku=sku, kind=kind, quantity=qty, **kw)  # type: ignore[arg-type]


RECEIVE, SHIP, ADJUST, COUNT = (
    sync_pb2.EVENT_KIND_RECEIVE,
    sync_pb2.EVENT_KIND_SHIP,
    sync_pb2.EVENT_KIND_ADJUST,
    sync_pb2.EVENT_KIND_COUNT,
)


def test_a_batch_is_recorded_durably_and_sent_without_waiting_for_a_poll(
    tmp_path: Path, hub: HubProcess
) -> None:
    address = f"unix:{tmp_path / 'api.sock'}"
    # A poll this slow would keep events for 10 s: only the wake sends them sooner.
    a = start_agent(tmp_path, hub, address, "--config", str(_slow_poll(tmp_path)))
    try:
        api = stub(address)
        reply = api.Record(
            agent_pb2.RecordRequest(
                events=[
                    new("LIP", RECEIVE, 30),
                    new("LIP", SHIP, 4, reservation_id="R-1"),
                    new("LIP", ADJUST, -1, reason="damage"),
                ]
            ),
            timeout=10,
        )
        assert (reply.first_seq, reply.last_seq) == (1, 3)
        with AgentStore(a.db, read_only=True) as store:
            assert store.on_hand("LIP") == {"LIP": 25}  # durable when the call returned
        wait_until(lambda: hub_watermark(hub.db, "WH-LAX") == 3, 8, "the events at the hub")
        reply = api.Record(
            agent_pb2.RecordRequest(events=[new("LIP", COUNT, 20, as_of_seq=1)]), timeout=10
        )
        assert (reply.first_seq, reply.last_seq) == (4, 4)
        # Counted 20 as of seq 1 (30 then); the ship and the damage after it survive.
        wait_until(lambda: hub_on_hand(hub.db, "WH-LAX") == {"LIP": 15}, 8, "the count")
        assert a.stop() == 0
        assert not Path(address.removeprefix("unix:")).exists(), "the socket is removed"
    finally:
        a.kill()


def _slow_poll(tmp_path: Path) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text("poll_interval_ms = 10000\n")
    return config


def test_refusals_name_the_event_and_store_nothing(tmp_path: Path, hub: HubProcess) -> None:
    address = f"unix:{tmp_path / 'api.sock'}"
    a = start_agent(tmp_path, hub, address)
    try:
        api = stub(address)
        api.Record(agent_pb2.RecordRequest(events=[new("LIP", RECEIVE, 5)]), timeout=10)
        # Let the daemon settle (the hub has the event, the ack is saved), so that what
        # it writes of its own accord is not taken for what a refusal stored.
        wait_until(lambda: hub_watermark(hub.db, "WH-LAX") == 1, 8, "the event at the hub")
        wait_until(lambda: acked_seq(a.db) == 1, 8, "the hub's ack saved")
        before = books(a.db)
        cases = {
            "one bad among good": (
                [new("LIP", RECEIVE, 1), new("bad sku!", RECEIVE, 1)],
                r"events\[1\]: .*sku",
            ),
            "no events": ([], r"events: 1 to 10000 per request, got 0"),
            "kind unset": ([new("LIP", 0, 1)], r"events\[0\]\.kind: must be RECEIVE"),
            "zero receive": ([new("LIP", RECEIVE, 0)], r"events\[0\]: .*quantity"),
            "count in the future": ([new("LIP", COUNT, 3, as_of_seq=99)], r"as_of_seq 99"),
            "reservation on a receive": (
                [new("LIP", RECEIVE, 1, reservation_id="R-1")],
                r"events\[0\]: .*reservation",
            ),
            "too many": (
                [new("LIP", RECEIVE, 1)] * (MAX_RECORD_EVENTS + 1),
                r"at most|1 to 10000 per request, got 10001",
            ),
        }
        for name, (events, detail) in cases.items():
            with pytest.raises(grpc.RpcError) as err:
                api.Record(agent_pb2.RecordRequest(events=events), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert re.search(detail, err.value.details()), (name, err.value.details())
        # Bytes that are no RecordRequest at all.
        raw = grpc.insecure_channel(address).unary_unary(
            "/stocksync.v1.AgentService/Record",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid stocksync.v1.RecordRequest" in err.value.details()
        assert books(a.db) == before
        assert a.child is not None and a.child.returncode is None, "the daemon keeps running"
    finally:
        a.kill()


@pytest.mark.parametrize(
    "address, message",
    [
        ("0.0.0.0:7070", "not a loopback address"),
        ("10.1.2.3:7070", "not a loopback address"),
        ("wms.example:7070", "not a loopback address"),
        ("unix:", "unix: needs a path"),
        ("127.0.0.1", "expected unix:PATH or HOST:PORT"),
    ],
)
def test_an_address_a_network_could_reach_is_refused(
    tmp_path: Path, address: str, message: str
) -> None:
    out = agent_cli(
        "run",
        "--warehouse",
        "WH-LAX",
        "--db",
        str(tmp_path / "lax.db"),
        "--insecure",
        "--local-api",
        address,
    )
    assert out.returncode != 0
    assert message in out.stderr and "local_api" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "lax.db").exists()


def test_a_second_daemon_on_the_same_socket_is_refused_and_a_stale_one_is_replaced(
    tmp_path: Path, hub: HubProcess
) -> None:
    address = f"unix:{tmp_path / 'api.sock'}"
    first = start_agent(tmp_path, hub, address)
    try:
        second = subprocess.run(
            [
                AGENT,
                "run",
                "--warehouse",
                "WH-FRA",
                "--db",
                str(tmp_path / "fra.db"),
                "--hub",
                hub.target,
                "--insecure",
                "--local-api",
                address,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert "another process is listening on it" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        reply = stub(address).Record(
            agent_pb2.RecordRequest(events=[new("LIP", RECEIVE, 1)]), timeout=10
        )
        assert reply.last_seq == 1, "the first daemon still serves"
        first.kill()  # kill -9 leaves the socket file behind
        assert Path(address.removeprefix("unix:")).exists()
        again = start_agent(tmp_path, hub, address)
        try:
            reply = stub(address).Record(
                agent_pb2.RecordRequest(events=[new("LIP", RECEIVE, 1)]), timeout=10
            )
            assert reply.last_seq == 2
        finally:
            again.kill()
    finally:
        first.kill()


def test_the_readme_python_example_records_through_a_loopback_port(
    tmp_path: Path, hub: HubProcess
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    a = start_agent(tmp_path, hub, address)
    try:
        example = _readme_block("from stocksync.v1 import agent_pb2")
        out = subprocess.run(
            [sys.executable, "-c", example.replace("127.0.0.1:7070", address)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "recorded seq 1..2"
        wait_until(lambda: hub_on_hand(hub.db, "WH-LAX") == {"SKU-1": 22}, 30, "at the hub")
    finally:
        a.kill()


def _readme_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    [block] = [b for b in blocks if marker in b]
    return block


def test_any_process_that_records_wakes_the_daemon(tmp_path: Path, hub: HubProcess) -> None:
    """`record` in another process: the daemon sends at once, not at its next poll
    (10 s here, so three events in a row would take ~15 s by polling alone)."""
    db = tmp_path / "lax.db"
    a = AgentProcess(
        "WH-LAX", db, hub.target, tmp_path / "agent.log", "--config", str(_slow_poll(tmp_path))
    ).start()
    try:
        assert a.child is not None
        a.child.wait_connected()
        at_hub = functools.partial(hub_watermark, hub.db, "WH-LAX")
        for seq in (1, 2, 3):
            run_cli(AGENT, "record", "receive", "LIP", "5", "--db", str(db), check=True)
            wait_until(lambda s=seq: at_hub() == s, 4, f"seq {seq} at the hub")
    finally:
        a.kill()
