"""Mutual TLS: a warehouse certificate lets an agent speak for that warehouse only.

Also the ``--tls DIR`` convention, and hub credentials that serve a renewed
certificate without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import grpc
import pytest
from click.testing import CliRunner
from conftest import AGENT, HUB, agent_on_hand, hub_on_hand, run_cli, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from stocksync.certs import init_ca, issue_agent, issue_hub
from stocksync.tls import (
    CertificateReloader,
    TlsError,
    TlsFiles,
    reloading_server_credentials,
    tls_dir_option,
)
from stocksync.tools.procs import HubChild
from stocksync.v1 import sync_pb2, sync_pb2_grpc


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class CA:
    """A throwaway certificate authority."""

    def __init__(self, folder: Path, cn: str = "stocksync test CA") -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = folder / f"{cn.replace(' ', '-')}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, cn: str, server: bool = False, uris: list[str] | None = None
    ) -> tuple[str, str]:
        """A certificate for ``cn`` (with URI SANs ``uris``); returns (cert path, key path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        if uris:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        base = self.folder / cn
        _write(base, key, cert)
        return str(base.with_suffix(".pem")), str(base.with_suffix(".key"))


@pytest.fixture
def pki(tmp_path: Path) -> CA:
    return CA(tmp_path)


@pytest.fixture
def tls_hub(tmp_path: Path, pki: CA) -> Iterator[tuple[str, Path]]:
    cert, key = pki.issue("hub.stocksync.test", server=True)
    log = tmp_path / "hub.log"
    db = tmp_path / "hub.db"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                HUB,
                "serve",
                "--db",
                str(db),
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--tls-ca",
                str(pki.path),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    port = wait_until(
        lambda: (m := re.search(r"serving on port (\d+)", log.read_text())) and int(m.group(1)),
        30,
        "TLS hub to listen",
    )
    yield f"127.0.0.1:{port}", db
    proc.kill()
    proc.wait()


def _secure_stub(target: str, ca: CA, cn: str | None) -> sync_pb2_grpc.SyncServiceStub:
    cert_key = ca.issue(cn) if cn else None
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.path.read_bytes(),
        private_key=Path(cert_key[1]).read_bytes() if cert_key else None,
        certificate_chain=Path(cert_key[0]).read_bytes() if cert_key else None,
    )
    return sync_pb2_grpc.SyncServiceStub(grpc.secure_channel(target, creds))


def _hello(warehouse: str) -> Iterator[sync_pb2.SyncRequest]:
    yield sync_pb2.SyncRequest(
        hello=sync_pb2.Hello(warehouse=warehouse, epoch="e-1", protocol_version=1)
    )


def test_agent_streams_over_mutual_tls(tmp_path: Path, pki: CA, tls_hub: tuple[str, Path]) -> None:
    target, hub_db = tls_hub
    cert, key = pki.issue("WH-LAX")
    db = tmp_path / "lax.db"
    run_cli(AGENT, "record", "receive", "SKU-1", "7", "--db", str(db), check=True)
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [
            AGENT,
            "run",
            "--warehouse",
            "WH-LAX",
            "--hub",
            target,
            "--db",
            str(db),
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-ca",
            str(pki.path),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: hub_on_hand(hub_db, "WH-LAX") == agent_on_hand(db), 30)
        # A certificate naming no scope (the CN of an agent) reads nothing;
        # a client certificate with inventory:read does.
        op_cert, op_key = pki.issue("operator")
        out = run_cli(
            HUB, "stock", "SKU-1", "--hub", target, "--json",
            "--tls-cert", op_cert, "--tls-key", op_key, "--tls-ca", str(pki.path),
        )  # fmt: skip
        assert out.returncode == 1
        assert "PERMISSION_DENIED: agent operator holds no client scope" in out.stderr
        op_cert, op_key = pki.issue(
            "operator-2",
            uris=["spiffe://stocksync/client/operator", "urn:stocksync:scope:inventory:read"],
        )
        out = run_cli(
            HUB, "stock", "SKU-1", "--hub", target, "--json",
            "--tls-cert", op_cert, "--tls-key", op_key, "--tls-ca", str(pki.path),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        item = json.loads(out.stdout)
        assert item["sellable"] == 7
        assert item["warehouses"]["WH-LAX"]["on_hand"] == 7
    finally:
        agent.terminate()
        assert agent.wait(30) == 0


def test_certificate_for_another_warehouse_is_refused(pki: CA, tls_hub: tuple[str, Path]) -> None:
    target, _ = tls_hub
    stub = _secure_stub(target, pki, "WH-FRA")
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Sync(_hello("WH-LAX"), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "WH-FRA" in (err.value.details() or "")


def test_client_without_certificate_cannot_connect(pki: CA, tls_hub: tuple[str, Path]) -> None:
    target, _ = tls_hub
    stub = _secure_stub(target, pki, None)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Sync(_hello("WH-LAX"), timeout=10))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_cannot_connect(
    tmp_path: Path, pki: CA, tls_hub: tuple[str, Path]
) -> None:
    target, _ = tls_hub
    rogue = CA(tmp_path, "rogue CA")
    cert, key = rogue.issue("WH-LAX")
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.path.read_bytes(),
        private_key=Path(key).read_bytes(),
        certificate_chain=Path(cert).read_bytes(),
    )
    stub = sync_pb2_grpc.SyncServiceStub(grpc.secure_channel(target, creds))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Sync(_hello("WH-LAX"), timeout=10))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_must_be_asked_for(tmp_path: Path) -> None:
    for command in (
        [HUB, "serve", "--db", str(tmp_path / "h.db"), "--listen", "127.0.0.1:0"],
        [AGENT, "run", "--warehouse", "WH-LAX", "--db", str(tmp_path / "a.db")],
        [HUB, "stock", "SKU-1", "--hub", "127.0.0.1:1"],
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
        out = run_cli(*command, env=env)
        assert out.returncode != 0
        assert "--insecure" in out.stderr or "insecure" in out.stderr
        assert "tls" in out.stderr.lower()
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "h.db").exists()
    assert not (tmp_path / "a.db").exists()


