"""Mutual TLS: a warehouse certificate lets an agent speak for that warehouse only."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import AGENT, HUB, agent_on_hand, hub_on_hand, run_cli, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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

    def issue(self, cn: str, server: bool = False) -> tuple[str, str]:
        """A certificate for ``cn``; returns (cert path, key path)."""
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
        op_cert, op_key = pki.issue("operator")
        out = run_cli(
            HUB, "stock", "SKU-1", "--hub", target, "--json",
            "--tls-cert", op_cert, "--tls-key", op_key, "--tls-ca", str(pki.path),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["warehouses"] == {"WH-LAX": {"on_hand": 7}}
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
