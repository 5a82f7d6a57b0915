"""Reservations over real gRPC against a real hub subprocess (DESIGN §5, §11 inv. 4, 6, 7).

- 1,000 concurrent Reserve calls, 200 in flight, for one SKU of 100 units
  spread over three warehouses: exactly 100 granted; again with every
  idempotency key sent twice: still exactly 100.
- every bad input gets its status and a detail, and no row of the hub's
  store changes;
- the hub killed with kill -9 during a reserve burst: every reserve answered
  "granted" is there after the restart, none is there by halves, and
  ``stocksync-hub check`` passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import HUB, HubProcess, dump_hub, read_only, run_cli, wait_until

from stocksync.v1 import inventory_pb2, inventory_pb2_grpc, sync_pb2, sync_pb2_grpc

RECEIVE = 1


def stock_warehouse(target: str, warehouse: str, stock: dict[str, int], epoch: str = "e1") -> None:
    """Play an agent that received ``stock`` (a new store: empty snapshot, then receipts)."""
    requests: queue.Queue[sync_pb2.SyncRequest | None] = queue.Queue()
    with grpc.insecure_channel(target) as channel:
        call = sync_pb2_grpc.SyncServiceStub(channel).Sync(iter(requests.get, None), timeout=30)
        n = len(stock)
        requests.put(
            sync_pb2.SyncRequest(
                hello=sync_pb2.Hello(
                    warehouse=warehouse, epoch=epoch, high_seq=n, acked_seq=0, protocol_version=1
                )
            )
        )
        assert next(call).WhichOneof("message") == "welcome"
        requests.put(sync_pb2.SyncRequest(snapshot=sync_pb2.SnapshotChunk(as_of_seq=0, last=True)))
        assert next(call).ack.up_to_seq == 0
        batch = sync_pb2.Batch(first_seq=1)
        for seq, (sku, qty) in enumerate(sorted(stock.items()), start=1):
            batch.events.add(
                seq=seq,
                event_id=f"{warehouse}-{seq}",
                sku=sku,
                kind=RECEIVE,  # type: ignore[arg-type]
                quantity=qty,
                delta=qty,
            )
        requests.put(sync_pb2.SyncRequest(batch=batch))
        while (msg := next(call)).WhichOneof("message") != "ack":
            pass
        assert msg.ack.up_to_seq == n
        requests.put(None)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    path = tmp_path_factory.mktemp("reserve-hub")
    proc = HubProcess(path / "hub.db", path / "hub.log").start()
    for warehouse, units in (("WH-LAX", 40), ("WH-FRA", 35), ("WH-CGK", 25)):
        stock_warehouse(proc.target, warehouse, {"HOT-1": units, "HOT-2": units, "CALM": 5})
    yield proc
    proc.kill()


async def burst(
    target: str, sku: str, keys: list[str], in_flight: int = 200
) -> tuple[list[str], dict[str, int]]:
    """Reserve 1 unit of ``sku`` per key, ``in_flight`` at a time; returns the
    granted reservation ids and a count of each refusal code."""
    granted: list[str] = []
    refused: dict[str, int] = {}
    gate = asyncio.Semaphore(in_flight)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)

        async def one(key: str) -> None:
            async with gate:
                request = inventory_pb2.ReserveRequest(
                    lines=[inventory_pb2.ReserveLine(sku=sku, qty=1)],
                    room_id="live-a",
                    idempotency_key=key,
                )
                try:
                    reply = await stub.Reserve(request, timeout=60)
                except grpc.aio.AioRpcError as e:
                    refused[e.code().name] = refused.get(e.code().name, 0) + 1
                    return
                granted.append(reply.reservation.id)

        await asyncio.gather(*(one(k) for k in keys))
    return granted, refused


def stock_of(target: str, sku: str) -> inventory_pb2.SkuSummary:
    with grpc.insecure_channel(target) as channel:
        reply = inventory_pb2_grpc.InventoryServiceStub(channel).GetStock(
            inventory_pb2.GetStockRequest(skus=[sku]), timeout=10
        )
    return reply.skus[0]


def test_a_thousand_concurrent_buyers_get_exactly_the_stock(hub: HubProcess) -> None:
    keys = [f"buyer-{i}" for i in range(1000)]
    granted, refused = asyncio.run(burst(hub.target, "HOT-1", keys))
    assert len(granted) == 100 == len(set(granted))
    assert refused == {"RESOURCE_EXHAUSTED": 900}
    summary = stock_of(hub.target, "HOT-1")
    assert (summary.sellable, summary.held) == (0, 100)


def test_every_key_twice_still_grants_exactly_the_stock(hub: HubProcess) -> None:
    keys = [f"twice-{i}" for i in range(500)]
    doubled = [k for k in keys for _ in range(2)]
    random.Random(5).shuffle(doubled)
    granted, refused = asyncio.run(burst(hub.target, "HOT-2", doubled))
    assert len(set(granted)) == 100, "each granted key holds one reservation"
    assert len(granted) - len(set(granted)) <= 100  # a repeat of a granted key is answered with it
    assert set(refused) <= {"RESOURCE_EXHAUSTED"}
    assert stock_of(hub.target, "HOT-2").held == 100


def call(target: str, method: str, request: Any) -> Any:
    with grpc.insecure_channel(target) as channel:
        return getattr(inventory_pb2_grpc.InventoryServiceStub(channel), method)(
            request, timeout=10
        )


def refusal(target: str, method: str, request: Any) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        call(target, method, request)
    return caught.value


def line(sku: str, qty: int) -> inventory_pb2.ReserveLine:
    return inventory_pb2.ReserveLine(sku=sku, qty=qty)


BAD = {
    "unknown-sku": (
        "Reserve",
        inventory_pb2.ReserveRequest(lines=[line("NEVER-SEEN", 1)], idempotency_key="k-u"),
        "RESOURCE_EXHAUSTED",
        "NEVER-SEEN: 1 requested, 0 sellable",
    ),
    "qty-zero": (
        "Reserve",
        inventory_pb2.ReserveRequest(lines=[line("CALM", 0)], idempotency_key="k-z"),
        "INVALID_ARGUMENT",
        "qty of CALM",
    ),
    "qty-over-limit": (
        "Reserve",
        inventory_pb2.ReserveRequest(lines=[line("CALM", 100_001)], idempotency_key="k-o"),
        "INVALID_ARGUMENT",
        "100,000",
    ),
    "more-than-sellable": (
        "Reserve",
        inventory_pb2.ReserveRequest(lines=[line("CALM", 16)], idempotency_key="k-m"),
        "RESOURCE_EXHAUSTED",
        "CALM: 16 requested, 15 sellable",
    ),
    "no-lines": (
        "Reserve",
        inventory_pb2.ReserveRequest(idempotency_key="k-n"),
        "INVALID_ARGUMENT",
        "at least one line",
    ),
    "too-many-lines": (
        "Reserve",
        inventory_pb2.ReserveRequest(
            lines=[line(f"S-{i}", 1) for i in range(51)], idempotency_key="k-t"
        ),
        "INVALID_ARGUMENT",
        "at most 50 lines",
    ),
    "bad-sku": (
        "Reserve",
        inventory_pb2.ReserveRequest(lines=[line("bad sku", 1)], idempotency_key="k-b"),
        "INVALID_ARGUMENT",
        "sku",
    ),
    "no-key": (
        "Reserve",
        inventory_pb2.ReserveRequest(lines=[line("CALM", 1)]),
        "INVALID_ARGUMENT",
        "idempotency key",
    ),
    "bad-room": (
        "Reserve",
        inventory_pb2.ReserveRequest(
            lines=[line("CALM", 1)], room_id="room 1", idempotency_key="k-r"
        ),
        "INVALID_ARGUMENT",
        "room",
    ),
    "ttl-too-long": (
        "Reserve",
        inventory_pb2.ReserveRequest(
            lines=[line("CALM", 1)], idempotency_key="k-l", ttl_seconds=86_401
        ),
        "INVALID_ARGUMENT",
        "ttl",
    ),
    "commit-unknown": (
        "Commit",
        inventory_pb2.CommitRequest(reservation_id="R-nope"),
        "NOT_FOUND",
        "no reservation R-nope",
    ),
    "release-unknown": (
        "Release",
        inventory_pb2.ReleaseRequest(reservation_id="R-nope"),
        "NOT_FOUND",
        "no reservation R-nope",
    ),
    "commit-empty-id": (
        "Commit",
        inventory_pb2.CommitRequest(),
        "INVALID_ARGUMENT",
        "reservation_id is empty",
    ),
    "quota-over-sellable": (
        "SetQuota",
        inventory_pb2.SetQuotaRequest(room_id="live-z", sku="CALM", qty=16),
        "RESOURCE_EXHAUSTED",
        "CALM: 16 requested, 15 sellable",
    ),
    "conflicts-limit": (
        "ListConflicts",
        inventory_pb2.ListConflictsRequest(limit=10_001),
        "INVALID_ARGUMENT",
        "limit",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_its_status_and_changes_nothing(hub: HubProcess, case: str) -> None:
    method, request, code, fragment = BAD[case]
    before = dump_hub(hub.db)
    err = refusal(hub.target, method, request)
    assert err.code().name == code, err.details()
    assert fragment in err.details(), err.details()
    assert dump_hub(hub.db) == before


def test_a_key_reused_with_other_lines_is_refused(hub: HubProcess) -> None:
    first = inventory_pb2.ReserveRequest(lines=[line("CALM", 1)], idempotency_key="k-reuse")
    reservation = call(hub.target, "Reserve", first).reservation
    before = dump_hub(hub.db)
    other = inventory_pb2.ReserveRequest(lines=[line("CALM", 2)], idempotency_key="k-reuse")
    err = refusal(hub.target, "Reserve", other)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reservation.id in err.details() and "other lines" in err.details()
    assert dump_hub(hub.db) == before
    # The same key with the same lines is the same reservation, not a second one.
    assert call(hub.target, "Reserve", first).reservation.id == reservation.id
    call(hub.target, "Release", inventory_pb2.ReleaseRequest(reservation_id=reservation.id))


def test_an_expired_reservation_cannot_be_committed(hub: HubProcess) -> None:
    request = inventory_pb2.ReserveRequest(
        lines=[line("CALM", 1)], idempotency_key="k-expire", ttl_seconds=1
    )
    rid = call(hub.target, "Reserve", request).reservation.id

    def status() -> int:
        get = inventory_pb2.GetReservationRequest(reservation_id=rid)
        return int(call(hub.target, "GetReservation", get).reservation.status)

    def stored_state() -> str | None:
        with contextlib.closing(read_only(hub.db)) as conn:
            row = conn.execute("SELECT state FROM reservations WHERE id = ?", (rid,)).fetchone()
        return None if row is None else str(row[0])

    wait_until(lambda: status() == inventory_pb2.RESERVATION_STATUS_RELEASED, 30, "expiry")
    # The hub expires in memory first and writes the release a moment later
    # (the tick's write): compare the store from then on.
    wait_until(lambda: stored_state() == "RELEASED", 30, "the expiry to be stored")
    before = dump_hub(hub.db)
    err = refusal(hub.target, "Commit", inventory_pb2.CommitRequest(reservation_id=rid))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "released (expired)" in err.details()
    again = call(hub.target, "Release", inventory_pb2.ReleaseRequest(reservation_id=rid))
    assert again.reservation.reason == "expired"  # idempotent: nothing to release
    assert dump_hub(hub.db) == before


def test_quota_escrow_and_release_over_grpc(hub: HubProcess) -> None:
    reply = call(
        hub.target, "SetQuota", inventory_pb2.SetQuotaRequest(room_id="flash", sku="CALM", qty=4)
    )
    assert reply.room_sellable == stock_of(hub.target, "CALM").sellable + 4
    call(hub.target, "ReleaseQuota", inventory_pb2.ReleaseQuotaRequest(room_id="flash"))
    assert stock_of(hub.target, "CALM").quota_free == 0


def test_kill_9_during_a_reserve_burst_loses_no_grant_and_leaves_no_half(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub.db", tmp_path / "hub.log").start()
    stock_warehouse(hub.target, "WH-A", {"A": 3000, "B": 3000})
    answered: dict[str, str] = {}

    async def reserve_forever() -> None:
        async with grpc.aio.insecure_channel(hub.target) as channel:
            stub = inventory_pb2_grpc.InventoryServiceStub(channel)
            gate = asyncio.Semaphore(50)

            async def one(i: int) -> None:
                async with gate:
                    request = inventory_pb2.ReserveRequest(
                        lines=[line("A", 1 + i % 3), line("B", 1)], idempotency_key=f"burst-{i}"
                    )
                    try:
                        reply = await stub.Reserve(request, timeout=10)
                    except grpc.aio.AioRpcError:
                        return
                    answered[f"burst-{i}"] = reply.reservation.id

            await asyncio.gather(*(one(i) for i in range(1500)))

    def kill_when_busy() -> None:
        wait_until(lambda: len(answered) >= 150, 60, "a burst under way")
        hub.kill()

    import threading

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    asyncio.run(reserve_forever())
    killer.join()
    assert 150 <= len(answered) < 1500, "the kill landed mid-burst"

    hub.start()
    for key, rid in answered.items():
        got = call(
            hub.target, "GetReservation", inventory_pb2.GetReservationRequest(reservation_id=rid)
        ).reservation
        assert got.status == inventory_pb2.RESERVATION_STATUS_HELD and got.idempotency_key == key
        assert [ln.sku for ln in got.lines] == ["A", "B"]
    dump = dump_hub(hub.db)
    lines_per = {}
    for row in dump["reservation_lines"]:
        lines_per[row[0]] = lines_per.get(row[0], 0) + 1
    assert len(dump["reservations"]) == len(lines_per)
    assert set(lines_per.values()) == {2}, "a reservation is whole or absent"
    held = sum(row[3] for row in dump["reservation_lines"] if row[2] == "B")
    assert stock_of(hub.target, "B").held == held == len(dump["reservations"])
    hub.kill()
    checked = run_cli(HUB, "check", "--db", str(hub.db))
    assert checked.returncode == 0, checked.stdout + checked.stderr
