"""Webhooks from a real hub to a real local receiver (an aiohttp server).

- oversold: a warehouse offline while the hub sells, back with a damage
  ADJUST, no other warehouse has the SKU → ``reservation.at_risk`` (after
  ``reservation.committed``, in order) with a valid signature;
- the receiver down when the event happens, then up → delivered once back;
  a subscription that keeps failing is reported once and slows no other;
- the hub killed with kill -9 before delivering → delivered after restart;
- a delivery the receiver refused comes again with the same event id and
  body; ``webhooks test`` and ``webhooks replay`` go through the outbox too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AGENT, HUB, AgentProcess, HubProcess, hub_watermark, read_only, run_cli
from conftest import wait_until as _wait_until
from shop_http import base, conforms, http, start_hub
from test_reservations_grpc import stock_warehouse
from webhook_receiver import Receiver, free_port

from stocksync.agent.store import AgentStore
from stocksync.events import Kind, NewEvent

SECRET = "whsec_3b1f0c9e27d54a6b"
FAST = "webhook_backoff_initial_s = 0.05\nwebhook_backoff_max_s = 0.5\n"


def wait_until(predicate: Any, what: str) -> Any:
    return _wait_until(predicate, 60, what)


def subscription(name: str, url: str, *events: str) -> str:
    listed = ", ".join(f'"{e}"' for e in events)
    return (
        f'[[webhooks]]\nname = "{name}"\nurl = "{url}"\nevents = [{listed}]\nsecret = "{SECRET}"\n'
    )


@contextlib.contextmanager
def receiving(port: int | None = None, started: bool = True) -> Iterator[Receiver]:
    receiver = Receiver(port)
    if started:
        receiver.start()
    try:
        yield receiver
    finally:
        receiver.close()


def cli(h: HubProcess, *args: str, check: bool = True) -> Any:
    return run_cli(HUB, "webhooks", *args, "--hub", h.target, "--insecure", check=check)


def deliveries(h: HubProcess) -> list[dict[str, Any]]:
    return json.loads(cli(h, "list", "--json", "--limit", "1000").stdout)  # type: ignore[no-any-return]


def sell(h: HubProcess, sku: str, qty: int, key: str) -> dict[str, Any]:
    """Reserve and pay over the JSON API; returns the committed reservation."""
    status, _, held = http(
        "POST",
        f"{base(h)}/v1/reservations",
        {"lines": [{"sku": sku, "qty": qty}]},
        {"Idempotency-Key": key},
    )
    assert status == 201, held
    status, _, paid = http("POST", f"{base(h)}/v1/reservations/{held['id']}/commit")
    assert status == 200 and paid["status"] == "COMMITTED", paid
    return paid  # type: ignore[no-any-return]


def stocked(db: Path, warehouse: str, **skus: int) -> None:
    with AgentStore(db) as store:
        store.claim(warehouse)
        store.record_many([NewEvent(s, Kind.RECEIVE, q) for s, q in skus.items()])


def synced(h: HubProcess, db: Path, warehouse: str) -> None:
    with AgentStore(db, read_only=True) as store:
        high = store.high_seq()
    wait_until(lambda: hub_watermark(h.db, warehouse) == high, f"{warehouse} in sync")


def test_an_oversold_order_is_reported_at_risk_with_a_valid_signature(tmp_path: Path) -> None:
    with receiving() as receiver:
        events = ("reservation.committed", "reservation.at_risk", "conflict.recorded")
        h = start_hub(tmp_path, FAST + subscription("shop", receiver.url, *events))
        lax, fra = tmp_path / "lax.db", tmp_path / "fra.db"
        stocked(lax, "WH-LAX", B=5)
        stocked(fra, "WH-FRA", A=4)  # nobody else has B
        la = AgentProcess("WH-LAX", lax, h.target, tmp_path / "lax.log").start()
        fr = AgentProcess("WH-FRA", fra, h.target, tmp_path / "fra.log").start()
        try:
            synced(h, lax, "WH-LAX")
            synced(h, fra, "WH-FRA")
            la.stop()  # WH-LAX goes offline; the hub goes on selling its stock
            order = sell(h, "B", 5, "order-b")
            [committed] = wait_until(
                lambda: receiver.events("reservation.committed"), "reservation.committed"
            )
            assert committed["data"]["warehouses"] == ["WH-LAX"]
            assert committed["data"]["reservation"]["id"] == order["id"]
            # Offline, WH-LAX found damage it reports when it comes back.
            run_cli(
                AGENT, "record", "adjust", "B", "-2", "--reason", "damage", "--db", str(lax)
            ).check_returncode()
            la = AgentProcess("WH-LAX", lax, h.target, tmp_path / "lax2.log").start()
            [at_risk] = wait_until(
                lambda: receiver.requests("reservation.at_risk"), "reservation.at_risk"
            )
            assert at_risk.signed_by(SECRET)
            assert not at_risk.signed_by("whsec_someone_else_entirely")
            event = at_risk.event
            assert at_risk.headers["Stocksync-Event-Id"] == event["id"]
            assert at_risk.headers["Stocksync-Event-Type"] == "reservation.at_risk"
            assert at_risk.headers["Content-Type"] == "application/json"
            conforms(event["data"]["reservation"], "Reservation")
            shown = event["data"]["reservation"]
            assert (shown["id"], shown["status"], shown["lines"][0]["at_risk"]) == (
                order["id"],
                "AT_RISK",
                2,
            )
            [conflict] = wait_until(
                lambda: receiver.events("conflict.recorded"), "conflict.recorded"
            )
            recorded = conforms(conflict["data"]["conflict"], "Conflict")
            assert (recorded["kind"], recorded["units"]) == ("oversold", 2)
            # In order for the reservation: committed, then at risk.
            types = [e["type"] for e in receiver.events()]
            assert types.index("reservation.committed") < types.index("reservation.at_risk")
            assert all(r.signed_by(SECRET) for r in receiver.received)
            _, _, listed = http("GET", f"{base(h)}/v1/conflicts?open=true")
            assert [c["id"] for c in listed["conflicts"]] == [conflict["data"]["conflict"]["id"]]
        finally:
            la.kill()
            fr.kill()
            h.kill()
    assert run_cli(HUB, "check", "--db", str(h.db)).returncode == 0


def test_a_receiver_down_gets_the_event_once_back_and_a_failing_one_slows_no_other(
    tmp_path: Path,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    with receiving(started=False) as receiver:
        h = start_hub(
            tmp_path,
            FAST
            + subscription("shop", receiver.url, "reservation.committed")
            + subscription("dead", dead, "reservation.committed"),
        )
        try:
            stock_warehouse(h.target, "WH-A", {"S": 10})
            first = sell(h, "S", 1, "down-1")
            # Down: the hub tries and retries.
            wait_until(
                lambda: any(
                    d["subscription"] == "shop" and d["attempts"] >= 2 and d["last_error"]
                    for d in deliveries(h)
                ),
                "failed attempts while the receiver is down",
            )
            receiver.start()
            [got] = wait_until(lambda: receiver.events("reservation.committed"), "delivery")
            assert got["data"]["reservation"]["id"] == first["id"]
            # Later events flow at once, though "dead" still fails all along.
            second = sell(h, "S", 2, "down-2")
            wait_until(lambda: len(receiver.events("reservation.committed")) == 2, "the next one")
            assert [e["data"]["reservation"]["id"] for e in receiver.events()] == [
                first["id"],
                second["id"],
            ]
            states = {(d["subscription"], d["state"]) for d in deliveries(h)}
            assert states == {("shop", "delivered"), ("dead", "pending")}
            listing = cli(h, "list").stdout
            assert "subscription dead: FAILING" in listing
            assert "subscription shop: ok, 2 delivered" in listing
            # One log line for the dead one's whole incident, however many attempts.
            log = h.log.read_text()
            assert log.count("webhook dead: ") == 1, log
            assert log.count("webhook shop: delivering again") == 1
        finally:
            h.kill()


def test_an_event_recorded_before_a_kill_9_is_delivered_after_the_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    settings = FAST + subscription("shop", url, "reservation.committed")
    h = start_hub(tmp_path, settings)
    stock_warehouse(h.target, "WH-A", {"S": 10})
    paid = [sell(h, "S", 1, f"kill-{i}")["id"] for i in range(3)]
    h.kill()  # nobody was listening: nothing was delivered
    with contextlib.closing(read_only(h.db)) as conn:
        recorded = [
            r[0] for r in conn.execute("SELECT event_id FROM webhook_events ORDER BY id").fetchall()
        ]
    assert len(recorded) == 3
    with receiving(port) as receiver:
        h.start()
        try:
            wait_until(lambda: len(receiver.events()) == 3, "delivery after the restart")
            assert [e["id"] for e in receiver.events()] == recorded
            assert [e["data"]["reservation"]["id"] for e in receiver.events()] == paid
            assert all(r.signed_by(SECRET) for r in receiver.received)
        finally:
            h.kill()


def test_a_refused_delivery_comes_again_with_the_same_event_id(tmp_path: Path) -> None:
    with receiving() as receiver:
        h = start_hub(tmp_path, FAST + subscription("shop", receiver.url, "reservation.committed"))
        try:
            receiver.answer = 500
            test = cli(h, "test", "--wait", "0")
            event_id = test.stdout.split()[0]
            assert event_id.startswith("evt_") and "queued for shop" in test.stdout
            wait_until(lambda: len(receiver.requests("webhook.test")) >= 2, "a retry")
            receiver.answer = 200
            wait_until(lambda: receiver.events("webhook.test"), "the test event taken")
            sent = receiver.requests("webhook.test")
            assert {r.headers["Stocksync-Event-Id"] for r in sent} == {event_id}
            assert len({r.body for r in sent}) == 1 and all(r.signed_by(SECRET) for r in sent)
            # webhooks test waits for the receiver, and says so.
            assert "delivered" in cli(h, "test").stdout
            # Replay: the same events again, same ids and bodies, in order.
            before = len(receiver.received)
            replayed = cli(h, "replay", event_id, "--subscription", "shop")
            assert replayed.stdout.startswith("2 deliveries")
            wait_until(lambda: len(receiver.received) == before + 2, "the replay")
            again = receiver.received[before]
            assert (again.headers["Stocksync-Event-Id"], again.body) == (event_id, sent[0].body)
            # Bad requests are one line and a non-zero exit.
            for args, message in [
                (("replay", "evt_nope"), "NOT_FOUND: no webhook event evt_nope"),
                (("test", "--subscription", "nope"), "no webhook subscription 'nope'"),
                (("list", "--subscription", "shop", "--pending"), ""),
            ]:
                result = cli(h, *args, check=False)
                if message:
                    assert result.returncode == 1 and message in result.stderr, result.stderr
                    assert "Traceback" not in result.stderr
                else:
                    assert result.returncode == 0 and "no deliveries" in result.stdout
        finally:
            h.kill()


@pytest.mark.parametrize("command", ["list", "test", "replay"])
def test_webhook_commands_say_when_no_hub_answers(command: str) -> None:
    args = [command] + (["evt_1"] if command == "replay" else [])
    result = run_cli(HUB, "webhooks", *args, "--hub", f"127.0.0.1:{free_port()}", "--insecure")
    assert result.returncode == 1 and "no hub answering" in result.stderr
