"""Who is calling and what they may do: certificates, bearer tokens and scopes."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stocksync.auth import (
    ANONYMOUS,
    Forbidden,
    Identity,
    InvalidScope,
    TokenFileError,
    TokenTable,
    Unauthenticated,
    identify_caller,
    identity_from_auth_context,
    identity_from_certificate,
    new_token,
    require,
    validate_scope,
)
from stocksync.certs import (
    Authority,
    cert_pem,
    init_ca,
    issue_agent,
    issue_client,
    issue_hub,
    write_issued,
)
from stocksync.hub.certs_cli import tokens
from stocksync.tls import TlsFiles, reloading_server_credentials

# -- scopes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    ["inventory:read", "inventory:reserve", "rooms:watch", "rooms:host", "admin",
     "rooms:watch:R-1", "rooms:host:live.2024_11"],
)  # fmt: skip
def test_good_scopes(scope: str) -> None:
    assert validate_scope(scope) == scope


@pytest.mark.parametrize(
    "scope",
    ["", "read", "inventory", "inventory:read:R-1", "admin:R-1", "rooms:watch:",
     "rooms:watch:R 1", "rooms:watch:R:1", "rooms:host:" + "R" * 65, "ROOMS:WATCH"],
)  # fmt: skip
def test_bad_scopes(scope: str) -> None:
    with pytest.raises(InvalidScope, match=re.escape(repr(scope))):
        validate_scope(scope)


def test_admin_implies_every_scope() -> None:
    admin = Identity.client("ops", ["admin"])
    for scope in ("inventory:read", "inventory:reserve", "rooms:watch", "rooms:host"):
        require(admin, scope)
    require(admin, "rooms:host", room="R-9")


def test_room_scopes_limit_to_their_rooms() -> None:
    overlay = Identity.client("overlay", ["rooms:watch:R-1", "rooms:watch:R-2"])
    require(overlay, "rooms:watch", room="R-1")
    require(overlay, "rooms:watch", room="R-2")
    with pytest.raises(Forbidden) as err:
        require(overlay, "rooms:watch", room="R-3")
    assert err.value.detail == "client overlay lacks scope rooms:watch for room R-3"
    with pytest.raises(Forbidden, match=r"lacks scope rooms:watch$"):
        require(overlay, "rooms:watch")  # every room: needs the unlimited scope
    with pytest.raises(Forbidden, match="lacks scope rooms:host for room R-1"):
        require(overlay, "rooms:host", room="R-1")  # watching is not hosting

    everywhere = Identity.client("room-server", ["rooms:watch"])
    require(everywhere, "rooms:watch")
    require(everywhere, "rooms:watch", room="R-7")


def test_reserving_is_a_scope_of_its_own() -> None:
    reader = Identity.client("dash", ["inventory:read"])
    require(reader, "inventory:read")
    with pytest.raises(Forbidden, match="client dash lacks scope inventory:reserve"):
        require(reader, "inventory:reserve")


def test_agents_and_anonymous_callers_hold_no_client_scope() -> None:
    with pytest.raises(Forbidden, match=r"agent WH-LAX holds no client scope.*inventory:read"):
        require(Identity.agent("WH-LAX"), "inventory:read")
    with pytest.raises(Forbidden, match="anonymous caller lacks scope rooms:watch for room R-1"):
        require(ANONYMOUS, "rooms:watch", room="R-1")
    with pytest.raises(ValueError, match="holds no scope"):
        Identity(kind="agent", name="WH-LAX", warehouse="WH-LAX", scopes=frozenset({"admin"}))


def test_asking_for_a_scope_that_does_not_exist_is_a_bug() -> None:
    with pytest.raises(ValueError, match="not a scope"):
        require(Identity.client("ops", ["admin"]), "inventory:write")
    with pytest.raises(ValueError, match="not limited by room"):
        require(Identity.client("ops", ["admin"]), "inventory:read", room="R-1")


# -- certificates ------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, the hub's TLS dir, an agent's, a client's and a rogue CA's agent."""
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca")
    issue_hub(root / "ca", root / "hub", ["localhost", "127.0.0.1"])
    issue_agent(root / "ca", root / "agent", "WH-LAX")
    issue_client(root / "ca", root / "client", "overlay", ["rooms:watch:R-1", "inventory:read"])
    legacy = Authority.load(root / "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    # A certificate as made before URI SANs: only a CN naming the warehouse.
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "WH-OLD")]))
        .issuer_name(legacy.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(legacy.key, hashes.SHA256())
    )
    write_issued(root / "legacy", cert, key, legacy.cert)
    return root


