"""The gRPC adapter for live rooms (``LiveRoomService``, DESIGN §7).

Every rule lives in :mod:`stocksync.hub.rooms`; this module translates
messages both ways (the CLI reads ``Watch`` back into the same events with
:func:`event_from_proto`) and lets :mod:`~stocksync.grpc_edge` turn
domain errors into statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from stocksync.errors import InvalidArgument, StocksyncError
from stocksync.grpc_edge import abort, guarded
from stocksync.hub.access import may_watch
from stocksync.hub.grpc_gate import current_caller
from stocksync.hub.rooms import (
    DisplayMode,
    DisplayPolicy,
    DisplayState,
    Position,
    RoomEvent,
    RoomHub,
    RoomInfo,
    SkuDisplay,
    Snapshot,
    SnapshotReason,
    Subscription,
    Update,
    once_per_message,
)
from stocksync.v1 import rooms_pb2, rooms_pb2_grpc

__all__ = [
    "SERVICE_NAME",
    "RoomServicer",
    "WatchServicer",
    "event_from_proto",
    "event_to_proto",
    "policy_from_proto",
    "room_from_proto",
    "room_to_proto",
]

ENCODED_CACHE = 256
"""Room messages whose protobuf the servicer keeps, to send to every watcher
that takes one as published (a few per room is enough; they are taken
within moments of each other)."""

SERVICE_NAME = rooms_pb2.DESCRIPTOR.services_by_name["LiveRoomService"].full_name
"""For health and reflection."""

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

_MODES = {
    DisplayMode.EXACT: rooms_pb2.ROOM_DISPLAY_MODE_EXACT,
    DisplayMode.BUCKETS: rooms_pb2.ROOM_DISPLAY_MODE_BUCKETS,
}
_STATES = {
    DisplayState.IN_STOCK: rooms_pb2.ROOM_DISPLAY_STATE_IN_STOCK,
    DisplayState.LOW: rooms_pb2.ROOM_DISPLAY_STATE_LOW,
    DisplayState.SOLD_OUT: rooms_pb2.ROOM_DISPLAY_STATE_SOLD_OUT,
}
_REASONS = {
    SnapshotReason.INITIAL: rooms_pb2.ROOM_SNAPSHOT_REASON_INITIAL,
    SnapshotReason.HISTORY_GONE: rooms_pb2.ROOM_SNAPSHOT_REASON_HISTORY_GONE,
    SnapshotReason.NEW_EPOCH: rooms_pb2.ROOM_SNAPSHOT_REASON_NEW_EPOCH,
    SnapshotReason.FEATURED_CHANGED: rooms_pb2.ROOM_SNAPSHOT_REASON_FEATURED_CHANGED,
    SnapshotReason.DISPLAY_CHANGED: rooms_pb2.ROOM_SNAPSHOT_REASON_DISPLAY_CHANGED,
}


K = TypeVar("K")
V = TypeVar("V")


def _inverse(table: dict[K, V]) -> dict[V, K]:
    return {number: value for value, number in table.items()}


_MODE_OF, _STATE_OF, _REASON_OF = _inverse(_MODES), _inverse(_STATES), _inverse(_REASONS)


def policy_to_proto(policy: DisplayPolicy) -> rooms_pb2.RoomDisplayPolicy:
    """A display policy on the wire."""
    return rooms_pb2.RoomDisplayPolicy(mode=_MODES[policy.mode], low_threshold=policy.low_threshold)


def policy_from_proto(request: rooms_pb2.SetDisplayPolicyRequest) -> DisplayPolicy:
    """The policy a SetDisplayPolicy asks for.

    Raises:
        InvalidArgument: naming ``mode`` or ``low_threshold``.
    """
    mode = _MODE_OF.get(request.mode)
    if mode is None:
        raise InvalidArgument("mode must be ROOM_DISPLAY_MODE_EXACT or ROOM_DISPLAY_MODE_BUCKETS")
    if request.HasField("low_threshold"):
        return DisplayPolicy(mode, request.low_threshold)
    return DisplayPolicy(mode)


def room_to_proto(info: RoomInfo) -> rooms_pb2.Room:
    """A room's description on the wire."""
    return rooms_pb2.Room(
        room_id=info.room,
        featured=info.featured,
        policy=policy_to_proto(info.policy),
        position=str(info.position),
        watchers=info.watchers,
    )


def room_from_proto(room: rooms_pb2.Room) -> RoomInfo:
    """A room's description read back from the wire (for clients)."""
    return RoomInfo(
        room.room_id,
        tuple(room.featured),
        DisplayPolicy(_MODE_OF[room.policy.mode], room.policy.low_threshold),
        Position.parse(room.position, "position"),
        room.watchers,
    )


def _sku_to_proto(s: SkuDisplay) -> rooms_pb2.RoomSku:
    return rooms_pb2.RoomSku(
        sku=s.sku,
        state=_STATES[s.state],
        sellable=s.sellable,
        label=s.label,
        stale_warehouses=s.stale_warehouses,
    )


