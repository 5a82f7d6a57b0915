"""The certificates stocksync's mutual TLS runs on (DESIGN §9).

A private CA signs three kinds of leaf certificate, each telling the hub who
holds it (see :mod:`stocksync.auth`):

- **hub**: a server certificate for its DNS names and IP addresses;
- **agent**: CN and URI SAN ``spiffe://stocksync/warehouse/<WH-ID>``;
- **client**: CN and URI SAN ``spiffe://stocksync/client/<NAME>``, plus one
  URI SAN ``urn:stocksync:scope:<scope>`` per scope.

Keys are ECDSA P-256; serial numbers random. A CA directory holds ``ca.pem``
and ``ca-key.pem``; an issued directory holds ``cert.pem``, ``key.pem`` and
``ca.pem`` (the layout ``--tls DIR`` reads). Private keys are written with
mode 0600 from the moment they exist, and no file is overwritten unless asked.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stocksync.auth import (
    AGENT_URI_PREFIX,
    CLIENT_URI_PREFIX,
    SCOPE_URN_PREFIX,
    InvalidName,
    InvalidScope,
    validate_name,
    validate_scope,
)
from stocksync.events import InvalidEvent, validate_warehouse

__all__ = [
    "CA_CERT_FILE",
    "CA_DAYS",
    "CA_KEY_FILE",
    "CERT_FILE",
    "DEFAULT_DAYS",
    "KEY_FILE",
    "Authority",
    "CertError",
    "cert_pem",
    "init_ca",
    "issue_agent",
    "issue_client",
    "issue_hub",
    "key_pem",
    "write_issued",
]

CA_DAYS = 3650
"""A CA lives ten years: replacing it means re-issuing every certificate."""
DEFAULT_DAYS = 397
"""Leaf lifetime: the CA/Browser Forum's ceiling for TLS server certificates,
short enough that renewal is routine (the hub reloads renewed files live)."""
MAX_DAYS = CA_DAYS
_BACKDATE = datetime.timedelta(minutes=5)
"""Certificates start a little in the past: a peer whose clock is a few
minutes behind the issuer's would otherwise refuse a brand-new certificate."""

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"

_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(?:\.{_DNS_LABEL})*")


class CertError(Exception):
    """A certificate cannot be made or written; the message is one line for the operator."""


