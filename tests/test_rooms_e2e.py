"""Live rooms against the real hub: agents, reserves, gRPC watchers, SSE, the overlay.

- Under load: three agent processes record while shoppers reserve; fifty
  gRPC watchers on five rooms; when traffic stops, every watcher's last value
  for each SKU equals GetStock's sellable for its room, and each watcher saw
  positions strictly increasing.
- A hub restart is a new epoch: a watcher resuming gets a flagged snapshot.
- Server-Sent Events from the hub's HTTP listener, with Last-Event-ID resume.
- The overlay in a real headless Chromium shows the hub's numbers and "Sold
  out"; with OVERLAY_SCREENSHOT set it saves the picture (docs/overlay.png).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from conftest import AgentProcess, HubProcess, hub_watermark, wait_until

from stocksync.agent.store import AgentStore
from stocksync.events import Kind, NewEvent
from stocksync.v1 import inventory_pb2, inventory_pb2_grpc, rooms_pb2, rooms_pb2_grpc

WAREHOUSES = ("WH-LAX", "WH-FRA", "WH-CGK")
SKUS = [f"SKU-{i}" for i in range(8)]
ROOMS = {f"room-{r}": SKUS[r : r + 4] for r in range(5)}  # overlapping featured sets


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path / "hub.db", tmp_path / "hub.log", 0, "--http", "127.0.0.1:0")
    proc.start()
    yield proc
    proc.kill()


def rooms_stub(channel: Any) -> Any:
    return rooms_pb2_grpc.LiveRoomServiceStub(channel)


def inventory_stub(channel: Any) -> Any:
    return inventory_pb2_grpc.InventoryServiceStub(channel)


def setup_rooms(target: str, mode: int = rooms_pb2.ROOM_DISPLAY_MODE_EXACT) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = rooms_stub(channel)
        for room, skus in ROOMS.items():
            stub.SetFeatured(rooms_pb2.SetFeaturedRequest(room_id=room, skus=skus), timeout=10)
            stub.SetDisplayPolicy(
                rooms_pb2.SetDisplayPolicyRequest(room_id=room, mode=mode, low_threshold=5),
                timeout=10,
            )


def seed(db: Path, warehouse: str) -> None:
    with AgentStore(db) as store:
        store.claim(warehouse)
        store.record_many([NewEvent(sku, Kind.RECEIVE, 40) for sku in SKUS])


def test_fifty_watchers_end_with_what_getstock_says_under_load(
    hub: HubProcess, tmp_path: Path
) -> None:
    agents = []
    for w in WAREHOUSES:
        seed(tmp_path / f"{w}.db", w)
        agents.append(
            AgentProcess(w, tmp_path / f"{w}.db", hub.target, tmp_path / f"{w}.log").start()
        )
    for w in WAREHOUSES:
        wait_until(lambda w=w: hub_watermark(hub.db, w) == len(SKUS), 60, f"{w} seeded")
    setup_rooms(hub.target)
    stop = threading.Event()

    def warehouse_traffic(w: str, seed_: int) -> None:
        rng = random.Random(seed_)
        with AgentStore(tmp_path / f"{w}.db") as store:
            while not stop.is_set():
                sku = rng.choice(SKUS)
                if rng.random() < 0.5:
                    store.record(NewEvent(sku, Kind.RECEIVE, rng.randint(1, 3)))
                else:
                    store.record(NewEvent(sku, Kind.SHIP, rng.randint(1, 3)))

    last: dict[tuple[str, int], dict[str, int | None]] = {}
    positions: dict[tuple[str, int], list[int]] = {}

    async def run() -> None:
        async with grpc.aio.insecure_channel(hub.target) as channel:
            rooms = rooms_stub(channel)
            inventory = inventory_stub(channel)

            async def watch(room: str, n: int) -> None:
                key = (room, n)
                seen: dict[str, int | None] = {}
                offsets: list[int] = []
                call = rooms.Watch(rooms_pb2.WatchRequest(room_id=room))
                try:
                    async for message in call:
                        offsets.append(int(message.position.rsplit(":", 1)[1]))
                        body = (
                            message.snapshot
                            if message.WhichOneof("message") == "snapshot"
                            else message.update
                        )
                        if message.WhichOneof("message") == "snapshot":
                            seen = {}
                        for s in body.skus:
                            seen[s.sku] = s.sellable if s.HasField("sellable") else 0
                        last[key], positions[key] = dict(seen), offsets
                except asyncio.CancelledError:
                    call.cancel()
                    raise

            async def shop(seed_: int) -> None:
                rng = random.Random(seed_)
                held: list[str] = []
                while not stop.is_set():
                    room = rng.choice(list(ROOMS))
                    sku = rng.choice(ROOMS[room])
                    try:
                        reply = await inventory.Reserve(
                            inventory_pb2.ReserveRequest(
                                lines=[inventory_pb2.ReserveLine(sku=sku, qty=rng.randint(1, 2))],
                                room_id=room,
                                idempotency_key=f"shop-{seed_}-{rng.getrandbits(64)}",
                            ),
                            timeout=10,
                        )
                        held.append(reply.reservation.id)
                    except grpc.aio.AioRpcError as e:
                        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
                    if held and rng.random() < 0.4:
                        rid = held.pop(rng.randrange(len(held)))
                        if rng.random() < 0.5:
                            try:
                                await inventory.Commit(
                                    inventory_pb2.CommitRequest(reservation_id=rid)
                                )
                            except grpc.aio.AioRpcError as e:
                                # The warehouses ship meanwhile: a held reservation
                                # they left short is at risk, and says so.
                                assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
                                assert "at risk" in (e.details() or ""), e.details()
                        else:
                            await inventory.Release(
                                inventory_pb2.ReleaseRequest(reservation_id=rid)
                            )
                    await asyncio.sleep(0.01)

            watchers = [asyncio.ensure_future(watch(r, n)) for r in ROOMS for n in range(10)]
            shoppers = [asyncio.ensure_future(shop(i)) for i in range(4)]
            await asyncio.sleep(4)
            stop.set()
            await asyncio.gather(*shoppers)
            # The warehouses' last events reach the hub, then the rooms settle.
            for w in WAREHOUSES:
                with AgentStore(tmp_path / f"{w}.db") as store:
                    high = store.high_seq()
                while hub_watermark(hub.db, w) < high:
                    await asyncio.sleep(0.05)

            async def settled() -> bool:
                for room, skus in ROOMS.items():
                    reply = await inventory.GetStock(
                        inventory_pb2.GetStockRequest(skus=skus, room_id=room)
                    )
                    truth = {s.sku: s.sellable for s in reply.skus}
                    for n in range(10):
                        if last.get((room, n)) != truth:
                            return False
                return True

            for _ in range(600):
                if await settled():
                    break
                await asyncio.sleep(0.05)
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            assert await settled(), "a watcher's last values differ from GetStock"

    threads = [
        threading.Thread(target=warehouse_traffic, args=(w, i)) for i, w in enumerate(WAREHOUSES)
    ]
    for t in threads:
        t.start()
    try:
        asyncio.run(run())
    finally:
        stop.set()
        for t in threads:
            t.join()
        for agent in agents:
            agent.kill()
    assert len(positions) == 50
    for key, offsets in positions.items():
        assert offsets == sorted(set(offsets)), f"{key}: positions not strictly increasing"
        assert len(offsets) > 1, f"{key} saw no update"


def test_a_restarted_hub_gives_a_resuming_watcher_a_new_epoch_snapshot(
    hub: HubProcess, tmp_path: Path
) -> None:
    setup_rooms(hub.target)
    with grpc.insecure_channel(hub.target) as channel:
        first = next(
            iter(rooms_stub(channel).Watch(rooms_pb2.WatchRequest(room_id="room-0"), timeout=10))
        )
    position = first.position
    hub.stop()
    hub.start()
    with grpc.insecure_channel(hub.target) as channel:
        call = rooms_stub(channel).Watch(
            rooms_pb2.WatchRequest(room_id="room-0", from_position=position), timeout=10
        )
        again = next(iter(call))
        call.cancel()
    assert again.WhichOneof("message") == "snapshot"
    assert again.snapshot.reason == rooms_pb2.ROOM_SNAPSHOT_REASON_NEW_EPOCH
    assert [s.sku for s in again.snapshot.skus] == ROOMS["room-0"]  # the room survived


async def sse_events(
    url: str, count: int, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The first ``count`` events of a Server-Sent Events stream, parsed."""
    events: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers or {}) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in event:
                    events.append(event)
                    if len(events) == count:
                        return events
                event = {}
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                event[field] = json.loads(value.strip()) if field == "data" else value.strip()
    return events


