"""The demo's shop and hosts: buyers in two live rooms, a host who changes
the featured products now and then. They talk to the hub over its public
gRPC API, the way a shop's checkout and a host's console would.

Buyers tap *Buy* (``Reserve`` in the room), then most pay (``Commit``), some
cancel (``Release``) and some walk away (the hold expires). The warehouses,
simulated in :mod:`stocksync.tools.demo`, ship what the hub tells them to
pick, naming the reservation, which settles it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from stocksync.v1 import inventory_pb2, inventory_pb2_grpc, rooms_pb2, rooms_pb2_grpc

__all__ = ["FEATURED", "ROOMS", "Host", "Shop", "ShopTally"]

ROOMS = ("live-a", "live-b")
"""The demo's two live rooms."""
FEATURED = 4
"""Products a host features at a time; the two rooms overlap by two."""
PAY = 0.75
"""Share of buyers who pay; ``CANCEL`` cancel, the rest walk away."""
CANCEL = 0.15
THINK_S = (0.3, 3.0)
"""How long a buyer takes to pay or cancel."""
HOLD_TTL_S = 20
"""Holds in the demo are short, so that walked-away carts visibly expire."""
RPC_TIMEOUT_S = 5.0


def featured(catalogue: Sequence[str], room: int, turn: int) -> list[str]:
    """The products room ``room`` features at its ``turn``-th change: a window
    of the catalogue; the two rooms' windows overlap by two products."""
    n = len(catalogue)
    start = (turn * 2 + room * (FEATURED - 2)) % max(n, 1)
    return [catalogue[(start + i) % n] for i in range(min(FEATURED, n))]


@dataclass
class ShopTally:
    """What the buyers did, and what the hub answered."""

    asked: int = 0
    granted: int = 0
    units: int = 0
    sold_out: int = 0
    paid: int = 0
    cancelled: int = 0
    walked_away: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ids: list[str] = field(default_factory=list)


class Host:
    """Features products in both rooms, and moves on every ``switch_s`` seconds.

    Args:
        channel: a channel to the hub.
        catalogue: the products.
        switch_s: seconds between changes of the featured products.
    """

    def __init__(
        self, channel: grpc.aio.Channel, catalogue: Sequence[str], switch_s: float
    ) -> None:
        self.stub = rooms_pb2_grpc.LiveRoomServiceStub(channel)
        self.catalogue = list(catalogue)
        self.switch_s = switch_s
        self.turn = 0
        self.now: dict[str, list[str]] = {}

    async def feature(self) -> None:
        """Feature this turn's products in both rooms (buckets: "Only N left!" at 5)."""
        for i, room in enumerate(ROOMS):
            skus = featured(self.catalogue, i, self.turn)
            await self.stub.SetFeatured(
                rooms_pb2.SetFeaturedRequest(room_id=room, skus=skus), timeout=RPC_TIMEOUT_S
            )
            await self.stub.SetDisplayPolicy(
                rooms_pb2.SetDisplayPolicyRequest(
                    room_id=room, mode=rooms_pb2.ROOM_DISPLAY_MODE_BUCKETS, low_threshold=5
                ),
                timeout=RPC_TIMEOUT_S,
            )
            self.now[room] = skus

    async def run(self, stop: asyncio.Event) -> None:
        """Change the featured products every ``switch_s`` until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.switch_s):
                    await stop.wait()
            if stop.is_set():
                return
            self.turn += 1
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.feature()


class Shop:
    """Buyers in the live rooms: ``rate`` taps on *Buy* per second.

    Args:
        channel: a channel to the hub.
        host: whose featured products the buyers see.
        rate: reserves per second, on average.
        rng: the source of every decision.
    """

    def __init__(
        self, channel: grpc.aio.Channel, host: Host, rate: float, rng: random.Random
    ) -> None:
        self.stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        self.host = host
        self.rate = rate
        self.rng = rng
        self.tally = ShopTally()
        self._buyers: set[asyncio.Future[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Send buyers until ``stop``, then let those in the middle of paying finish."""
        n = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.rng.expovariate(self.rate)):
                    await stop.wait()
            if stop.is_set():
                break
            room = self.rng.choice(ROOMS)
            skus = self.host.now.get(room)
            if not skus:
                continue
            n += 1
            buyer = asyncio.ensure_future(self._buy(room, self.rng.choice(skus), n))
            self._buyers.add(buyer)
            buyer.add_done_callback(self._buyers.discard)
        if self._buyers:
            await asyncio.gather(*self._buyers, return_exceptions=True)

    async def _buy(self, room: str, sku: str, n: int) -> None:
        tally, rng = self.tally, self.rng
        qty = rng.choices((1, 2, 3), weights=(70, 22, 8))[0]
        think = rng.uniform(*THINK_S)
        then = rng.random()
        tally.asked += 1
        try:
            reply = await self.stub.Reserve(
                inventory_pb2.ReserveRequest(
                    lines=[inventory_pb2.ReserveLine(sku=sku, qty=qty)],
                    room_id=room,
                    idempotency_key=f"demo-order-{n}",
                    ttl_seconds=HOLD_TTL_S,
                ),
                timeout=RPC_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                tally.sold_out += 1
            else:
                tally.errors[e.code().name] += 1
            return
        rid = reply.reservation.id
        tally.granted += 1
        tally.units += qty
        tally.ids.append(rid)
        await asyncio.sleep(think)
        try:
            if then < PAY:
                await self.stub.Commit(
                    inventory_pb2.CommitRequest(reservation_id=rid), timeout=RPC_TIMEOUT_S
                )
                tally.paid += 1
            elif then < PAY + CANCEL:
                await self.stub.Release(
                    inventory_pb2.ReleaseRequest(reservation_id=rid), timeout=RPC_TIMEOUT_S
                )
                tally.cancelled += 1
            else:
                tally.walked_away += 1
        except grpc.aio.AioRpcError as e:
            tally.errors[e.code().name] += 1

    async def outcome(self) -> Counter[str]:
        """How every granted reservation stands now, by status."""
        statuses: Counter[str] = Counter()
        for rid in self.tally.ids:
            try:
                reply = await self.stub.GetReservation(
                    inventory_pb2.GetReservationRequest(reservation_id=rid), timeout=RPC_TIMEOUT_S
                )
            except grpc.aio.AioRpcError:
                statuses["unknown"] += 1
                continue
            name = inventory_pb2.ReservationStatus.Name(reply.reservation.status)
            status = name.removeprefix("RESERVATION_STATUS_")
            if status == "RELEASED" and reply.reservation.reason == "expired":
                status = "EXPIRED"
            statuses[status] += 1
        return statuses
