"""The sync wire protocol of DESIGN §6, spoken by hand against a real hub.

A raw gRPC client (no agent code) drives ``stocksync.v1.SyncService/Sync`` on
a hub subprocess: the handshake, snapshots, acks, duplicates, gaps, bad input
(DESIGN §9: a clear status and detail, and no stored state touched —
invariant 7 of §11), superseded streams, plus health, reflection and the
inventory queries. The hub's SQLite file is read directly, read-only.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import HubProcess, dump_hub, read_only, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from stocksync.v1 import inventory_pb2, inventory_pb2_grpc, sync_pb2, sync_pb2_grpc

EPOCH = "epoch-0001"
RECEIVE, SHIP, ADJUST, COUNT = 1, 2, 3, 4

Dump = dict[str, list[tuple[Any, ...]]]


class RawStream:
    """One ``Sync`` stream driven message by message from the test."""

    def __init__(self, channel: grpc.Channel, timeout: float = 30.0) -> None:
        self._requests: queue.Queue[sync_pb2.SyncRequest | None] = queue.Queue()
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        self.call: Any = stub.Sync(iter(self._requests.get, None), timeout=timeout)

    def send(self, **message: Any) -> None:
        """Send one SyncRequest built from ``message`` (e.g. ``hello=...``)."""
        self.send_request(sync_pb2.SyncRequest(**message))

    def send_request(self, request: sync_pb2.SyncRequest) -> None:
        """Send a SyncRequest as it is."""
        self._requests.put(request)

    def recv(self) -> sync_pb2.SyncResponse:
        """The next response that is not a ping. A Goodbye means the stream is
        ending: its status (an RpcError) is raised instead."""
        while True:
            msg: sync_pb2.SyncResponse = next(self.call)
            kind = msg.WhichOneof("message")
            if kind == "goodbye":
                raise self.error()
            if kind != "ping":
                return msg

    def welcome(self) -> sync_pb2.Welcome:
        msg = self.recv()
        assert msg.WhichOneof("message") == "welcome", msg
        return msg.welcome

    def ack(self) -> int:
        msg = self.recv()
        assert msg.WhichOneof("message") == "ack", msg
        return int(msg.ack.up_to_seq)

    def error(self) -> Any:
        """Read until the stream fails; returns the failed call (code, details...).

        The hub's last message before an error is a Goodbye naming the same
        status and detail: checked here for every refusal.
        """
        goodbye = None
        try:
            while True:
                msg = next(self.call)
                kind = msg.WhichOneof("message")
                assert kind in ("ping", "welcome", "ack", "goodbye"), msg
                if kind == "goodbye":
                    goodbye = msg.goodbye
        except grpc.RpcError as e:
            err: Any = e
            if goodbye is not None:
                assert (goodbye.code, goodbye.detail) == (err.code().name, err.details())
            return err
        except StopIteration:
            raise AssertionError("the stream ended OK, expected an error status") from None

    def close(self) -> None:
        """Half-close our side."""
        self._requests.put(None)


def hello(
    warehouse: str,
    epoch: str = EPOCH,
    high_seq: int = 0,
    acked_seq: int = 0,
    protocol_version: int = 1,
) -> sync_pb2.Hello:
    return sync_pb2.Hello(
        warehouse=warehouse,
        epoch=epoch,
        high_seq=high_seq,
        acked_seq=acked_seq,
        protocol_version=protocol_version,
    )


def event(
    seq: int,
    sku: str = "SKU-A",
    kind: int = RECEIVE,
    quantity: int = 5,
    delta: int | None = None,
    **extra: Any,
) -> sync_pb2.Event:
    """A well-formed event unless told otherwise; ``delta`` follows the kind."""
    if delta is None:
        delta = -quantity if kind == SHIP else quantity
    extra.setdefault("event_id", f"evt-{seq:06d}")
    return sync_pb2.Event(
        seq=seq,
        sku=sku,
        kind=kind,  # type: ignore[arg-type]
        quantity=quantity,
        delta=delta,
        recorded_at_unix_ms=1_700_000_000_000 + seq,
        **extra,
    )


def batch(*events: sync_pb2.Event, first_seq: int | None = None) -> sync_pb2.Batch:
    return sync_pb2.Batch(
        first_seq=events[0].seq if first_seq is None else first_seq, events=events
    )


def dump(db: Path) -> Dump:
    """Every row of the hub's durable tables."""
    return dump_hub(db)


