from stocksync.v1 import sync_pb2 as _sync_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NewEvent(_message.Message):
    __slots__ = ("sku", "kind", "quantity", "reason", "reservation_id", "as_of_seq")
    SKU_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_SEQ_FIELD_NUMBER: _ClassVar[int]
    sku: str
    kind: _sync_pb2.EventKind
    quantity: int
    reason: str
    reservation_id: str
    as_of_seq: int
    def __init__(self, sku: _Optional[str] = ..., kind: _Optional[_Union[_sync_pb2.EventKind, str]] = ..., quantity: _Optional[int] = ..., reason: _Optional[str] = ..., reservation_id: _Optional[str] = ..., as_of_seq: _Optional[int] = ...) -> None: ...

class RecordRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[NewEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[NewEvent, _Mapping]]] = ...) -> None: ...

class RecordResponse(_message.Message):
    __slots__ = ("first_seq", "last_seq")
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    last_seq: int
    def __init__(self, first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...
