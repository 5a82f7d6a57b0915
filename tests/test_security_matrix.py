"""Who may do what, over real TLS sockets (DESIGN §9; README, Security).

A real hub (mutual TLS on one port, TLS for bearer tokens on another, HTTP
for rooms) with stock at WH-LAX and two live rooms. Every case makes one
call a caller should not be able to make, and must be refused with its
code while every table of the store stays byte-for-byte the same. A few
cases a caller *may* make run the same way, so the matrix shows that the
refusals come from the rules and not from a hub that refuses everything.

The matrix is printed at the end of the module (case, expected code,
observed code, rows written).
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterator

import grpc
import pytest
from securehub import (
    HubThread,
    Pki,
    cert_creds,
    dump,
    hello,
    http_call,
    hub_thread,
    rows_written,
    stock_warehouse,
    token_creds,
)
from securehub import http_get as http_status

from stocksync.v1 import (
    inventory_pb2,
    inventory_pb2_grpc,
    rooms_pb2,
    rooms_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
)

RESULTS: list[tuple[str, str, str, int]] = []


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = Pki.make(tmp_path_factory.mktemp("pki"))
    pki.client("admin", "admin")
    pki.client("shop", "inventory:reserve")
    pki.token("overlay-a", "rooms:watch:room-a")
    pki.token("shop-token", "inventory:reserve")
    return pki


@pytest.fixture(scope="module")
def hub(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubThread]:
    with hub_thread(pki, tmp_path_factory.mktemp("hub") / "hub.db") as hub:
        stock_warehouse(hub.mtls, cert_creds(pki.agent("WH-LAX")), "WH-LAX", {"LIP-RED": 50})
        with grpc.secure_channel(hub.mtls, cert_creds(pki.client("admin"))) as channel:
            rooms = rooms_pb2_grpc.LiveRoomServiceStub(channel)
            for room in ("room-a", "room-b"):
                rooms.SetFeatured(rooms_pb2.SetFeaturedRequest(room_id=room, skus=["LIP-RED"]))
        yield hub


@pytest.fixture(scope="module", autouse=True)
def matrix(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the matrix once every case has run."""
    yield
    if not RESULTS:
        return
    lines = [
        "",
        "| case | expected | observed | rows written |",
        "|---|---|---|---|",
        *(f"| {c} | {e} | {o} | {n} |" for c, e, o, n in RESULTS),
    ]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n".join(lines), flush=True)


# -- the calls ------------------------------------------------------------------------


def _code(call: Callable[[], object]) -> str:
    try:
        call()
    except grpc.RpcError as e:
        return str(e.code().name)
    return "OK"


def reserve(target: str, creds: grpc.ChannelCredentials, key: str) -> str:
    request = inventory_pb2.ReserveRequest(
        lines=[inventory_pb2.ReserveLine(sku="LIP-RED", qty=1)], idempotency_key=key
    )
    with grpc.secure_channel(target, creds) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        return _code(lambda: stub.Reserve(request, timeout=15))


def set_featured(target: str, creds: grpc.ChannelCredentials) -> str:
    request = rooms_pb2.SetFeaturedRequest(room_id="room-a", skus=["LIP-RED", "OTHER"])
    with grpc.secure_channel(target, creds) as channel:
        stub = rooms_pb2_grpc.LiveRoomServiceStub(channel)
        return _code(lambda: stub.SetFeatured(request, timeout=15))


def watch(target: str, creds: grpc.ChannelCredentials, room: str) -> str:
    """Open a Watch and read its first message (the snapshot) or its refusal."""
    with grpc.secure_channel(target, creds) as channel:
        call = rooms_pb2_grpc.LiveRoomServiceStub(channel).Watch(
            rooms_pb2.WatchRequest(room_id=room), timeout=15
        )
        code = _code(lambda: next(call))
        call.cancel()
        return code


def say_hello(target: str, creds: grpc.ChannelCredentials, warehouse: str) -> str:
    """Open a Sync stream, say Hello as ``warehouse``, read the answer, leave."""
    requests: queue.Queue[sync_pb2.SyncRequest | None] = queue.Queue()
    requests.put(hello(warehouse, epoch="e1", high_seq=1))
    with grpc.secure_channel(target, creds) as channel:
        call = sync_pb2_grpc.SyncServiceStub(channel).Sync(iter(requests.get, None), timeout=15)

        def first() -> None:
            reply = next(call)
            if reply.WhichOneof("message") == "goodbye":
                next(call)  # the status follows the Goodbye
            assert reply.WhichOneof("message") == "welcome"

        code = _code(first)
        requests.put(None)
        call.cancel()
        return code


