"""Certificates renewed under a running hub (README, Security: rotating certificates).

A real ``stocksync-hub serve --tls DIR`` and two real ``stocksync-agent run
--tls DIR`` stream events while the hub's certificate files are replaced:
new connections get the new certificate, the open streams go on, an agent
restarted with a renewed certificate of its own is let in, and every event
recorded throughout reaches the hub exactly once.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import grpc
from conftest import agent_event_ids, hub_event_ids, wait_until
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from securehub import Pki, cert_creds, served_serial, tls_agent

from stocksync.agent.store import AgentStore
from stocksync.certs import issue_agent, issue_hub
from stocksync.events import Kind, NewEvent
from stocksync.tools.procs import Child, agent_status, command


def _serial(folder: Path) -> int:
    return x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes()).serial_number


def _record(db: Path, n: int) -> None:
    with AgentStore(db) as store:
        store.record_many([NewEvent(sku="SKU-1", kind=Kind.RECEIVE, quantity=1)] * n)


def _healthy(target: str, creds: grpc.ChannelCredentials) -> bool:
    with grpc.secure_channel(target, creds) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def test_the_hub_serves_a_renewed_certificate_while_agents_stream(tmp_path: Path) -> None:
    pki = Pki.make(tmp_path / "pki")
    hub_dir = pki.root / "hub"
    ready = tmp_path / "ready.json"
    hub = Child(
        "hub",
        [
            *command("stocksync-hub"),
            "serve",
            "--db",
            str(tmp_path / "hub.db"),
            "--listen",
            "127.0.0.1:0",
            "--tls",
            str(hub_dir),
            "--ready-file",
            str(ready),
        ],
        tmp_path / "hub.log",
    )
    agents: dict[str, Child] = {}
    try:
        port = wait_until(
            lambda: hub.check_alive() or (ready.exists() and json.loads(ready.read_text())["port"]),
            60,
            "the hub to serve",
        )
        target = f"127.0.0.1:{port}"
        lax = pki.agent("WH-LAX")
        wait_until(lambda: _healthy(target, cert_creds(lax)), 60, "the hub over TLS")
        dbs = {w: tmp_path / f"{w}.db" for w in ("WH-LAX", "WH-FRA")}
        for w, db in dbs.items():
            agents[w] = tls_agent(pki, w, db, target, tmp_path / f"{w}.log")
        for w, db in dbs.items():
            wait_until(lambda db=db: agent_status(db).get("connected"), 60, f"{w} to connect")

        # Events flow while the files are replaced under the hub.
        stop = threading.Event()

        def produce(db: Path) -> None:
            while not stop.wait(0.005):
                _record(db, 5)

        producers = [threading.Thread(target=produce, args=(db,)) for db in dbs.values()]
        for producer in producers:
            producer.start()
        old = _serial(hub_dir)
        assert served_serial(port, lax) == old
        new = issue_hub(pki.ca, hub_dir, ["localhost", "127.0.0.1"], force=True).serial_number
        assert new != old
        assert served_serial(port, lax) == new  # a new connection gets the new certificate

        # WH-LAX gets a renewed certificate of its own and reconnects: it
        # checks the hub's new certificate, and the hub its new one.
        issue_agent(pki.ca, lax, "WH-LAX", force=True)
        assert agents["WH-LAX"].stop() == 0
        agents["WH-LAX"] = tls_agent(pki, "WH-LAX", dbs["WH-LAX"], target, tmp_path / "lax2.log")
        wait_until(lambda: agent_status(dbs["WH-LAX"]).get("connected"), 60, "WH-LAX again")
        _record(dbs["WH-LAX"], 5)  # at least one batch over the new session
        stop.set()
        for producer in producers:
            producer.join()

        for w, db in dbs.items():
            wait_until(
                lambda db=db, w=w: hub_event_ids(tmp_path / "hub.db", w) == agent_event_ids(db),
                120,
                f"every event of {w} at the hub",
            )
            assert agent_status(db)["last_error"] is None
            assert len(agent_event_ids(db)) > 5
        hub.check_alive()
        assert "TLS certificate reloaded" in hub.text()
        assert f"serial {new:x}" in hub.text()
    finally:
        for agent in agents.values():
            agent.stop()
        assert hub.stop() == 0
