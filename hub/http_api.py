"""The JSON API for shops, under ``/v1`` on the hub's HTTP listener.

The same operations as ``stocksync.v1.InventoryService``, through the same
code: each handler turns JSON into the plain arguments of
:mod:`stocksync.hub.inventory_calls` and the result into the JSON of
:mod:`stocksync.hub.shop_json`. No rule lives here.

=======  ==================================  =====================  ==================
method   path                                scope                  gRPC
=======  ==================================  =====================  ==================
GET      /v1/stock?sku=…[&room=…]            inventory:read         GetStock
POST     /v1/reservations                    inventory:reserve      Reserve
GET      /v1/reservations/{id}               inventory:reserve|read GetReservation
POST     /v1/reservations/{id}/commit        inventory:reserve      Commit
POST     /v1/reservations/{id}/release       inventory:reserve      Release
GET      /v1/conflicts[?open=…&limit=…]      admin                  ListConflicts
GET      /v1/openapi.json                    (public)               —
=======  ==================================  =====================  ==================

Every handler first calls :func:`stocksync.hub.http.authorize` with its
scope (the same as its gRPC method's in :data:`stocksync.hub.access.RULES`).
A refusal is an RFC 9457 problem document (``application/problem+json``)
whose HTTP status comes from the error's :class:`~stocksync.errors.Status`
by one table, :data:`stocksync.hub.http.HTTP_STATUS`, and whose ``code`` is
the gRPC status name and ``detail`` the very text gRPC sends. The OpenAPI 3.1
document is ``static/openapi.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from stocksync.auth import ADMIN, INVENTORY_READ, INVENTORY_RESERVE
from stocksync.errors import InvalidArgument, Status, StocksyncError
from stocksync.hub import inventory_calls as calls
from stocksync.hub.http import HTTP_STATUS, authorize
from stocksync.hub.http_auth import challenge
from stocksync.hub.inventory import Inventory
from stocksync.hub.shop_json import conflict_json, reservation_json, stock_json

__all__ = [
    "MAX_BODY_BYTES",
    "PROBLEM_TYPE",
    "add_api",
    "problem",
]

log = logging.getLogger("stocksync.hub.http_api")

MAX_BODY_BYTES = 64 * 1024
"""Largest request body: a reservation of 50 lines is about 4 KiB."""

PROBLEM_TYPE = "urn:stocksync:problem:"
"""A problem's ``type`` is this followed by its status, e.g.
``urn:stocksync:problem:resource-exhausted``."""

_TITLES = {
    Status.INVALID_ARGUMENT: "Invalid request",
    Status.UNAUTHENTICATED: "Not authenticated",
    Status.NOT_FOUND: "Not found",
    Status.PERMISSION_DENIED: "Not allowed",
    Status.RESOURCE_EXHAUSTED: "Not enough stock or capacity",
    Status.FAILED_PRECONDITION: "Not possible in the current state",
    Status.ABORTED: "Conflicting change, retry",
    Status.DEADLINE_EXCEEDED: "Took too long",
    Status.UNAVAILABLE: "Unavailable, retry later",
    Status.INTERNAL: "Internal error",
}

_INVENTORY = web.AppKey("inventory", Inventory)
_OPENAPI = web.AppKey("openapi", bytes)


class RouteNotFound(StocksyncError):
    """No route under /v1 by that path and method."""

    status = Status.NOT_FOUND


def problem(error: StocksyncError) -> web.Response:
    """An RFC 9457 problem document for ``error``."""
    status = error.status
    body = {
        "type": PROBLEM_TYPE + status.name.lower().replace("_", "-"),
        "title": _TITLES[status],
        "status": HTTP_STATUS[status],
        "detail": error.detail,
        "code": status.name,
    }
    return web.Response(
        text=json.dumps(body),
        status=HTTP_STATUS[status],
        content_type="application/problem+json",
        headers=challenge(error),
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure under /v1 as a problem document (the rest of the app is untouched)."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    try:
        return await handler(request)
    except StocksyncError as e:
        log.info("%s %s: %s: %s", request.method, request.path, e.status.name, e.detail)
        return problem(e)
    except web.HTTPNotFound:
        return problem(RouteNotFound(f"no route {request.path}"))
    except web.HTTPMethodNotAllowed:
        return problem(RouteNotFound(f"no route {request.method} {request.path}"))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        error = StocksyncError("the hub failed to answer (its log says why)")
        return problem(error)


def add_api(app: web.Application, inventory: Inventory) -> None:
    """Serve the JSON API from ``app`` (call before the app starts).

    Args:
        app: the hub's HTTP application (:func:`stocksync.hub.http.make_app`).
        inventory: the hub's stock, shared with the gRPC services.
    """
    app[_INVENTORY] = inventory
    app[_OPENAPI] = resources.files("stocksync.hub").joinpath("static/openapi.json").read_bytes()
    app.middlewares.append(_problems)
    app.add_routes(
        [
            web.get("/v1/stock", get_stock),
            web.post("/v1/reservations", reserve),
            web.get("/v1/reservations/{id}", get_reservation),
            web.post("/v1/reservations/{id}/commit", commit),
            web.post("/v1/reservations/{id}/release", release),
            web.get("/v1/conflicts", list_conflicts),
            web.get("/v1/openapi.json", openapi),
        ]
    )


def _now(inventory: Inventory) -> tuple[int, int]:
    return inventory.clock.now_ms(), inventory.clock.unix_ms()


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, at most :data:`MAX_BODY_BYTES`."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise InvalidArgument(f"request body is larger than {MAX_BODY_BYTES:,} bytes")
    chunks, size = [], 0
    async for chunk in request.content.iter_any():  # read() may stop at the first chunk
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InvalidArgument(f"request body is larger than {MAX_BODY_BYTES:,} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArgument(f"request body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """A typed field of a JSON object (what protobuf's typing gives gRPC)."""
    value = body.get(name, default)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidArgument(f"{name} must be an integer, got {json.dumps(value)[:40]}")
    if not isinstance(value, kind):
        raise InvalidArgument(f"{name} must be a {_JSON_NAMES[kind]}, got {json.dumps(value)[:40]}")
    return value


_JSON_NAMES = {str: "string", list: "list", dict: "object", int: "integer"}


def _only(body: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidArgument(
            f"unknown field {unknown[0]!r} in {what}; expected {', '.join(allowed)}"
        )


def _lines(body: dict[str, Any]) -> list[tuple[str, int]]:
    lines = []
    for i, item in enumerate(_field(body, "lines", list, [])):
        if not isinstance(item, dict):
            raise InvalidArgument(f"lines[{i}] must be an object with sku and qty")
        _only(item, ("sku", "qty"), f"lines[{i}]")
        lines.append((_field(item, "sku", str, ""), _field(item, "qty", int, 0)))
    return lines


async def get_stock(request: web.Request) -> web.Response:
    """``GET /v1/stock?sku=A&sku=B[&room=R]``: sellable and each warehouse's share."""
    authorize(request, INVENTORY_READ)
    inventory = request.app[_INVENTORY]
    views = calls.stock(inventory, request.query.getall("sku", []), request.query.get("room", ""))
    hub_now, unix_now = _now(inventory)
    return web.json_response({"skus": [stock_json(v, hub_now, unix_now) for v in views]})


async def reserve(request: web.Request) -> web.Response:
    """``POST /v1/reservations``: hold every line or none (201, also for a
    retry with the same ``Idempotency-Key``, which returns the same reservation)."""
    authorize(request, INVENTORY_RESERVE)
    inventory = request.app[_INVENTORY]
    body = await _body(request)
    _only(body, ("lines", "room", "ttl_seconds"), "the request body")
    reservation = await calls.reserve(
        inventory,
        _lines(body),
        _field(body, "room", str, ""),
        request.headers.get("Idempotency-Key", ""),
        _field(body, "ttl_seconds", int, 0),
    )
    return web.json_response(
        reservation_json(reservation, _now(inventory)[0]),
        status=201,
        headers={"Location": f"/v1/reservations/{reservation.id}"},
    )


async def get_reservation(request: web.Request) -> web.Response:
    """``GET /v1/reservations/{id}``: the reservation as it stands."""
    authorize(request, INVENTORY_RESERVE, INVENTORY_READ)
    inventory = request.app[_INVENTORY]
    reservation = calls.get_reservation(inventory, request.match_info["id"])
    return web.json_response(reservation_json(reservation, _now(inventory)[0]))


async def commit(request: web.Request) -> web.Response:
    """``POST /v1/reservations/{id}/commit``: paid; allocated, picks sent."""
    authorize(request, INVENTORY_RESERVE)
    inventory = request.app[_INVENTORY]
    reservation = await calls.commit(inventory, request.match_info["id"])
    return web.json_response(reservation_json(reservation, _now(inventory)[0]))


async def release(request: web.Request) -> web.Response:
    """``POST /v1/reservations/{id}/release``: cancelled; units back on sale."""
    authorize(request, INVENTORY_RESERVE)
    inventory = request.app[_INVENTORY]
    reservation = await calls.release(inventory, request.match_info["id"])
    return web.json_response(reservation_json(reservation, _now(inventory)[0]))


_TRUE = {"true": True, "1": True, "false": False, "0": False, "": False}


async def list_conflicts(request: web.Request) -> web.Response:
    """``GET /v1/conflicts[?open=true][&limit=N]``: newest first."""
    authorize(request, ADMIN)
    open_text = request.query.get("open", "").lower()
    if open_text not in _TRUE:
        raise InvalidArgument(f"open must be true or false, got {open_text[:20]!r}")
    limit_text = request.query.get("limit", "0")
    try:
        limit = int(limit_text) if len(limit_text) <= 12 and limit_text.isascii() else None
    except ValueError:
        limit = None
    if limit is None:
        raise InvalidArgument(f"limit must be an integer, got {limit_text[:20]!r}")
    found = await calls.conflicts(request.app[_INVENTORY], _TRUE[open_text], limit)
    return web.json_response({"conflicts": [conflict_json(c) for c in found]})


async def openapi(request: web.Request) -> web.Response:
    """``GET /v1/openapi.json``: this API described in OpenAPI 3.1."""
    authorize(request, None)
    return web.Response(body=request.app[_OPENAPI], content_type="application/json")
