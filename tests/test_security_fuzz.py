"""Hostile messages against a running hub, every service (DESIGN §9, §11 inv. 7).

Hypothesis builds requests of every method of ``InventoryService``,
``LiveRoomService`` and ``SyncService`` from their descriptors, with field
values meant to hurt: empty and oversized strings, control characters,
int64 and uint64 extremes, unknown enum numbers, long and empty repeated
fields; and random bytes sent as a message. Each goes to a real hub over
mutual TLS, by an admin (who may call everything) and by a room-watch token
(who may call almost nothing).

For every one: the hub answers with a status (never UNKNOWN or INTERNAL,
never a dropped connection), it is still serving afterwards, and a refused
call leaves every table byte-for-byte as it was. What a caller may change
(holding stock, featuring a room) it may change when its request happens to
be valid; on_hand, which only a warehouse's own events move, never changes
through any of it, and ``stocksync-hub check`` finds the store sound.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import read_only
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from securehub import (
    HubThread,
    Pki,
    cert_creds,
    dump,
    hello,
    hub_thread,
    receipts,
    stock_warehouse,
    token_creds,
)

from stocksync.hub.check import check_store
from stocksync.v1 import inventory_pb2, rooms_pb2, rooms_pb2_grpc, sync_pb2

ANSWERS = {
    "OK",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "FAILED_PRECONDITION",
    "RESOURCE_EXHAUSTED",
    "PERMISSION_DENIED",
    "ABORTED",
}
"""What the hub may answer a hostile request with: a status that means
something. UNKNOWN or INTERNAL would be an unhandled exception, UNAVAILABLE
a hub that fell over or dropped the connection."""

EXAMPLES = 30

_F = FieldDescriptor
_INTS: dict[int, tuple[int, int]] = {
    _F.TYPE_INT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _F.TYPE_UINT32: (0, 2**32 - 1),
    _F.TYPE_FIXED32: (0, 2**32 - 1),
    _F.TYPE_INT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _F.TYPE_UINT64: (0, 2**64 - 1),
    _F.TYPE_FIXED64: (0, 2**64 - 1),
}

NAMES = ["LIP-RED", "SKU-1", "room-a", "room-b", "WH-LAX", "WH-FUZZ", "e1", "admin"]
"""Values the hub knows, so that some requests get past the first check."""
NASTY = [
    "",
    " ",
    "\x00",
    "A" * 65,
    "é" * 64,
    "../../etc/passwd",
    "'; DROP TABLE stock; --",
    "%s%s%n",
    "room-a\nroom-b",
    "\ud7ff" * 3,
    "9" * 40,
]


def _strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NAMES),
        st.sampled_from(NASTY),
        st.text(max_size=70),
        st.text(alphabet="ABCDEFGHIJ0123456789-._:/", min_size=1, max_size=64),
        st.just("X" * 5000),
    )


def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted({low, high, 0, 1, min(high, 2**31 - 1), max(low, -1), min(high, 100_001)})
    return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(0, 60))


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == _F.TYPE_STRING:
        return _strings()
    if field.type == _F.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == _F.TYPE_BOOL:
        return st.booleans()
    if field.type == _F.TYPE_ENUM:
        return st.integers(-3, 12)  # unknown numbers too: proto3 enums are open
    if field.type in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if field.type == _F.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _ints(*_INTS[field.type])


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of type ``descriptor`` with hostile field values (one member per oneof)."""
    cls: Any = _message_class(descriptor)
    if depth > 3:
        return st.just(cls())
    members: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        value = _value(field, depth)
        if field.is_repeated:
            value = st.lists(value, max_size=6 if depth else 12)
        members[field.name] = value
    oneofs = {f.name: o.name for o in descriptor.oneofs for f in o.fields}

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        chosen: dict[str, str] = {}
        for name, strategy in members.items():
            group = oneofs.get(name)
            if group is not None:
                chosen.setdefault(
                    group, draw(st.sampled_from([f for f, g in oneofs.items() if g == group]))
                )
                if chosen[group] != name:
                    continue
            elif not draw(st.booleans()):
                continue  # leave it unset
            _set(message, descriptor.fields_by_name[name], draw(strategy))
        return message

    return build()


