"""Who is calling, and what may they do (DESIGN §9).

Callers are **agents** (a warehouse's certificate: it may stream that
warehouse's events and nothing else), **clients** (a certificate or a bearer
token carrying scopes) or **anonymous** (no credential at all, e.g. over an
explicitly plaintext listener). Scopes:

- ``inventory:read`` — query stock and warehouses;
- ``inventory:reserve`` — hold, commit and release reservations;
- ``rooms:watch`` / ``rooms:watch:<ROOM>`` — watch every room, or one;
- ``rooms:host`` / ``rooms:host:<ROOM>`` — run every room, or one;
- ``admin`` — everything above.

Repeat a room scope for several rooms. An agent holds no client scope at all.

Nothing here touches the network: the gRPC edge hands in what the transport
saw (``context.auth_context()``, the ``authorization`` header) and maps
:class:`Unauthenticated` to UNAUTHENTICATED and :class:`Forbidden` to
PERMISSION_DENIED.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from stocksync.events import InvalidEvent, validate_warehouse

__all__ = [
    "ADMIN",
    "AGENT_URI_PREFIX",
    "ANONYMOUS",
    "CLIENT_URI_PREFIX",
    "INVENTORY_READ",
    "INVENTORY_RESERVE",
    "ROOMS_HOST",
    "ROOMS_WATCH",
    "SCOPES",
    "SCOPE_URN_PREFIX",
    "AuthError",
    "Forbidden",
    "Identity",
    "InvalidName",
    "InvalidScope",
    "TokenFile",
    "TokenFileError",
    "TokenTable",
    "Unauthenticated",
    "identify_caller",
    "identity_from_auth_context",
    "identity_from_certificate",
    "new_token",
    "require",
    "validate_name",
    "validate_room",
    "validate_scope",
]

log = logging.getLogger(__name__)

INVENTORY_READ = "inventory:read"
INVENTORY_RESERVE = "inventory:reserve"
ROOMS_WATCH = "rooms:watch"
ROOMS_HOST = "rooms:host"
ADMIN = "admin"
SCOPES = (INVENTORY_READ, INVENTORY_RESERVE, ROOMS_WATCH, ROOMS_HOST, ADMIN)
"""Every scope; the two room scopes may also carry a ``:<ROOM>`` suffix."""
_ROOM_SCOPES = (ROOMS_WATCH, ROOMS_HOST)

AGENT_URI_PREFIX = "spiffe://stocksync/warehouse/"
"""An agent certificate's URI SAN is this followed by its warehouse id."""
CLIENT_URI_PREFIX = "spiffe://stocksync/client/"
"""A client certificate's URI SAN is this followed by its name."""
SCOPE_URN_PREFIX = "urn:stocksync:scope:"
"""A client certificate carries one URI SAN of this prefix per scope."""
_OUR_URI = re.compile(r"spiffe://stocksync/|urn:stocksync:")

NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""A client's name (certificate CN, token name): safe in a URI and a log line."""
ROOM_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""A room id as it appears in a room scope (no ``:``, which ends the scope name)."""

TOKEN_PREFIX = "sst_"
_TOKEN_PATTERN = re.compile(r"sst_[A-Za-z0-9_-]{43}")  # 32 bytes, url-safe base64, no padding
_BEARER = re.compile(r"Bearer +(\S+)", re.IGNORECASE)  # RFC 6750 §2.1; the scheme is caseless


class AuthError(Exception):
    """A caller may not go on; ``detail`` says why (safe to return to the caller)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthenticated(AuthError):
    """No usable credential: a wrong or malformed token, a certificate naming nobody."""


class Forbidden(AuthError):
    """The caller is known but lacks the scope (for that room) the call needs."""


class InvalidScope(ValueError):
    """A scope string that is not one of :data:`SCOPES` (with a valid room)."""


class InvalidName(ValueError):
    """A client name outside :data:`NAME_PATTERN`."""


class TokenFileError(ValueError):
    """The tokens file cannot be used; the message names the file and the bad entry."""


