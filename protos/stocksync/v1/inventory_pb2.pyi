from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStockRequest(_message.Message):
    __slots__ = ("skus",)
    SKUS_FIELD_NUMBER: _ClassVar[int]
    skus: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, skus: _Optional[_Iterable[str]] = ...) -> None: ...

class WarehouseStock(_message.Message):
    __slots__ = ("warehouse", "on_hand")
    WAREHOUSE_FIELD_NUMBER: _ClassVar[int]
    ON_HAND_FIELD_NUMBER: _ClassVar[int]
    warehouse: str
    on_hand: int
    def __init__(self, warehouse: _Optional[str] = ..., on_hand: _Optional[int] = ...) -> None: ...

class SkuSummary(_message.Message):
    __slots__ = ("sku", "on_hand", "warehouses")
    SKU_FIELD_NUMBER: _ClassVar[int]
    ON_HAND_FIELD_NUMBER: _ClassVar[int]
    WAREHOUSES_FIELD_NUMBER: _ClassVar[int]
    sku: str
    on_hand: int
    warehouses: _containers.RepeatedCompositeFieldContainer[WarehouseStock]
    def __init__(self, sku: _Optional[str] = ..., on_hand: _Optional[int] = ..., warehouses: _Optional[_Iterable[_Union[WarehouseStock, _Mapping]]] = ...) -> None: ...

class GetStockResponse(_message.Message):
    __slots__ = ("skus",)
    SKUS_FIELD_NUMBER: _ClassVar[int]
    skus: _containers.RepeatedCompositeFieldContainer[SkuSummary]
    def __init__(self, skus: _Optional[_Iterable[_Union[SkuSummary, _Mapping]]] = ...) -> None: ...

class ListWarehousesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WarehouseStatus(_message.Message):
    __slots__ = ("warehouse", "connected", "epoch", "watermark", "last_seen_unix_ms", "lag_events", "lag_seconds", "agent_high_seq")
    WAREHOUSE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LAG_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AGENT_HIGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    warehouse: str
    connected: bool
    epoch: str
    watermark: int
    last_seen_unix_ms: int
    lag_events: int
    lag_seconds: float
    agent_high_seq: int
    def __init__(self, warehouse: _Optional[str] = ..., connected: _Optional[bool] = ..., epoch: _Optional[str] = ..., watermark: _Optional[int] = ..., last_seen_unix_ms: _Optional[int] = ..., lag_events: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., agent_high_seq: _Optional[int] = ...) -> None: ...

class ListWarehousesResponse(_message.Message):
    __slots__ = ("warehouses",)
    WAREHOUSES_FIELD_NUMBER: _ClassVar[int]
    warehouses: _containers.RepeatedCompositeFieldContainer[WarehouseStatus]
    def __init__(self, warehouses: _Optional[_Iterable[_Union[WarehouseStatus, _Mapping]]] = ...) -> None: ...