def _set(message: Any, field: FieldDescriptor, value: Any) -> None:
    if field.is_repeated:
        target = getattr(message, field.name)
        if field.type == _F.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == _F.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _message_class(descriptor: Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


# -- the hub --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = Pki.make(tmp_path_factory.mktemp("pki"))
    pki.client("admin", "admin")
    pki.token("overlay", "rooms:watch:room-a")
    return pki


@pytest.fixture(scope="module")
def hub(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubThread]:
    with hub_thread(pki, tmp_path_factory.mktemp("hub") / "hub.db") as hub:
        stock_warehouse(hub.mtls, cert_creds(pki.agent("WH-LAX")), "WH-LAX", {"LIP-RED": 50})
        stock_warehouse(hub.mtls, cert_creds(pki.agent("WH-FUZZ")), "WH-FUZZ", {"SKU-1": 7})
        with grpc.secure_channel(hub.mtls, cert_creds(pki.client("admin"))) as channel:
            rooms_pb2_grpc.LiveRoomServiceStub(channel).SetFeatured(
                rooms_pb2.SetFeaturedRequest(room_id="room-a", skus=["LIP-RED"])
            )
        yield hub
        report = check_store(hub.db)
        assert report.ok, report.violations


def on_hand(db: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(read_only(db)) as conn:
        return sorted(conn.execute("SELECT * FROM stock").fetchall())


def watermark(db: Path, warehouse: str) -> int:
    with contextlib.closing(read_only(db)) as conn:
        try:
            row = conn.execute(
                "SELECT s.watermark FROM sources s JOIN warehouses w ON w.source_id = s.id "
                "WHERE w.warehouse = ?",
                (warehouse,),
            ).fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(row[0]) if row else 0


def _serving(hub: HubThread, pki: Pki) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.secure_channel(hub.mtls, cert_creds(pki.client("admin"))) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=15
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _creds(
    pki: Pki, caller: str
) -> tuple[str, Callable[[HubThread], str], grpc.ChannelCredentials]:
    if caller == "admin":
        return caller, lambda h: h.mtls, cert_creds(pki.client("admin"))
    return caller, lambda h: h.token_target, token_creds(pki, pki.tokens["overlay"])


def call_once(
    target: str, creds: grpc.ChannelCredentials, method: MethodDescriptor, body: bytes
) -> str:
    """Send ``body`` as the request of a unary-request method; the status name."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    with grpc.secure_channel(target, creds) as channel:
        try:
            if method.server_streaming:
                call = channel.unary_stream(path)(body, timeout=15)
                try:
                    next(call)  # the first message (a Watch's snapshot) or the refusal
                except StopIteration:
                    pass
                finally:
                    call.cancel()
            else:
                channel.unary_unary(path)(body, timeout=15)
        except grpc.RpcError as e:
            return str(e.code().name)
    return "OK"


def check_answer(hub: HubThread, pki: Pki, before: bytes, stock: Any, code: str, what: str) -> None:
    assert code in ANSWERS, f"{what}: answered {code}"
    after = dump(hub.db)
    if code != "OK":
        assert after == before, f"{what}: refused with {code} but wrote"
    assert on_hand(hub.db) == stock, f"{what}: on_hand changed"


UNARY = [
    m
    for service in (
        inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"],
        rooms_pb2.DESCRIPTOR.services_by_name["LiveRoomService"],
    )
    for m in service.methods
]


@pytest.mark.parametrize("caller", ["admin", "watch-token"])
@pytest.mark.parametrize("method", UNARY, ids=lambda m: m.name)
def test_hostile_requests_get_a_status_and_change_nothing_they_may_not(
    hub: HubThread, pki: Pki, method: MethodDescriptor, caller: str
) -> None:
    name, target, creds = _creds(pki, caller)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        body=st.one_of(
            messages(method.input_type).map(lambda m: m.SerializeToString()),
            st.binary(max_size=200),  # random bytes as a message
        )
    )
    def one(body: bytes) -> None:
        before, stock = dump(hub.db), on_hand(hub.db)
        code = call_once(target(hub), creds, method, body)
        check_answer(hub, pki, before, stock, code, f"{name} {method.name}({body[:60]!r})")

    one()
    assert _serving(hub, pki)


# -- the agent stream -------------------------------------------------------------------

_SYNC_REQUEST = sync_pb2.SyncRequest.DESCRIPTOR


def _sync(hub: HubThread, pki: Pki, frames: list[bytes], hang_up: bool = True) -> tuple[str, int]:
    """Send raw ``frames`` on a Sync stream as WH-FUZZ; the final status and the highest ack.

    With ``hang_up``, end the call on the hub's Goodbye and take the status it
    names, as an agent does; without, read on to the call's own status (the hub
    waits a second for a caller that does not hang up)."""
    path = "/stocksync.v1.SyncService/Sync"
    requests: queue.Queue[bytes | None] = queue.Queue()
    for frame in frames:
        requests.put(frame)
    requests.put(None)
    acked = 0
    with grpc.secure_channel(hub.mtls, cert_creds(pki.agent("WH-FUZZ"))) as channel:
        call = channel.stream_stream(path, response_deserializer=sync_pb2.SyncResponse.FromString)(
            iter(requests.get, None), timeout=15
        )
        try:
            for response in call:
                if response.WhichOneof("message") == "ack":
                    acked = max(acked, response.ack.up_to_seq)
                elif response.WhichOneof("message") == "goodbye" and hang_up:
                    call.cancel()
                    return response.goodbye.code, acked
        except grpc.RpcError as e:
            return str(e.code().name), acked
    return "OK", acked


HUGE = receipts("WH-FUZZ", [("SKU-1", 1)] * 9000, first_seq=1)
for _event in HUGE.events:
    _event.reason = "r" * 900  # about 9 MiB: over the message limit
EXAMPLES_SYNC = [
    sync_pb2.SyncRequest(batch=sync_pb2.Batch(first_seq=2)),  # an empty batch
    sync_pb2.SyncRequest(batch=receipts("WH-FUZZ", [("SKU-1", 1)] * 5001, first_seq=2)),
    sync_pb2.SyncRequest(batch=HUGE),
    sync_pb2.SyncRequest(
        batch=receipts("WH-FUZZ", [("SKU-1", 2**63 - 1), ("SKU-1", -(2**63))], first_seq=2)
    ),
    sync_pb2.SyncRequest(batch=sync_pb2.Batch(first_seq=2**64 - 1, events=[sync_pb2.Event()])),
    sync_pb2.SyncRequest(
        snapshot=sync_pb2.SnapshotChunk(as_of_seq=2**64 - 1, stock=[sync_pb2.SkuStock()])
    ),
    sync_pb2.SyncRequest(hello=sync_pb2.Hello(warehouse="WH-LAX", epoch="e1")),
]


@settings(
    max_examples=EXAMPLES * 4,  # a refused stream takes milliseconds: the agent hangs up
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=st.one_of(st.none(), messages(sync_pb2.Hello.DESCRIPTOR)),
    hostile=st.one_of(
        messages(_SYNC_REQUEST).map(lambda m: m.SerializeToString()), st.binary(max_size=300)
    ),
)
@example(first=None, hostile=b"\xff\xff\xff\xff")
def test_hostile_agent_messages_get_a_status_and_change_nothing(
    hub: HubThread, pki: Pki, first: sync_pb2.Hello | None, hostile: bytes
) -> None:
    """One hostile message after WH-FUZZ's good Hello, or a hostile Hello of its own."""
    known = watermark(hub.db, "WH-FUZZ")
    if first is None:
        opening = hello("WH-FUZZ", epoch="e1", high_seq=known + 100).SerializeToString()
    else:
        opening = sync_pb2.SyncRequest(hello=first).SerializeToString()
    before, stock = dump(hub.db), on_hand(hub.db)
    code, acked = _sync(hub, pki, [opening, hostile])
    what = f"Sync({first!r}, {hostile[:80]!r})"
    assert code in ANSWERS, f"{what}: answered {code}"
    if code != "OK" or acked <= known:
        # Refused, or nothing new acknowledged (a ping, a duplicate): nothing written.
        assert dump(hub.db) == before, f"{what}: {code}, acked {acked}, but wrote"
        assert on_hand(hub.db) == stock


@pytest.mark.parametrize("message", EXAMPLES_SYNC, ids=lambda m: m.WhichOneof("message"))
def test_huge_empty_and_extreme_agent_messages(
    hub: HubThread, pki: Pki, message: sync_pb2.SyncRequest
) -> None:
    known = watermark(hub.db, "WH-FUZZ")
    opening = hello("WH-FUZZ", epoch="e1", high_seq=known + 100).SerializeToString()
    before = dump(hub.db)
    code, acked = _sync(hub, pki, [opening, message.SerializeToString()], hang_up=False)
    assert code in ANSWERS - {"OK"}, code
    assert acked <= known
    assert dump(hub.db) == before
    assert _serving(hub, pki)
