from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RoomDisplayMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROOM_DISPLAY_MODE_UNSPECIFIED: _ClassVar[RoomDisplayMode]
    ROOM_DISPLAY_MODE_EXACT: _ClassVar[RoomDisplayMode]
    ROOM_DISPLAY_MODE_BUCKETS: _ClassVar[RoomDisplayMode]

class RoomDisplayState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROOM_DISPLAY_STATE_UNSPECIFIED: _ClassVar[RoomDisplayState]
    ROOM_DISPLAY_STATE_IN_STOCK: _ClassVar[RoomDisplayState]
    ROOM_DISPLAY_STATE_LOW: _ClassVar[RoomDisplayState]
    ROOM_DISPLAY_STATE_SOLD_OUT: _ClassVar[RoomDisplayState]

class RoomSnapshotReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROOM_SNAPSHOT_REASON_UNSPECIFIED: _ClassVar[RoomSnapshotReason]
    ROOM_SNAPSHOT_REASON_INITIAL: _ClassVar[RoomSnapshotReason]
    ROOM_SNAPSHOT_REASON_HISTORY_GONE: _ClassVar[RoomSnapshotReason]
    ROOM_SNAPSHOT_REASON_NEW_EPOCH: _ClassVar[RoomSnapshotReason]
    ROOM_SNAPSHOT_REASON_FEATURED_CHANGED: _ClassVar[RoomSnapshotReason]
    ROOM_SNAPSHOT_REASON_DISPLAY_CHANGED: _ClassVar[RoomSnapshotReason]
ROOM_DISPLAY_MODE_UNSPECIFIED: RoomDisplayMode
ROOM_DISPLAY_MODE_EXACT: RoomDisplayMode
ROOM_DISPLAY_MODE_BUCKETS: RoomDisplayMode
ROOM_DISPLAY_STATE_UNSPECIFIED: RoomDisplayState
ROOM_DISPLAY_STATE_IN_STOCK: RoomDisplayState
ROOM_DISPLAY_STATE_LOW: RoomDisplayState
ROOM_DISPLAY_STATE_SOLD_OUT: RoomDisplayState
ROOM_SNAPSHOT_REASON_UNSPECIFIED: RoomSnapshotReason
ROOM_SNAPSHOT_REASON_INITIAL: RoomSnapshotReason
ROOM_SNAPSHOT_REASON_HISTORY_GONE: RoomSnapshotReason
ROOM_SNAPSHOT_REASON_NEW_EPOCH: RoomSnapshotReason
ROOM_SNAPSHOT_REASON_FEATURED_CHANGED: RoomSnapshotReason
ROOM_SNAPSHOT_REASON_DISPLAY_CHANGED: RoomSnapshotReason

class RoomDisplayPolicy(_message.Message):
    __slots__ = ("mode", "low_threshold")
    MODE_FIELD_NUMBER: _ClassVar[int]
    LOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    mode: RoomDisplayMode
    low_threshold: int
    def __init__(self, mode: _Optional[_Union[RoomDisplayMode, str]] = ..., low_threshold: _Optional[int] = ...) -> None: ...

class RoomSku(_message.Message):
    __slots__ = ("sku", "state", "sellable", "label", "stale_warehouses")
    SKU_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SELLABLE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    STALE_WAREHOUSES_FIELD_NUMBER: _ClassVar[int]
    sku: str
    state: RoomDisplayState
    sellable: int
    label: str
    stale_warehouses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sku: _Optional[str] = ..., state: _Optional[_Union[RoomDisplayState, str]] = ..., sellable: _Optional[int] = ..., label: _Optional[str] = ..., stale_warehouses: _Optional[_Iterable[str]] = ...) -> None: ...

class Room(_message.Message):
    __slots__ = ("room_id", "featured", "policy", "position", "watchers")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURED_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    WATCHERS_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    featured: _containers.RepeatedScalarFieldContainer[str]
    policy: RoomDisplayPolicy
    position: str
    watchers: int
    def __init__(self, room_id: _Optional[str] = ..., featured: _Optional[_Iterable[str]] = ..., policy: _Optional[_Union[RoomDisplayPolicy, _Mapping]] = ..., position: _Optional[str] = ..., watchers: _Optional[int] = ...) -> None: ...

class SetFeaturedRequest(_message.Message):
    __slots__ = ("room_id", "skus")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    SKUS_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    skus: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, room_id: _Optional[str] = ..., skus: _Optional[_Iterable[str]] = ...) -> None: ...

class SetFeaturedResponse(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: Room
    def __init__(self, room: _Optional[_Union[Room, _Mapping]] = ...) -> None: ...

class SetDisplayPolicyRequest(_message.Message):
    __slots__ = ("room_id", "mode", "low_threshold")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    mode: RoomDisplayMode
    low_threshold: int
    def __init__(self, room_id: _Optional[str] = ..., mode: _Optional[_Union[RoomDisplayMode, str]] = ..., low_threshold: _Optional[int] = ...) -> None: ...

class SetDisplayPolicyResponse(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: Room
    def __init__(self, room: _Optional[_Union[Room, _Mapping]] = ...) -> None: ...

class GetRoomRequest(_message.Message):
    __slots__ = ("room_id",)
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    def __init__(self, room_id: _Optional[str] = ...) -> None: ...

class GetRoomResponse(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: Room
    def __init__(self, room: _Optional[_Union[Room, _Mapping]] = ...) -> None: ...

class ListRoomsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRoomsResponse(_message.Message):
    __slots__ = ("rooms",)
    ROOMS_FIELD_NUMBER: _ClassVar[int]
    rooms: _containers.RepeatedCompositeFieldContainer[Room]
    def __init__(self, rooms: _Optional[_Iterable[_Union[Room, _Mapping]]] = ...) -> None: ...

class EndRoomRequest(_message.Message):
    __slots__ = ("room_id",)
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    def __init__(self, room_id: _Optional[str] = ...) -> None: ...

class EndRoomResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("room_id", "from_position")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_POSITION_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    from_position: str
    def __init__(self, room_id: _Optional[str] = ..., from_position: _Optional[str] = ...) -> None: ...

class RoomSnapshot(_message.Message):
    __slots__ = ("reason", "policy", "skus")
    REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SKUS_FIELD_NUMBER: _ClassVar[int]
    reason: RoomSnapshotReason
    policy: RoomDisplayPolicy
    skus: _containers.RepeatedCompositeFieldContainer[RoomSku]
    def __init__(self, reason: _Optional[_Union[RoomSnapshotReason, str]] = ..., policy: _Optional[_Union[RoomDisplayPolicy, _Mapping]] = ..., skus: _Optional[_Iterable[_Union[RoomSku, _Mapping]]] = ...) -> None: ...

class RoomUpdate(_message.Message):
    __slots__ = ("skus",)
    SKUS_FIELD_NUMBER: _ClassVar[int]
    skus: _containers.RepeatedCompositeFieldContainer[RoomSku]
    def __init__(self, skus: _Optional[_Iterable[_Union[RoomSku, _Mapping]]] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("position", "snapshot", "update")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    position: str
    snapshot: RoomSnapshot
    update: RoomUpdate
    def __init__(self, position: _Optional[str] = ..., snapshot: _Optional[_Union[RoomSnapshot, _Mapping]] = ..., update: _Optional[_Union[RoomUpdate, _Mapping]] = ...) -> None: ...
