"""The JSON API (/v1) of a real hub, driven by a real HTTP client.

- a whole checkout: stock, reserve (idempotent), commit, the pick at a real
  agent, the SHIP naming the reservation, settled; every answer matches the
  OpenAPI document and what the CLI's ``--json`` prints, and the shop's
  receiver hears ``reservation.committed`` then ``reservation.shipped``;
- every bad input of the gRPC tests gets, over HTTP, the same status (by
  the one table), the same detail, and leaves the same table dump; inputs
  only JSON can get wrong are refused with a problem document too;
- the OpenAPI document is valid and names exactly the /v1 routes the app serves.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import AGENT, HUB, AgentProcess, HubProcess, dump_hub, run_cli, wait_until
from openapi_spec_validator import validate
from shop_http import OPENAPI, base, conforms, http, problem, start_hub
from test_reservations_grpc import BAD, stock_warehouse
from webhook_receiver import Receiver

from stocksync.agent.store import AgentStore
from stocksync.config import HubConfig
from stocksync.errors import Status
from stocksync.events import Kind, NewEvent
from stocksync.hub.http import HTTP_STATUS
from stocksync.hub.server import Hub
from stocksync.v1 import inventory_pb2, inventory_pb2_grpc

SECRET = "whsec_0f5d6c3b2a194e87"


def cli(hub: HubProcess, *args: str) -> Any:
    out = run_cli(HUB, *args, "--hub", hub.target, "--insecure", "--json", check=True)
    return json.loads(out.stdout)


def without_last_seen(stock: dict[str, Any]) -> dict[str, Any]:
    """The hub turns its own clock into wall clock at each answer: milliseconds apart."""
    for w in stock["warehouses"].values():
        w.pop("last_seen_unix_ms")
    return stock


def test_a_whole_checkout_over_http(tmp_path: Path) -> None:
    receiver = Receiver().start()
    h = start_hub(
        tmp_path,
        f'[[webhooks]]\nname = "shop"\nurl = "{receiver.url}"\nsecret = "{SECRET}"\n'
        'events = ["reservation.committed", "reservation.shipped"]\n',
    )
    db = tmp_path / "lax.db"
    with AgentStore(db) as store:
        store.claim("WH-LAX")
        store.record_many([NewEvent("LIP", Kind.RECEIVE, 6)])
    agent = AgentProcess("WH-LAX", db, h.target, tmp_path / "lax.log").start()
    url = base(h)
    try:
        wait_until(
            lambda: http("GET", f"{url}/v1/stock?sku=LIP")[2]["skus"][0]["sellable"] == 6,
            60,
            "the warehouse's stock",
        )
        status, _, body = http("GET", f"{url}/v1/stock?sku=LIP&sku=GONE")
        assert status == 200
        lip, gone = [conforms(s, "Stock") for s in body["skus"]]
        assert (lip["on_hand"], lip["warehouses"]["WH-LAX"]["available"]) == (6, 6)
        assert (gone["sku"], gone["sellable"], gone["warehouses"]) == ("GONE", 0, {})
        assert without_last_seen(lip) == without_last_seen(cli(h, "stock", "LIP"))

        # The buyer taps Buy; the shop's retry carries the same key.
        order = {"lines": [{"sku": "LIP", "qty": 2}], "room": "live-a", "ttl_seconds": 600}
        key = {"Idempotency-Key": "order-1001"}
        status, headers, held = http("POST", f"{url}/v1/reservations", order, key)
        assert status == 201, held
        conforms(held, "Reservation")
        assert headers["Location"] == f"/v1/reservations/{held['id']}"
        assert (held["status"], held["room"], held["key"]) == ("HELD", "live-a", "order-1001")
        assert 0 < held["expires_in_s"] <= 600
        status, _, again = http("POST", f"{url}/v1/reservations", order, key)
        assert (status, again["id"]) == (201, held["id"])
        assert http("GET", f"{url}/v1/stock?sku=LIP")[2]["skus"][0]["held"] == 2

        # Paid.
        status, _, paid = http("POST", f"{url}/v1/reservations/{held['id']}/commit")
        assert status == 200
        conforms(paid, "Reservation")
        assert paid["status"] == "COMMITTED" and paid["expires_in_s"] is None
        assert paid["lines"][0]["allocations"] == {"WH-LAX": {"qty": 2, "shipped": 0}}

        # The warehouse picks and ships it, naming the reservation.
        def picks() -> Any:
            return json.loads(run_cli(AGENT, "picks", "--db", str(db), "--json").stdout)

        [pick] = wait_until(picks, 60, "the pick at the warehouse")
        assert (pick["reservation_id"], pick["sku"], pick["qty"]) == (held["id"], "LIP", 2)
        run_cli(
            AGENT, "record", "ship", "LIP", "2", "--reservation", held["id"], "--db", str(db)
        ).check_returncode()
        settled = wait_until(
            lambda: (
                (r := http("GET", f"{url}/v1/reservations/{held['id']}")[2])["status"] == "SETTLED"
                and r
            ),
            60,
            "settlement",
        )
        conforms(settled, "Reservation")
        assert settled["lines"][0]["allocations"] == {"WH-LAX": {"qty": 2, "shipped": 2}}
        assert settled == cli(h, "reservation", held["id"])
        stock = http("GET", f"{url}/v1/stock?sku=LIP")[2]["skus"][0]
        assert (stock["on_hand"], stock["held"], stock["committed"], stock["sellable"]) == (
            4,
            0,
            0,
            4,
        )
        # A settled order cannot be cancelled; nothing went wrong on the way.
        status, headers, body = http("POST", f"{url}/v1/reservations/{held['id']}/release")
        assert problem(status, headers, body)["code"] == "FAILED_PRECONDITION"
        assert status == 409 and "settled" in body["detail"]
        status, _, listed = http("GET", f"{url}/v1/conflicts")
        assert (status, listed) == (200, {"conflicts": []})
        # The shop heard of the payment and of the parcel leaving, in that order.
        told = wait_until(lambda: len(receiver.events()) == 2 and receiver.events(), 60, "webhooks")
        assert [e["type"] for e in told] == ["reservation.committed", "reservation.shipped"]
        assert told[0]["data"]["reservation"] == paid
        assert told[1]["data"]["shipped"] == [{"sku": "LIP", "warehouse": "WH-LAX", "qty": 2}]
        assert told[1]["data"]["reservation"] == settled
        assert all(r.signed_by(SECRET) for r in receiver.received)
    finally:
        agent.kill()
        h.kill()
        receiver.close()
    assert run_cli(HUB, "check", "--db", str(h.db)).returncode == 0


@pytest.fixture(scope="module")
def stocked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """The gRPC tests' hub: three warehouses, CALM 15 sellable, HOT-1 100."""
    h = start_hub(tmp_path_factory.mktemp("http-hub"))
    for warehouse, units in (("WH-LAX", 40), ("WH-FRA", 35), ("WH-CGK", 25)):
        stock_warehouse(h.target, warehouse, {"HOT-1": units, "HOT-2": units, "CALM": 5})
    yield h
    h.kill()


