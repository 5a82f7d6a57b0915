from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Freshness(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRESHNESS_UNSPECIFIED: _ClassVar[Freshness]
    FRESHNESS_FRESH: _ClassVar[Freshness]
    FRESHNESS_STALE: _ClassVar[Freshness]
    FRESHNESS_OFFLINE: _ClassVar[Freshness]

class ReservationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVATION_STATUS_UNSPECIFIED: _ClassVar[ReservationStatus]
    RESERVATION_STATUS_HELD: _ClassVar[ReservationStatus]
    RESERVATION_STATUS_COMMITTED: _ClassVar[ReservationStatus]
    RESERVATION_STATUS_SETTLED: _ClassVar[ReservationStatus]
    RESERVATION_STATUS_RELEASED: _ClassVar[ReservationStatus]
    RESERVATION_STATUS_AT_RISK: _ClassVar[ReservationStatus]
FRESHNESS_UNSPECIFIED: Freshness
FRESHNESS_FRESH: Freshness
FRESHNESS_STALE: Freshness
FRESHNESS_OFFLINE: Freshness
RESERVATION_STATUS_UNSPECIFIED: ReservationStatus
RESERVATION_STATUS_HELD: ReservationStatus
RESERVATION_STATUS_COMMITTED: ReservationStatus
RESERVATION_STATUS_SETTLED: ReservationStatus
RESERVATION_STATUS_RELEASED: ReservationStatus
RESERVATION_STATUS_AT_RISK: ReservationStatus

class GetStockRequest(_message.Message):
    __slots__ = ("skus", "room_id")
    SKUS_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    skus: _containers.RepeatedScalarFieldContainer[str]
    room_id: str
    def __init__(self, skus: _Optional[_Iterable[str]] = ..., room_id: _Optional[str] = ...) -> None: ...

class WarehouseStock(_message.Message):
    __slots__ = ("warehouse", "on_hand", "committed", "available", "stale", "freshness", "last_seen_unix_ms")
    WAREHOUSE_FIELD_NUMBER: _ClassVar[int]
    ON_HAND_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    warehouse: str
    on_hand: int
    committed: int
    available: int
    stale: bool
    freshness: Freshness
    last_seen_unix_ms: int
    def __init__(self, warehouse: _Optional[str] = ..., on_hand: _Optional[int] = ..., committed: _Optional[int] = ..., available: _Optional[int] = ..., stale: _Optional[bool] = ..., freshness: _Optional[_Union[Freshness, str]] = ..., last_seen_unix_ms: _Optional[int] = ...) -> None: ...

class SkuSummary(_message.Message):
    __slots__ = ("sku", "on_hand", "warehouses", "sellable", "held", "committed", "safety_stock", "quota_free")
    SKU_FIELD_NUMBER: _ClassVar[int]
    ON_HAND_FIELD_NUMBER: _ClassVar[int]
    WAREHOUSES_FIELD_NUMBER: _ClassVar[int]
    SELLABLE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    SAFETY_STOCK_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FREE_FIELD_NUMBER: _ClassVar[int]
    sku: str
    on_hand: int
    warehouses: _containers.RepeatedCompositeFieldContainer[WarehouseStock]
    sellable: int
    held: int
    committed: int
    safety_stock: int
    quota_free: int
    def __init__(self, sku: _Optional[str] = ..., on_hand: _Optional[int] = ..., warehouses: _Optional[_Iterable[_Union[WarehouseStock, _Mapping]]] = ..., sellable: _Optional[int] = ..., held: _Optional[int] = ..., committed: _Optional[int] = ..., safety_stock: _Optional[int] = ..., quota_free: _Optional[int] = ...) -> None: ...

class GetStockResponse(_message.Message):
    __slots__ = ("skus",)
    SKUS_FIELD_NUMBER: _ClassVar[int]
    skus: _containers.RepeatedCompositeFieldContainer[SkuSummary]
    def __init__(self, skus: _Optional[_Iterable[_Union[SkuSummary, _Mapping]]] = ...) -> None: ...

class ListWarehousesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WarehouseStatus(_message.Message):
    __slots__ = ("warehouse", "connected", "epoch", "watermark", "last_seen_unix_ms", "lag_events", "lag_seconds", "agent_high_seq", "freshness", "alerts")
    WAREHOUSE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LAG_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AGENT_HIGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    warehouse: str
    connected: bool
    epoch: str
    watermark: int
    last_seen_unix_ms: int
    lag_events: int
    lag_seconds: float
    agent_high_seq: int
    freshness: Freshness
    alerts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, warehouse: _Optional[str] = ..., connected: _Optional[bool] = ..., epoch: _Optional[str] = ..., watermark: _Optional[int] = ..., last_seen_unix_ms: _Optional[int] = ..., lag_events: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., agent_high_seq: _Optional[int] = ..., freshness: _Optional[_Union[Freshness, str]] = ..., alerts: _Optional[_Iterable[str]] = ...) -> None: ...