def validate_name(name: str) -> str:
    """Return ``name`` if it is a well-formed client name such as ``room-server-1``.

    Raises:
        InvalidName: naming what is wrong with it.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidName(f"name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


def validate_room(room: str) -> str:
    """Return ``room`` if it is a well-formed room id.

    Raises:
        InvalidScope: naming what is wrong with it.
    """
    if not isinstance(room, str) or not ROOM_PATTERN.fullmatch(room):
        raise InvalidScope(f"room id {room!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return room


def validate_scope(scope: str) -> str:
    """Return ``scope`` if it is one of :data:`SCOPES`, or a room scope for one room.

    Raises:
        InvalidScope: naming the bad scope and listing the good ones.
    """
    if scope in SCOPES:
        return scope
    for base in _ROOM_SCOPES:
        if isinstance(scope, str) and scope.startswith(base + ":"):
            try:
                validate_room(scope[len(base) + 1 :])
            except InvalidScope as e:
                raise InvalidScope(f"scope {scope!r}: {e}") from None
            return scope
    raise InvalidScope(
        f"unknown scope {scope!r}; use inventory:read, inventory:reserve, "
        "rooms:watch[:ROOM], rooms:host[:ROOM] or admin"
    )


Kind = Literal["agent", "client", "anonymous"]


@dataclass(frozen=True)
class Identity:
    """A caller the hub has authenticated (or an anonymous one)."""

    kind: Kind
    """``agent`` (a warehouse), ``client`` (scoped caller) or ``anonymous``."""
    name: str
    """The agent's warehouse id, the client's name, or ``anonymous``."""
    warehouse: str | None = None
    """The warehouse an agent speaks for; None for everyone else."""
    scopes: frozenset[str] = field(default_factory=frozenset)
    """What a client may do (always empty for an agent)."""

    def __post_init__(self) -> None:
        if self.kind == "agent" and (self.scopes or self.warehouse != self.name):
            raise ValueError("an agent identity names its warehouse and holds no scope")
        if self.kind != "agent" and self.warehouse is not None:
            raise ValueError("only an agent identity names a warehouse")

    def __str__(self) -> str:
        return "anonymous caller" if self.kind == "anonymous" else f"{self.kind} {self.name}"

    @classmethod
    def agent(cls, warehouse: str) -> Identity:
        """The agent of ``warehouse``.

        Raises:
            InvalidEvent: ``warehouse`` is not a well-formed warehouse id.
        """
        validate_warehouse(warehouse)
        return cls(kind="agent", name=warehouse, warehouse=warehouse)

    @classmethod
    def client(cls, name: str, scopes: Iterable[str]) -> Identity:
        """A client called ``name`` holding ``scopes``.

        Raises:
            InvalidName: ``name`` is malformed.
            InvalidScope: a scope is not one of :data:`SCOPES`.
        """
        return cls(
            kind="client",
            name=validate_name(name),
            scopes=frozenset(validate_scope(s) for s in scopes),
        )

    def may(self, scope: str, room: str | None = None) -> bool:
        """Whether this caller holds ``scope`` (for ``room``, for a room scope).

        A room scope asked without a room needs the unlimited scope; ``admin``
        implies every scope; an agent holds none.
        """
        if scope not in SCOPES:
            raise ValueError(f"not a scope: {scope!r}")
        if room is not None and scope not in _ROOM_SCOPES:
            raise ValueError(f"{scope} is not limited by room")
        if self.kind == "agent":
            return False
        if ADMIN in self.scopes or scope in self.scopes:
            return True
        return room is not None and f"{scope}:{room}" in self.scopes


ANONYMOUS = Identity(kind="anonymous", name="anonymous")
"""A caller that presented no credential; holds no scope."""


def require(identity: Identity, scope: str, room: str | None = None) -> None:
    """Pass if ``identity`` holds ``scope`` (for ``room``); raise otherwise.

    Raises:
        Forbidden: saying which scope is missing, and for which room.
        ValueError: ``scope`` is not one of :data:`SCOPES` (a programming error).
    """
    if identity.may(scope, room):
        return
    if identity.kind == "agent":
        raise Forbidden(f"{identity} holds no client scope; this call needs {scope}")
    wanted = f"{scope} for room {room}" if room is not None else scope
    raise Forbidden(f"{identity} lacks scope {wanted}")


# -- certificates ------------------------------------------------------------


def _identity_from_names(cn: str | None, uris: Sequence[str]) -> Identity:
    """Build the identity a certificate claims: its stocksync URI SANs win over its CN."""
    ours = [u for u in uris if _OUR_URI.match(u)]
    if not ours:
        # A certificate from before URI SANs: its CN is the warehouse id.
        if cn is None:
            raise Unauthenticated("client certificate has no stocksync URI SAN and no CN")
        try:
            return Identity.agent(cn)
        except InvalidEvent as e:
            raise Unauthenticated(f"client certificate CN: {e}") from None
    ids = [u for u in ours if u.startswith("spiffe://")]
    scopes = [u[len(SCOPE_URN_PREFIX) :] for u in ours if u.startswith(SCOPE_URN_PREFIX)]
    others = [u for u in ours if u not in ids and not u.startswith(SCOPE_URN_PREFIX)]
    if others or len(ids) != 1:
        raise Unauthenticated(
            f"client certificate must carry exactly one stocksync id URI, got {ours!r}"
        )
    try:
        if ids[0].startswith(AGENT_URI_PREFIX):
            if scopes:
                raise Unauthenticated("an agent certificate may not carry scopes")
            return Identity.agent(ids[0][len(AGENT_URI_PREFIX) :])
        if ids[0].startswith(CLIENT_URI_PREFIX):
            return Identity.client(ids[0][len(CLIENT_URI_PREFIX) :], scopes)
    except (InvalidEvent, InvalidName, InvalidScope) as e:
        raise Unauthenticated(f"client certificate: {e}") from None
    raise Unauthenticated(f"client certificate has an unknown stocksync id {ids[0]!r}")


def identity_from_certificate(pem: bytes) -> Identity:
    """The caller a (verified) PEM certificate names.

    URI SANs ``spiffe://stocksync/warehouse/<WH-ID>`` (an agent) or
    ``spiffe://stocksync/client/<NAME>`` plus ``urn:stocksync:scope:<scope>``
    (a client) decide; a certificate with no stocksync URI SAN is an agent
    named by its CN.

    Raises:
        Unauthenticated: the certificate names no valid caller.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Unauthenticated("client certificate is not a PEM certificate") from None
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return _identity_from_names(cn, uris)


