"""A hub behind mutual TLS for the security tests, and the credentials to call it.

- :class:`Pki` issues, with ``stocksync.certs`` into ``tmp_path``, the CA, the
  hub's certificate, agent and client certificates, bearer tokens (their
  hashes in a tokens file), and the certificates the hub must refuse: from a
  rogue CA, expired, not yet valid.
- :class:`HubThread` runs a real :class:`~stocksync.hub.server.Hub` with
  that TLS, a token listener and HTTP, on port 0, on an event loop of its
  own thread. Its clock stands still, so nothing is written on a timer and
  a dump of the store changes only when a call changes it.
- :func:`dump` is every table of the store as bytes (``iterdump``), to prove
  a refused call wrote nothing; :func:`rows_written` counts what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.client
import json
import queue
import socket
import sqlite3
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stocksync.auth import AGENT_URI_PREFIX, new_token
from stocksync.certs import (
    Authority,
    cert_pem,
    init_ca,
    issue_agent,
    issue_client,
    issue_hub,
    key_pem,
)
from stocksync.config import HubConfig
from stocksync.hub.clock import HubClock
from stocksync.hub.server import Hub
from stocksync.tools.procs import Child, command
from stocksync.v1 import sync_pb2, sync_pb2_grpc

RECEIVE = 1


@dataclass
class Pki:
    """Certificates and tokens under one folder."""

    root: Path
    tokens: dict[str, str] = field(default_factory=dict)
    """Token name -> the token itself (the hub holds only its hash)."""

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    @property
    def tokens_file(self) -> Path:
        return self.root / "tokens.toml"

    @classmethod
    def make(cls, root: Path) -> Pki:
        pki = cls(root)
        init_ca(pki.ca)
        issue_hub(pki.ca, root / "hub", ["localhost", "127.0.0.1"])
        pki.tokens_file.write_text("")
        return pki

    def agent(self, warehouse: str) -> Path:
        """An agent's ``--tls`` directory (issued once)."""
        folder = self.root / f"agent-{warehouse}"
        if not folder.exists():
            issue_agent(self.ca, folder, warehouse)
        return folder

    def client(self, name: str, *scopes: str) -> Path:
        """A client certificate's ``--tls`` directory (issued once)."""
        folder = self.root / f"client-{name}"
        if not folder.exists():
            issue_client(self.ca, folder, name, scopes)
        return folder

    def token(self, name: str, *scopes: str) -> str:
        """A bearer token, added to the tokens file (once per name)."""
        if name not in self.tokens:
            token, digest = new_token()
            quoted = ", ".join(f'"{s}"' for s in scopes)
            with self.tokens_file.open("a") as f:
                f.write(f'[[token]]\nname = "{name}"\nsha256 = "{digest}"\nscopes = [{quoted}]\n')
            self.tokens[name] = token
        return self.tokens[name]

    def odd_agent(self, folder: str, warehouse: str, start_days: float, end_days: float) -> Path:
        """An agent certificate valid from ``start_days`` to ``end_days`` from now."""
        authority = Authority.load(self.ca)
        now = datetime.datetime.now(datetime.UTC)
        return _write(
            self.root / folder,
            _leaf(authority, warehouse, now + _days(start_days), now + _days(end_days)),
            authority.cert,
        )

    def rogue_agent(self, warehouse: str) -> Path:
        """An agent certificate for ``warehouse`` from a CA the hub never trusted."""
        rogue = Authority.create("stocksync CA")  # the same name, another key
        now = datetime.datetime.now(datetime.UTC)
        return _write(
            self.root / "rogue",
            _leaf(rogue, warehouse, now - _days(1), now + _days(30)),
            Authority.load(self.ca).cert,  # it still trusts the real hub
        )


def _days(n: float) -> datetime.timedelta:
    return datetime.timedelta(days=n)


def _leaf(
    authority: Authority, warehouse: str, start: datetime.datetime, end: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, warehouse)]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(AGENT_URI_PREFIX + warehouse)]
            ),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )
    return cert, key


def _write(
    folder: Path, leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], ca: x509.Certificate
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cert.pem").write_bytes(cert_pem(leaf[0]))
    (folder / "key.pem").write_bytes(key_pem(leaf[1]))
    (folder / "ca.pem").write_bytes(cert_pem(ca))
    return folder


# -- credentials ----------------------------------------------------------------


def cert_creds(folder: Path) -> grpc.ChannelCredentials:
    """Mutual TLS with the certificate in ``folder``."""
    return grpc.ssl_channel_credentials(
        (folder / "ca.pem").read_bytes(),
        (folder / "key.pem").read_bytes(),
        (folder / "cert.pem").read_bytes(),
    )


def token_creds(pki: Pki, token: str | None) -> grpc.ChannelCredentials:
    """TLS trusting the hub, with a bearer token (or none)."""
    tls = grpc.ssl_channel_credentials((pki.ca / "ca.pem").read_bytes())
    if token is None:
        return tls
    return grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))


# -- the hub ----------------------------------------------------------------------