def stored(h: HubProcess) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the hub's store but its own clock, which it saves every second anyway."""
    dump = dump_hub(h.db)
    dump["meta"] = [row for row in dump["meta"] if row[0] != "hub_time_ms"]
    return dump


def as_http(method: str, request: Any) -> tuple[str, str, Any, dict[str, str]]:
    """The JSON API request that says what the gRPC ``request`` says."""
    if method == "Reserve":
        body: dict[str, Any] = {"lines": [{"sku": ln.sku, "qty": ln.qty} for ln in request.lines]}
        if request.room_id:
            body["room"] = request.room_id
        if request.ttl_seconds:
            body["ttl_seconds"] = request.ttl_seconds
        key = {"Idempotency-Key": request.idempotency_key} if request.idempotency_key else {}
        return "POST", "/v1/reservations", body, key
    if method in ("Commit", "Release"):
        action = method.lower()
        return "POST", f"/v1/reservations/{request.reservation_id}/{action}", None, {}
    if method == "GetReservation":
        return "GET", f"/v1/reservations/{request.reservation_id}", None, {}
    assert method == "ListConflicts"
    return "GET", f"/v1/conflicts?limit={request.limit}", None, {}


# Cases the JSON API has no route for (quotas are set by operators over gRPC),
# or cannot express (an empty id in a path): see the next test for the latter.
NOT_OVER_HTTP = {"quota-over-sellable", "commit-empty-id"}