def identity_from_auth_context(auth_context: Mapping[str, Sequence[bytes]]) -> Identity | None:
    """The caller named by a connection's verified client certificate, if any.

    ``auth_context`` is gRPC's ``context.auth_context()``. With a client
    certificate, grpcio 1.85 gives ``x509_pem_cert`` (the certificate),
    ``x509_common_name``, ``x509_subject``, ``x509_subject_alternative_name``
    and ``peer_uri`` (its URI SANs); ``peer_spiffe_id`` only when there is
    exactly one URI SAN, so it is not used. Without one (plaintext, or a
    listener that does not request client certificates) none of these is there.

    Returns:
        The identity, or None when the connection carries no client certificate.

    Raises:
        Unauthenticated: the certificate names no valid caller.
    """
    pem = auth_context.get("x509_pem_cert")
    if pem:
        return identity_from_certificate(pem[0])
    # Older transports give the names without the certificate itself.
    cn = auth_context.get("x509_common_name")
    if cn:
        uris = [u.decode("utf-8", "replace") for u in auth_context.get("peer_uri", ())]
        return _identity_from_names(cn[0].decode("utf-8", "replace"), uris)
    return None


# -- bearer tokens -----------------------------------------------------------


def _hash(token: str) -> bytes:
    # A token is 32 random bytes (256 bits), so nobody can guess one from its
    # hash, and a plain SHA-256 is enough: slow, salted password hashes exist
    # to stretch low-entropy secrets, which these are not.
    return hashlib.sha256(token.encode()).digest()


def new_token() -> tuple[str, str]:
    """A fresh bearer token and the hex SHA-256 the hub stores for it.

    Returns:
        ``(token, sha256_hex)``: give the token to the caller once; put only
        the hash in the tokens file.
    """
    raw = secrets.token_bytes(32)
    token = TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return token, _hash(token).hex()


@dataclass(frozen=True)
class _Entry:
    name: str
    sha256: bytes
    scopes: frozenset[str]


