"""Bounded input and per-caller quotas on a real hub over TLS (README, Security).

- Every input limit is a setting; a request over one is refused with
  INVALID_ARGUMENT or RESOURCE_EXHAUSTED, a detail naming it, and no row
  written, and the same caller's next good request goes through.
- One identity holding streams past ``max_streams_per_identity``, watches
  past ``max_watchers_per_identity`` or flooding past its request rate is
  refused, while two real agents stream every event they record and another
  client is served. The assertions count outcomes; none looks at a clock.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import agent_event_ids, hub_event_ids, wait_until
from securehub import (
    HubThread,
    Pki,
    cert_creds,
    dump,
    hello,
    http_get,
    hub_thread,
    receipts,
    stock_warehouse,
    tls_agent,
    token_creds,
)

from stocksync.agent.store import AgentStore
from stocksync.events import Kind, NewEvent
from stocksync.tools.procs import Child, agent_status
from stocksync.v1 import (
    inventory_pb2,
    inventory_pb2_grpc,
    rooms_pb2,
    rooms_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


# -- input limits --------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubThread]:
    """A hub with small input limits."""
    with hub_thread(
        pki,
        tmp_path_factory.mktemp("small") / "hub.db",
        max_reservation_lines=3,
        max_featured_skus=2,
        max_query_skus=2,
        max_message_bytes=64 * 1024,
        max_batch_events=10,
    ) as hub:
        stock_warehouse(
            hub.mtls, cert_creds(pki.agent("WH-LAX")), "WH-LAX", {"A": 5, "B": 5, "C": 5, "D": 5}
        )
        yield hub


def inventory(hub: HubThread, pki: Pki, method: str, request: Any) -> Any:
    creds = cert_creds(pki.client("admin", "admin"))
    with grpc.secure_channel(hub.mtls, creds) as channel:
        return getattr(inventory_pb2_grpc.InventoryServiceStub(channel), method)(
            request, timeout=15
        )


def rooms(hub: HubThread, pki: Pki, method: str, request: Any) -> Any:
    creds = cert_creds(pki.client("admin", "admin"))
    with grpc.secure_channel(hub.mtls, creds) as channel:
        return getattr(rooms_pb2_grpc.LiveRoomServiceStub(channel), method)(request, timeout=15)


def sync_batch(hub: HubThread, pki: Pki, batch: sync_pb2.Batch) -> None:
    """WH-LAX's known epoch says Hello, then sends ``batch``; returns when acked."""
    requests: queue.Queue[sync_pb2.SyncRequest | None] = queue.Queue()
    requests.put(hello("WH-LAX", high_seq=4 + len(batch.events)))
    requests.put(sync_pb2.SyncRequest(batch=batch))
    with grpc.secure_channel(hub.mtls, cert_creds(pki.agent("WH-LAX"))) as channel:
        call = sync_pb2_grpc.SyncServiceStub(channel).Sync(iter(requests.get, None), timeout=15)
        try:
            for message in call:
                if message.WhichOneof("message") == "ack" and message.ack.up_to_seq > 4:
                    return
        finally:
            requests.put(None)
            call.cancel()


def _lines(n: int) -> list[inventory_pb2.ReserveLine]:
    return [inventory_pb2.ReserveLine(sku=s, qty=1) for s in "ABCDEFGH"[:n]]


LIMITS: dict[str, tuple[Callable[[HubThread, Pki], Any], str, str]] = {
    "max_reservation_lines": (
        lambda h, p: inventory(
            h, p, "Reserve", inventory_pb2.ReserveRequest(lines=_lines(4), idempotency_key="k")
        ),
        "INVALID_ARGUMENT",
        "at most 3 lines, got 4 (max_reservation_lines)",
    ),
    "max_featured_skus": (
        lambda h, p: rooms(
            h, p, "SetFeatured", rooms_pb2.SetFeaturedRequest(room_id="r", skus=["A", "B", "C"])
        ),
        "INVALID_ARGUMENT",
        "at most 2 featured SKUs, got 3 (max_featured_skus)",
    ),
    "max_query_skus": (
        lambda h, p: inventory(
            h, p, "GetStock", inventory_pb2.GetStockRequest(skus=["A", "B", "C"])
        ),
        "INVALID_ARGUMENT",
        "at most 2 SKUs per request, got 3 (max_query_skus)",
    ),
    "max_message_bytes (a query)": (
        lambda h, p: inventory(
            h, p, "GetStock", inventory_pb2.GetStockRequest(skus=["S" * 60] * 2000)
        ),
        "RESOURCE_EXHAUSTED",
        "vs. 65536)",
    ),
    "max_batch_events": (
        lambda h, p: sync_batch(h, p, receipts("WH-LAX", [("A", 1)] * 11, first_seq=5)),
        "INVALID_ARGUMENT",
        "batch of 11 events exceeds the limit of 10",
    ),
    "max_message_bytes (a batch)": (
        lambda h, p: sync_batch(h, p, _huge_batch()),
        "RESOURCE_EXHAUSTED",
        "vs. 65536)",
    ),
}


