"""Who may use an HTTP route: one function every route calls with the scope it needs.

::

    async def room_events(request: web.Request) -> web.StreamResponse:
        room = request.match_info["room"]
        identity = authorize(request, ROOMS_WATCH, room)      # 401 / 403 / 429
        with hold_stream(request, identity):                  # 429 past the watcher quota
            ...

HTTP callers carry a bearer token (a client certificate is a gRPC affair):
in the ``Authorization: Bearer sst_…`` header, or as ``?token=sst_…`` for
clients that cannot set headers (OBS browser sources, ``EventSource``). A
token in the URL ends up in proxies' logs and browser history: give such
clients a token limited to one room's ``rooms:watch``, which shows only
what the room's stream shows anyway.

The rules are those of :mod:`stocksync.hub.access`; a refusal is a JSON
``{"error": detail}`` with 401 (with ``WWW-Authenticate: Bearer``), 403 or
429. A hub serving plaintext (``insecure``) lets every request through.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web

from stocksync.auth import ROOMS_HOST, ROOMS_WATCH, AuthError, Identity, TokenFile, TokenTable
from stocksync.errors import StocksyncError
from stocksync.hub.access import (
    Admission,
    Caller,
    Limits,
    Rule,
    StreamKind,
    auth_error,
)
from stocksync.hub.access import authorize as authorize_rule

__all__ = ["HTTP_AUTH", "HttpAuth", "authorize", "hold_stream"]


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


_REFUSALS: dict[str, type[web.HTTPException]] = {
    "UNAUTHENTICATED": web.HTTPUnauthorized,
    "PERMISSION_DENIED": web.HTTPForbidden,
    "RESOURCE_EXHAUSTED": web.HTTPTooManyRequests,
}


def _http_error(error: StocksyncError) -> web.HTTPException:
    """The HTTP refusal of an access error: 401 (saying how to authenticate), 403 or 429."""
    cls = _REFUSALS[error.status.name]
    headers = (
        {"WWW-Authenticate": 'Bearer realm="stocksync"'} if cls is web.HTTPUnauthorized else None
    )
    body = json.dumps({"error": error.detail})
    return cls(text=body, content_type="application/json", headers=headers)


def _identify(request: web.Request, tokens: TokenTable | None) -> Identity:
    header = request.headers.get("Authorization")
    query = request.query.get("token")
    if header is None and query is None:
        return Identity(kind="anonymous", name="anonymous")
    if tokens is None:
        raise auth_error(AuthError("this hub accepts no bearer tokens (no tokens_file)"))
    try:
        return tokens.identify(header if header is not None else f"Bearer {query}")
    except AuthError as e:
        raise auth_error(e) from None


def authorize(request: web.Request, scope: str, room: str | None = None) -> Identity | None:
    """The caller of ``request``, if it holds ``scope`` (for ``room``); else raise its refusal.

    Counts the request against the caller's rate. For ``rooms:watch``, a
    ``rooms:host`` for the room serves as well.

    Args:
        request: the HTTP request.
        scope: one of :data:`stocksync.auth.SCOPES`.
        room: the room the route is about, for a room scope.

    Returns:
        The identity, or None on a hub without authentication.

    Raises:
        web.HTTPUnauthorized: no token, or a wrong one (401).
        web.HTTPForbidden: the token lacks the scope for this room (403).
        web.HTTPTooManyRequests: the caller is over its request rate (429).
    """
    auth = request.app[HTTP_AUTH]
    if auth.open:
        return None
    scopes = (ROOMS_WATCH, ROOMS_HOST) if scope == ROOMS_WATCH else (scope,)
    rule = Rule(Caller.CLIENT, scopes, room_field="room" if room is not None else None)
    try:
        identity = _identify(request, auth.tokens.table() if auth.tokens else None)
        authorize_rule(identity, rule, room)
        auth.admission.request(identity)
    except StocksyncError as e:
        raise _http_error(e) from None
    return identity


@contextlib.contextmanager
def hold_stream(request: web.Request, identity: Identity | None) -> Iterator[None]:
    """Hold one of ``identity``'s watcher places while a streaming response runs.

    Raises:
        web.HTTPTooManyRequests: the caller holds ``max_watchers_per_identity`` already.
    """
    auth = request.app[HTTP_AUTH]
    try:
        ticket = auth.admission.open(identity, StreamKind.WATCHER)
    except StocksyncError as e:
        raise _http_error(e) from None
    try:
        yield
    finally:
        ticket.close()
