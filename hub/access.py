"""Who may call what, and how much (DESIGN §9): one table, and per-caller quotas.

Plain code, no gRPC and no HTTP: the gRPC gate
(:mod:`stocksync.hub.grpc_gate`) and the HTTP routes
(:mod:`stocksync.hub.http_auth`) identify the caller, then ask here.

- :data:`RULES` names, for every gRPC method, the kind of caller it is for
  and the scopes that let a client call it (any one of them suffices), and
  which request field names the room a room scope is checked against.
- :class:`Admission` keeps each identity within its quotas: a token bucket
  of requests, and counts of open agent streams and room watches. An
  identity over its quota is refused; nobody else notices.

Refusals are domain errors with their status: :class:`NotAuthenticated`
(UNAUTHENTICATED), :class:`NotAllowed` (PERMISSION_DENIED) and
:class:`OverLimit` (RESOURCE_EXHAUSTED), each detail naming the scope or
the limit.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stocksync.auth import (
    ADMIN,
    INVENTORY_READ,
    INVENTORY_RESERVE,
    ROOMS_HOST,
    ROOMS_WATCH,
    AuthError,
    Forbidden,
    Identity,
    require,
)
from stocksync.errors import Status, StocksyncError

__all__ = [
    "RULES",
    "Admission",
    "Caller",
    "Limits",
    "NotAllowed",
    "NotAuthenticated",
    "OverLimit",
    "Rule",
    "StreamKind",
    "Ticket",
    "auth_error",
    "authorize",
    "may_watch",
    "rule_for",
]


class NotAuthenticated(StocksyncError):
    """The caller presented no usable credential."""

    status = Status.UNAUTHENTICATED


class NotAllowed(StocksyncError):
    """The caller is known but may not make this call (for this room)."""

    status = Status.PERMISSION_DENIED


class OverLimit(StocksyncError):
    """The caller is over one of its quotas; the detail names the setting."""

    status = Status.RESOURCE_EXHAUSTED


def auth_error(error: AuthError) -> StocksyncError:
    """The domain error (with its status) of an :mod:`stocksync.auth` refusal."""
    if isinstance(error, Forbidden):
        return NotAllowed(error.detail)
    return NotAuthenticated(error.detail)


class Caller(enum.Enum):
    """What kind of caller a method is for."""

    PUBLIC = "public"
    """Anyone who completed the TLS handshake, even with no credential (health checks)."""
    ANY = "any"
    """Any identified caller, agent or client (server reflection)."""
    AGENT = "agent"
    """A warehouse agent's certificate only."""
    CLIENT = "client"
    """A client (certificate or token) holding one of the rule's scopes."""


class StreamKind(enum.Enum):
    """The long-lived calls an identity holds, each kind counted apart."""

    AGENT_STREAM = "max_streams_per_identity"
    WATCHER = "max_watchers_per_identity"


@dataclass(frozen=True)
class Rule:
    """Who may call one method."""

    caller: Caller
    scopes: tuple[str, ...] = ()
    """Any one of these lets a client call it (``admin`` always does)."""
    room_field: str | None = None
    """The request field naming the room a room scope must cover; None: any room."""
    stream: StreamKind | None = None
    """The quota an open call of this method counts against."""


_INVENTORY = "/stocksync.v1.InventoryService/"
_ROOMS = "/stocksync.v1.LiveRoomService/"
_READ = Rule(Caller.CLIENT, (INVENTORY_READ,))
_RESERVE = Rule(Caller.CLIENT, (INVENTORY_RESERVE,))
_ADMIN = Rule(Caller.CLIENT, (ADMIN,))
_HOST = Rule(Caller.CLIENT, (ROOMS_HOST,), room_field="room_id")
_SEE_ROOM = Rule(Caller.CLIENT, (ROOMS_WATCH, ROOMS_HOST), room_field="room_id")