def _huge_batch() -> sync_pb2.Batch:
    batch = receipts("WH-LAX", [("A", 1)] * 5, first_seq=5)
    for event in batch.events:
        event.reason = "x" * 20_000  # over the message limit before any field is checked
    return batch


@pytest.mark.parametrize("limit", list(LIMITS))
def test_input_over_a_limit_is_refused_by_name_and_writes_nothing(
    small: HubThread, pki: Pki, limit: str
) -> None:
    call, code, detail = LIMITS[limit]
    before = dump(small.db)
    with pytest.raises(grpc.RpcError) as refused:
        call(small, pki)
    assert refused.value.code().name == code, refused.value.details()
    assert detail in (refused.value.details() or "")
    assert dump(small.db) == before
    # The same caller goes on being served.
    reply = inventory(small, pki, "GetStock", inventory_pb2.GetStockRequest(skus=["A"]))
    assert reply.skus[0].on_hand == 5


def test_limits_at_their_value_are_accepted(small: HubThread, pki: Pki) -> None:
    reply = inventory(
        small,
        pki,
        "Reserve",
        inventory_pb2.ReserveRequest(lines=_lines(3), idempotency_key="k-at-limit"),
    )
    assert len(reply.reservation.lines) == 3
    rooms(small, pki, "SetFeatured", rooms_pb2.SetFeaturedRequest(room_id="r", skus=["A", "B"]))
    assert (
        len(inventory(small, pki, "GetStock", inventory_pb2.GetStockRequest(skus=["A", "B"])).skus)
        == 2
    )
    sync_batch(small, pki, receipts("WH-LAX", [("A", 1)] * 10, first_seq=5))
    reply = inventory(small, pki, "GetStock", inventory_pb2.GetStockRequest(skus=["A"]))
    assert reply.skus[0].on_hand == 15


# -- quotas: one identity over its limits, everyone else served -----------------------

FLOOD = 200
BURST = 20


@pytest.fixture
def strict(pki: Pki, tmp_path: Path) -> Iterator[HubThread]:
    """A hub whose callers get 20 requests, and then one per 1,000 s."""
    with hub_thread(
        pki,
        tmp_path / "hub.db",
        max_streams_per_identity=2,
        max_watchers_per_identity=3,
        max_requests_per_s=0.001,
        request_burst=BURST,
        hello_timeout_s=600,
    ) as hub:
        with grpc.secure_channel(hub.mtls, cert_creds(pki.client("admin", "admin"))) as channel:
            rooms_pb2_grpc.LiveRoomServiceStub(channel).SetFeatured(
                rooms_pb2.SetFeaturedRequest(room_id="room-a", skus=["SKU-1"])
            )
        yield hub


class Producer(threading.Thread):
    """Records receipts at a warehouse, ten at a time, until stopped (a WMS at
    work while the hub is attacked); counts what it recorded during the attack."""

    def __init__(self, db: Path, attack: threading.Event) -> None:
        super().__init__(daemon=True)
        self.db, self.attack = db, attack
        self.stop = threading.Event()
        self.during_attack = 0

    def run(self) -> None:
        with AgentStore(self.db) as store:
            while not self.stop.wait(0.01):
                store.record_many([NewEvent(sku="SKU-1", kind=Kind.RECEIVE, quantity=1)] * 10)
                if self.attack.is_set():
                    self.during_attack += 10


def _code(call: Callable[[], Any]) -> str:
    try:
        call()
    except grpc.RpcError as e:
        return f"{e.code().name}: {e.details()}"
    return "OK"