# -- the --tls DIR convention ------------------------------------------------


@pytest.fixture
def issued(tmp_path: Path) -> Path:
    """A CA with a hub directory (localhost) and an agent directory (WH-LAX)."""
    init_ca(tmp_path / "ca")
    issue_hub(tmp_path / "ca", tmp_path / "hub", ["localhost", "127.0.0.1"])
    issue_agent(tmp_path / "ca", tmp_path / "agent", "WH-LAX")
    return tmp_path


def test_a_tls_dir_is_its_three_files(issued: Path) -> None:
    files = TlsFiles.from_dir(issued / "hub")
    assert (files.cert.name, files.key.name, files.ca.name) == ("cert.pem", "key.pem", "ca.pem")
    assert (
        files.read().leaf.serial_number
        == x509.load_pem_x509_certificate((issued / "hub" / "cert.pem").read_bytes()).serial_number
    )


@pytest.mark.parametrize("missing", ["cert.pem", "key.pem", "ca.pem"])
def test_a_tls_dir_missing_a_file_names_it(issued: Path, missing: str) -> None:
    (issued / "hub" / missing).unlink()
    with pytest.raises(TlsError) as err:
        TlsFiles.from_dir(issued / "hub")
    assert str(err.value) == (
        f"{issued / 'hub'} has no {missing} (expected cert.pem, key.pem and ca.pem in it)"
    )
    with pytest.raises(TlsError, match="is not a directory"):
        TlsFiles.from_dir(issued / "nowhere")