class HubThread:
    """A :class:`Hub` with mutual TLS, a token port and HTTP, on its own thread.

    Args:
        pki: the credentials (the hub's from ``pki.root / "hub"``).
        db: the store.
        settings: more :class:`HubConfig` settings.
    """

    def __init__(self, pki: Pki, db: Path, **settings: Any) -> None:
        self.db = db
        self.config = HubConfig(
            listen="127.0.0.1:0",
            token_listen="127.0.0.1:0",
            http="127.0.0.1:0",
            db=str(db),
            tls=str(pki.root / "hub"),
            tokens_file=str(pki.tokens_file),
            **settings,
        ).validate()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.hub: Hub | None = None

    def start(self) -> HubThread:
        self.thread.start()

        async def start() -> Hub:
            # Hub time stands still: no timer writes, so dumps compare byte for byte.
            hub = Hub(self.config, clock=HubClock(monotonic=lambda: 0.0))
            await hub.start()
            return hub

        self.hub = asyncio.run_coroutine_threadsafe(start(), self.loop).result(60)
        return self

    def stop(self) -> None:
        if self.hub is not None:
            asyncio.run_coroutine_threadsafe(self.hub.stop(0), self.loop).result(60)
            self.hub = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(60)
        self.loop.close()

    @property
    def mtls(self) -> str:
        assert self.hub is not None
        return f"127.0.0.1:{self.hub.port}"

    @property
    def token_target(self) -> str:
        assert self.hub is not None
        return f"127.0.0.1:{self.hub.token_port}"

    @property
    def http_port(self) -> int:
        assert self.hub is not None
        return self.hub.http_port


@contextlib.contextmanager
def hub_thread(pki: Pki, db: Path, **settings: Any) -> Iterator[HubThread]:
    hub = HubThread(pki, db, **settings).start()
    try:
        yield hub
    finally:
        hub.stop()


# -- the store ----------------------------------------------------------------------


def dump(db: Path) -> bytes:
    """Every table of the store, row by row, as SQL text (sqlite3's ``iterdump``)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as c:
        return "\n".join(c.iterdump()).encode()


def rows_written(before: bytes, after: bytes) -> int:
    """Rows added, changed or removed between two dumps (a changed row counts once)."""
    old = before.decode().splitlines()
    new = after.decode().splitlines()
    added = [line for line in new if line.startswith("INSERT") and line not in set(old)]
    removed = [line for line in old if line.startswith("INSERT") and line not in set(new)]
    return max(len(added), len(removed))


# -- an agent's stream ----------------------------------------------------------------


def hello(warehouse: str, epoch: str = "e1", high_seq: int = 0) -> sync_pb2.SyncRequest:
    return sync_pb2.SyncRequest(
        hello=sync_pb2.Hello(
            warehouse=warehouse, epoch=epoch, high_seq=high_seq, protocol_version=1
        )
    )


def receipts(
    warehouse: str, stock: Sequence[tuple[str, int]], first_seq: int = 1
) -> sync_pb2.Batch:
    batch = sync_pb2.Batch(first_seq=first_seq)
    for seq, (sku, qty) in enumerate(stock, start=first_seq):
        batch.events.add(
            seq=seq,
            event_id=f"{warehouse}-{seq}",
            sku=sku,
            kind=RECEIVE,  # type: ignore[arg-type]
            quantity=qty,
            delta=qty,
        )
    return batch


def stock_warehouse(
    target: str, creds: grpc.ChannelCredentials, warehouse: str, stock: dict[str, int]
) -> None:
    """Play a new agent store that received ``stock``: Hello, empty snapshot, receipts."""
    requests: queue.Queue[sync_pb2.SyncRequest | None] = queue.Queue()
    with grpc.secure_channel(target, creds) as channel:
        call = sync_pb2_grpc.SyncServiceStub(channel).Sync(iter(requests.get, None), timeout=30)
        requests.put(hello(warehouse, high_seq=len(stock)))
        assert next(call).WhichOneof("message") == "welcome"
        requests.put(sync_pb2.SyncRequest(snapshot=sync_pb2.SnapshotChunk(as_of_seq=0, last=True)))
        assert next(call).ack.up_to_seq == 0
        requests.put(sync_pb2.SyncRequest(batch=receipts(warehouse, sorted(stock.items()))))
        while (msg := next(call)).WhichOneof("message") != "ack":
            pass
        assert msg.ack.up_to_seq == len(stock)
        requests.put(None)
        for _ in call:  # the hub ends the stream once we end ours
            pass


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    """The status of a GET (a stream's body is not read: its status is what counts)."""
    return http_call(port, "GET", path, headers)[0]


def http_call(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> tuple[int, dict[str, str]]:
    """The status and headers of one HTTP request (``body`` sent as JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = None if body is None else json.dumps(body)
        sent = {**(headers or {}), **({"Content-Type": "application/json"} if payload else {})}
        conn.request(method, path, body=payload, headers=sent)
        response = conn.getresponse()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


def tls_agent(pki: Pki, warehouse: str, db: Path, hub: str, log: Path) -> Child:
    """``stocksync-agent run --tls DIR`` for ``warehouse`` against the hub at ``hub``."""
    return Child(
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
            "--tls",
            str(pki.agent(warehouse)),
        ],
        log,
        env={"STOCKSYNC_AGENT_BACKOFF_MAX_S": "1"},
    )


def served_serial(port: int, client: Path) -> int:
    """The serial number of the certificate a new TLS connection to ``port`` is given."""
    context = ssl.create_default_context(cafile=str(client / "ca.pem"))
    context.load_cert_chain(client / "cert.pem", client / "key.pem")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