def test_one_identity_over_its_quotas_is_refused_and_the_agents_stream_on(
    strict: HubThread, pki: Pki, tmp_path: Path
) -> None:
    agents = {
        w: tls_agent(pki, w, tmp_path / f"{w}.db", strict.mtls, tmp_path / f"{w}.log")
        for w in ("WH-LAX", "WH-FRA")
    }
    attack = threading.Event()
    producers = [Producer(tmp_path / f"{w}.db", attack) for w in agents]
    held: list[Any] = []
    try:
        for w, agent in agents.items():
            wait_until(lambda a=agent, w=w: _connected(a, tmp_path / f"{w}.db"), 60, f"{w} up")
        for producer in producers:
            producer.start()
        attack.set()

        # A stolen edge box's certificate opens stream after stream.
        evil = grpc.secure_channel(strict.mtls, cert_creds(pki.agent("WH-EVIL")))
        sync = sync_pb2_grpc.SyncServiceStub(evil)
        for _ in range(2):
            requests: queue.Queue[sync_pb2.SyncRequest | None] = queue.Queue()
            call = sync.Sync(iter(requests.get, None))
            held.append((call, requests))
        wait_until(lambda: _held_streams(strict) == 2, 30, "two held streams")
        extra = [
            _code(lambda: next(sync.Sync(iter([hello("WH-EVIL")]), timeout=15))) for _ in range(10)
        ]
        assert all(
            e.startswith("RESOURCE_EXHAUSTED") and "max_streams_per_identity=2" in e for e in extra
        ), extra

        # A token floods queries: 20 answered, the rest refused.
        flood = pki.token("flood", "inventory:read")
        with grpc.secure_channel(strict.token_target, token_creds(pki, flood)) as channel:
            stub = inventory_pb2_grpc.InventoryServiceStub(channel)
            request = inventory_pb2.GetStockRequest(skus=["SKU-1"])
            with ThreadPoolExecutor(8) as pool:
                outcomes = list(
                    pool.map(
                        lambda _: _code(lambda: stub.GetStock(request, timeout=15)), range(FLOOD)
                    )
                )
        assert outcomes.count("OK") == BURST
        refused = [o for o in outcomes if o != "OK"]
        assert len(refused) == FLOOD - BURST
        assert all(
            o.startswith("RESOURCE_EXHAUSTED") and "max_requests_per_s" in o for o in refused
        )

        # An overlay token holds three watches; a fourth, over gRPC or SSE, is refused.
        watch = pki.token("overlay", "rooms:watch:room-a")
        with grpc.secure_channel(strict.token_target, token_creds(pki, watch)) as channel:
            rooms = rooms_pb2_grpc.LiveRoomServiceStub(channel)
            watches = [rooms.Watch(rooms_pb2.WatchRequest(room_id="room-a")) for _ in range(3)]
            for w in watches:
                assert next(w).WhichOneof("message") == "snapshot"
            fourth = _code(
                lambda: next(rooms.Watch(rooms_pb2.WatchRequest(room_id="room-a"), timeout=15))
            )
            assert (
                fourth.startswith("RESOURCE_EXHAUSTED") and "max_watchers_per_identity=3" in fourth
            )
            headers = {"Authorization": f"Bearer {watch}"}
            assert http_get(strict.http_port, "/rooms/room-a/events", headers) == 429
            watches[0].cancel()  # a place comes free when a watch ends
            wait_until(
                lambda: (
                    _code(
                        lambda: next(
                            rooms.Watch(rooms_pb2.WatchRequest(room_id="room-a"), timeout=15)
                        )
                    )
                    == "OK"
                ),
                30,
                "a freed watcher place",
            )
            for w in watches[1:]:
                w.cancel()

        # Another client is served all along.
        shop = cert_creds(pki.client("shop", "inventory:read"))
        with grpc.secure_channel(strict.mtls, shop) as channel:
            stub = inventory_pb2_grpc.InventoryServiceStub(channel)
            for _ in range(BURST):
                stub.GetStock(inventory_pb2.GetStockRequest(skus=["SKU-1"]), timeout=15)

        # Every event both agents recorded meanwhile arrived, and neither was refused.
        for producer in producers:
            producer.stop.set()
            producer.join()
            assert producer.during_attack > 0
        for w, agent in agents.items():
            db = tmp_path / f"{w}.db"
            wait_until(
                lambda db=db, w=w: hub_event_ids(strict.db, w) == agent_event_ids(db),
                120,
                f"every event of {w} at the hub",
            )
            status = agent_status(db)
            assert status["last_error"] is None, status
            agent.check_alive()
    finally:
        for producer in producers:
            producer.stop.set()
        for call, requests in held:
            requests.put(None)
            call.cancel()
        for agent in agents.values():
            agent.stop()


def _connected(agent: Child, db: Path) -> bool:
    agent.check_alive()
    return bool(agent_status(db).get("connected"))


def _held_streams(hub: HubThread) -> int:
    from stocksync.auth import Identity
    from stocksync.hub.access import StreamKind

    assert hub.hub is not None
    return hub.hub.admission.held(Identity.agent("WH-EVIL"), StreamKind.AGENT_STREAM)
