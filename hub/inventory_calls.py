"""The shop's and the operator's calls, checked once for every face.

gRPC (:mod:`stocksync.hub.inventory_service`) and the JSON API
(:mod:`stocksync.hub.http_api`) only turn their wire format into the plain
arguments below and the results back; the request limits (SKUs per query,
conflicts per page) and the shape checks live here, the stock rules in the
:class:`~stocksync.hub.ledger.Ledger`. So one input gets one refusal, with
one detail, on either face.
"""

from __future__ import annotations

from collections.abc import Sequence

from stocksync.errors import InvalidArgument
from stocksync.events import InvalidEvent, validate_sku
from stocksync.hub.inventory import MAX_QUERY_SKUS, Inventory
from stocksync.hub.ledger import Conflict, Reservation, validate_room
from stocksync.hub.stock import SkuStock

__all__ = [
    "DEFAULT_CONFLICTS",
    "MAX_CONFLICTS",
    "MAX_QUERY_SKUS",
    "check_skus",
    "commit",
    "conflicts",
    "get_reservation",
    "release",
    "reservation_id",
    "reserve",
    "stock",
]

MAX_CONFLICTS = 10_000
"""Most conflicts one listing returns."""
DEFAULT_CONFLICTS = 1000
"""Conflicts listed when the caller names no limit."""


def check_skus(skus: Sequence[str], limit: int = MAX_QUERY_SKUS) -> list[str]:
    """The SKUs of a query, each well-formed, at least one and at most ``limit``.

    Raises:
        InvalidEvent: naming the first problem.
    """
    if not skus:
        raise InvalidEvent("name at least one SKU")
    if len(skus) > limit:
        raise InvalidEvent(
            f"skus: at most {limit} SKUs per request, got {len(skus)} (max_query_skus)"
        )
    for sku in skus:
        validate_sku(sku)
    return list(skus)


def reservation_id(rid: str) -> str:
    """``rid`` if it names a reservation at all (the ledger checks the rest).

    Raises:
        InvalidArgument: if it is empty.
    """
    if not rid:
        raise InvalidArgument("reservation_id is empty")
    return rid


def stock(inventory: Inventory, skus: Sequence[str], room: str = "") -> list[SkuStock]:
    """Each SKU as ``room`` (or the pool, when empty) sees it now, in request order.

    Raises:
        InvalidArgument: a bad SKU, too many or none, or a bad room.
    """
    checked = check_skus(skus, inventory.max_query_skus)
    return inventory.stock(checked, validate_room(room) if room else "")


async def reserve(
    inventory: Inventory,
    lines: Sequence[tuple[str, int]],
    room: str,
    key: str,
    ttl_seconds: int = 0,
) -> Reservation:
    """Hold every line or none; answered once durable.

    Args:
        inventory: the hub's stock.
        lines: (sku, qty) pairs, one per SKU.
        room: the live room selling it, or "" for a sale outside any room.
        key: the caller's idempotency key.
        ttl_seconds: how long the hold lasts unpaid; 0 for the hub's default.

    Raises:
        InvalidArgument: bad lines, room, key or ttl (the ledger names which).
        Shortage: a line exceeds what is sellable.
    """
    return await inventory.reserve(lines, room, key, ttl_seconds * 1000 if ttl_seconds else None)


async def commit(inventory: Inventory, rid: str) -> Reservation:
    """Paid: allocate and send pick commands. See :meth:`Inventory.commit`."""
    return await inventory.commit(reservation_id(rid))


async def release(inventory: Inventory, rid: str) -> Reservation:
    """Cancel. See :meth:`Inventory.release`."""
    return await inventory.release(reservation_id(rid))


def get_reservation(inventory: Inventory, rid: str) -> Reservation:
    """The reservation as it stands.

    Raises:
        InvalidArgument: an empty or over-long id.
        NotFound: no such reservation.
    """
    return inventory.reservation(reservation_id(rid))


async def conflicts(inventory: Inventory, open_only: bool, limit: int) -> list[Conflict]:
    """Conflicts, newest first; ``limit`` 0 means :data:`DEFAULT_CONFLICTS`.

    Raises:
        InvalidArgument: a limit above :data:`MAX_CONFLICTS` (or below 0).
    """
    if not 0 <= limit <= MAX_CONFLICTS:
        raise InvalidArgument(f"limit must be at most {MAX_CONFLICTS:,}, got {limit}")
    return await inventory.conflicts(open_only, limit or DEFAULT_CONFLICTS)