def _cert(pki: Path, cn: str, uris: Sequence[str]) -> bytes:
    authority = Authority.load(pki / "ca")
    names = [x509.UniformResourceIdentifier(u) for u in uris] or [x509.DNSName("x.test")]
    cert, _ = authority.issue(cn, names, ExtendedKeyUsageOID.CLIENT_AUTH)
    return cert_pem(cert)


def test_identity_of_each_kind_of_certificate(pki: Path) -> None:
    assert identity_from_certificate((pki / "agent" / "cert.pem").read_bytes()) == (
        Identity(kind="agent", name="WH-LAX", warehouse="WH-LAX")
    )
    assert identity_from_certificate((pki / "client" / "cert.pem").read_bytes()) == Identity(
        kind="client", name="overlay", scopes=frozenset({"rooms:watch:R-1", "inventory:read"})
    )
    assert identity_from_certificate((pki / "legacy" / "cert.pem").read_bytes()) == (
        Identity.agent("WH-OLD")
    )


def test_the_uri_wins_over_the_cn(pki: Path) -> None:
    pem = _cert(pki, "WH-CN", ["spiffe://stocksync/warehouse/WH-URI"])
    assert identity_from_certificate(pem) == Identity.agent("WH-URI")
    other = _cert(pki, "WH-CN", ["https://example.com/not-ours"])  # not ours: the CN decides
    assert identity_from_certificate(other) == Identity.agent("WH-CN")


@pytest.mark.parametrize(
    ("cn", "uris", "message"),
    [
        ("x", ["spiffe://stocksync/warehouse/A", "spiffe://stocksync/client/b"], "exactly one"),
        ("x", ["urn:stocksync:scope:admin"], "exactly one"),
        ("x", ["spiffe://stocksync/warehouse/A", "urn:stocksync:scope:admin"], "may not carry"),
        ("x", ["spiffe://stocksync/robot/A"], "unknown stocksync id"),
        ("x", ["spiffe://stocksync/client/b", "urn:stocksync:scope:root"], "unknown scope 'root'"),
        ("x", ["spiffe://stocksync/client/b c"], "name 'b c'"),
        ("x", ["spiffe://stocksync/warehouse/"], "warehouse id ''"),
        ("x", ["urn:stocksync:other"], "exactly one"),
        ("not a warehouse!", [], "CN: warehouse id 'not a warehouse!'"),
    ],
)
def test_certificates_naming_nobody_are_refused(
    pki: Path, cn: str, uris: list[str], message: str
) -> None:
    with pytest.raises(Unauthenticated, match=re.escape(message)):
        identity_from_certificate(_cert(pki, cn, uris))


def test_auth_context_without_a_certificate_has_no_identity(pki: Path) -> None:
    assert identity_from_auth_context({}) is None
    assert identity_from_auth_context({"transport_security_type": [b"ssl"]}) is None
    # Without the PEM, the names gRPC extracted are used the same way.
    names = {
        "x509_common_name": [b"overlay"],
        "peer_uri": [b"spiffe://stocksync/client/overlay", b"urn:stocksync:scope:rooms:watch:R-1"],
    }
    assert identity_from_auth_context(names) == Identity.client("overlay", ["rooms:watch:R-1"])
    assert identity_from_auth_context({"x509_common_name": [b"WH-LAX"]}) == Identity.agent("WH-LAX")


# -- bearer tokens -----------------------------------------------------------


def _table(tmp_path: Path, text: str) -> TokenTable:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    return TokenTable.load(path)


def _entry(name: str, digest: str, *scopes: str) -> str:
    return f'[[token]]\nname = "{name}"\nsha256 = "{digest}"\nscopes = {json.dumps(scopes)}\n'


def test_new_tokens_are_long_random_and_hashed() -> None:
    token, digest = new_token()
    assert re.fullmatch(r"sst_[A-Za-z0-9_-]{43}", token)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert token not in digest
    assert new_token()[0] != token


