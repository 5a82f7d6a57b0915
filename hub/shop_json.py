"""Stock, reservations and conflicts as JSON: what the JSON API answers and
webhooks carry.

The shapes are those ``stocksync-hub stock | reservation | conflicts --json``
print, so a shop's developer and an operator read one format; the OpenAPI
document (``static/openapi.json``) describes them field by field.
"""

from __future__ import annotations

from typing import Any

from stocksync.hub.ledger import Conflict, Reservation, State
from stocksync.hub.stock import Freshness, SkuStock

__all__ = ["conflict_json", "last_seen_unix_ms", "reservation_json", "stock_json"]


def last_seen_unix_ms(last_seen_ms: int, hub_now_ms: int, unix_now_ms: int) -> int:
    """A hub-clock time turned into wall clock for people; 0 stays 0 (never seen)."""
    return unix_now_ms - (hub_now_ms - last_seen_ms) if last_seen_ms else 0


def stock_json(view: SkuStock, hub_now_ms: int, unix_now_ms: int) -> dict[str, Any]:
    """One SKU: sellable, the totals, and each warehouse's share."""
    return {
        "sku": view.sku,
        "sellable": view.sellable,
        "on_hand": view.on_hand,
        "held": view.held,
        "committed": view.committed,
        "safety_stock": view.safety_stock,
        "quota_free": view.quota_free,
        "warehouses": {
            w.warehouse: {
                "on_hand": w.on_hand,
                "committed": w.committed,
                "available": w.available,
                "stale": w.freshness is not Freshness.FRESH,
                "freshness": w.freshness.value,
                "last_seen_unix_ms": last_seen_unix_ms(w.last_seen_ms, hub_now_ms, unix_now_ms),
            }
            for w in view.warehouses
        },
    }


def reservation_json(r: Reservation, hub_now_ms: int) -> dict[str, Any]:
    """A reservation: status, lines with their allocations, expiry while held."""
    expires_in_ms = max(0, r.expires_ms - hub_now_ms) if r.state is State.HELD else 0
    return {
        "id": r.id,
        "status": r.status,
        "room": r.room,
        "key": r.key,
        "lines": [
            {
                "sku": line.sku,
                "qty": line.qty,
                "from_quota": line.from_quota,
                "sellable_at_grant": line.sellable_at_grant,
                "at_risk": line.at_risk,
                "allocations": {
                    w: {"qty": qty, "shipped": line.shipped.get(w, 0)}
                    for w, qty in sorted(line.allocations.items())
                    if qty
                },
            }
            for line in r.lines
        ],
        "created_unix_ms": r.created_unix_ms,
        "expires_in_s": round(expires_in_ms / 1000, 3) if expires_in_ms else None,
        "reason": r.reason or None,
    }


def conflict_json(c: Conflict) -> dict[str, Any]:
    """A conflict, as ``stocksync-hub conflicts --json`` lists it."""
    return {
        "id": c.id,
        "kind": c.kind.value,
        "sku": c.sku,
        "warehouse": c.warehouse or None,
        "units": c.units,
        "reservation_id": c.reservation_id or None,
        "cause": c.cause,
        "at_unix_ms": c.at_unix_ms,
        "resolved_unix_ms": c.resolved_unix_ms or None,
        "open": c.open,
    }