class TokenTable:
    """The bearer tokens the hub accepts, kept as SHA-256 hashes only.

    The tokens file is TOML, one table per token::

        [[token]]
        name = "room-server-1"
        sha256 = "<64 hex digits, from `stocksync-hub tokens new`>"
        scopes = ["rooms:watch:R-1", "inventory:read"]
    """

    def __init__(self, entries: Iterable[tuple[str, str, Iterable[str]]] = ()) -> None:
        """Build a table from ``(name, sha256_hex, scopes)`` triples.

        Raises:
            TokenFileError: a bad or duplicated entry, named.
        """
        self._entries: list[_Entry] = []
        for i, (name, digest, scopes) in enumerate(entries, 1):
            self._entries.append(_entry(f"token #{i}", name, digest, scopes))
        for i, a in enumerate(self._entries):
            for b in self._entries[:i]:
                if a.name == b.name:
                    raise TokenFileError(f"token #{i + 1}: name {a.name!r} is used twice")
                if a.sha256 == b.sha256:
                    raise TokenFileError(f"token #{i + 1} ({a.name}): same sha256 as {b.name}")

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        """Read a tokens file.

        Raises:
            TokenFileError: unreadable, not TOML, or a bad entry (named).
        """
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise TokenFileError(f"tokens file {path}: cannot read: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise TokenFileError(f"tokens file {path}: not valid TOML: {e}") from None
        try:
            return cls(_triples(data))
        except TokenFileError as e:
            raise TokenFileError(f"tokens file {path}: {e}") from None

    def identify(self, header_value: str) -> Identity:
        """The client an ``authorization`` header value (``Bearer sst_…``) names.

        Raises:
            Unauthenticated: the value is malformed or the token is unknown.
        """
        match = _BEARER.fullmatch(header_value.strip()) if isinstance(header_value, str) else None
        if match is None or not _TOKEN_PATTERN.fullmatch(match[1]):
            raise Unauthenticated("authorization: expected 'Bearer sst_…' with a stocksync token")
        digest = _hash(match[1])
        found: _Entry | None = None
        # Compare against every entry, in constant time each, so neither the
        # position of a match nor a near miss shows in the timing.
        for entry in self._entries:
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        if found is None:
            raise Unauthenticated("unknown bearer token")
        return Identity(kind="client", name=found.name, scopes=found.scopes)


class TokenFile:
    """A tokens file the hub follows: edits (a new token, a revoked one) take
    effect on the next call, without a restart.

    Each :meth:`table` looks at the file's inode, size and modification time
    (one ``stat``) and re-reads it only when they changed. A file that cannot
    be used any more (half-written, a bad entry) is logged once and the table
    read last stays in force.

    Raises:
        TokenFileError: the file cannot be used at start.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._seen = self._signature()
        self._table = TokenTable.load(self.path)

    def _signature(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def table(self) -> TokenTable:
        """The tokens accepted now."""
        signature = self._signature()
        if signature != self._seen:
            self._seen = signature
            try:
                self._table = TokenTable.load(self.path)
            except TokenFileError as e:
                log.warning("tokens file changed but cannot be used, keeping the last one: %s", e)
            else:
                log.info("tokens file %s re-read: %d tokens", self.path, len(self._table))
        return self._table


def _triples(data: dict[str, Any]) -> list[tuple[str, str, Iterable[str]]]:
    unknown = sorted(set(data) - {"token"})
    if unknown:
        raise TokenFileError(f"unknown key {unknown[0]!r} (expected [[token]] tables)")
    tables = data.get("token", [])
    if not isinstance(tables, list):
        raise TokenFileError("'token' must be an array of tables ([[token]])")
    out: list[tuple[str, str, Iterable[str]]] = []
    for i, table in enumerate(tables, 1):
        where = f"token #{i}"
        if not isinstance(table, dict):
            raise TokenFileError(f"{where}: must be a table ([[token]])")
        if isinstance(table.get("name"), str):
            where += f" ({table['name']})"
        extra = sorted(set(table) - {"name", "sha256", "scopes"})
        if extra:
            raise TokenFileError(f"{where}: unknown key {extra[0]!r}")
        for key in ("name", "sha256", "scopes"):
            if key not in table:
                raise TokenFileError(f"{where}: missing {key}")
        out.append((table["name"], table["sha256"], table["scopes"]))
    return out


def _entry(where: str, name: object, digest: object, scopes: object) -> _Entry:
    try:
        validate_name(name)  # type: ignore[arg-type]  # checked here, from untyped TOML
    except InvalidName as e:
        raise TokenFileError(f"{where}: {e}") from None
    where = f"{where} ({name})"
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise TokenFileError(f"{where}: sha256 must be 64 hex digits")
    if isinstance(scopes, str) or not isinstance(scopes, Iterable):
        raise TokenFileError(f"{where}: scopes must be a list of scopes")
    scope_list = list(scopes)
    if not scope_list:
        raise TokenFileError(f"{where}: scopes is empty; a token with no scope can do nothing")
    try:
        checked = frozenset(validate_scope(s) for s in scope_list)
    except InvalidScope as e:
        raise TokenFileError(f"{where}: {e}") from None
    return _Entry(name=str(name), sha256=bytes.fromhex(digest), scopes=checked)


def identify_caller(
    auth_context: Mapping[str, Sequence[bytes]],
    metadata: Iterable[tuple[str, str | bytes]],
    tokens: TokenTable | None,
    anonymous: Identity = ANONYMOUS,
) -> Identity:
    """Who is calling: the client certificate if the connection has one, else a bearer token.

    Args:
        auth_context: ``context.auth_context()``.
        metadata: ``context.invocation_metadata()``.
        tokens: the accepted bearer tokens; None when the hub takes none.
        anonymous: what a caller with neither credential is.

    Raises:
        Unauthenticated: a bad certificate, or a bad token (a token is not
            ignored when tokens are not accepted: the caller expected it to count).
    """
    identity = identity_from_auth_context(auth_context)
    if identity is not None:
        return identity
    headers = [v for k, v in metadata if k == "authorization"]
    if not headers:
        return anonymous
    if len(headers) > 1:
        raise Unauthenticated("more than one authorization header")
    if tokens is None:
        raise Unauthenticated("this listener does not accept bearer tokens")
    value = headers[0]
    return tokens.identify(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