def test_server_sent_events_from_the_hub_resume_by_last_event_id(
    hub: HubProcess, tmp_path: Path
) -> None:
    seed(tmp_path / "lax.db", "WH-LAX")
    agent = AgentProcess("WH-LAX", tmp_path / "lax.db", hub.target, tmp_path / "lax.log").start()
    try:
        wait_until(lambda: hub_watermark(hub.db, "WH-LAX") == len(SKUS), 60, "stock")
        setup_rooms(hub.target)
        url = f"http://127.0.0.1:{hub.http_port}/rooms/room-0/events"

        async def run() -> None:
            [snap] = await sse_events(url, 1)
            assert snap["event"] == "snapshot" and snap["data"]["type"] == "snapshot"
            assert [s["sku"] for s in snap["data"]["skus"]] == ROOMS["room-0"]
            assert {s["sellable"] for s in snap["data"]["skus"]} == {40}
            with grpc.insecure_channel(hub.target) as channel:
                inventory_stub(channel).Reserve(
                    inventory_pb2.ReserveRequest(
                        lines=[inventory_pb2.ReserveLine(sku="SKU-0", qty=3)],
                        room_id="room-0",
                        idempotency_key="sse-1",
                    ),
                    timeout=10,
                )
            # Resuming from the snapshot's id: exactly the missed update.
            [missed] = await sse_events(url, 1, {"Last-Event-ID": snap["id"]})
            assert missed["event"] == "update"
            assert missed["data"]["skus"] == [
                {
                    "sku": "SKU-0",
                    "state": "in_stock",
                    "sellable": 37,
                    "label": "37 in stock",
                    "stale_warehouses": [],
                }
            ]
            [same] = await sse_events(f"{url}?last_event_id={snap['id']}", 1)
            assert same["id"] == missed["id"]

        asyncio.run(run())
    finally:
        agent.kill()