def json_api(hub: HubThread, method: str, path: str, token: str | None, key: str = "") -> str:
    """One JSON API call (a reservation of 1 LIP-RED for POST); its HTTP status.

    A 401 must say how to authenticate (``WWW-Authenticate``), as a problem document."""
    headers = {"Idempotency-Key": key} if key else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"lines": [{"sku": "LIP-RED", "qty": 1}]} if method == "POST" else None
    status, answer = http_call(hub.http_port, method, path, headers, body)
    if status == 401:
        assert answer.get("WWW-Authenticate", "").startswith("Bearer")
    if status >= 400:
        assert answer.get("Content-Type", "").startswith("application/problem+json")
    return str(status)


# -- the matrix ---------------------------------------------------------------------------

Case = Callable[[Pki, HubThread], str]

CASES: dict[str, tuple[str, Case]] = {
    # The TLS handshake refuses these: the call never reaches a service.
    "no client certificate (mTLS port)": (
        "UNAVAILABLE",
        lambda p, h: reserve(h.mtls, token_creds(p, None), "k-1"),
    ),
    "certificate from a rogue CA": (
        "UNAVAILABLE",
        lambda p, h: reserve(h.mtls, cert_creds(p.rogue_agent("WH-LAX")), "k-2"),
    ),
    "expired certificate": (
        "UNAVAILABLE",
        lambda p, h: say_hello(h.mtls, cert_creds(p.odd_agent("old", "WH-LAX", -30, -1)), "WH-LAX"),
    ),
    "not-yet-valid certificate": (
        "UNAVAILABLE",
        lambda p, h: say_hello(h.mtls, cert_creds(p.odd_agent("new", "WH-LAX", 1, 30)), "WH-LAX"),
    ),
    # The gate refuses these.
    "WH-LAX's certificate says Hello as WH-FRA": (
        "PERMISSION_DENIED",
        lambda p, h: say_hello(h.mtls, cert_creds(p.agent("WH-LAX")), "WH-FRA"),
    ),
    "agent certificate calls Reserve": (
        "PERMISSION_DENIED",
        lambda p, h: reserve(h.mtls, cert_creds(p.agent("WH-LAX")), "k-3"),
    ),
    "agent certificate calls SetFeatured": (
        "PERMISSION_DENIED",
        lambda p, h: set_featured(h.mtls, cert_creds(p.agent("WH-LAX"))),
    ),
    "shop certificate (inventory:reserve) calls SetFeatured": (
        "PERMISSION_DENIED",
        lambda p, h: set_featured(h.mtls, cert_creds(p.client("shop"))),
    ),
    "rooms:watch token calls Reserve": (
        "PERMISSION_DENIED",
        lambda p, h: reserve(h.token_target, token_creds(p, p.tokens["overlay-a"]), "k-4"),
    ),
    "watch token for room A watches room B": (
        "PERMISSION_DENIED",
        lambda p, h: watch(h.token_target, token_creds(p, p.tokens["overlay-a"]), "room-b"),
    ),
    "client certificate calls Sync": (
        "PERMISSION_DENIED",
        lambda p, h: say_hello(h.mtls, cert_creds(p.client("admin")), "WH-LAX"),
    ),
    "wrong token": (
        "UNAUTHENTICATED",
        lambda p, h: reserve(h.token_target, token_creds(p, "sst_" + "A" * 43), "k-5"),
    ),
    "malformed token": (
        "UNAUTHENTICATED",
        lambda p, h: reserve(h.token_target, token_creds(p, "letmein"), "k-6"),
    ),
    "no token (token port)": (
        "UNAUTHENTICATED",
        lambda p, h: reserve(h.token_target, token_creds(p, None), "k-7"),
    ),
    "agent certificate on the token port": (
        "UNAUTHENTICATED",  # the port asks for no certificate: the agent is nobody there
        lambda p, h: say_hello(h.token_target, cert_creds(p.agent("WH-LAX")), "WH-LAX"),
    ),
    "SSE, no token": ("401", lambda p, h: http_status(h.http_port, "/rooms/room-a/events")),
    "SSE, wrong token": (
        "401",
        lambda p, h: http_status(h.http_port, "/rooms/room-a/events?token=sst_" + "B" * 43),
    ),
    "SSE, room A's token for room B (query)": (
        "403",
        lambda p, h: http_status(
            h.http_port, f"/rooms/room-b/events?token={p.tokens['overlay-a']}"
        ),
    ),
    "SSE, a reserve token (header)": (
        "403",
        lambda p, h: http_status(
            h.http_port,
            "/rooms/room-a/events",
            {"Authorization": f"Bearer {p.tokens['shop-token']}"},
        ),
    ),
    "overlay, room A's token for room B": (
        "403",
        lambda p, h: http_status(
            h.http_port, f"/rooms/room-b/overlay?token={p.tokens['overlay-a']}"
        ),
    ),
    "JSON API reserve, no token": (
        "401",
        lambda p, h: json_api(h, "POST", "/v1/reservations", None, "k-j1"),
    ),
    "JSON API reserve, a watch token": (
        "403",
        lambda p, h: json_api(h, "POST", "/v1/reservations", p.tokens["overlay-a"], "k-j2"),
    ),
    "JSON API conflicts, the shop's token": (
        "403",
        lambda p, h: json_api(h, "GET", "/v1/conflicts", p.tokens["shop-token"]),
    ),
    # Allowed: the same calls by the callers they are for.
    "allowed: WH-LAX says Hello as WH-LAX": (
        "OK",
        lambda p, h: say_hello(h.mtls, cert_creds(p.agent("WH-LAX")), "WH-LAX"),
    ),
    "allowed: a certificate made as the expired one, valid now": (
        "OK",
        lambda p, h: say_hello(h.mtls, cert_creds(p.odd_agent("now", "WH-LAX", -1, 30)), "WH-LAX"),
    ),
    "allowed: shop certificate calls Reserve": (
        "OK",
        lambda p, h: reserve(h.mtls, cert_creds(p.client("shop")), "k-shop-cert"),
    ),
    "allowed: shop token calls Reserve": (
        "OK",
        lambda p, h: reserve(h.token_target, token_creds(p, p.tokens["shop-token"]), "k-shop"),
    ),
    "allowed: watch token for room A watches room A": (
        "OK",
        lambda p, h: watch(h.token_target, token_creds(p, p.tokens["overlay-a"]), "room-a"),
    ),
    "allowed: JSON API reserve, the shop's token": (
        "201",
        lambda p, h: json_api(h, "POST", "/v1/reservations", p.tokens["shop-token"], "k-j3"),
    ),
    "allowed: SSE with room A's token (header)": (
        "200",
        lambda p, h: http_status(
            h.http_port,
            "/rooms/room-a/events",
            {"Authorization": f"Bearer {p.tokens['overlay-a']}"},
        ),
    ),
    "allowed: overlay with room A's token (query)": (
        "200",
        lambda p, h: http_status(
            h.http_port, f"/rooms/room-a/overlay?token={p.tokens['overlay-a']}"
        ),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_security_matrix(case: str, pki: Pki, hub: HubThread) -> None:
    expected, call = CASES[case]
    before = dump(hub.db)
    observed = str(call(pki, hub))
    after = dump(hub.db)
    written = rows_written(before, after)
    RESULTS.append((case, expected, observed, written))
    assert observed == expected
    if not case.startswith("allowed"):
        assert after == before, f"{case}: {written} rows written"
    elif "reserve" in case.lower():
        assert written > 0  # the dump does see writes


def test_rooms_are_listed_only_to_callers_who_may_see_them(pki: Pki, hub: HubThread) -> None:
    def listed(target: str, creds: grpc.ChannelCredentials) -> list[str]:
        with grpc.secure_channel(target, creds) as channel:
            stub = rooms_pb2_grpc.LiveRoomServiceStub(channel)
            reply = stub.ListRooms(rooms_pb2.ListRoomsRequest(), timeout=15)
        return sorted(r.room_id for r in reply.rooms)

    assert listed(hub.mtls, cert_creds(pki.client("admin"))) == ["room-a", "room-b"]
    assert listed(hub.token_target, token_creds(pki, pki.tokens["overlay-a"])) == ["room-a"]
