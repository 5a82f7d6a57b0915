"""Who may use an HTTP route: one function every route calls with the scope it needs.

::

    async def get_stock(request: web.Request) -> web.Response:
        authorize(request, INVENTORY_READ)                 # refuses: 401 / 403 / 429
        ...

    async def room_events(request: web.Request) -> web.StreamResponse:
        identity = authorize(request, ROOMS_WATCH, room=room)
        ticket = open_stream(request, identity)            # 429 past the watcher quota
        try: ... finally: ticket.close()

HTTP callers carry a bearer token (a client certificate is a gRPC affair):
in the ``Authorization: Bearer sst_…`` header, or as ``?token=sst_…`` for
clients that cannot set headers (OBS browser sources, ``EventSource``). A
token in the URL ends up in proxies' logs and browser history: give such
clients a token limited to one room's ``rooms:watch``, which shows only
what the room's stream shows anyway.

The scopes and their meaning are those of :mod:`stocksync.hub.access`;
a refusal is a domain error (:class:`~stocksync.hub.access.NotAuthenticated`,
``NotAllowed``, ``OverLimit``) that the route answers like any other, by
its status: 401 (with :func:`challenge` headers), 403 or 429. A hub serving
plaintext (``insecure``) lets every request through.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from stocksync.auth import ROOMS_HOST, ROOMS_WATCH, AuthError, Identity, TokenFile, TokenTable
from stocksync.errors import Status, StocksyncError
from stocksync.hub.access import (
    Admission,
    Caller,
    Limits,
    NotAuthenticated,
    Rule,
    StreamKind,
    Ticket,
    auth_error,
)
from stocksync.hub.access import authorize as authorize_rule

__all__ = ["HTTP_AUTH", "HttpAuth", "authorize", "challenge", "open_stream"]


@dataclass
class HttpAuth:
    """How the HTTP routes authenticate.

    Args:
        tokens: the accepted bearer tokens; None when nobody is checked
            (plaintext hub: every request is let through).
        admission: the per-identity quotas, shared with the gRPC gate.
    """

    tokens: TokenFile | None
    admission: Admission
    open: bool = False
    """True: no authentication at all (a plaintext hub)."""

    @classmethod
    def without_authentication(cls) -> HttpAuth:
        """Every request is let through (a hub serving plaintext)."""
        return cls(tokens=None, admission=Admission(Limits()), open=True)


HTTP_AUTH = web.AppKey("http_auth", HttpAuth)


def challenge(error: StocksyncError) -> dict[str, str]:
    """Headers a refusal carries: how to authenticate, on a 401 (RFC 6750 §3)."""
    if error.status is Status.UNAUTHENTICATED:
        return {"WWW-Authenticate": 'Bearer realm="stocksync"'}
    return {}


def _identify(request: web.Request, tokens: TokenTable | None) -> Identity:
    header = request.headers.get("Authorization")
    query = request.query.get("token")
    if header is None and query is None:
        raise NotAuthenticated(
            "no credential: send a bearer token (Authorization: Bearer sst_…, or ?token=sst_…)"
        )
    if tokens is None:
        raise NotAuthenticated("this hub accepts no bearer tokens (no tokens_file)")
    try:
        return tokens.identify(header if header is not None else f"Bearer {query}")
    except AuthError as e:
        raise auth_error(e) from None


def authorize(
    request: web.Request, *scopes: str | None, room: str | None = None
) -> Identity | None:
    """The caller of ``request``, if it holds one of ``scopes`` (for ``room``).

    Counts the request against the caller's rate. ``rooms:watch`` is also
    granted by ``rooms:host`` for the room; ``admin`` grants everything.

    Args:
        request: the HTTP request.
        scopes: what the route needs, any one of them (from
            :data:`stocksync.auth.SCOPES`); none, or None: a public route.
        room: the room the route is about, for a room scope.

    Returns:
        The identity; None for a public route or a hub without authentication.

    Raises:
        NotAuthenticated: no token, or a wrong one (401).
        NotAllowed: the token lacks the scope, for this room (403).
        OverLimit: the caller is over its request rate (429).
    """
    auth = request.app[HTTP_AUTH]
    wanted = tuple(s for s in scopes if s is not None)
    if auth.open or not wanted:
        return None
    if ROOMS_WATCH in wanted and ROOMS_HOST not in wanted:
        wanted += (ROOMS_HOST,)
    rule = Rule(Caller.CLIENT, wanted, room_field="room" if room is not None else None)
    identity = _identify(request, auth.tokens.table() if auth.tokens else None)
    authorize_rule(identity, rule, room)
    auth.admission.request(identity)
    return identity


def open_stream(request: web.Request, identity: Identity | None) -> Ticket:
    """Take one of ``identity``'s watcher places for a streaming response;
    close the ticket when the stream ends.

    Raises:
        OverLimit: the caller holds ``max_watchers_per_identity`` already (429).
    """
    return request.app[HTTP_AUTH].admission.open(identity, StreamKind.WATCHER)