class ListWarehousesResponse(_message.Message):
    __slots__ = ("warehouses",)
    WAREHOUSES_FIELD_NUMBER: _ClassVar[int]
    warehouses: _containers.RepeatedCompositeFieldContainer[WarehouseStatus]
    def __init__(self, warehouses: _Optional[_Iterable[_Union[WarehouseStatus, _Mapping]]] = ...) -> None: ...

class ReserveLine(_message.Message):
    __slots__ = ("sku", "qty")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    sku: str
    qty: int
    def __init__(self, sku: _Optional[str] = ..., qty: _Optional[int] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("lines", "room_id", "idempotency_key", "ttl_seconds")
    LINES_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[ReserveLine]
    room_id: str
    idempotency_key: str
    ttl_seconds: int
    def __init__(self, lines: _Optional[_Iterable[_Union[ReserveLine, _Mapping]]] = ..., room_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("warehouse", "qty", "shipped")
    WAREHOUSE_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    SHIPPED_FIELD_NUMBER: _ClassVar[int]
    warehouse: str
    qty: int
    shipped: int
    def __init__(self, warehouse: _Optional[str] = ..., qty: _Optional[int] = ..., shipped: _Optional[int] = ...) -> None: ...

class ReservationLine(_message.Message):
    __slots__ = ("sku", "qty", "from_quota", "sellable_at_grant", "allocations", "at_risk")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    FROM_QUOTA_FIELD_NUMBER: _ClassVar[int]
    SELLABLE_AT_GRANT_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    AT_RISK_FIELD_NUMBER: _ClassVar[int]
    sku: str
    qty: int
    from_quota: int
    sellable_at_grant: int
    allocations: _containers.RepeatedCompositeFieldContainer[Allocation]
    at_risk: int
    def __init__(self, sku: _Optional[str] = ..., qty: _Optional[int] = ..., from_quota: _Optional[int] = ..., sellable_at_grant: _Optional[int] = ..., allocations: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ..., at_risk: _Optional[int] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("id", "status", "room_id", "idempotency_key", "lines", "created_unix_ms", "expires_in_ms", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: ReservationStatus
    room_id: str
    idempotency_key: str
    lines: _containers.RepeatedCompositeFieldContainer[ReservationLine]
    created_unix_ms: int
    expires_in_ms: int
    reason: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[ReservationStatus, str]] = ..., room_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[ReservationLine, _Mapping]]] = ..., created_unix_ms: _Optional[int] = ..., expires_in_ms: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...

class GetReservationRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class GetReservationResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...

class SetQuotaRequest(_message.Message):
    __slots__ = ("room_id", "sku", "qty")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    sku: str
    qty: int
    def __init__(self, room_id: _Optional[str] = ..., sku: _Optional[str] = ..., qty: _Optional[int] = ...) -> None: ...

class SetQuotaResponse(_message.Message):
    __slots__ = ("room_sellable",)
    ROOM_SELLABLE_FIELD_NUMBER: _ClassVar[int]
    room_sellable: int
    def __init__(self, room_sellable: _Optional[int] = ...) -> None: ...

class ReleaseQuotaRequest(_message.Message):
    __slots__ = ("room_id", "sku")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    sku: str
    def __init__(self, room_id: _Optional[str] = ..., sku: _Optional[str] = ...) -> None: ...

class ReleaseQuotaResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetSafetyStockRequest(_message.Message):
    __slots__ = ("sku", "units")
    SKU_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    sku: str
    units: int
    def __init__(self, sku: _Optional[str] = ..., units: _Optional[int] = ...) -> None: ...

class SetSafetyStockResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListConflictsRequest(_message.Message):
    __slots__ = ("open_only", "limit")
    OPEN_ONLY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    open_only: bool
    limit: int
    def __init__(self, open_only: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class Conflict(_message.Message):
    __slots__ = ("id", "kind", "sku", "warehouse", "units", "reservation_id", "cause", "at_unix_ms", "resolved_unix_ms", "open")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    WAREHOUSE_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    id: int
    kind: str
    sku: str
    warehouse: str
    units: int
    reservation_id: str
    cause: str
    at_unix_ms: int
    resolved_unix_ms: int
    open: bool
    def __init__(self, id: _Optional[int] = ..., kind: _Optional[str] = ..., sku: _Optional[str] = ..., warehouse: _Optional[str] = ..., units: _Optional[int] = ..., reservation_id: _Optional[str] = ..., cause: _Optional[str] = ..., at_unix_ms: _Optional[int] = ..., resolved_unix_ms: _Optional[int] = ..., open: _Optional[bool] = ...) -> None: ...

class ListConflictsResponse(_message.Message):
    __slots__ = ("conflicts",)
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    conflicts: _containers.RepeatedCompositeFieldContainer[Conflict]
    def __init__(self, conflicts: _Optional[_Iterable[_Union[Conflict, _Mapping]]] = ...) -> None: ...

class ResolveConflictRequest(_message.Message):
    __slots__ = ("conflict_id",)
    CONFLICT_ID_FIELD_NUMBER: _ClassVar[int]
    conflict_id: int
    def __init__(self, conflict_id: _Optional[int] = ...) -> None: ...

class ResolveConflictResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
