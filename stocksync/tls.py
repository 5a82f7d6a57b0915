"""TLS credentials for both ends (DESIGN §9).

One certificate per warehouse: it names the warehouse, and the hub lets a
stream speak only for the warehouse its certificate names (see
:mod:`stocksync.auth` for who a certificate names).

``--tls DIR`` is the usual way to hand a process its TLS files: ``DIR`` holds
``cert.pem``, ``key.pem`` and ``ca.pem``, the layout ``stocksync-hub certs``
writes. The hub's server credentials re-read those files when they change, so
a renewed certificate is served without a restart.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click
import grpc

if TYPE_CHECKING:
    # Loaded when certificates are read (~35 ms of imports): a plaintext
    # agent, and every short command, never pays for it.
    from cryptography import x509

from stocksync.config import AgentConfig, HubConfig

__all__ = [
    "CA_FILE",
    "CERT_FILE",
    "KEY_FILE",
    "CertificateReloader",
    "TlsError",
    "TlsFiles",
    "channel_credentials",
    "reloading_server_credentials",
    "tls_dir_option",
]

log = logging.getLogger(__name__)

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_FILE = "ca.pem"

F = TypeVar("F", bound=Callable[..., Any])


class TlsError(ValueError):
    """TLS files that cannot be used; the message names the file and the fault."""


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM contents of a :class:`TlsFiles`, checked to belong together."""

    cert: bytes
    key: bytes
    ca: bytes
    leaf: x509.Certificate
    """The first certificate of ``cert`` (the one the key belongs to)."""


