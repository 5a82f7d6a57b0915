"""``stocksync-hub reserve | commit | release | reservation | quota | safety-stock |
conflicts``: the shop's calls and the operator's view, against a running hub."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import click

from stocksync.hub.cli_client import client_options, json_option, query
from stocksync.v1 import inventory_pb2

__all__ = ["COMMANDS", "reservation_json"]


def reservation_json(r: inventory_pb2.Reservation) -> dict[str, Any]:
    """A reservation as the ``--json`` output shows it."""
    return {
        "id": r.id,
        "status": inventory_pb2.ReservationStatus.Name(r.status).removeprefix(
            "RESERVATION_STATUS_"
        ),
        "room": r.room_id,
        "key": r.idempotency_key,
        "lines": [
            {
                "sku": line.sku,
                "qty": line.qty,
                "from_quota": line.from_quota,
                "sellable_at_grant": line.sellable_at_grant,
                "at_risk": line.at_risk,
                "allocations": {
                    a.warehouse: {"qty": a.qty, "shipped": a.shipped} for a in line.allocations
                },
            }
            for line in r.lines
        ],
        "created_unix_ms": r.created_unix_ms,
        "expires_in_s": round(r.expires_in_ms / 1000, 3) if r.expires_in_ms else None,
        "reason": r.reason or None,
    }


def _echo(r: inventory_pb2.Reservation, as_json: bool) -> None:
    info = reservation_json(r)
    if as_json:
        click.echo(json.dumps(info))
        return
    lines = ", ".join(f"{ln['qty']} {ln['sku']}" for ln in info["lines"])
    extra = f" (expires in {info['expires_in_s']:.0f} s)" if info["expires_in_s"] else ""
    if info["reason"]:
        extra = f" ({info['reason']})"
    click.echo(f"{info['id']} {info['status']}: {lines}{extra}")
    for ln in info["lines"]:
        for warehouse, a in ln["allocations"].items():
            click.echo(f"  {ln['sku']}: {a['qty']} from {warehouse} ({a['shipped']} shipped)")
        if ln["at_risk"]:
            click.echo(f"  {ln['sku']}: {ln['at_risk']} at risk")


@click.command()
@click.argument("sku")
@click.argument("qty", type=click.IntRange(min=1))
@click.option("--room", default="", help="The live room selling it (its quota is used first).")
@click.option("--key", default=None, help="Idempotency key (default: a new random one).")
@click.option("--ttl", type=click.IntRange(min=1, max=86_400), default=None, help="Seconds.")
@client_options
@json_option
def reserve(
    sku: str,
    qty: int,
    room: str,
    key: str | None,
    ttl: int | None,
    target: str,
    as_json: bool,
    **conn: Any,
) -> None:
    """Hold QTY units of SKU; exits 0 only when granted.

    A refusal names the SKU and what is sellable, and exits 1. Retrying with
    the same --key never reserves twice.

    Example:

        stocksync-hub reserve LIP-RED-01 2 --room live-a --key order-1001 --json --insecure
    """
    request = inventory_pb2.ReserveRequest(
        lines=[inventory_pb2.ReserveLine(sku=sku, qty=qty)],
        room_id=room,
        idempotency_key=key or f"cli-{uuid.uuid4()}",
        ttl_seconds=ttl or 0,
    )
    _echo(query(target, "Reserve", request, **conn).reservation, as_json)


@click.command()
@click.argument("reservation_id", metavar="ID")
@client_options
@json_option
def commit(reservation_id: str, target: str, as_json: bool, **conn: Any) -> None:
    """Mark a reservation paid: allocate it and send the pick commands.

    Example:

        stocksync-hub commit R-0192f0c1-... --json --insecure
    """
    request = inventory_pb2.CommitRequest(reservation_id=reservation_id)
    _echo(query(target, "Commit", request, **conn).reservation, as_json)


@click.command()
@click.argument("reservation_id", metavar="ID")
@client_options
@json_option
def release(reservation_id: str, target: str, as_json: bool, **conn: Any) -> None:
    """Cancel a reservation; its units return to sale.

    Example:

        stocksync-hub release R-0192f0c1-... --insecure
    """
    request = inventory_pb2.ReleaseRequest(reservation_id=reservation_id)
    _echo(query(target, "Release", request, **conn).reservation, as_json)


@click.command("reservation")
@click.argument("reservation_id", metavar="ID")
@client_options
@json_option
def reservation_(reservation_id: str, target: str, as_json: bool, **conn: Any) -> None:
    """Show a reservation: status, lines, allocations, what is at risk.

    Example:

        stocksync-hub reservation R-0192f0c1-... --json --insecure
    """
    request = inventory_pb2.GetReservationRequest(reservation_id=reservation_id)
    _echo(query(target, "GetReservation", request, **conn).reservation, as_json)


@click.command()
@click.argument("room")
@click.argument("sku")
@click.argument("qty", type=click.IntRange(min=0, max=100_000))
@click.option("--release", "release_it", is_flag=True, help="Return the room's unsold quota.")
@client_options
@json_option
def quota(
    room: str, sku: str, qty: int, release_it: bool, target: str, as_json: bool, **conn: Any
) -> None:
    """Set aside QTY units of SKU that only ROOM may sell (a flash sale).

    With --release (QTY is then ignored) the room's unsold units return to sale.

    Example:

        stocksync-hub quota live-a LIP-RED-01 50 --insecure
    """
    if release_it:
        query(
            target, "ReleaseQuota", inventory_pb2.ReleaseQuotaRequest(room_id=room, sku=sku), **conn
        )
        result: dict[str, Any] = {"room": room, "sku": sku, "released": True}
    else:
        reply = query(
            target,
            "SetQuota",
            inventory_pb2.SetQuotaRequest(room_id=room, sku=sku, qty=qty),
            **conn,
        )
        result = {"room": room, "sku": sku, "quota": qty, "room_sellable": reply.room_sellable}
    if as_json:
        click.echo(json.dumps(result))
    elif release_it:
        click.echo(f"{room}: unsold {sku} quota returned to sale")
    else:
        click.echo(f"{room}: {qty} {sku} set aside; the room may sell {result['room_sellable']}")


@click.command("safety-stock")
@click.argument("sku")
@click.argument("units", type=click.IntRange(min=0, max=1_000_000_000))
@client_options
def safety_stock(sku: str, units: int, target: str, **conn: Any) -> None:
    """Keep UNITS of SKU back from sale (0 to stop).

    Example:

        stocksync-hub safety-stock LIP-RED-01 5 --insecure
    """
    request = inventory_pb2.SetSafetyStockRequest(sku=sku, units=units)
    query(target, "SetSafetyStock", request, **conn)
    click.echo(f"{sku}: {units} units kept back from sale")


@click.command()
@click.option("--open", "open_only", is_flag=True, help="Only conflicts still open.")
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=100, show_default=True)
@click.option("--resolve", "resolve_id", type=int, default=None, help="Close open conflict ID.")
@client_options
@json_option
def conflicts(
    open_only: bool,
    limit: int,
    resolve_id: int | None,
    target: str,
    as_json: bool,
    **conn: Any,
) -> None:
    """List what the hub found wrong: oversold units, negative stock, ...

    Newest first. Kinds: oversold (reservations stock cannot cover: at risk),
    reallocated (committed units moved to another warehouse),
    negative_on_hand, unknown_reservation, already_settled, shipped_elsewhere,
    epoch_replaced (a new store took over a silent one), two_stores (a
    replaced store spoke again). With --resolve ID an operator closes an open
    one (two_stores stays open until then).

    Example:

        stocksync-hub conflicts --open --json --insecure
    """
    if resolve_id is not None:
        resolve = inventory_pb2.ResolveConflictRequest(conflict_id=resolve_id)
        query(target, "ResolveConflict", resolve, **conn)
        click.echo(f"conflict #{resolve_id} resolved")
        return
    request = inventory_pb2.ListConflictsRequest(open_only=open_only, limit=limit)
    reply = query(target, "ListConflicts", request, **conn)
    items = [
        {
            "id": c.id,
            "kind": c.kind,
            "sku": c.sku,
            "warehouse": c.warehouse or None,
            "units": c.units,
            "reservation_id": c.reservation_id or None,
            "cause": c.cause,
            "at_unix_ms": c.at_unix_ms,
            "resolved_unix_ms": c.resolved_unix_ms or None,
            "open": c.open,
        }
        for c in reply.conflicts
    ]
    if as_json:
        click.echo(json.dumps(items))
        return
    if not items:
        click.echo("no conflicts")
        return
    for c in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c["at_unix_ms"] / 1000))
        state = "OPEN" if c["open"] else ("resolved" if c["resolved_unix_ms"] else "")
        click.echo(
            f"#{c['id']} {when}Z {c['kind']:<20}{c['sku']:<20}{c['units']:>6}  {state:<9}"
            f"{c['cause']}"
        )


COMMANDS = [reserve, commit, release, reservation_, quota, safety_stock, conflicts]
"""Registered on ``stocksync-hub`` by hub/cli.py."""