RULES: dict[str, Rule] = {
    "/stocksync.v1.SyncService/Sync": Rule(Caller.AGENT, stream=StreamKind.AGENT_STREAM),
    _INVENTORY + "GetStock": _READ,
    _INVENTORY + "ListWarehouses": _READ,
    _INVENTORY + "Reserve": _RESERVE,
    _INVENTORY + "Commit": _RESERVE,
    _INVENTORY + "Release": _RESERVE,
    # The shop that holds it, or a read-only caller showing an order's status.
    _INVENTORY + "GetReservation": Rule(Caller.CLIENT, (INVENTORY_RESERVE, INVENTORY_READ)),
    # A quota sets stock aside from every other channel: an operator's call.
    _INVENTORY + "SetQuota": _ADMIN,
    _INVENTORY + "ReleaseQuota": _ADMIN,
    _INVENTORY + "SetSafetyStock": _ADMIN,
    _INVENTORY + "ListConflicts": _ADMIN,
    _INVENTORY + "ResolveConflict": _ADMIN,
    _ROOMS + "SetFeatured": _HOST,
    _ROOMS + "SetDisplayPolicy": _HOST,
    _ROOMS + "EndRoom": _HOST,
    _ROOMS + "GetRoom": _SEE_ROOM,
    _ROOMS + "Watch": Rule(
        Caller.CLIENT, (ROOMS_WATCH, ROOMS_HOST), room_field="room_id", stream=StreamKind.WATCHER
    ),
    # Lists only the rooms the caller may see (the room service filters).
    _ROOMS + "ListRooms": Rule(Caller.CLIENT, (ROOMS_WATCH, ROOMS_HOST)),
    # Webhook deliveries name every subscriber's URL: an operator's view.
    "/stocksync.v1.WebhookService/ListDeliveries": _ADMIN,
    "/stocksync.v1.WebhookService/SendTest": _ADMIN,
    "/stocksync.v1.WebhookService/Replay": _ADMIN,
    # Load balancers and supervisors ask without credentials; the answer
    # says only whether the hub serves.
    "/grpc.health.v1.Health/Check": Rule(Caller.PUBLIC),
    "/grpc.health.v1.Health/List": Rule(Caller.PUBLIC),
    # A stream: only for identified callers, counted like a room watch.
    "/grpc.health.v1.Health/Watch": Rule(Caller.ANY, stream=StreamKind.WATCHER),
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Rule(
        Caller.ANY, stream=StreamKind.WATCHER
    ),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Rule(
        Caller.ANY, stream=StreamKind.WATCHER
    ),
}
"""Every method the hub serves. A method missing here is refused to
everyone: a new RPC is closed until someone decides who may call it."""

_CLOSED = Rule(Caller.CLIENT, (ADMIN,))


def rule_for(method: str) -> Rule:
    """The rule of a gRPC method (full name, ``/package.Service/Method``)."""
    return RULES.get(method, _CLOSED)


def may_watch(identity: Identity, room: str | None) -> bool:
    """Whether ``identity`` may see ``room`` (any room, when None): watchers and hosts may."""
    return identity.may(ROOMS_WATCH, room) or identity.may(ROOMS_HOST, room)


def authorize(identity: Identity | None, rule: Rule, room: str | None = None) -> None:
    """Pass if ``identity`` may make a call under ``rule`` (for ``room``).

    Args:
        identity: the caller; None when the hub runs without authentication
            (plaintext, explicitly asked for), which lets everything through.
        rule: the method's rule.
        room: the room the request names, for a rule with a ``room_field``;
            None to ask whether the caller holds the scope for *some* room
            (the request could not be read, or names none).

    Raises:
        NotAuthenticated: an anonymous caller where a credential is needed.
        NotAllowed: naming the scope the caller lacks.
    """
    if identity is None or rule.caller is Caller.PUBLIC:
        return
    if identity.kind == "anonymous":
        raise NotAuthenticated(
            "no credential: present a client certificate, or a bearer token "
            "(authorization: Bearer sst_…)"
        )
    if rule.caller is Caller.ANY:
        return
    if rule.caller is Caller.AGENT:
        if identity.kind != "agent":
            raise NotAllowed(f"{identity} is not a warehouse agent; only agents stream events")
        return
    if identity.kind == "agent":
        raise NotAllowed(f"{identity} holds no client scope; this call needs {rule.scopes[0]}")
    if rule.room_field is not None and room is not None:
        if any(identity.may(scope, room) for scope in rule.scopes):
            return
    elif any(identity.may(scope) or _some_room(identity, scope) for scope in rule.scopes):
        return
    try:
        require(identity, rule.scopes[0], room if rule.room_field else None)
    except Forbidden as e:
        raise NotAllowed(e.detail) from None
    raise AssertionError("require() passed where may() did not")  # pragma: no cover