@dataclass(frozen=True)
class TlsFiles:
    """Where a process's certificate, private key and trusted CA(s) are."""

    cert: Path
    """This end's certificate chain (PEM), leaf first."""
    key: Path
    """The leaf's private key (PEM)."""
    ca: Path
    """The CA certificate(s) (PEM) that peers' certificates must chain to."""

    @classmethod
    def from_dir(cls, directory: str | Path) -> TlsFiles:
        """The three files of a ``--tls DIR`` directory.

        Raises:
            TlsError: the directory or one of its files is missing.
        """
        folder = Path(directory)
        expected = f"expected {CERT_FILE}, {KEY_FILE} and {CA_FILE} in it"
        if not folder.is_dir():
            raise TlsError(f"{folder} is not a directory ({expected})")
        for name in (CERT_FILE, KEY_FILE, CA_FILE):
            if not (folder / name).is_file():
                raise TlsError(f"{folder} has no {name} ({expected})")
        return cls(cert=folder / CERT_FILE, key=folder / KEY_FILE, ca=folder / CA_FILE)

    @classmethod
    def from_config(cls, config: AgentConfig | HubConfig) -> TlsFiles:
        """The ``tls_cert``, ``tls_key`` and ``tls_ca`` settings."""
        return cls(cert=Path(config.tls_cert), key=Path(config.tls_key), ca=Path(config.tls_ca))

    def read(self) -> TlsMaterial:
        """Read and check the three files.

        Raises:
            TlsError: a file is unreadable or not PEM, or the key is not the
                certificate's.
        """
        data: dict[str, bytes] = {}
        for label, path in (("cert", self.cert), ("key", self.key), ("ca", self.ca)):
            try:
                data[label] = path.read_bytes()
            except OSError as e:
                raise TlsError(f"cannot read {path}: {e.strerror}") from None
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            leaf = x509.load_pem_x509_certificates(data["cert"])[0]
        except ValueError:
            raise TlsError(f"{self.cert} is not a PEM certificate") from None
        try:
            x509.load_pem_x509_certificates(data["ca"])
        except ValueError:
            raise TlsError(f"{self.ca} is not a PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(data["key"], password=None)
        except (ValueError, TypeError):
            raise TlsError(f"{self.key} is not an unencrypted PEM private key") from None
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise TlsError(f"{self.key} is not the key of {self.cert}")
        return TlsMaterial(cert=data["cert"], key=data["key"], ca=data["ca"], leaf=leaf)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client credentials: present this certificate, trust only ``ca``.

        Raises:
            TlsError: as :meth:`read`.
        """
        m = self.read()
        return grpc.ssl_channel_credentials(
            root_certificates=m.ca, private_key=m.key, certificate_chain=m.cert
        )


def tls_dir_option(*, envvar: str | None = None, required: bool = False) -> Callable[[F], F]:
    """A ``--tls DIR`` click option whose value is a checked :class:`TlsFiles` (or None).

    Args:
        envvar: an environment variable that may give the directory.
        required: whether the option must be given.
    """

    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> TlsFiles | None:
        if value is None:
            return None
        try:
            return TlsFiles.from_dir(value)
        except TlsError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None

    env = f" (env {envvar})" if envvar else ""
    return click.option(
        "--tls",
        "tls",
        metavar="DIR",
        envvar=envvar,
        default=None,
        required=required,
        callback=convert,
        help=f"Directory with {CERT_FILE}, {KEY_FILE} and {CA_FILE}{env}.",
    )


class CertificateReloader:
    """Server credentials that pick up renewed certificate files without a restart.

    gRPC calls :meth:`fetch` before every TLS handshake of a new connection.
    It looks at the three files' inode, size and modification time (cheap:
    three ``stat`` calls) and re-reads them only when those changed; files
    that cannot be used (unreadable, half-written, a key that is not the
    certificate's) are logged once and the current certificate stays in
    service. Connections already open keep their session either way.
    """

    def __init__(self, files: TlsFiles, *, require_client_auth: bool = True) -> None:
        """Read the files once.

        Args:
            files: the server's certificate, key and the CA of its clients.
            require_client_auth: ask every client for a certificate that
                chains to ``files.ca`` (mutual TLS). When False, clients are
                not asked for a certificate at all (gRPC cannot make it optional).

        Raises:
            TlsError: the files cannot be used.
        """
        self.files = files
        self.require_client_auth = require_client_auth
        self._lock = threading.Lock()
        self._seen = self._signature()
        material = files.read()
        self._serving = material.leaf
        self._initial = self._configuration(material)

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate new connections are given."""
        return self._serving

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``server.add_secure_port``."""
        # grpc's stubs say the fetcher returns a configuration; its documented
        # contract is "a configuration, or None for no change".
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], self.fetch)
        return grpc.dynamic_ssl_server_credentials(
            self._initial, fetcher, require_client_authentication=self.require_client_auth
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration if the files changed and are usable, else None."""
        try:
            with self._lock:
                signature = self._signature()
                if signature == self._seen:
                    return None
                self._seen = signature
                try:
                    material = self.files.read()
                except TlsError as e:
                    log.warning(
                        "TLS files changed but cannot be used, still serving serial %x: %s",
                        self._serving.serial_number,
                        e,
                    )
                    return None
                self._serving = material.leaf
                log.info(
                    "TLS certificate reloaded from %s: serial %x, valid until %s",
                    self.files.cert,
                    material.leaf.serial_number,
                    material.leaf.not_valid_after_utc.isoformat(),
                )
                return self._configuration(material)
        except Exception:  # called from gRPC's handshake: never let a bug break it
            log.exception("TLS certificate reload failed; keeping the current certificate")
            return None

    def _signature(self) -> tuple[tuple[int, int, int, int] | None, ...]:
        # stat follows symlinks, so a Kubernetes secret volume's swap of its
        # ..data link shows up as a new inode.
        out: list[tuple[int, int, int, int] | None] = []
        for path in (self.files.cert, self.files.key, self.files.ca):
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def _configuration(self, m: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], root_certificates=m.ca)


def reloading_server_credentials(
    files: TlsFiles, *, require_client_auth: bool = True
) -> grpc.ServerCredentials:
    """The hub's server credentials, following renewals of ``files`` (see
    :class:`CertificateReloader`).

    Raises:
        TlsError: the files cannot be used now.
    """
    return CertificateReloader(files, require_client_auth=require_client_auth).credentials()


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def channel_credentials(config: AgentConfig) -> grpc.ChannelCredentials:
    """The agent's client credentials: its certificate, and the CA to trust."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(config.tls_ca),
        private_key=_read(config.tls_key),
        certificate_chain=_read(config.tls_cert),
    )
