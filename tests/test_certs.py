"""`stocksync-hub certs`: a private CA whose certificates a real gRPC TLS server accepts."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from stocksync.certs import Authority, cert_pem, key_pem, write_issued
from stocksync.hub.certs_cli import certs
from stocksync.tls import TlsFiles, reloading_server_credentials


def cli(*args: str) -> Result:
    return CliRunner().invoke(certs, list(args))


def ok(*args: str) -> Result:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result


def load(folder: Path, name: str = "cert.pem") -> x509.Certificate:
    return x509.load_pem_x509_certificate((folder / name).read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    ok("init", "--ca-dir", str(tmp_path / "ca"))
    return tmp_path / "ca"


@pytest.fixture
def hub_dir(tmp_path: Path, ca: Path) -> Path:
    out = tmp_path / "hub"
    ok("issue-hub", "localhost", "127.0.0.1", "--ca-dir", str(ca), "--out", str(out))
    return out


# -- what the files hold -----------------------------------------------------


def test_init_makes_a_ten_year_ca_whose_key_only_its_owner_reads(tmp_path: Path) -> None:
    old = os.umask(0)  # the key's mode must not depend on a careful umask
    try:
        ok("init", "--ca-dir", str(tmp_path / "ca"))
    finally:
        os.umask(old)
    ca = tmp_path / "ca"
    assert sorted(p.name for p in ca.iterdir()) == ["ca-key.pem", "ca.pem"]
    assert mode(ca / "ca-key.pem") == 0o600
    assert mode(ca / "ca.pem") == 0o644
    cert = load(ca, "ca.pem")
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3650) <= lifetime < datetime.timedelta(days=3651)


def test_hub_certificate_names_every_host_and_serves_only(hub_dir: Path, ca: Path) -> None:
    cert = load(hub_dir)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.issuer == load(ca, "ca.pem").subject
    assert (hub_dir / "ca.pem").read_bytes() == (ca / "ca.pem").read_bytes()
    assert mode(hub_dir / "key.pem") == 0o600
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=397) <= lifetime < datetime.timedelta(days=398)


def test_agent_certificate_names_its_warehouse(tmp_path: Path, ca: Path) -> None:
    ok("issue-agent", "WH-LAX", "--ca-dir", str(ca), "--out", str(tmp_path / "a"), "--days", "30")
    cert = load(tmp_path / "a")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "WH-LAX"
    assert uris(cert) == ["spiffe://stocksync/warehouse/WH-LAX"]
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=30) <= lifetime < datetime.timedelta(days=31)


def test_client_certificate_carries_one_uri_per_scope(tmp_path: Path, ca: Path) -> None:
    ok(
        "issue-client", "room-server", "--scope", "rooms:host:R-1", "--scope", "inventory:read",
        "--ca-dir", str(ca), "--out", str(tmp_path / "c"),
    )  # fmt: skip
    cert = load(tmp_path / "c")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "room-server"
    assert uris(cert) == [
        "spiffe://stocksync/client/room-server",
        "urn:stocksync:scope:rooms:host:R-1",
        "urn:stocksync:scope:inventory:read",
    ]


def test_serial_numbers_are_random(tmp_path: Path, ca: Path) -> None:
    serials = set()
    for i in range(3):
        ok("issue-agent", "WH-LAX", "--ca-dir", str(ca), "--out", str(tmp_path / str(i)))
        serials.add(load(tmp_path / str(i)).serial_number)
    assert len(serials) == 3
    assert all(s.bit_length() > 64 for s in serials)


# -- refusing ----------------------------------------------------------------


def test_existing_files_are_kept_unless_forced(tmp_path: Path, ca: Path, hub_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in (*ca.iterdir(), *hub_dir.iterdir())}
    again = cli("init", "--ca-dir", str(ca))
    assert again.exit_code == 1
    assert again.output == f"Error: {ca / 'ca-key.pem'} exists; pass --force to replace it\n"
    again = cli("issue-hub", "localhost", "--ca-dir", str(ca), "--out", str(hub_dir))
    assert again.exit_code == 1
    assert "exists; pass --force" in again.output
    assert {p.name: p.read_bytes() for p in (*ca.iterdir(), *hub_dir.iterdir())} == before

    # A key left world-readable by someone else's tool is replaced by a 0600 one.
    (hub_dir / "key.pem").chmod(0o644)
    ok("issue-hub", "localhost", "--ca-dir", str(ca), "--out", str(hub_dir), "--force")
    assert (hub_dir / "cert.pem").read_bytes() != before["cert.pem"]
    assert mode(hub_dir / "key.pem") == 0o600
    assert sorted(p.name for p in hub_dir.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["issue-agent", "WH LAX"], "warehouse id 'WH LAX' must be 1-32 letters"),
        (["issue-agent", "W" * 33], "must be 1-32 letters"),
        (["issue-client", "bob smith", "--scope", "admin"], "name 'bob smith' must be 1-64"),
        (["issue-client", "bob", "--scope", "inventory:write"], "unknown scope 'inventory:write'"),
        (["issue-client", "bob", "--scope", "rooms:watch:"], "room id '' must be 1-64"),
        (["issue-client", "bob", "--scope", "admin:R-1"], "unknown scope 'admin:R-1'"),
        (["issue-hub", "hub example"], "'hub example' is neither a DNS name nor an IP"),
        (["issue-hub", "bad-.example"], "neither a DNS name nor an IP"),
        (["issue-agent", "WH-LAX", "--days", "0"], "days: must be between 1 and 3650, got 0"),
        (["issue-agent", "WH-LAX", "--days", "3650"], "the CA expires on"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, ca: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    result = cli(*args, "--ca-dir", str(ca), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert not out.exists()


def test_issuing_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    result = cli("issue-agent", "WH-LAX", "--ca-dir", str(tmp_path / "none"), "--out", "x")
    assert result.exit_code == 1
    assert "no CA in" in result.output and "certs init --ca-dir" in result.output
    assert result.output.count("\n") == 1


def test_a_ca_key_that_is_not_the_cas_is_refused(tmp_path: Path, ca: Path) -> None:
    ok("init", "--ca-dir", str(tmp_path / "other"))
    (ca / "ca-key.pem").write_bytes((tmp_path / "other" / "ca-key.pem").read_bytes())
    result = cli("issue-agent", "WH-LAX", "--ca-dir", str(ca), "--out", str(tmp_path / "a"))
    assert result.exit_code == 1
    assert "ca-key.pem is not the key of" in result.output


def test_every_command_has_an_example() -> None:
    for command in certs.commands.values():
        assert "Example:" in (command.help or ""), command.name


# -- on a real TLS server ----------------------------------------------------


@contextmanager
def health_server(tls: Path) -> Iterator[int]:
    """A gRPC server with the health service, mutual TLS from the ``tls`` directory."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port(
        "127.0.0.1:0", reloading_server_credentials(TlsFiles.from_dir(tls))
    )
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def check(port: int, creds: grpc.ChannelCredentials) -> grpc.StatusCode:
    """Call Health/Check over a fresh channel; the status it ends with."""
    with grpc.secure_channel(f"localhost:{port}", creds) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        except grpc.RpcError as e:
            return e.code()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return grpc.StatusCode.OK