def event_to_proto(event: RoomEvent) -> rooms_pb2.WatchResponse:
    """One room message as a Watch response."""
    skus = [_sku_to_proto(s) for s in event.skus]
    if isinstance(event, Update):
        return rooms_pb2.WatchResponse(
            position=str(event.position), update=rooms_pb2.RoomUpdate(skus=skus)
        )
    return rooms_pb2.WatchResponse(
        position=str(event.position),
        snapshot=rooms_pb2.RoomSnapshot(
            reason=_REASONS[event.reason], policy=policy_to_proto(event.policy), skus=skus
        ),
    )


def event_from_proto(message: rooms_pb2.WatchResponse) -> RoomEvent:
    """A Watch response read back as the room message it carries (for clients)."""
    position = Position.parse(message.position, "position")
    which = message.WhichOneof("message")
    body = message.snapshot if which == "snapshot" else message.update
    skus = tuple(
        SkuDisplay(
            s.sku,
            _STATE_OF[s.state],
            s.sellable if s.HasField("sellable") else None,
            s.label,
            tuple(s.stale_warehouses),
        )
        for s in body.skus
    )
    if which == "update":
        return Update(position, skus, origin=0.0)
    policy = message.snapshot.policy
    return Snapshot(
        position,
        _REASON_OF[message.snapshot.reason],
        DisplayPolicy(_MODE_OF[policy.mode], policy.low_threshold),
        skus,
    )


class WatchServicer(rooms_pb2_grpc.LiveRoomServiceServicer):
    """``Watch`` over any rooms: the hub's (:class:`RoomServicer`) or a room
    edge's (:class:`stocksync.hub.edge.EdgeServicer`); subclasses say how a
    subscription opens."""

    def __init__(self) -> None:
        # A message no watcher had merged is one object for all of them:
        # build its protobuf once, not once per watcher.
        self._encode = once_per_message(event_to_proto, ENCODED_CACHE)

    async def _subscribe(self, room_id: str, start: Position | None) -> Subscription:
        """Open a subscription (see :meth:`RoomHub.subscribe`).

        Raises:
            StocksyncError: the room cannot be watched; the call ends with it.
        """
        raise NotImplementedError

    async def Watch(
        self, request: rooms_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[rooms_pb2.WatchResponse]:
        """A snapshot or the missed messages, then every change, until the
        room ends or the watcher goes away."""
        try:
            start = Position.parse(request.from_position) if request.from_position else None
            watcher = await self._subscribe(request.room_id, start)
        except StocksyncError as e:
            await abort(context, e)
        try:
            # Headers now, not with the first message: a watcher resuming
            # with nothing missed may get no message for a long while, and
            # this tells it (an edge, say) that the hub has taken it on.
            await context.send_initial_metadata(())
            # Taken one at a time, as gRPC's flow control lets the last one
            # out: while the watcher does not read, its changes merge.
            async for event in watcher:
                yield self._encode(event)
        finally:
            # Also on cancellation, when the watcher disconnects.
            watcher.close()


class RoomServicer(WatchServicer):
    """Sets up rooms and streams what they show.

    Args:
        rooms: the hub's rooms.
        on_end: called once a room has ended (the hub returns its unsold
            quotas to sale).
    """

    def __init__(
        self, rooms: RoomHub, on_end: Callable[[str], Awaitable[None]] | None = None
    ) -> None:
        super().__init__()
        self.rooms = rooms
        self.on_end = on_end

    async def _subscribe(self, room_id: str, start: Position | None) -> Subscription:
        return self.rooms.subscribe(room_id, start)

    @guarded
    async def SetFeatured(
        self, request: rooms_pb2.SetFeaturedRequest, context: Context
    ) -> rooms_pb2.SetFeaturedResponse:
        """Replace the room's featured SKUs (starting the room)."""
        info = self.rooms.set_featured(request.room_id, list(request.skus))
        await self.rooms.store.flushed()  # answered once durable
        return rooms_pb2.SetFeaturedResponse(room=room_to_proto(info))

    @guarded
    async def SetDisplayPolicy(
        self, request: rooms_pb2.SetDisplayPolicyRequest, context: Context
    ) -> rooms_pb2.SetDisplayPolicyResponse:
        """Set how the room shows stock."""
        info = self.rooms.set_policy(request.room_id, policy_from_proto(request))
        await self.rooms.store.flushed()
        return rooms_pb2.SetDisplayPolicyResponse(room=room_to_proto(info))

    @guarded
    async def GetRoom(
        self, request: rooms_pb2.GetRoomRequest, context: Context
    ) -> rooms_pb2.GetRoomResponse:
        """Describe one room."""
        return rooms_pb2.GetRoomResponse(room=room_to_proto(self.rooms.room(request.room_id)))

    @guarded
    async def ListRooms(
        self, request: rooms_pb2.ListRoomsRequest, context: Context
    ) -> rooms_pb2.ListRoomsResponse:
        """Every live room the caller may see."""
        caller = current_caller()
        return rooms_pb2.ListRoomsResponse(
            rooms=[
                room_to_proto(r)
                for r in self.rooms.rooms()
                if caller is None or may_watch(caller, r.room)
            ]
        )

    @guarded
    async def EndRoom(
        self, request: rooms_pb2.EndRoomRequest, context: Context
    ) -> rooms_pb2.EndRoomResponse:
        """End the room; its watchers' streams end."""
        self.rooms.end_room(request.room_id)
        await self.rooms.store.flushed()
        if self.on_end is not None:
            await self.on_end(request.room_id)
        return rooms_pb2.EndRoomResponse()