def test_the_overlay_shows_the_hubs_stock_in_chromium(hub: HubProcess, tmp_path: Path) -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        if os.environ.get("CI"):
            pytest.fail("/usr/bin/chromium is missing: apt-get install -y chromium")
        pytest.skip("/usr/bin/chromium is missing: apt-get install -y chromium")
    from playwright.async_api import async_playwright, expect

    db = tmp_path / "lax.db"
    with AgentStore(db) as store:
        store.claim("WH-LAX")
        store.record_many(
            [
                NewEvent("LIP-RED-01", Kind.RECEIVE, 4),
                NewEvent("SERUM-30ML", Kind.RECEIVE, 60),
                NewEvent("HOODIE-BLK-M", Kind.RECEIVE, 9),
            ]
        )
    agent = AgentProcess("WH-LAX", db, hub.target, tmp_path / "lax.log").start()
    try:
        wait_until(lambda: hub_watermark(hub.db, "WH-LAX") == 3, 60, "stock")
        with grpc.insecure_channel(hub.target) as channel:
            rooms_stub(channel).SetFeatured(
                rooms_pb2.SetFeaturedRequest(
                    room_id="live-a", skus=["LIP-RED-01", "SERUM-30ML", "HOODIE-BLK-M"]
                ),
                timeout=10,
            )

        async def run() -> None:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=str(chromium),
                    args=[
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        "--no-first-run",
                    ],
                )
                page = await browser.new_page(viewport={"width": 720, "height": 330})
                await page.goto(f"http://127.0.0.1:{hub.http_port}/rooms/live-a/overlay")

                def label(sku: str) -> Any:
                    return page.locator(f'li[data-sku="{sku}"] .label')

                await expect(label("LIP-RED-01")).to_have_text("Only 4 left!", timeout=60_000)
                await expect(label("SERUM-30ML")).to_have_text("In stock", timeout=60_000)
                with grpc.insecure_channel(hub.target) as channel:
                    inventory_stub(channel).Reserve(
                        inventory_pb2.ReserveRequest(
                            lines=[inventory_pb2.ReserveLine(sku="HOODIE-BLK-M", qty=7)],
                            room_id="live-a",
                            idempotency_key="overlay-1",
                        ),
                        timeout=10,
                    )
                await expect(label("HOODIE-BLK-M")).to_have_text("Only 2 left!", timeout=60_000)
                await expect(page.locator("li.changed")).to_have_count(0, timeout=60_000)
                shot = tmp_path / "overlay.png"
                await page.screenshot(path=str(shot), omit_background=True)
                with AgentStore(db) as store:
                    store.record(NewEvent("LIP-RED-01", Kind.ADJUST, -4, reason="damage"))
                await expect(label("LIP-RED-01")).to_have_text("Sold out", timeout=60_000)
                await browser.close()
                wanted = os.environ.get("OVERLAY_SCREENSHOT")
                if wanted:
                    shutil.copyfile(shot, wanted)

        asyncio.run(run())
    finally:
        agent.kill()