@pytest.mark.parametrize("case", sorted(set(BAD) - NOT_OVER_HTTP))
def test_the_grpc_bad_inputs_get_the_same_refusal_over_http(stocked: HubProcess, case: str) -> None:
    method, request, code, fragment = BAD[case]
    before = stored(stocked)
    with grpc.insecure_channel(stocked.target) as channel, pytest.raises(grpc.RpcError) as caught:
        getattr(inventory_pb2_grpc.InventoryServiceStub(channel), method)(request, timeout=10)
    err: Any = caught.value
    assert err.code().name == code
    verb, path, body, headers = as_http(method, request)
    status, response_headers, answer = http(verb, base(stocked) + path, body, headers)
    problem(status, response_headers, answer)
    assert status == HTTP_STATUS[Status[code]]
    assert (answer["code"], answer["detail"]) == (code, err.details())
    assert fragment in answer["detail"]
    assert stored(stocked) == before


def test_a_key_reused_with_other_lines_is_refused_the_same_way(stocked: HubProcess) -> None:
    url = base(stocked) + "/v1/reservations"
    first = {"lines": [{"sku": "CALM", "qty": 1}]}
    status, _, held = http("POST", url, first, {"Idempotency-Key": "http-reuse"})
    assert status == 201
    before = stored(stocked)
    other = {"lines": [{"sku": "CALM", "qty": 2}]}
    status, headers, body = http("POST", url, other, {"Idempotency-Key": "http-reuse"})
    assert problem(status, headers, body)["code"] == "INVALID_ARGUMENT"
    assert held["id"] in body["detail"] and "other lines" in body["detail"]
    with grpc.insecure_channel(stocked.target) as channel, pytest.raises(grpc.RpcError) as caught:
        inventory_pb2_grpc.InventoryServiceStub(channel).Reserve(
            inventory_pb2.ReserveRequest(
                lines=[inventory_pb2.ReserveLine(sku="CALM", qty=2)], idempotency_key="http-reuse"
            ),
            timeout=10,
        )
    assert caught.value.details() == body["detail"]  # type: ignore[attr-defined]
    assert stored(stocked) == before
    status, _, released = http("POST", f"{url}/{held['id']}/release")
    assert (status, released["status"], released["reason"]) == (200, "RELEASED", "released")


HTTP_ONLY = {
    "not-json": ("POST", "/v1/reservations", b"{lines:", "request body is not JSON"),
    "not-an-object": ("POST", "/v1/reservations", b"[1, 2]", "must be a JSON object"),
    "lines-not-a-list": ("POST", "/v1/reservations", {"lines": "CALM"}, "lines must be a list"),
    "line-not-an-object": ("POST", "/v1/reservations", {"lines": ["CALM"]}, "lines[0] must be"),
    "qty-a-string": (
        "POST",
        "/v1/reservations",
        {"lines": [{"sku": "CALM", "qty": "2"}]},
        'qty must be an integer, got "2"',
    ),
    "qty-a-fraction": (
        "POST",
        "/v1/reservations",
        {"lines": [{"sku": "CALM", "qty": 1.5}]},
        "qty must be an integer, got 1.5",
    ),
    "qty-negative": (
        "POST",
        "/v1/reservations",
        {"lines": [{"sku": "CALM", "qty": -1}]},
        "qty of CALM must be 1 to 100,000, got -1",
    ),
    "qty-huge": (
        "POST",
        "/v1/reservations",
        {"lines": [{"sku": "CALM", "qty": 10**30}]},
        "qty of CALM must be 1 to 100,000",
    ),
    "sku-a-number": ("POST", "/v1/reservations", {"lines": [{"sku": 7, "qty": 1}]}, "sku must be"),
    "unknown-field": (
        "POST",
        "/v1/reservations",
        {"lines": [{"sku": "CALM", "qty": 1}], "rooom": "x"},
        "unknown field 'rooom'",
    ),
    "ttl-negative": (
        "POST",
        "/v1/reservations",
        {"lines": [{"sku": "CALM", "qty": 1}], "ttl_seconds": -5},
        "ttl must be 1 s to 86400 s, got -5 s",
    ),
    "ttl-a-string": (
        "POST",
        "/v1/reservations",
        {"lines": [{"sku": "CALM", "qty": 1}], "ttl_seconds": "60"},
        "ttl_seconds must be an integer",
    ),
    "body-too-large": ("POST", "/v1/reservations", b" " * 70_000, "larger than 65,536 bytes"),
    "no-sku": ("GET", "/v1/stock", None, "name at least one SKU"),
    "too-many-skus": (
        "GET",
        "/v1/stock?" + urllib.parse.urlencode([("sku", f"S-{i}") for i in range(1001)]),
        None,
        "at most 1000 SKUs",
    ),
    "bad-sku-query": ("GET", "/v1/stock?sku=a%20b", None, "sku"),
    "bad-room-query": ("GET", "/v1/stock?sku=CALM&room=a%20b", None, "room"),
    "limit-not-a-number": ("GET", "/v1/conflicts?limit=ten", None, "limit must be an integer"),
    "open-not-a-bool": ("GET", "/v1/conflicts?open=maybe", None, "open must be true or false"),
    "long-id": ("GET", "/v1/reservations/" + "R" * 300, None, "longer than 128 characters"),
}