def test_the_right_token_names_its_client(tmp_path: Path) -> None:
    overlay, overlay_hash = new_token()
    ops, ops_hash = new_token()
    table = _table(
        tmp_path,
        _entry("overlay", overlay_hash, "rooms:watch:R-1") + _entry("ops", ops_hash, "admin"),
    )
    assert len(table) == 2
    assert table.identify(f"Bearer {overlay}") == Identity.client("overlay", ["rooms:watch:R-1"])
    assert table.identify(f"bearer  {ops}") == Identity.client("ops", ["admin"])


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Basic dXNlcjpwdw==", "Bearer sst_short", "sst_" + "A" * 43,
     "Bearer " + "A" * 47, "Bearer sst_" + "A" * 43 + " extra", "Bearer sst_" + "A" * 42 + "!"],
)  # fmt: skip
def test_malformed_authorization_is_refused(tmp_path: Path, header: str) -> None:
    table = _table(tmp_path, _entry("ops", new_token()[1], "admin"))
    with pytest.raises(Unauthenticated, match="expected 'Bearer sst_"):
        table.identify(header)


def test_a_wrong_token_is_refused_without_echoing_it(tmp_path: Path) -> None:
    table = _table(tmp_path, _entry("ops", new_token()[1], "admin"))
    wrong, _ = new_token()
    with pytest.raises(Unauthenticated) as err:
        table.identify(f"Bearer {wrong}")
    assert err.value.detail == "unknown bearer token"
    with pytest.raises(Unauthenticated):
        TokenTable().identify(f"Bearer {wrong}")


H = "a" * 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[token]\n", "not valid TOML"),
        ("tokens = []\n", "unknown key 'tokens'"),
        ("token = 3\n", "array of tables"),
        ('[[token]]\nname = "a"\nscopes = ["admin"]\n', "token #1 (a): missing sha256"),
        (_entry("a", "abc", "admin"), "token #1 (a): sha256 must be 64 hex digits"),
        (_entry("a", H, "admin", "bogus"), "token #1 (a): unknown scope 'bogus'"),
        (_entry("a", H), "token #1 (a): scopes is empty"),
        ('[[token]]\nname = "a"\nsha256 = "' + H + '"\nscopes = "admin"\n', "must be a list"),
        (_entry("a b", H, "admin"), "token #1: name 'a b' must be 1-64"),
        (_entry("a", H, "admin") + _entry("a", "b" * 64, "admin"), "token #2: name 'a' is used"),
        (_entry("a", H, "admin") + _entry("b", H, "admin"), "token #2 (b): same sha256 as a"),
        (_entry("a", H, "admin") + "role = 'x'\n", "token #1 (a): unknown key 'role'"),
    ],
)
def test_bad_tokens_files_name_the_entry(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TokenFileError) as err:
        _table(tmp_path, text)
    assert message in str(err.value)
    assert str(err.value).startswith(f"tokens file {tmp_path / 'tokens.toml'}: ")
    assert "\n" not in str(err.value)


def test_an_unreadable_tokens_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match=r"tokens file .*missing\.toml: cannot read"):
        TokenTable.load(tmp_path / "missing.toml")


def test_tokens_new_prints_the_token_once_and_an_entry_to_paste(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        tokens, ["new", "overlay", "--scope", "rooms:watch:R-1", "--scope", "inventory:read"]
    )
    assert result.exit_code == 0, result.output
    token = re.search(r"^token: (sst_\S+)$", result.output, re.M)
    assert token is not None
    assert result.output.count(token[1]) == 1
    entry = result.output[result.output.index("[[token]]") :]
    table = _table(tmp_path, entry)
    assert table.identify(f"Bearer {token[1]}") == Identity.client(
        "overlay", ["rooms:watch:R-1", "inventory:read"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["new", "overlay", "--scope", "rooms:see"], "unknown scope 'rooms:see'"),
        (["new", "over lay", "--scope", "admin"], "name 'over lay' must be"),
    ],
)
def test_tokens_new_refuses_bad_input_in_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(tokens, args)
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1
    assert "sst_" not in result.output


def test_tokens_commands_have_examples() -> None:
    assert "Example:" in (tokens.help or "")
    for command in tokens.commands.values():
        assert "Example:" in (command.help or ""), command.name


# -- on a real gRPC server ---------------------------------------------------


def _handler(table: TokenTable | None) -> grpc.GenericRpcHandler:
    """``/test.Who/Me``: the caller as the hub would see it, as JSON."""

    def me(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            who = identify_caller(context.auth_context(), context.invocation_metadata(), table)
        except Unauthenticated as e:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, e.detail)
        return json.dumps(
            {"kind": who.kind, "name": who.name, "scopes": sorted(who.scopes)}
        ).encode()

    return grpc.method_handlers_generic_handler(
        "test.Who", {"Me": grpc.unary_unary_rpc_method_handler(me)}
    )