def test_tls_files_that_do_not_belong_together_are_refused(issued: Path) -> None:
    hub = issued / "hub"
    (hub / "key.pem").write_bytes((issued / "agent" / "key.pem").read_bytes())
    with pytest.raises(TlsError, match=r"key\.pem is not the key of .*cert\.pem"):
        TlsFiles.from_dir(hub).channel_credentials()
    (hub / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(TlsError, match=r"ca\.pem is not a PEM certificate"):
        TlsFiles.from_dir(hub).read()


def test_tls_option_gives_the_files_or_a_usage_error(issued: Path) -> None:
    @click.command()
    @tls_dir_option(envvar="STOCKSYNC_TEST_TLS")
    def show(tls: TlsFiles | None) -> None:
        click.echo("none" if tls is None else str(tls.key))

    runner = CliRunner()
    assert runner.invoke(show, []).output == "none\n"
    good = runner.invoke(show, ["--tls", str(issued / "agent")])
    assert good.output == f"{issued / 'agent' / 'key.pem'}\n"
    from_env = runner.invoke(show, [], env={"STOCKSYNC_TEST_TLS": str(issued / "hub")})
    assert from_env.output == f"{issued / 'hub' / 'key.pem'}\n"
    (issued / "agent" / "ca.pem").unlink()
    bad = runner.invoke(show, ["--tls", str(issued / "agent")])
    assert bad.exit_code == 2
    assert "Invalid value for '--tls'" in bad.output
    assert "has no ca.pem" in bad.output
    assert "Traceback" not in bad.output


# -- renewal without a restart -----------------------------------------------


@contextlib.contextmanager
def health_server(creds: grpc.ServerCredentials, kind: str) -> Iterator[int]:
    """The health service over ``creds`` on a sync or a grpc.aio server (port 0)."""
    if kind == "sync":
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        port = server.add_secure_port("127.0.0.1:0", creds)
        server.start()
        try:
            yield port
        finally:
            server.stop(None)
        return
    # grpc.aio, as the hub runs, on an event loop of its own thread.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        aio_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), aio_server)
        bound = aio_server.add_secure_port("127.0.0.1:0", creds)
        await aio_server.start()
        return aio_server, bound

    aio_server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(aio_server.stop(None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def served_serial(port: int, client: Path) -> int:
    """The serial number of the certificate a new TLS connection is given."""
    context = ssl.create_default_context(cafile=str(client / "ca.pem"))
    context.load_cert_chain(client / "cert.pem", client / "key.pem")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def healthy(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _serial(folder: Path) -> int:
    return x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes()).serial_number


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_a_renewed_certificate_is_served_without_a_restart(issued: Path, kind: str) -> None:
    hub, agent = issued / "hub", issued / "agent"
    creds = reloading_server_credentials(TlsFiles.from_dir(hub))
    with health_server(creds, kind) as port:
        old = _serial(hub)
        assert served_serial(port, agent) == old
        existing = grpc.secure_channel(
            f"localhost:{port}", TlsFiles.from_dir(agent).channel_credentials()
        )
        assert healthy(existing)

        new = issue_hub(issued / "ca", hub, ["localhost"], force=True).serial_number
        assert new != old
        assert served_serial(port, agent) == new
        with grpc.secure_channel(
            f"localhost:{port}", TlsFiles.from_dir(agent).channel_credentials()
        ) as fresh:
            assert healthy(fresh)
        assert healthy(existing)
        existing.close()


def test_unusable_new_files_keep_the_current_certificate(
    issued: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stocksync.tls")
    hub, agent = issued / "hub", issued / "agent"
    reloader = CertificateReloader(TlsFiles.from_dir(hub))
    old = _serial(hub)

    def warnings() -> int:
        return sum("cannot be used, still serving" in r.getMessage() for r in caplog.records)

    with health_server(reloader.credentials(), "sync") as port:
        # A key that is not the certificate's (a renewal caught half-way).
        (hub / "key.pem").write_bytes((agent / "key.pem").read_bytes())
        assert served_serial(port, agent) == old
        assert served_serial(port, agent) == old
        assert warnings() == 1  # once per change of the files, not per connection
        assert f"still serving serial {old:x}" in caplog.text

        (hub / "cert.pem").unlink()  # unreadable
        assert served_serial(port, agent) == old
        assert warnings() == 2
        assert reloader.certificate.serial_number == old

        new = issue_hub(issued / "ca", hub, ["localhost"], force=True).serial_number
        assert served_serial(port, agent) == new
        assert reloader.certificate.serial_number == new
        assert f"serial {new:x}" in caplog.text
        assert warnings() == 2


def test_reloading_credentials_refuse_unusable_files_at_start(issued: Path) -> None:
    (issued / "hub" / "key.pem").write_bytes((issued / "agent" / "key.pem").read_bytes())
    with pytest.raises(TlsError, match="is not the key of"):
        reloading_server_credentials(TlsFiles.from_dir(issued / "hub"))


def test_plaintext_beyond_loopback_is_warned_about_at_every_start(tmp_path: Path) -> None:
    for attempt, listen in enumerate(["0.0.0.0:0", "127.0.0.1:0", "0.0.0.0:0"]):
        log = tmp_path / f"hub-{attempt}.log"
        child = HubChild(tmp_path / "hub.db", log, listen)
        try:
            child.wait_ready(30)
        finally:
            assert child.stop() == 0
        warned = "serves PLAINTEXT beyond this machine" in log.read_text()
        assert warned == listen.startswith("0.0.0.0"), log.read_text()