def cert_pem(cert: x509.Certificate) -> bytes:
    """A certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (what gRPC reads)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _check_days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise CertError(f"days: must be between 1 and {MAX_DAYS}, got {days!r}")
    return days


def _hostname(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(name):
        raise CertError(f"hostname {name!r} is neither a DNS name nor an IP address")
    return x509.DNSName(name.lower())


@dataclass(frozen=True)
class Authority:
    """A certificate authority: its certificate and signing key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, common_name: str = "stocksync CA", days: int = CA_DAYS) -> Authority:
        """A new CA, valid for ``days`` from now; it signs leaf certificates only."""
        if not 1 <= len(common_name) <= 64:
            raise CertError("CA common name must be 1-64 characters")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_cn(common_name))
            .issuer_name(_cn(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=_check_days(days)))
            # path_length=0: this CA signs leaves, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key)

    @classmethod
    def load(cls, ca_dir: str | Path) -> Authority:
        """Read ``ca.pem`` and ``ca-key.pem`` from ``ca_dir``.

        Raises:
            CertError: a file is missing or unreadable, or the pair does not match.
        """
        folder = Path(ca_dir)
        try:
            cert = x509.load_pem_x509_certificate((folder / CA_CERT_FILE).read_bytes())
            key = serialization.load_pem_private_key(
                (folder / CA_KEY_FILE).read_bytes(), password=None
            )
        except FileNotFoundError as e:
            raise CertError(
                f"no CA in {folder}: {e.filename} is missing "
                f"(run `stocksync-hub certs init --ca-dir {folder}`)"
            ) from None
        except OSError as e:
            raise CertError(f"cannot read {e.filename}: {e.strerror}") from None
        except (ValueError, TypeError) as e:
            raise CertError(f"CA in {folder} is not a PEM certificate and key: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertError(f"{folder / CA_KEY_FILE} is not an ECDSA key")
        if _spki(cert.public_key()) != _spki(key.public_key()):
            raise CertError(f"{folder / CA_KEY_FILE} is not the key of {folder / CA_CERT_FILE}")
        return cls(cert=cert, key=key)

    def issue(
        self,
        common_name: str,
        names: Sequence[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        days: int = DEFAULT_DAYS,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """Sign a new leaf certificate with a fresh key.

        Args:
            common_name: the subject CN.
            names: its subject alternative names.
            usage: ``ExtendedKeyUsageOID.SERVER_AUTH`` or ``CLIENT_AUTH``; TLS
                stacks refuse a certificate used for the other role.
            days: how long it is valid.

        Raises:
            CertError: the CA expires before the certificate would, or has expired.
        """
        now = _now()
        not_after = now + datetime.timedelta(days=_check_days(days))
        ca_until = self.cert.not_valid_after_utc
        if not_after > ca_until:
            left = (ca_until - now).days
            raise CertError(
                f"the CA expires on {ca_until:%Y-%m-%d}: ask for at most {left} days"
                if left >= 1
                else f"the CA expired on {ca_until:%Y-%m-%d}; make a new one"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(_cn(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert, key

    def issue_hub(
        self, hostnames: Sequence[str], days: int = DEFAULT_DAYS
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A hub server certificate for DNS names and IP addresses (at least one)."""
        if not hostnames:
            raise CertError("name at least one hostname or IP address of the hub")
        names = list(dict.fromkeys(_hostname(h) for h in hostnames))
        first = hostnames[0]
        return self.issue(
            first if len(first) <= 64 else "stocksync hub",
            names,
            ExtendedKeyUsageOID.SERVER_AUTH,
            days,
        )

    def issue_agent(
        self, warehouse: str, days: int = DEFAULT_DAYS
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """An agent's client certificate: it speaks for ``warehouse`` only."""
        try:
            validate_warehouse(warehouse)
        except InvalidEvent as e:
            raise CertError(str(e)) from None
        uri = x509.UniformResourceIdentifier(AGENT_URI_PREFIX + warehouse)
        return self.issue(warehouse, [uri], ExtendedKeyUsageOID.CLIENT_AUTH, days)

    def issue_client(
        self, name: str, scopes: Sequence[str], days: int = DEFAULT_DAYS
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A client certificate for caller ``name`` holding ``scopes`` (at least one)."""
        try:
            validate_name(name)
            checked = list(dict.fromkeys(validate_scope(s) for s in scopes))
        except (InvalidName, InvalidScope) as e:
            raise CertError(str(e)) from None
        if not checked:
            raise CertError("give the client at least one scope")
        names = [x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + name)] + [
            x509.UniformResourceIdentifier(SCOPE_URN_PREFIX + s) for s in checked
        ]
        return self.issue(name, names, ExtendedKeyUsageOID.CLIENT_AUTH, days)


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_files(folder: Path, files: Sequence[tuple[str, bytes, int]], force: bool) -> None:
    """Write ``(name, data, mode)`` files into ``folder``, each atomically.

    Each file is written to a temporary file made by mkstemp (mode 0600 from
    creation), given its final mode, synced, then linked into place: with
    ``os.link`` when not forcing, so a file that appeared meanwhile is still
    never overwritten, and ``os.replace`` when forcing.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise CertError(f"cannot create {folder}: {e.strerror}") from None
    if not force:
        for name, _, _ in files:
            if os.path.lexists(folder / name):
                raise CertError(f"{folder / name} exists; pass --force to replace it")
    for name, data, mode in files:
        target = folder / name
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        except OSError as e:
            raise CertError(f"cannot write in {folder}: {e.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            if force:
                os.replace(tmp, target)
            else:
                os.link(tmp, target)
        except FileExistsError:
            raise CertError(f"{target} exists; pass --force to replace it") from None
        except OSError as e:
            raise CertError(f"cannot write {target}: {e.strerror}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    # The directory entries must survive a crash as well as the files.
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_issued(
    out_dir: str | Path,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    force: bool = False,
) -> None:
    """Write ``cert.pem``, ``key.pem`` (0600) and ``ca.pem`` into ``out_dir``.

    Raises:
        CertError: a file exists and ``force`` is false, or writing failed.
    """
    _write_files(
        Path(out_dir),
        [(KEY_FILE, key_pem(key), 0o600), (CERT_FILE, cert_pem(cert), 0o644),
         (CA_CERT_FILE, cert_pem(ca_cert), 0o644)],
        force,
    )  # fmt: skip


def init_ca(ca_dir: str | Path, *, force: bool = False, days: int = CA_DAYS) -> x509.Certificate:
    """Make a new CA in ``ca_dir`` (``ca.pem``, ``ca-key.pem`` with mode 0600).

    Raises:
        CertError: a CA is already there and ``force`` is false, or writing failed.
    """
    authority = Authority.create(days=days)
    _write_files(
        Path(ca_dir),
        [(CA_KEY_FILE, key_pem(authority.key), 0o600),
         (CA_CERT_FILE, cert_pem(authority.cert), 0o644)],
        force,
    )  # fmt: skip
    return authority.cert


def issue_hub(
    ca_dir: str | Path,
    out_dir: str | Path,
    hostnames: Sequence[str],
    *,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> x509.Certificate:
    """Issue the hub's server certificate for ``hostnames`` into ``out_dir``."""
    authority = Authority.load(ca_dir)
    cert, key = authority.issue_hub(hostnames, days)
    write_issued(out_dir, cert, key, authority.cert, force)
    return cert


def issue_agent(
    ca_dir: str | Path,
    out_dir: str | Path,
    warehouse: str,
    *,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> x509.Certificate:
    """Issue the certificate of the agent of ``warehouse`` into ``out_dir``."""
    authority = Authority.load(ca_dir)
    cert, key = authority.issue_agent(warehouse, days)
    write_issued(out_dir, cert, key, authority.cert, force)
    return cert


def issue_client(
    ca_dir: str | Path,
    out_dir: str | Path,
    name: str,
    scopes: Sequence[str],
    *,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> x509.Certificate:
    """Issue a client certificate for ``name`` with ``scopes`` into ``out_dir``."""
    authority = Authority.load(ca_dir)
    cert, key = authority.issue_client(name, scopes, days)
    write_issued(out_dir, cert, key, authority.cert, force)
    return cert
