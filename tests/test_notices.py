"""Webhook events read off the ledger's changes (hub/notices.py), the
signature scheme and the subscriptions' configuration — no I/O."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stocksync.config import ConfigError, HubConfig, load
from stocksync.events import EventRow, Kind
from stocksync.hub.ledger import Changes, Ledger
from stocksync.hub.notices import Notices, OutboxEvent
from stocksync.hub.stock import Freshness, StalenessPolicy, StockBook
from stocksync.webhooks import EVENT_TYPES, WebhookSubscription, parse_subscriptions, sign, verify

SECRET = "whsec-0123456789abcdef"


def ids() -> Iterator[str]:
    for n in itertools.count(1):
        yield f"{n:04d}"


class Shop:
    """A ledger, and the notices a subscription to every event gets from it."""

    def __init__(self, events: tuple[str, ...] = EVENT_TYPES, **stock: dict[str, int]) -> None:
        self.book = StockBook(StalenessPolicy(60_000, 0.5, 300_000))
        self.ledger = Ledger(self.book, ids())
        sub = WebhookSubscription("http://shop.test/hook", events, SECRET, "shop")
        self.notices = Notices([sub], ids())
        self.seq = 0
        for warehouse, skus in stock.items():
            self.book.seen(warehouse, 0)
            for sku, qty in skus.items():
                self.book.add_on_hand(warehouse, sku, qty)

    def told(self, changes: Changes | None, now: int = 0) -> list[dict[str, Any]]:
        events = self.notices.derive(changes if changes is not None else Changes(), now, 1)
        assert all(e.subscriptions == ("shop",) for e in events)
        return [json.loads(e.body) for e in events]

    def ship(self, warehouse: str, sku: str, qty: int, rid: str) -> Changes:
        self.seq += 1
        row = EventRow(self.seq, f"e{self.seq}", sku, int(Kind.SHIP), qty, -qty, "", rid, 0, 0)
        return self.ledger.apply_events(warehouse, [row], 0)

    def adjust(self, warehouse: str, sku: str, delta: int) -> Changes:
        self.seq += 1
        row = EventRow(self.seq, f"e{self.seq}", sku, int(Kind.ADJUST), delta, delta, "", "", 0, 0)
        return self.ledger.apply_events(warehouse, [row], 0)


def test_a_paid_order_is_committed_then_shipped_and_nothing_else() -> None:
    shop = Shop(WH_A={"LIP": 5}, WH_B={"LIP": 1})
    r, changes = shop.ledger.reserve([("LIP", 3)], "live-a", "k1", None, 0)
    assert shop.told(changes) == []  # a hold is the shop's own doing
    _, changes = shop.ledger.commit(r.id, 0)
    [committed] = shop.told(changes)
    assert committed["type"] == "reservation.committed"
    assert committed["id"] == "evt_0001"
    assert committed["data"]["warehouses"] == ["WH_A"]
    assert committed["data"]["reservation"]["lines"][0]["allocations"] == {
        "WH_A": {"qty": 3, "shipped": 0}
    }
    [shipped] = shop.told(shop.ship("WH_A", "LIP", 2, r.id))
    assert shipped["type"] == "reservation.shipped"
    assert shipped["data"]["shipped"] == [{"sku": "LIP", "warehouse": "WH_A", "qty": 2}]
    assert shipped["data"]["reservation"]["status"] == "COMMITTED"
    [last] = shop.told(shop.ship("WH_A", "LIP", 1, r.id))
    assert last["data"]["shipped"][0]["qty"] == 1
    assert last["data"]["reservation"]["status"] == "SETTLED"


def test_late_damage_reallocates_or_puts_at_risk_and_records_conflicts() -> None:
    shop = Shop(WH_A={"A": 5, "B": 5}, WH_B={"A": 4})
    a, _ = shop.ledger.reserve([("A", 5)], "", "ka", None, 0)
    b, _ = shop.ledger.reserve([("B", 5)], "", "kb", None, 0)
    shop.told(shop.ledger.commit(a.id, 0)[1])
    shop.told(shop.ledger.commit(b.id, 0)[1])
    moved = shop.told(shop.adjust("WH_A", "A", -3))
    assert [e["type"] for e in moved] == ["reservation.reallocated", "conflict.recorded"]
    assert moved[0]["data"]["previous_allocations"] == {"A": {"WH_A": 5}}
    assert moved[0]["data"]["reservation"]["lines"][0]["allocations"] == {
        "WH_A": {"qty": 2, "shipped": 0},
        "WH_B": {"qty": 3, "shipped": 0},
    }
    assert moved[1]["data"]["conflict"]["kind"] == "reallocated"
    risky = shop.told(shop.adjust("WH_A", "B", -2))
    assert [e["type"] for e in risky] == ["reservation.at_risk", "conflict.recorded"]
    assert risky[0]["data"]["reservation"]["status"] == "AT_RISK"
    assert risky[0]["data"]["reservation"]["lines"][0]["at_risk"] == 2
    assert risky[1]["data"]["conflict"]["kind"] == "oversold"
    # More bad news for a reservation already at risk: the conflict grows, no new event.
    assert shop.told(shop.adjust("WH_A", "B", -1)) == []


def test_expiry_and_warehouse_freshness() -> None:
    shop = Shop(WH_A={"S": 5})
    shop.ledger.reserve([("S", 1)], "", "k", 1000, 0)
    [expired] = shop.told(shop.ledger.expire(1000))
    assert expired["type"] == "reservation.expired"
    assert expired["data"]["reservation"]["reason"] == "expired"
    released, _ = shop.ledger.reserve([("S", 1)], "", "k2", None, 0)
    assert shop.told(shop.ledger.release(released.id, 0)[1]) == []  # the shop cancelled it
    fresh = {"WH_A": Freshness.FRESH}
    state, changes = shop.ledger.check_freshness(fresh, 60_001)
    assert [(e["type"], e["data"]) for e in shop.told(changes)] == [
        ("warehouse.stale", {"warehouse": "WH_A", "freshness": "stale"})
    ]
    _, changes = shop.ledger.check_freshness(state, 300_001)
    assert [e["type"] for e in shop.told(changes)] == ["warehouse.offline"]


def test_only_the_events_subscribed_to_are_made() -> None:
    shop = Shop(("reservation.at_risk",), WH_A={"B": 5})
    b, _ = shop.ledger.reserve([("B", 5)], "", "kb", None, 0)
    assert shop.told(shop.ledger.commit(b.id, 0)[1]) == []
    assert [e["type"] for e in shop.told(shop.adjust("WH_A", "B", -2))] == ["reservation.at_risk"]


def test_restored_reservations_are_not_told_again() -> None:
    shop = Shop(WH_A={"A": 5})
    r, _ = shop.ledger.reserve([("A", 2)], "", "k", None, 0)
    shop.ledger.commit(r.id, 0)
    # A restart: what stood is known, only what happens next is told.
    shop.notices.restore(shop.ledger.reservations.values(), last_conflict_id=0)
    assert [e["type"] for e in shop.told(shop.ship("WH_A", "A", 2, r.id))] == [
        "reservation.shipped"
    ]


def test_durable_events_wake_the_listeners() -> None:
    shop = Shop(WH_A={"A": 5})
    heard: list[OutboxEvent] = []
    shop.notices.listeners.append(heard.extend)
    event = shop.notices.event_for("webhook.test", {"test": True}, 1, ["shop"])
    shop.notices.durable([event])
    assert heard == [event] and json.loads(event.body)["type"] == "webhook.test"


def test_a_signature_verifies_only_for_its_secret_body_and_time() -> None:
    body = b'{"id":"evt_1"}'
    header = sign(SECRET, 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=")
    assert verify(SECRET, header, body, 1_700_000_100)
    assert not verify("another-secret-0000", header, body, 1_700_000_100)
    assert not verify(SECRET, header, body + b" ", 1_700_000_100)
    assert not verify(SECRET, header, body, 1_700_000_400)  # replayed too late
    rotated = f"{header},v1={'0' * 64}"
    assert verify(SECRET, rotated, body, 1_700_000_000)
    for broken in ("", "t=x,v1=00", "v1=00", f"t=1700000000,t=1700000000,{header[13:]}"):
        assert not verify(SECRET, broken, body, 1_700_000_000), broken


def test_subscriptions_come_from_toml_or_json_and_bad_ones_are_named(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        "insecure = true\n[[webhooks]]\nname = 'shop'\nurl = 'https://shop.test/hook'\n"
        f"events = ['reservation.at_risk', 'warehouse.offline']\nsecret = '{SECRET}'\n"
    )
    [sub] = load(HubConfig, config, env={}).webhooks
    assert (sub.label, sub.events) == ("shop", ("reservation.at_risk", "warehouse.offline"))
    env = {
        "STOCKSYNC_HUB_INSECURE": "1",
        "STOCKSYNC_HUB_WEBHOOKS": json.dumps(
            [{"url": "http://a.test/h", "events": ["conflict.recorded"], "secret": SECRET}]
        ),
    }
    assert load(HubConfig, env=env).webhooks[0].label == "http://a.test/h"
    for bad, message in [
        ([{"url": "ftp://x", "events": ["conflict.recorded"], "secret": SECRET}], ".url"),
        ([{"url": "http://x", "events": ["order.paid"], "secret": SECRET}], "unknown event"),
        ([{"url": "http://x", "events": [], "secret": SECRET}], ".events"),
        ([{"url": "http://x", "events": ["conflict.recorded"], "secret": "short"}], ".secret"),
        ([{"url": "http://x", "events": ["conflict.recorded"], "secret": SECRET, "x": 1}], ".x"),
        ([{"url": "http://x", "events": ["conflict.recorded"], "secret": SECRET}] * 2, "second"),
        ("{not json", "not a JSON list"),
    ]:
        with pytest.raises(ValueError, match=message.replace(".", r"\.")):
            parse_subscriptions(bad)
        env["STOCKSYNC_HUB_WEBHOOKS"] = bad if isinstance(bad, str) else json.dumps(bad)
        with pytest.raises(ConfigError, match=r"^webhooks"):
            load(HubConfig, env=env)