def test_issued_certificates_are_accepted(tmp_path: Path, ca: Path, hub_dir: Path) -> None:
    ok("issue-agent", "WH-LAX", "--ca-dir", str(ca), "--out", str(tmp_path / "agent"))
    ok(
        "issue-client", "ops", "--scope", "admin",
        "--ca-dir", str(ca), "--out", str(tmp_path / "client"),
    )  # fmt: skip
    with health_server(hub_dir) as port:
        for who in ("agent", "client"):
            creds = TlsFiles.from_dir(tmp_path / who).channel_credentials()
            assert check(port, creds) == grpc.StatusCode.OK, who


def test_certificate_of_a_rogue_ca_is_refused(tmp_path: Path, hub_dir: Path) -> None:
    ok("init", "--ca-dir", str(tmp_path / "rogue"))
    rogue = tmp_path / "rogue-agent"
    ok("issue-agent", "WH-LAX", "--ca-dir", str(tmp_path / "rogue"), "--out", str(rogue))
    creds = grpc.ssl_channel_credentials(
        root_certificates=(hub_dir / "ca.pem").read_bytes(),  # trusts the hub
        private_key=(rogue / "key.pem").read_bytes(),
        certificate_chain=(rogue / "cert.pem").read_bytes(),
    )
    with health_server(hub_dir) as port:
        assert check(port, creds) == grpc.StatusCode.UNAVAILABLE


def _backdated(ca: Path, start: datetime.datetime, end: datetime.datetime) -> tuple[bytes, bytes]:
    """An agent certificate signed by the real CA, valid only from ``start`` to ``end``."""
    authority = Authority.load(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "WH-LAX")]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://stocksync/warehouse/WH-LAX")]
            ),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )
    return cert_pem(cert), key_pem(key)


@pytest.mark.parametrize(
    ("start_days", "end_days"), [(-30, -1), (1, 30)], ids=["expired", "not-yet-valid"]
)
def test_certificate_outside_its_validity_is_refused(
    ca: Path, hub_dir: Path, start_days: int, end_days: int
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    cert, key = _backdated(
        ca, now + datetime.timedelta(days=start_days), now + datetime.timedelta(days=end_days)
    )
    ca_pem = (ca / "ca.pem").read_bytes()
    with health_server(hub_dir) as port:
        good = _backdated(ca, now - datetime.timedelta(days=1), now + datetime.timedelta(days=1))
        assert check(port, grpc.ssl_channel_credentials(ca_pem, good[1], good[0])) == (
            grpc.StatusCode.OK
        )
        assert check(port, grpc.ssl_channel_credentials(ca_pem, key, cert)) == (
            grpc.StatusCode.UNAVAILABLE
        )


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (ExtendedKeyUsageOID.SERVER_AUTH, grpc.StatusCode.OK),
        (ExtendedKeyUsageOID.CLIENT_AUTH, grpc.StatusCode.UNAVAILABLE),
    ],
    ids=["server-usage", "client-usage"],
)
def test_only_a_server_usage_certificate_can_serve_as_the_hub(
    tmp_path: Path, ca: Path, usage: x509.ObjectIdentifier, expected: grpc.StatusCode
) -> None:
    # Extended key usage keeps the roles apart: an agent's or client's key, even
    # for a certificate naming the hub's host, cannot impersonate the hub.
    authority = Authority.load(ca)
    cert, key = authority.issue("localhost", [x509.DNSName("localhost")], usage)
    write_issued(tmp_path / "server", cert, key, authority.cert)
    ok("issue-agent", "WH-FRA", "--ca-dir", str(ca), "--out", str(tmp_path / "agent"))
    creds = TlsFiles.from_dir(tmp_path / "agent").channel_credentials()
    with health_server(tmp_path / "server") as port:
        assert check(port, creds) == expected
