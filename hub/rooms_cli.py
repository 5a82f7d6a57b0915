"""``stocksync-hub rooms``: set up live rooms on a running hub and watch them.

Each command is one ``LiveRoomService`` call; connection options are the
same as ``stocksync-hub stock``'s.
"""

from __future__ import annotations

import json
from typing import Any

import click
import grpc

from stocksync.hub.cli_client import channel as _channel
from stocksync.hub.cli_client import client_options, json_option
from stocksync.hub.room_service import event_from_proto, room_from_proto
from stocksync.hub.rooms import RoomEvent, RoomInfo, Snapshot, event_dict, room_dict
from stocksync.v1 import rooms_pb2, rooms_pb2_grpc

__all__ = ["rooms"]

CALL_TIMEOUT_S = 10.0
"""How long a one-shot call waits for the hub."""


def _refusal(target: str, error: grpc.RpcError) -> click.ClickException:
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return click.ClickException(f"no hub answering at {target}")
    return click.ClickException(f"{code.name}: {error.details()}")


def _call(target: str, method: str, request: Any, insecure: bool, **tls: Any) -> Any:
    with _channel(target, insecure, tls) as channel:
        stub = rooms_pb2_grpc.LiveRoomServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            raise _refusal(target, e) from None


def _describe(info: RoomInfo) -> str:
    policy = info.policy
    low = f", low at {policy.low_threshold}" if policy.low_threshold else ""
    return (
        f"{info.room}: {len(info.featured)} featured ({' '.join(info.featured) or '-'}); "
        f"{policy.mode.value}{low}; {info.watchers} watching; at {info.position}"
    )


def _lines(event: RoomEvent) -> str:
    kind = f"snapshot ({event.reason.value})" if isinstance(event, Snapshot) else "update"
    lines = [f"{event.position} {kind}"]
    for s in event.skus:
        stale = f"  (stale: {', '.join(s.stale_warehouses)})" if s.stale_warehouses else ""
        lines.append(f"  {s.sku:<24} {s.label}{stale}")
    return "\n".join(lines)


@click.group()
def rooms() -> None:
    """Live rooms: the products a host features and the stock viewers see.

    Example:

        stocksync-hub rooms feature live-1 SKU-1 SKU-2 --insecure
    """


@rooms.command()
@click.argument("room")
@click.argument("skus", metavar="SKU...", nargs=-1)
@client_options
def feature(room: str, skus: tuple[str, ...], target: str, **conn: Any) -> None:
    """Feature SKUs in ROOM (in that order; none clears it), starting the room.

    Example:

        stocksync-hub rooms feature live-1 SKU-1 SKU-2 --insecure
    """
    request = rooms_pb2.SetFeaturedRequest(room_id=room, skus=list(skus))
    reply = _call(target, "SetFeatured", request, **conn)
    click.echo(_describe(room_from_proto(reply.room)))


@rooms.command()
@click.argument("room")
@click.option(
    "--mode",
    type=click.Choice(["exact", "buckets"]),
    required=True,
    help="exact: numbers; buckets: In stock / Only N left! / Sold out.",
)
@click.option(
    "--low",
    type=click.IntRange(min=0),
    default=None,
    help="Show 'Only N left!' at or below N sellable (0: never) [10].",
)
@client_options
def display(room: str, mode: str, low: int | None, target: str, **conn: Any) -> None:
    """Set how ROOM shows stock.

    Example:

        stocksync-hub rooms display live-1 --mode buckets --low 5 --insecure
    """
    request = rooms_pb2.SetDisplayPolicyRequest(
        room_id=room,
        mode=rooms_pb2.ROOM_DISPLAY_MODE_EXACT
        if mode == "exact"
        else rooms_pb2.ROOM_DISPLAY_MODE_BUCKETS,
        low_threshold=low,
    )
    reply = _call(target, "SetDisplayPolicy", request, **conn)
    click.echo(_describe(room_from_proto(reply.room)))


@rooms.command(name="list")
@client_options
@json_option
def list_rooms(target: str, as_json: bool, **conn: Any) -> None:
    """Show every live room.

    Example:

        stocksync-hub rooms list --json --insecure
    """
    reply = _call(target, "ListRooms", rooms_pb2.ListRoomsRequest(), **conn)
    infos = [room_from_proto(r) for r in reply.rooms]
    if as_json:
        click.echo(json.dumps([room_dict(i) for i in infos]))
        return
    for info in infos:
        click.echo(_describe(info))


@rooms.command()
@click.argument("room")
@client_options
def end(room: str, target: str, **conn: Any) -> None:
    """End ROOM: its watchers stop, and it is gone until featured again.

    Example:

        stocksync-hub rooms end live-1 --insecure
    """
    _call(target, "EndRoom", rooms_pb2.EndRoomRequest(room_id=room), **conn)
    click.echo(f"room {room} ended")


@rooms.command()
@click.argument("room")
@click.option(
    "--from",
    "from_position",
    default="",
    metavar="POSITION",
    help="Resume after this position (EPOCH:OFFSET, as printed).",
)
@client_options
@json_option
def watch(
    room: str,
    from_position: str,
    target: str,
    as_json: bool,
    insecure: bool,
    **tls: Any,
) -> None:
    """Print what ROOM shows, live, until Ctrl-C or the room ends.

    With --json, one JSON object per line (the Server-Sent Events' data).

    Example:

        stocksync-hub rooms watch live-1 --json --insecure
    """
    request = rooms_pb2.WatchRequest(room_id=room, from_position=from_position)
    with _channel(target, insecure, tls) as channel:
        call = rooms_pb2_grpc.LiveRoomServiceStub(channel).Watch(request)
        try:
            for message in call:
                event = event_from_proto(message)
                click.echo(json.dumps(event_dict(event)) if as_json else _lines(event))
        except KeyboardInterrupt:
            call.cancel()
            return
        except grpc.RpcError as e:
            raise _refusal(target, e) from None
    click.echo(f"room {room} ended", err=True)


if __name__ == "__main__":  # pragma: no cover
    rooms()
