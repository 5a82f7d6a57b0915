"""The access rules and per-identity quotas as plain code (hub/access.py), and a
tokens file followed without a restart (stocksync/auth.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from stocksync.auth import Identity, TokenFile, TokenFileError, Unauthenticated, new_token
from stocksync.hub.access import (
    RULES,
    Admission,
    Caller,
    Limits,
    NotAllowed,
    NotAuthenticated,
    OverLimit,
    StreamKind,
    authorize,
    rule_for,
)
from stocksync.v1 import inventory_pb2, rooms_pb2, sync_pb2, webhooks_pb2

ANON = Identity(kind="anonymous", name="anonymous")
LAX = Identity.agent("WH-LAX")
SHOP = Identity.client("shop", ["inventory:reserve"])
READER = Identity.client("reader", ["inventory:read"])
OVERLAY_A = Identity.client("overlay", ["rooms:watch:room-a"])
HOST_A = Identity.client("host", ["rooms:host:room-a"])
ADMIN = Identity.client("ops", ["admin"])


def _methods() -> list[str]:
    out = []
    for module, service in (
        (sync_pb2, "SyncService"),
        (inventory_pb2, "InventoryService"),
        (rooms_pb2, "LiveRoomService"),
        (webhooks_pb2, "WebhookService"),
        (health_pb2, "Health"),
    ):
        descriptor = module.DESCRIPTOR.services_by_name[service]
        out += [f"/{descriptor.full_name}/{m.name}" for m in descriptor.methods]
    return out


@pytest.mark.parametrize("method", _methods())
def test_every_method_the_hub_serves_has_a_rule(method: str) -> None:
    assert method in RULES


def test_a_method_without_a_rule_is_for_admins_only() -> None:
    rule = rule_for("/stocksync.v1.InventoryService/SomethingNew")
    with pytest.raises(NotAllowed):
        authorize(READER, rule)
    authorize(ADMIN, rule)


def _verdict(identity: Identity | None, method: str, room: str | None = None) -> str:
    try:
        authorize(identity, RULES[method], room)
    except NotAuthenticated:
        return "UNAUTHENTICATED"
    except NotAllowed:
        return "PERMISSION_DENIED"
    return "OK"


INV = "/stocksync.v1.InventoryService/"
ROOMS = "/stocksync.v1.LiveRoomService/"
SYNC = "/stocksync.v1.SyncService/Sync"
HEALTH = "/grpc.health.v1.Health/Check"


@pytest.mark.parametrize(
    ("identity", "method", "room", "verdict"),
    [
        (None, INV + "Reserve", None, "OK"),  # plaintext hub: everything allowed
        (None, SYNC, None, "OK"),
        (ANON, INV + "GetStock", None, "UNAUTHENTICATED"),
        (ANON, SYNC, None, "UNAUTHENTICATED"),
        (ANON, HEALTH, None, "OK"),
        (LAX, SYNC, None, "OK"),
        (LAX, INV + "GetStock", None, "PERMISSION_DENIED"),
        (LAX, INV + "Reserve", None, "PERMISSION_DENIED"),
        (LAX, ROOMS + "SetFeatured", "room-a", "PERMISSION_DENIED"),
        (LAX, ROOMS + "Watch", "room-a", "PERMISSION_DENIED"),
        (SHOP, SYNC, None, "PERMISSION_DENIED"),
        (SHOP, INV + "Reserve", None, "OK"),
        (SHOP, INV + "Commit", None, "OK"),
        (SHOP, INV + "GetStock", None, "PERMISSION_DENIED"),
        (SHOP, INV + "SetQuota", None, "PERMISSION_DENIED"),
        (READER, INV + "GetStock", None, "OK"),
        (READER, INV + "ListWarehouses", None, "OK"),
        (READER, INV + "Reserve", None, "PERMISSION_DENIED"),
        (READER, INV + "GetReservation", None, "OK"),
        (READER, INV + "ListConflicts", None, "PERMISSION_DENIED"),
        (SHOP, INV + "GetReservation", None, "OK"),
        (SHOP, "/stocksync.v1.WebhookService/Replay", None, "PERMISSION_DENIED"),
        (ADMIN, "/stocksync.v1.WebhookService/Replay", None, "OK"),
        (OVERLAY_A, ROOMS + "Watch", "room-a", "OK"),
        (OVERLAY_A, ROOMS + "Watch", "room-b", "PERMISSION_DENIED"),
        (OVERLAY_A, ROOMS + "GetRoom", "room-a", "OK"),
        (OVERLAY_A, ROOMS + "ListRooms", None, "OK"),
        (OVERLAY_A, ROOMS + "SetFeatured", "room-a", "PERMISSION_DENIED"),
        (OVERLAY_A, INV + "Reserve", None, "PERMISSION_DENIED"),
        (HOST_A, ROOMS + "SetFeatured", "room-a", "OK"),
        (HOST_A, ROOMS + "SetFeatured", "room-b", "PERMISSION_DENIED"),
        (HOST_A, ROOMS + "EndRoom", "room-a", "OK"),
        (HOST_A, ROOMS + "Watch", "room-a", "OK"),  # a host sees its room
        (HOST_A, INV + "SetQuota", None, "PERMISSION_DENIED"),
        (ADMIN, INV + "SetQuota", None, "OK"),
        (ADMIN, ROOMS + "SetFeatured", "room-z", "OK"),
        (ADMIN, SYNC, None, "PERMISSION_DENIED"),  # only an agent streams events
    ],
)
def test_who_may_call_what(
    identity: Identity | None, method: str, room: str | None, verdict: str
) -> None:
    assert _verdict(identity, method, room) == verdict


def test_refusals_name_the_missing_scope_and_room() -> None:
    with pytest.raises(NotAllowed, match="lacks scope rooms:watch for room room-b"):
        authorize(OVERLAY_A, RULES[ROOMS + "Watch"], "room-b")
    with pytest.raises(NotAllowed, match="agent WH-LAX holds no client scope"):
        authorize(LAX, RULES[INV + "Reserve"])
    with pytest.raises(NotAllowed, match="client shop is not a warehouse agent"):
        authorize(SHOP, RULES[SYNC])
    assert all(rule.caller in Caller for rule in RULES.values())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_request_rate_is_a_token_bucket_per_identity() -> None:
    clock = Clock()
    admission = Admission(Limits(max_requests_per_s=2, request_burst=5), clock)
    for _ in range(5):
        admission.request(SHOP)
    with pytest.raises(OverLimit, match=r"max_requests_per_s=2, request_burst=5"):
        admission.request(SHOP)
    admission.request(READER)  # another identity has its own bucket
    clock.now += 1.0  # two more
    admission.request(SHOP)
    admission.request(SHOP)
    with pytest.raises(OverLimit):
        admission.request(SHOP)
    clock.now += 1000  # refills only up to the burst
    for _ in range(5):
        admission.request(SHOP)
    with pytest.raises(OverLimit):
        admission.request(SHOP)
    assert admission.refused == 3


def test_streams_are_counted_per_identity_and_kind_until_closed() -> None:
    admission = Admission(Limits(max_streams_per_identity=2, max_watchers_per_identity=1))
    a, b = (
        admission.open(LAX, StreamKind.AGENT_STREAM),
        admission.open(LAX, StreamKind.AGENT_STREAM),
    )
    with pytest.raises(OverLimit, match="max_streams_per_identity=2"):
        admission.open(LAX, StreamKind.AGENT_STREAM)
    admission.open(Identity.agent("WH-FRA"), StreamKind.AGENT_STREAM)
    watcher = admission.open(OVERLAY_A, StreamKind.WATCHER)
    with pytest.raises(OverLimit, match="max_watchers_per_identity=1"):
        admission.open(OVERLAY_A, StreamKind.WATCHER)
    a.close()
    a.close()  # closing twice gives back one place
    assert admission.held(LAX, StreamKind.AGENT_STREAM) == 1
    admission.open(LAX, StreamKind.AGENT_STREAM)
    b.close()
    watcher.close()
    admission.open(OVERLAY_A, StreamKind.WATCHER)


def test_a_plaintext_hub_counts_nobody() -> None:
    admission = Admission(Limits(max_requests_per_s=0.001, request_burst=1))
    for _ in range(10):
        admission.request(None)
        admission.open(None, StreamKind.WATCHER)


# -- the tokens file, followed ------------------------------------------------------


def _entry(name: str, digest: str, *scopes: str) -> str:
    quoted = ", ".join(f'"{s}"' for s in scopes)
    return f'[[token]]\nname = "{name}"\nsha256 = "{digest}"\nscopes = [{quoted}]\n'


def test_tokens_added_and_revoked_take_effect_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stocksync.auth")
    path = tmp_path / "tokens.toml"
    first, first_hash = new_token()
    second, second_hash = new_token()
    path.write_text(_entry("overlay", first_hash, "rooms:watch:R-1"))
    tokens = TokenFile(path)
    assert tokens.table().identify(f"Bearer {first}").name == "overlay"
    with pytest.raises(Unauthenticated):
        tokens.table().identify(f"Bearer {second}")

    path.write_text(path.read_text() + _entry("shop", second_hash, "inventory:reserve"))
    assert tokens.table().identify(f"Bearer {second}").name == "shop"

    path.write_text(_entry("shop", second_hash, "inventory:reserve"))  # overlay revoked
    with pytest.raises(Unauthenticated):
        tokens.table().identify(f"Bearer {first}")

    path.write_text("[[token]]\nname = 'half written")  # a bad edit keeps the last good table
    assert tokens.table().identify(f"Bearer {second}").name == "shop"
    assert "cannot be used, keeping the last one" in caplog.text


def test_an_unusable_tokens_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read"):
        TokenFile(tmp_path / "missing.toml")