@contextmanager
def who_server(table: TokenTable | None, *creds: grpc.ServerCredentials) -> Iterator[list[int]]:
    """One gRPC server listening on one port per credentials given."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([_handler(table)])
    ports = [server.add_secure_port("127.0.0.1:0", c) for c in creds]
    server.start()
    try:
        yield ports
    finally:
        server.stop(None)


def me(port: int, pki: Path, cert_dir: str | None, token: str | None = None) -> Any:
    """Ask who we are; the reply as a dict, or the failing status code."""
    if cert_dir:
        creds = TlsFiles.from_dir(pki / cert_dir).channel_credentials()
    else:
        creds = grpc.ssl_channel_credentials((pki / "ca" / "ca.pem").read_bytes())
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.secure_channel(f"localhost:{port}", creds) as channel:
        try:
            return json.loads(
                channel.unary_unary("/test.Who/Me")(b"", timeout=10, metadata=metadata)
            )
        except grpc.RpcError as e:
            return e.code()


def _mtls(pki: Path) -> grpc.ServerCredentials:
    return reloading_server_credentials(TlsFiles.from_dir(pki / "hub"))


def _tls_only(pki: Path) -> grpc.ServerCredentials:
    return reloading_server_credentials(TlsFiles.from_dir(pki / "hub"), require_client_auth=False)


def test_identity_read_from_the_auth_context(pki: Path) -> None:
    with who_server(None, _mtls(pki)) as [port]:
        assert me(port, pki, "agent") == {"kind": "agent", "name": "WH-LAX", "scopes": []}
        assert me(port, pki, "client") == {
            "kind": "client",
            "name": "overlay",
            "scopes": ["inventory:read", "rooms:watch:R-1"],
        }
        assert me(port, pki, "legacy") == {"kind": "agent", "name": "WH-OLD", "scopes": []}


def test_one_port_cannot_take_both_client_certificates_and_token_callers(
    tmp_path: Path, pki: Path
) -> None:
    """grpcio 1.85 offers two modes per port, and neither serves both kinds of caller.

    ``require_client_auth=True`` is REQUEST_AND_REQUIRE_..._AND_VERIFY: a caller
    without a certificate fails the handshake. ``False`` is
    DONT_REQUEST_CLIENT_CERTIFICATE: the server never asks, so an agent's
    certificate never reaches it and the agent cannot be told from anyone else.
    """
    token, digest = new_token()
    table = _table(tmp_path, _entry("overlay", digest, "rooms:watch:R-1"))
    with who_server(table, _mtls(pki)) as [port]:
        assert me(port, pki, None, token) == grpc.StatusCode.UNAVAILABLE
    with who_server(table, _tls_only(pki)) as [port]:
        assert me(port, pki, "agent") == {"kind": "anonymous", "name": "anonymous", "scopes": []}
        assert me(port, pki, None, token)["name"] == "overlay"


def test_one_server_with_two_listeners_takes_both(tmp_path: Path, pki: Path) -> None:
    """The way out: the same services on a mutual-TLS port and a TLS-only port."""
    token, digest = new_token()
    table = _table(tmp_path, _entry("overlay", digest, "rooms:watch:R-1"))
    with who_server(table, _mtls(pki), _tls_only(pki)) as [mtls, tls_only]:
        assert me(mtls, pki, "agent")["kind"] == "agent"
        assert me(mtls, pki, "client")["name"] == "overlay"
        assert me(tls_only, pki, None, token) == {
            "kind": "client",
            "name": "overlay",
            "scopes": ["rooms:watch:R-1"],
        }
        assert me(tls_only, pki, None, new_token()[0]) == grpc.StatusCode.UNAUTHENTICATED
        assert me(tls_only, pki, None, "not-a-token") == grpc.StatusCode.UNAUTHENTICATED
        assert me(tls_only, pki, None)["kind"] == "anonymous"  # the hub must refuse these


def test_a_token_is_not_ignored_where_tokens_are_not_taken(pki: Path) -> None:
    with who_server(None, _tls_only(pki)) as [port]:
        assert me(port, pki, None, new_token()[0]) == grpc.StatusCode.UNAUTHENTICATED