def _some_room(identity: Identity, scope: str) -> bool:
    return scope in (ROOMS_WATCH, ROOMS_HOST) and any(
        s.startswith(scope + ":") for s in identity.scopes
    )


@dataclass(frozen=True)
class Limits:
    """Per-identity quotas (``HubConfig``'s settings of the same names)."""

    max_streams_per_identity: int = 4
    max_watchers_per_identity: int = 1000
    max_requests_per_s: float = 1000.0
    request_burst: int = 2000


@dataclass
class _Account:
    tokens: float
    stamp: float
    open: dict[StreamKind, int] = field(default_factory=dict)


class Ticket:
    """One open stream counted against its identity; :meth:`close` it when it ends."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def close(self) -> None:
        """Give the stream's place back (idempotent)."""
        if self._release is not None:
            self._release()
            self._release = None


class Admission:
    """Keeps every identity within its :class:`Limits`.

    Thread-safe (the HTTP routes and the gRPC gate share one, and both run
    on the event loop, but nothing here should depend on that).

    Args:
        limits: the quotas.
        clock: seconds from a monotonic source (tests use their own).
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[tuple[str, str], _Account] = {}
        self.refused = 0
        """How many requests and streams were refused, in all."""

    def request(self, identity: Identity | None) -> None:
        """Count one request (a call or an HTTP request) of ``identity``.

        Raises:
            OverLimit: the identity spent its burst and its sustained rate.
        """
        if identity is None or identity.kind == "anonymous":
            return  # no identity to charge: plaintext, or refused anyway
        now = self._clock()
        burst = self.limits.request_burst
        with self._lock:
            account = self._account(identity, now)
            account.tokens = min(
                burst, account.tokens + (now - account.stamp) * self.limits.max_requests_per_s
            )
            account.stamp = now
            if account.tokens < 1:
                self.refused += 1
                raise OverLimit(
                    f"{identity} is over its request rate (max_requests_per_s="
                    f"{self.limits.max_requests_per_s:g}, request_burst={burst}); slow down"
                )
            account.tokens -= 1

    def open(self, identity: Identity | None, kind: StreamKind) -> Ticket:
        """Count one more open stream of ``kind`` for ``identity``.

        Raises:
            OverLimit: the identity holds its quota of such streams already.
        """
        if identity is None or identity.kind == "anonymous":
            return Ticket(lambda: None)
        limit = getattr(self.limits, kind.value)
        key = (identity.kind, identity.name)
        with self._lock:
            account = self._account(identity, self._clock())
            held = account.open.get(kind, 0)
            if held >= limit:
                self.refused += 1
                raise OverLimit(
                    f"{identity} already holds {held} open streams ({kind.value}={limit})"
                )
            account.open[kind] = held + 1

        def release() -> None:
            with self._lock:
                acct = self._accounts.get(key)
                if acct is not None:
                    acct.open[kind] -= 1

        return Ticket(release)

    def held(self, identity: Identity, kind: StreamKind) -> int:
        """How many streams of ``kind`` ``identity`` holds open now."""
        with self._lock:
            account = self._accounts.get((identity.kind, identity.name))
            return account.open.get(kind, 0) if account else 0

    def _account(self, identity: Identity, now: float) -> _Account:
        # Identities are issued (certificates, the tokens file), so their
        # number is bounded by what an operator made; accounts are kept.
        key = (identity.kind, identity.name)
        account = self._accounts.get(key)
        if account is None:
            account = self._accounts[key] = _Account(float(self.limits.request_burst), now)
        return account