def stock_of(db: Path, warehouse: str) -> dict[str, int]:
    with contextlib.closing(read_only(db)) as conn:
        rows = conn.execute("SELECT sku, on_hand FROM stock WHERE warehouse = ?", (warehouse,))
        return dict(rows.fetchall())


def event_seqs(db: Path, warehouse: str) -> list[int]:
    with contextlib.closing(read_only(db)) as conn:
        rows = conn.execute(
            "SELECT e.seq FROM events e JOIN sources s ON s.id = e.source_id "
            "WHERE s.warehouse = ? ORDER BY e.seq",
            (warehouse,),
        )
        return [r[0] for r in rows]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """One real hub for this module; every test speaks for its own warehouse."""
    path = tmp_path_factory.mktemp("sync-hub")
    proc = HubProcess(path / "hub.db", path / "hub.log").start()
    yield proc
    proc.kill()


_warehouse_ids = itertools.count(1)


@pytest.fixture
def wh() -> str:
    """A warehouse id no other test of this module uses."""
    return f"WH-T{next(_warehouse_ids):03d}"


@pytest.fixture
def channel(hub: HubProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(hub.target) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


def establish(channel: grpc.Channel, warehouse: str, epoch: str = EPOCH) -> RawStream:
    """A stream whose epoch the hub now knows at watermark 5.

    Snapshot {SKU-A: 10} as of seq 3, then events 4 (receive 5 SKU-A) and
    5 (ship 2 SKU-B): SKU-A 15, SKU-B -2.
    """
    s = RawStream(channel)
    s.send(hello=hello(warehouse, epoch, high_seq=5, acked_seq=3))
    w = s.welcome()
    assert w.snapshot_required
    s.send(
        snapshot=sync_pb2.SnapshotChunk(
            as_of_seq=3, stock=[sync_pb2.SkuStock(sku="SKU-A", on_hand=10)], last=True
        )
    )
    assert s.ack() == 3
    s.send(batch=batch(event(4), event(5, sku="SKU-B", kind=SHIP, quantity=2)))
    assert s.ack() == 5
    return s


def test_handshake_snapshot_batches_and_resume(
    hub: HubProcess, channel: grpc.Channel, wh: str
) -> None:
    s = RawStream(channel)
    s.send(hello=hello(wh, high_seq=3, acked_seq=3))
    w = s.welcome()
    assert w.snapshot_required is True
    assert w.watermark == 0
    assert w.protocol_version == 1
    assert w.max_batch_events > 0

    # The snapshot is split in two chunks; only the last one applies it.
    s.send(
        snapshot=sync_pb2.SnapshotChunk(
            as_of_seq=3, stock=[sync_pb2.SkuStock(sku="SKU-A", on_hand=10)], last=False
        )
    )
    s.send(
        snapshot=sync_pb2.SnapshotChunk(
            as_of_seq=3, stock=[sync_pb2.SkuStock(sku="SKU-B", on_hand=-1)], last=True
        )
    )
    assert s.ack() == 3
    assert stock_of(hub.db, wh) == {"SKU-A": 10, "SKU-B": -1}

    s.send(batch=batch(event(4), event(5, kind=SHIP, quantity=2)))
    assert s.ack() == 5
    s.send(
        batch=batch(
            event(6, sku="SKU-B", kind=ADJUST, quantity=-3, reason="damage"),
            event(7, sku="SKU-B", kind=COUNT, quantity=20, delta=24, as_of_seq=6),
            event(8, kind=SHIP, quantity=1, reservation_id="R-1001"),
        )
    )
    assert s.ack() == 8
    s.close()
    with pytest.raises(StopIteration):
        s.recv()

    assert stock_of(hub.db, wh) == {"SKU-A": 12, "SKU-B": 20}
    assert event_seqs(hub.db, wh) == [4, 5, 6, 7, 8]

    again = RawStream(channel)
    again.send(hello=hello(wh, high_seq=8, acked_seq=8))
    w = again.welcome()
    assert w.snapshot_required is False
    assert w.watermark == 8
    again.send(batch=batch(event(9, sku="SKU-C", quantity=7)))
    assert again.ack() == 9
    again.close()
    assert stock_of(hub.db, wh) == {"SKU-A": 12, "SKU-B": 20, "SKU-C": 7}


def test_duplicate_batches_are_reacked_not_reapplied(
    hub: HubProcess, channel: grpc.Channel, wh: str
) -> None:
    s = establish(channel, wh)
    before = dump(hub.db)

    # The whole batch again: re-acked at the watermark, nothing applied.
    s.send(batch=batch(event(4), event(5, sku="SKU-B", kind=SHIP, quantity=2)))
    assert s.ack() == 5
    assert dump(hub.db) == before

    # An overlapping batch: only the new tail (6, 7) is applied.
    s.send(
        batch=batch(
            event(4), event(5, sku="SKU-B", kind=SHIP, quantity=2), event(6), event(7, quantity=1)
        )
    )
    assert s.ack() == 7
    s.close()
    assert stock_of(hub.db, wh) == {"SKU-A": 21, "SKU-B": -2}
    assert event_seqs(hub.db, wh) == [4, 5, 6, 7]

    # A reconnect that resends what was acked is a duplicate too.
    again = RawStream(channel)
    again.send(hello=hello(wh, high_seq=7, acked_seq=5))
    assert again.welcome().watermark == 7
    again.send(batch=batch(event(6), event(7, quantity=1)))
    assert again.ack() == 7
    again.close()
    assert stock_of(hub.db, wh) == {"SKU-A": 21, "SKU-B": -2}
    assert event_seqs(hub.db, wh) == [4, 5, 6, 7]


def test_gap_fails_with_resume_point_and_applies_nothing(
    hub: HubProcess, channel: grpc.Channel, wh: str
) -> None:
    establish(channel, wh).close()
    before = dump(hub.db)

    s = RawStream(channel)
    s.send(hello=hello(wh, high_seq=12))
    assert s.welcome().watermark == 5
    s.send(batch=batch(event(8), event(9)))
    err = s.error()
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "resume from seq 6" in err.details()
    trailing = dict(err.trailing_metadata() or ())
    assert trailing.get("resume-from-seq") == "6"
    assert dump(hub.db) == before

    # Resuming where the hub said works.
    again = RawStream(channel)
    again.send(hello=hello(wh, high_seq=12))
    assert again.welcome().watermark == 5
    again.send(batch=batch(event(6), event(7)))
    assert again.ack() == 7
    again.close()


# Each case: (what to send after the handshake, expected code, detail fragments).
BAD_BATCHES: dict[str, tuple[sync_pb2.Batch, list[str]]] = {
    "negative-receive": (
        batch(event(6), event(7, quantity=-5), event(8)),
        ["seq 7", "quantity"],
    ),
    "empty-sku": (batch(event(6), event(7, sku=""), event(8)), ["seq 7", "sku"]),
    "long-sku": (batch(event(6), event(7, sku="S" * 65), event(8)), ["seq 7", "sku", "65"]),
    "sku-with-space": (batch(event(6), event(7, sku="SKU A")), ["seq 7", "sku"]),
    "unknown-kind": (batch(event(6), event(7, kind=9, delta=5), event(8)), ["seq 7", "kind"]),
    "delta-mismatch": (batch(event(6), event(7, quantity=5, delta=50)), ["seq 7", "delta"]),
    "ship-delta-sign": (
        batch(event(6), event(7, kind=SHIP, quantity=5, delta=5)),
        ["seq 7", "delta"],
    ),
    "non-contiguous": (batch(event(6), event(7), event(9)), ["seq 9", "contiguous"]),
    "reservation-on-receive": (
        batch(event(6), event(7, reservation_id="R-1")),
        ["seq 7", "reservation"],
    ),
    "count-as-of-itself": (
        batch(event(6), event(7, kind=COUNT, quantity=3, delta=0, as_of_seq=7)),
        ["seq 7", "as of"],
    ),
    "reason-too-long": (batch(event(6), event(7, reason="r" * 201)), ["seq 7", "reason"]),
    "event-id-too-long": (batch(event(6), event(7, event_id="e" * 65)), ["seq 7", "event id"]),
    "quantity-out-of-range": (
        batch(event(6), event(7, quantity=2_000_000_000)),
        ["seq 7", "quantity"],
    ),
    "seq-zero": (batch(event(0), first_seq=0), ["seq"]),
    "empty-batch": (sync_pb2.Batch(first_seq=6), ["empty"]),
    "oversized-batch": (
        batch(*[event(6 + i, quantity=1) for i in range(5001)]),
        ["5001", "limit"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_bad_batch_is_refused_and_changes_nothing(
    case: str, hub: HubProcess, channel: grpc.Channel, wh: str
) -> None:
    establish(channel, wh).close()
    before = dump(hub.db)
    bad, fragments = BAD_BATCHES[case]

    s = RawStream(channel)
    s.send(hello=hello(wh, high_seq=5 + max(1, len(bad.events))))
    assert s.welcome().watermark == 5
    s.send(batch=bad)
    err = s.error()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    for fragment in fragments:
        assert fragment in err.details(), (fragment, err.details())
    assert dump(hub.db) == before

    # The hub is still up and still at the same watermark.
    again = RawStream(channel)
    again.send(hello=hello(wh, high_seq=6))
    assert again.welcome().watermark == 5
    again.close()


BAD_OPENINGS: dict[
    str, tuple[Callable[[str], list[sync_pb2.SyncRequest]], grpc.StatusCode, str]
] = {
    "first-not-hello": (
        lambda wh: [sync_pb2.SyncRequest(ping=sync_pb2.Ping(sent_at_unix_ms=1))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "Hello",
    ),
    "first-is-batch": (
        lambda wh: [sync_pb2.SyncRequest(batch=batch(event(6)))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "Hello",
    ),
    "bad-warehouse": (
        lambda wh: [sync_pb2.SyncRequest(hello=hello("WH LAX!"))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "warehouse",
    ),
    "empty-warehouse": (
        lambda wh: [sync_pb2.SyncRequest(hello=hello(""))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "warehouse",
    ),
    "no-epoch": (
        lambda wh: [sync_pb2.SyncRequest(hello=hello(wh, epoch=""))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "epoch",
    ),
    "protocol-v2": (
        lambda wh: [sync_pb2.SyncRequest(hello=hello(wh, protocol_version=2))],
        grpc.StatusCode.FAILED_PRECONDITION,
        "protocol version 2",
    ),
    "second-hello": (
        lambda wh: [
            sync_pb2.SyncRequest(hello=hello(wh, high_seq=5)),
            sync_pb2.SyncRequest(hello=hello(wh, high_seq=5)),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "hello",
    ),
    "batch-before-snapshot": (
        lambda wh: [
            sync_pb2.SyncRequest(hello=hello(wh, epoch="epoch-new", high_seq=5)),
            sync_pb2.SyncRequest(batch=batch(event(1))),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "snapshot",
    ),
    "snapshot-past-high-seq": (
        lambda wh: [
            sync_pb2.SyncRequest(hello=hello(wh, epoch="epoch-new", high_seq=5)),
            sync_pb2.SyncRequest(
                snapshot=sync_pb2.SnapshotChunk(
                    as_of_seq=9, stock=[sync_pb2.SkuStock(sku="SKU-Z", on_hand=1)], last=True
                )
            ),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "snapshot",
    ),
    "snapshot-bad-sku": (
        lambda wh: [
            sync_pb2.SyncRequest(hello=hello(wh, epoch="epoch-new", high_seq=5)),
            sync_pb2.SyncRequest(
                snapshot=sync_pb2.SnapshotChunk(
                    as_of_seq=5, stock=[sync_pb2.SkuStock(sku="bad sku", on_hand=1)], last=True
                )
            ),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "sku",
    ),
    "snapshot-duplicate-sku": (
        lambda wh: [
            sync_pb2.SyncRequest(hello=hello(wh, epoch="epoch-new", high_seq=5)),
            sync_pb2.SyncRequest(
                snapshot=sync_pb2.SnapshotChunk(
                    as_of_seq=5,
                    stock=[
                        sync_pb2.SkuStock(sku="SKU-Z", on_hand=1),
                        sync_pb2.SkuStock(sku="SKU-Z", on_hand=2),
                    ],
                    last=True,
                )
            ),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "twice",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_OPENINGS))
def test_bad_stream_is_refused_and_changes_nothing(
    case: str, hub: HubProcess, channel: grpc.Channel, wh: str
) -> None:
    establish(channel, wh).close()
    before = dump(hub.db)
    make, code, fragment = BAD_OPENINGS[case]

    s = RawStream(channel)
    for message in make(wh):
        s.send_request(message)
    err = s.error()
    assert err.code() == code, err.details()
    assert fragment.lower() in err.details().lower(), err.details()
    assert dump(hub.db) == before


def test_replaced_epoch_may_not_send(hub: HubProcess, channel: grpc.Channel, wh: str) -> None:
    establish(channel, wh, epoch="epoch-old").close()
    establish(channel, wh, epoch="epoch-new").close()
    before = dump(hub.db)

    s = RawStream(channel)
    s.send(hello=hello(wh, epoch="epoch-old", high_seq=9))
    err = s.error()
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "replaced" in err.details()
    after = dump(hub.db)
    # Nothing changed but a loud record: two stores claim the warehouse.
    new = set(after.pop("conflicts")) - set(before.pop("conflicts"))
    assert after == before
    assert [(c[1], c[5]) for c in new] == [("two_stores", wh)]


def test_snapshot_behind_watermark_does_not_wedge_the_stream(
    hub: HubProcess, channel: grpc.Channel, wh: str
) -> None:
    s = establish(channel, wh)
    s.send(batch=batch(event(6), event(7), event(8)))
    assert s.ack() == 8
    before = dump(hub.db)

    s.send(
        snapshot=sync_pb2.SnapshotChunk(
            as_of_seq=4, stock=[sync_pb2.SkuStock(sku="SKU-A", on_hand=1)], last=True
        )
    )
    refused = False
    try:
        # Either the hub refuses a snapshot it never asked for...
        assert s.ack() == 4
        # ...or it takes it and streaming goes on from there.
        s.send(batch=batch(event(5, sku="SKU-B", kind=SHIP, quantity=2), event(6)))
        assert s.ack() == 6
        s.close()
    except grpc.RpcError as e:
        refused = True
        assert e.code() in (  # type: ignore[attr-defined]
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
        ), e.details()  # type: ignore[attr-defined]
    if refused:
        assert dump(hub.db) == before

    # Whatever happened, a reconnecting agent can carry on from the Welcome.
    again = RawStream(channel)
    again.send(hello=hello(wh, high_seq=9))
    mark = again.welcome().watermark
    again.send(batch=batch(*[event(seq) for seq in range(mark + 1, 10)]))
    assert again.ack() == 9
    again.close()
    seqs = event_seqs(hub.db, wh)
    assert seqs == sorted(set(seqs))
    assert seqs[-1] == 9


def test_second_stream_supersedes_the_first(
    hub: HubProcess, channel: grpc.Channel, wh: str
) -> None:
    establish(channel, wh).close()

    first = RawStream(channel)
    first.send(hello=hello(wh, high_seq=5))
    assert first.welcome().watermark == 5

    second = RawStream(channel)
    second.send(hello=hello(wh, high_seq=6))
    assert second.welcome().watermark == 5

    err = first.error()
    assert err.code() == grpc.StatusCode.ABORTED
    assert "superseded" in err.details()

    second.send(batch=batch(event(6, quantity=4)))
    assert second.ack() == 6
    second.close()
    assert stock_of(hub.db, wh)["SKU-A"] == 19
    assert event_seqs(hub.db, wh) == [4, 5, 6]


def test_health_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "stocksync.v1.SyncService", "stocksync.v1.InventoryService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_reflection_lists_services(channel: grpc.Channel) -> None:
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {"stocksync.v1.SyncService", "stocksync.v1.InventoryService"} <= services
    proto = db.FindFileContainingSymbol("stocksync.v1.SyncService")
    assert proto.package == "stocksync.v1"


def test_get_stock(hub: HubProcess, channel: grpc.Channel, wh: str) -> None:
    other = f"{wh}-B"
    establish(channel, wh).close()
    establish(channel, other).close()
    s = RawStream(channel)
    s.send(hello=hello(other, high_seq=6))
    assert s.welcome().watermark == 5
    s.send(batch=batch(event(6, sku="SKU-A", kind=SHIP, quantity=1)))
    assert s.ack() == 6
    s.close()
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    reply = stub.GetStock(inventory_pb2.GetStockRequest(skus=["SKU-A", "SKU-NONE"]), timeout=10)
    a, none = reply.skus
    assert a.sku == "SKU-A"
    per_warehouse = {w.warehouse: w.on_hand for w in a.warehouses}
    # Other tests of this module stock SKU-A in their own warehouses too.
    assert {w: q for w, q in per_warehouse.items() if w in (wh, other)} == {wh: 15, other: 14}
    assert a.on_hand == sum(per_warehouse.values())
    assert [w.warehouse for w in a.warehouses] == sorted(per_warehouse)
    assert none.sku == "SKU-NONE"
    assert none.on_hand == 0
    assert list(none.warehouses) == []


@pytest.mark.parametrize(
    ("skus", "fragment"),
    [
        ([], "SKU"),
        (["SKU-A", "bad sku"], "sku"),
        (["S" * 65], "64"),
        ([""], "empty"),
        ([f"SKU-{i}" for i in range(1001)], "1000"),
    ],
    ids=["none", "space", "too-long", "empty", "too-many"],
)
def test_get_stock_refuses_bad_skus(channel: grpc.Channel, skus: list[str], fragment: str) -> None:
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.GetStock(inventory_pb2.GetStockRequest(skus=skus), timeout=10)
    err: Any = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.details()


def test_list_warehouses(hub: HubProcess, channel: grpc.Channel, wh: str) -> None:
    s = establish(channel, wh)
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)

    def status_of() -> inventory_pb2.WarehouseStatus:
        reply = stub.ListWarehouses(inventory_pb2.ListWarehousesRequest(), timeout=10)
        (status,) = [w for w in reply.warehouses if w.warehouse == wh]
        return status

    status = status_of()
    assert status.connected is True
    assert status.epoch == EPOCH
    assert status.watermark == 5
    assert status.last_seen_unix_ms > 0
    s.close()
    with pytest.raises(StopIteration):
        s.recv()

    wait_until(lambda: not status_of().connected, 10, "the hub to see the stream closed")
    assert status_of().watermark == 5


def test_reflection_v1_answers_like_v1alpha(channel: grpc.Channel) -> None:
    """grpcurl and newer clients ask ``grpc.reflection.v1`` first."""
    from grpc_reflection.v1alpha import reflection_pb2

    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="stocksync.v1.InventoryService"
        ),
    ]
    listing, found = list(call(iter(requests), timeout=10))
    names = {s.name for s in listing.list_services_response.service}
    assert {
        "stocksync.v1.SyncService",
        "stocksync.v1.InventoryService",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    assert found.file_descriptor_response.file_descriptor_proto


GARBAGE = b"\xff\xff\xff\x01 not a protobuf message"


def test_a_request_that_is_not_protobuf_is_invalid_argument(channel: grpc.Channel) -> None:
    unary = channel.unary_unary("/stocksync.v1.InventoryService/GetStock")
    with pytest.raises(grpc.RpcError) as info:
        unary(GARBAGE, timeout=10)
    err: Any = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "request is not a valid stocksync.v1.GetStockRequest message"

    stream = channel.stream_stream("/stocksync.v1.SyncService/Sync")
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter([GARBAGE]), timeout=10))
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "request is not a valid stocksync.v1.SyncRequest message"


def test_garbage_mid_stream_ends_it_and_applies_nothing(
    hub: HubProcess, channel: grpc.Channel, wh: str
) -> None:
    establish(channel, wh).close()
    before = dump(hub.db)
    requests: queue.Queue[bytes | None] = queue.Queue()
    stream = channel.stream_stream("/stocksync.v1.SyncService/Sync")
    call = stream(iter(requests.get, None), timeout=10)
    requests.put(sync_pb2.SyncRequest(hello=hello(wh, high_seq=6)).SerializeToString())
    welcome = sync_pb2.SyncResponse.FromString(next(call))
    assert welcome.welcome.watermark == 5
    requests.put(GARBAGE)
    with pytest.raises(grpc.RpcError) as info:
        while True:  # pings, and the Goodbye, until the status
            next(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert dump(hub.db) == before


def test_welcome_states_the_batch_limit_and_a_larger_batch_is_refused(
    tmp_path: Path, wh: str
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("max_batch_events = 3\n")
    small = HubProcess(tmp_path / "hub.db", tmp_path / "hub.log", 0, "--config", str(config))
    small.start()
    try:
        with grpc.insecure_channel(small.target) as ch:
            s = RawStream(ch)
            s.send(hello=hello(wh, high_seq=4))
            w = s.welcome()
            assert w.max_batch_events == 3
            s.send(snapshot=sync_pb2.SnapshotChunk(as_of_seq=0, last=True))
            assert s.ack() == 0
            s.send(batch=batch(event(1), event(2), event(3), event(4)))
            err = s.error()
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "batch of 4 events exceeds the limit of 3" in err.details()
    finally:
        small.kill()


def test_hello_with_protocol_version_zero_is_refused(channel: grpc.Channel, wh: str) -> None:
    s = RawStream(channel)
    s.send(hello=hello(wh, protocol_version=0))
    err = s.error()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "protocol_version" in err.details()
