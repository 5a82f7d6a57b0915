from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_RECEIVE: _ClassVar[EventKind]
    EVENT_KIND_SHIP: _ClassVar[EventKind]
    EVENT_KIND_ADJUST: _ClassVar[EventKind]
    EVENT_KIND_COUNT: _ClassVar[EventKind]
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_RECEIVE: EventKind
EVENT_KIND_SHIP: EventKind
EVENT_KIND_ADJUST: EventKind
EVENT_KIND_COUNT: EventKind

class Event(_message.Message):
    __slots__ = ("seq", "event_id", "sku", "kind", "quantity", "delta", "reason", "reservation_id", "as_of_seq", "recorded_at_unix_ms", "folded_from_seq")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_SEQ_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FOLDED_FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    event_id: str
    sku: str
    kind: EventKind
    quantity: int
    delta: int
    reason: str
    reservation_id: str
    as_of_seq: int
    recorded_at_unix_ms: int
    folded_from_seq: int
    def __init__(self, seq: _Optional[int] = ..., event_id: _Optional[str] = ..., sku: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., quantity: _Optional[int] = ..., delta: _Optional[int] = ..., reason: _Optional[str] = ..., reservation_id: _Optional[str] = ..., as_of_seq: _Optional[int] = ..., recorded_at_unix_ms: _Optional[int] = ..., folded_from_seq: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("warehouse", "epoch", "high_seq", "protocol_version", "acked_seq")
    WAREHOUSE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HIGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    warehouse: str
    epoch: str
    high_seq: int
    protocol_version: int
    acked_seq: int
    def __init__(self, warehouse: _Optional[str] = ..., epoch: _Optional[str] = ..., high_seq: _Optional[int] = ..., protocol_version: _Optional[int] = ..., acked_seq: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("first_seq", "events")
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, first_seq: _Optional[int] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class SkuStock(_message.Message):
    __slots__ = ("sku", "on_hand")
    SKU_FIELD_NUMBER: _ClassVar[int]
    ON_HAND_FIELD_NUMBER: _ClassVar[int]
    sku: str
    on_hand: int
    def __init__(self, sku: _Optional[str] = ..., on_hand: _Optional[int] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("as_of_seq", "stock", "last")
    AS_OF_SEQ_FIELD_NUMBER: _ClassVar[int]
    STOCK_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    as_of_seq: int
    stock: _containers.RepeatedCompositeFieldContainer[SkuStock]
    last: bool
    def __init__(self, as_of_seq: _Optional[int] = ..., stock: _Optional[_Iterable[_Union[SkuStock, _Mapping]]] = ..., last: _Optional[bool] = ...) -> None: ...

class Backlog(_message.Message):
    __slots__ = ("high_seq", "pending_events", "oldest_pending_age_ms")
    HIGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    PENDING_EVENTS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    high_seq: int
    pending_events: int
    oldest_pending_age_ms: int
    def __init__(self, high_seq: _Optional[int] = ..., pending_events: _Optional[int] = ..., oldest_pending_age_ms: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("sent_at_unix_ms", "backlog")
    SENT_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    sent_at_unix_ms: int
    backlog: Backlog
    def __init__(self, sent_at_unix_ms: _Optional[int] = ..., backlog: _Optional[_Union[Backlog, _Mapping]] = ...) -> None: ...

class CommandAck(_message.Message):
    __slots__ = ("command_id",)
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    def __init__(self, command_id: _Optional[str] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("hello", "batch", "ping", "snapshot", "command_ack")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ACK_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    batch: Batch
    ping: Ping
    snapshot: SnapshotChunk
    command_ack: CommandAck
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., snapshot: _Optional[_Union[SnapshotChunk, _Mapping]] = ..., command_ack: _Optional[_Union[CommandAck, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("watermark", "snapshot_required", "protocol_version", "max_batch_events")
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_EVENTS_FIELD_NUMBER: _ClassVar[int]
    watermark: int
    snapshot_required: bool
    protocol_version: int
    max_batch_events: int
    def __init__(self, watermark: _Optional[int] = ..., snapshot_required: _Optional[bool] = ..., protocol_version: _Optional[int] = ..., max_batch_events: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("up_to_seq",)
    UP_TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    up_to_seq: int
    def __init__(self, up_to_seq: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class PickCommand(_message.Message):
    __slots__ = ("reservation_id", "sku", "quantity", "command_id")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    sku: str
    quantity: int
    command_id: str
    def __init__(self, reservation_id: _Optional[str] = ..., sku: _Optional[str] = ..., quantity: _Optional[int] = ..., command_id: _Optional[str] = ...) -> None: ...

class PickCancel(_message.Message):
    __slots__ = ("command_id", "cancels_command_id", "reservation_id", "sku")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    CANCELS_COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    cancels_command_id: str
    reservation_id: str
    sku: str
    def __init__(self, command_id: _Optional[str] = ..., cancels_command_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., sku: _Optional[str] = ...) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("welcome", "ack", "ping", "snapshot_request", "pick", "cancel_pick", "goodbye")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    PICK_FIELD_NUMBER: _ClassVar[int]
    CANCEL_PICK_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    ack: Ack
    ping: Ping
    snapshot_request: SnapshotRequest
    pick: PickCommand
    cancel_pick: PickCancel
    goodbye: Goodbye
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., snapshot_request: _Optional[_Union[SnapshotRequest, _Mapping]] = ..., pick: _Optional[_Union[PickCommand, _Mapping]] = ..., cancel_pick: _Optional[_Union[PickCancel, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("code", "detail", "resume_from_seq")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    code: str
    detail: str
    resume_from_seq: int
    def __init__(self, code: _Optional[str] = ..., detail: _Optional[str] = ..., resume_from_seq: _Optional[int] = ...) -> None: ...
