"""The hub's gRPC gate: who is calling, may they, and are they within their quotas.

:class:`Gate` wraps every method's handler when the services are registered
(:class:`stocksync.grpc_edge.Wrapped`). Before any service code runs it

1. identifies the caller from the connection — the verified client
   certificate in the auth context, else a bearer token in the
   ``authorization`` metadata (:func:`stocksync.auth.identify_caller`); never
   from anything else the client says about itself;
2. checks the method's rule in :data:`stocksync.hub.access.RULES` (for room
   scopes, against the room the request names);
3. charges the call to the caller's request rate and, for a stream, holds
   one of its stream places until the call ends.

A refusal is the call's status (UNAUTHENTICATED, PERMISSION_DENIED,
RESOURCE_EXHAUSTED) with a detail naming the scope or the limit; nothing
was read or written. Services learn the caller from :func:`current_caller`
(the Sync service holds an agent to its own warehouse with it).

A hub serving plaintext (``insecure``, explicitly asked for) installs no
gate: every caller may do everything, as before authentication existed.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from stocksync.auth import (
    AuthError,
    Identity,
    TokenFile,
    identify_caller,
    identity_from_certificate,
)
from stocksync.errors import StocksyncError
from stocksync.hub.access import Admission, Rule, Ticket, auth_error, authorize, rule_for

__all__ = ["Gate", "current_caller"]

log = logging.getLogger("stocksync.hub.access")

_CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "stocksync_caller", default=None
)

REFUSAL_LOG_EVERY_S = 60.0
"""A caller refused again and again (a flood, a wrong token in a loop) is
logged once, then once a minute with a count, so it cannot flood the log."""


def current_caller() -> Identity | None:
    """The identity the gate admitted for the call running now; None without a gate."""
    return _CALLER.get()


# Parsing a certificate costs more than the checks; a connection's calls all
# carry the same one.
_certificate_identity = functools.lru_cache(maxsize=4096)(identity_from_certificate)


class _RefusalLog:
    """One line per refused caller and reason, then one a minute while it goes on."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, int]] = {}

    def refused(self, peer: str, key: str, detail: str) -> None:
        now = time.monotonic()
        last, suppressed = self._seen.get(key, (0.0, 0))
        if last and now - last < REFUSAL_LOG_EVERY_S:
            self._seen[key] = (last, suppressed + 1)
            return
        more = f" ({suppressed} more since the last line)" if suppressed else ""
        log.warning("refused %s: %s%s", peer, detail, more)
        if len(self._seen) > 10_000:  # bounded however many peers come and go
            self._seen.clear()
        self._seen[key] = (now, 0)


class Gate:
    """Identifies, authorizes and meters every call (see the module docs).

    Args:
        tokens: the accepted bearer tokens, if any.
        admission: the per-identity quotas.
    """

    def __init__(self, tokens: TokenFile | None, admission: Admission) -> None:
        self.tokens = tokens
        self.admission = admission
        self._refusals = _RefusalLog()

    def identify(self, context: Any) -> Identity:
        """The caller of a call.

        Raises:
            AuthError: a certificate naming nobody, a bad or unknown token.
        """
        auth = context.auth_context()
        pem = auth.get("x509_pem_cert")
        if pem:
            return _certificate_identity(pem[0])
        table = self.tokens.table() if self.tokens is not None else None
        return identify_caller(auth, context.invocation_metadata() or (), table)

    async def admit(self, context: Any, rule: Rule, request: Any) -> Ticket | None:
        """Let the call in, or end it with its refusal; returns its stream place."""
        try:
            identity = self.identify(context)
        except AuthError as e:
            await self._refuse(context, auth_error(e), "unidentified")
        try:
            authorize(identity, rule, _room(rule, request))
            self.admission.request(identity)
            ticket = self.admission.open(identity, rule.stream) if rule.stream else None
        except StocksyncError as e:
            await self._refuse(context, e, f"{identity.kind}:{identity.name}")
        _CALLER.set(identity)
        return ticket

    async def _refuse(self, context: Any, error: StocksyncError, who: str) -> NoReturn:
        peer = _peer(context)
        self._refusals.refused(peer, f"{who}|{error.status.name}", error.detail)
        await context.abort(grpc.StatusCode[error.status.name], error.detail)
        raise AssertionError("unreachable")  # context.abort raises

    def wrap(self, method: str, handler: Any) -> Any:
        """``handler`` of ``method`` with its behavior behind the gate (a
        :data:`stocksync.grpc_edge.Wrap`; registered through
        :class:`~stocksync.grpc_edge.Wrapped`)."""
        if not hasattr(handler, "_replace"):
            return handler
        rule = rule_for(method)
        changes = {
            name: self._wrap(getattr(handler, name), rule)
            for name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
            if getattr(handler, name) is not None
        }
        return handler._replace(**changes)

    def _wrap(self, behavior: Any, rule: Rule) -> Any:
        admit = self.admit
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                ticket = await admit(context, rule, request)
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    if ticket is not None:
                        ticket.close()

            return stream

        async def call(request: Any, context: Any) -> Any:
            ticket = await admit(context, rule, request)
            try:
                return await behavior(request, context)
            finally:
                if ticket is not None:
                    ticket.close()

        return call


def _room(rule: Rule, request: Any) -> str | None:
    """The room a request names, for a rule checked per room (None: none readable)."""
    if rule.room_field is None:
        return None
    room = getattr(request, rule.room_field, None)  # an undecodable request has none
    return room if isinstance(room, str) and room else None


def _peer(context: Any) -> str:
    try:
        return str(context.peer())
    except Exception:  # a context without a peer (a closed call)
        return "peer"
