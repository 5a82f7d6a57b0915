from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListDeliveriesRequest(_message.Message):
    __slots__ = ("subscription", "pending_only", "limit")
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PENDING_ONLY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    subscription: str
    pending_only: bool
    limit: int
    def __init__(self, subscription: _Optional[str] = ..., pending_only: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class WebhookDelivery(_message.Message):
    __slots__ = ("event_id", "type", "reservation_id", "subscription", "state", "attempts", "last_error", "created_unix_ms", "last_attempt_unix_ms", "delivered_unix_ms")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_ATTEMPT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    reservation_id: str
    subscription: str
    state: str
    attempts: int
    last_error: str
    created_unix_ms: int
    last_attempt_unix_ms: int
    delivered_unix_ms: int
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., reservation_id: _Optional[str] = ..., subscription: _Optional[str] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., last_attempt_unix_ms: _Optional[int] = ..., delivered_unix_ms: _Optional[int] = ...) -> None: ...

class WebhookSubscriptionStatus(_message.Message):
    __slots__ = ("name", "url", "events", "failing", "delivered_total", "failed_attempts_total")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FAILING_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FAILED_ATTEMPTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    events: _containers.RepeatedScalarFieldContainer[str]
    failing: bool
    delivered_total: int
    failed_attempts_total: int
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., events: _Optional[_Iterable[str]] = ..., failing: _Optional[bool] = ..., delivered_total: _Optional[int] = ..., failed_attempts_total: _Optional[int] = ...) -> None: ...

class ListDeliveriesResponse(_message.Message):
    __slots__ = ("deliveries", "subscriptions")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[WebhookDelivery]
    subscriptions: _containers.RepeatedCompositeFieldContainer[WebhookSubscriptionStatus]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[WebhookDelivery, _Mapping]]] = ..., subscriptions: _Optional[_Iterable[_Union[WebhookSubscriptionStatus, _Mapping]]] = ...) -> None: ...

class SendTestRequest(_message.Message):
    __slots__ = ("subscription",)
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    subscription: str
    def __init__(self, subscription: _Optional[str] = ...) -> None: ...

class SendTestResponse(_message.Message):
    __slots__ = ("event_id", "subscriptions")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    subscriptions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, event_id: _Optional[str] = ..., subscriptions: _Optional[_Iterable[str]] = ...) -> None: ...

class ReplayRequest(_message.Message):
    __slots__ = ("from_event_id", "subscription")
    FROM_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    from_event_id: str
    subscription: str
    def __init__(self, from_event_id: _Optional[str] = ..., subscription: _Optional[str] = ...) -> None: ...

class ReplayResponse(_message.Message):
    __slots__ = ("deliveries",)
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    deliveries: int
    def __init__(self, deliveries: _Optional[int] = ...) -> None: ...