@pytest.mark.parametrize("case", sorted(HTTP_ONLY))
def test_what_only_json_can_get_wrong_is_refused_and_changes_nothing(
    stocked: HubProcess, case: str
) -> None:
    verb, path, body, fragment = HTTP_ONLY[case]
    before = stored(stocked)
    raw = body if isinstance(body, bytes) else None
    headers = {"Idempotency-Key": f"k-{case}"}
    status, response_headers, answer = http(
        verb, base(stocked) + path, None if raw else body, headers, raw
    )
    assert status == 400, answer
    assert problem(status, response_headers, answer)["code"] == "INVALID_ARGUMENT"
    assert fragment in answer["detail"], answer["detail"]
    assert stored(stocked) == before


def test_unknown_routes_are_problem_documents_too(stocked: HubProcess) -> None:
    before = stored(stocked)
    for verb, path in [
        ("POST", "/v1/reservations//commit"),  # an empty id cannot be said in a path
        ("GET", "/v1/nothing"),
        ("DELETE", "/v1/reservations/R-1"),
    ]:
        status, headers, body = http(verb, base(stocked) + path, {} if verb == "POST" else None)
        assert status == 404 and problem(status, headers, body)["code"] == "NOT_FOUND", path
    assert stored(stocked) == before


def test_stock_of_many_skus_fits_in_one_get(stocked: HubProcess) -> None:
    skus = [f"S-{i:04d}-{'x' * 56}" for i in range(1000)]  # 1,000 SKUs of 64 characters
    query = urllib.parse.urlencode([("sku", s) for s in skus])
    status, _, body = http("GET", f"{base(stocked)}/v1/stock?{query}")
    assert status == 200
    assert [s["sku"] for s in body["skus"]] == skus


def test_conflicts_answer_in_the_clis_shape(stocked: HubProcess) -> None:
    status, _, body = http("GET", f"{base(stocked)}/v1/conflicts?open=true&limit=5")
    assert status == 200
    assert body["conflicts"] == cli(stocked, "conflicts", "--open", "--limit", "5")


def test_the_openapi_document_is_valid_and_names_exactly_the_routes(tmp_path: Path) -> None:
    validate(OPENAPI)
    config = HubConfig(
        listen="127.0.0.1:0", http="127.0.0.1:0", db=str(tmp_path / "hub.db"), insecure=True
    )

    async def served() -> set[tuple[str, str]]:
        hub = Hub(config)
        await hub.start()
        try:
            assert hub.http is not None
            routes = {
                (route.method, route.resource.canonical)
                for route in hub.http.runner.app.router.routes()
                if route.resource is not None and route.resource.canonical.startswith("/v1/")
            }
            status, headers, body = await asyncio.to_thread(
                http, "GET", f"http://127.0.0.1:{hub.http_port}/v1/openapi.json"
            )
            assert (status, body) == (200, OPENAPI)
            assert headers["Content-Type"].startswith("application/json")
        finally:
            await hub.stop()
        return routes - {("HEAD", path) for _, path in routes}

    documented = {
        (method.upper(), path)
        for path, operations in OPENAPI["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert asyncio.run(served()) == documented


def test_a_body_sent_in_many_chunks_is_read_whole(stocked: HubProcess) -> None:
    body = json.dumps({"lines": [{"sku": "CALM", "qty": 1}]}).encode()
    padded = body[:-1] + b" " * 40_000 + b"}"

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(padded), 4000):
            yield padded[i : i + 4000]
            time.sleep(0.02)  # so the hub gets the body in several reads

    request = urllib.request.Request(
        base(stocked) + "/v1/reservations",
        data=pieces(),  # an iterable: urllib sends it chunked, piece by piece
        method="POST",
        headers={"Idempotency-Key": "chunked-1", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        held = json.loads(response.read())
    assert (response.status, held["status"], held["lines"][0]["qty"]) == (201, "HELD", 1)
    http("POST", f"{base(stocked)}/v1/reservations/{held['id']}/release")
