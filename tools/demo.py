"""``stocksync-hub demo``: a hub, three simulated warehouses, live totals.

One command shows the whole system at work. The hub runs in this process;
each warehouse (WH-LAX, WH-FRA, WH-CGK) is a real ``stocksync-agent run``
subprocess on its own SQLite store; and a seeded traffic generator plays each
warehouse's WMS, recording receipts, picks, damage, found stock and cycle
counts into the stores the way scanners would. The agents stream the events
to the hub, and the screen shows the hub's on_hand per SKU and warehouse.

On Ctrl-C, SIGTERM or the end of ``--duration``, traffic stops, the agents
catch up and are stopped, and the demo checks DESIGN §11 invariant 2: the
hub's on_hand equals every agent's store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import click
import grpc

from stocksync.agent.store import AgentStore, StoreError
from stocksync.config import HubConfig
from stocksync.errors import StocksyncError
from stocksync.events import Kind, NewEvent
from stocksync.hub.inventory_service import MAX_QUERY_SKUS
from stocksync.hub.server import Hub
from stocksync.tools.demo_shop import ROOMS, Host, Shop
from stocksync.tools.procs import AgentChild
from stocksync.v1 import inventory_pb2, inventory_pb2_grpc

__all__ = [
    "CATALOGUE",
    "WAREHOUSES",
    "HubView",
    "WarehouseSim",
    "catalogue",
    "demo",
    "render_stock",
]

log = logging.getLogger("stocksync.demo")

WAREHOUSES = ("WH-LAX", "WH-FRA", "WH-CGK")
"""The simulated sites: Los Angeles, Frankfurt, Jakarta."""

CATALOGUE = (
    "LIP-RED-01",
    "SERUM-30ML",
    "HOODIE-BLK-M",
    "SNKR-WHT-42",
    "CASE-IP15-CLR",
    "EARBUD-PRO-2",
    "MASK-SHEET-10",
    "TUMBLER-40OZ",
    "CREAM-SPF50",
    "TEE-OVR-L",
    "LASH-VOL-03",
    "BAG-MINI-TAN",
    "RING-LIGHT-10",
    "PERFUME-50ML",
    "SOCK-3PK-W",
    "BLUSH-PCH-02",
)
"""A live-commerce catalogue: beauty, fashion and gadgets."""

PICK_SHARE = 0.5
"""While the hub has pick commands waiting at a warehouse, the share of its
events that ship one (the rest are its other traffic)."""

# The traffic mix, per recorded event (a pick is by far the most frequent).
MIX: tuple[tuple[str, float], ...] = (
    ("ship", 0.86),
    ("receive", 0.02),
    ("damage", 0.05),
    ("found", 0.03),
    ("count", 0.04),
)
PALLET = (12, 120)
"""A receipt brings one pallet of this many units."""
PICK_UNITS = ((1, 2, 3), (70, 22, 8))
"""Units per pick and how often each occurs."""
COUNT_DRIFT = (-2, -1, -1, 0, 0, 0, 0, 0, 1)
"""How far a cycle count lands from the books."""
COUNT_BACKDATED = 0.4
"""Share of counts taken a few seqs back (rebased by the store, DESIGN §4)."""
COUNT_MAX_BACK = 5
FLASH_START = 0.003
"""Chance per pick that a host starts pushing one SKU (a flash sale)."""
FLASH_LENGTH = (40, 150)
FLASH_SHARE = 0.6
"""Share of picks that go to the flash-sale SKU while it lasts."""

CATCH_UP_S = 10.0
"""How long the agents get to deliver their backlog when the demo stops."""
AGENT_STOP_S = 10.0
"""How long an agent gets to exit after SIGTERM before it is killed."""
RPC_TIMEOUT_S = 2.0


def catalogue(n: int) -> list[str]:
    """The first ``n`` SKUs of the demo catalogue, padded with ``SKU-0017``... .

    Args:
        n: how many SKUs.
    """
    skus = list(CATALOGUE[:n])
    skus.extend(f"SKU-{i:04d}" for i in range(len(skus) + 1, n + 1))
    return skus


class WarehouseSim:
    """One warehouse's WMS: invents realistic stock events and records them.

    The generator reads on_hand back from the store after each record (the
    store applies the stock rules, rebased counts included), so a pick never
    knowingly takes more than is on the shelf.
    Everything it decides comes from ``rng``: one seed, one stream of events.
    Only one thread may call :meth:`seed` and :meth:`step` at a time.

    Args:
        warehouse: the warehouse id.
        store: its agent store (the demo records into it, as a WMS would).
        skus: the catalogue it stocks.
        rng: the source of every decision.
    """

    def __init__(
        self, warehouse: str, store: AgentStore, skus: Sequence[str], rng: random.Random
    ) -> None:
        self.warehouse = warehouse
        self.store = store
        self.skus = list(skus)
        self.rng = rng
        # Zipf-like popularity; each market prefers different products.
        weights: list[float] = [1 / (i + 1) ** 0.8 for i in range(len(self.skus))]
        rng.shuffle(weights)
        self.weights = weights
        self.on_hand: dict[str, int] = dict.fromkeys(self.skus, 0)
        self.on_hand.update(store.on_hand())
        self.high_seq = store.high_seq()
        self.start_seq = self.high_seq
        self.recorded = 0
        self.kinds: Counter[str] = Counter()
        self.reserved: dict[str, int] = {}
        """Units of each SKU the hub asked this warehouse to pick, not yet shipped."""
        self.error: str | None = None
        self._flash: tuple[str, int] | None = None

    # -- recording -----------------------------------------------------------

    def seed(self) -> int:
        """Receive 1-3 pallets of every SKU that is (nearly) out; returns how many."""
        events = [
            self._receipt(sku)
            for sku in self.skus
            if self.on_hand.get(sku, 0) < PALLET[0]
            for _ in range(self.rng.randint(1, 3))
        ]
        self._record(events, ["receive"] * len(events))
        return len(events)

    def step(self) -> NewEvent:
        """Invent the next event and record it durably; returns it."""
        label, event = self.next_event()
        self._record([event], [label])
        return event

    def _record(self, events: list[NewEvent], labels: list[str]) -> None:
        if not events:
            return
        seqs = self.store.record_many(events)
        # Read the books back: the store is the one place the stock rules live,
        # and it also sees what other producers (`stocksync-agent record`) wrote.
        self.on_hand.update(self.store.on_hand())
        self.high_seq = seqs[-1]
        self.recorded += len(events)
        self.kinds.update(labels)

    # -- deciding --------------------------------------------------------------

    def next_event(self) -> tuple[str, NewEvent]:
        """Decide the next event from the traffic mix; returns (label, event).

        The label is one of ``pick`` (a pick command from the hub, shipped
        with its reservation id), ``receive``, ``ship`` (walk-in orders),
        ``damage``, ``found`` or ``count``. Units the hub asked to be picked
        are set aside: the other traffic never takes them.
        """
        rng = self.rng
        picks = self.store.open_picks()
        self.reserved = {}
        for p in picks:
            self.reserved[p["sku"]] = self.reserved.get(p["sku"], 0) + int(p["qty"])
        if picks and rng.random() < PICK_SHARE:
            pick = picks[0]
            have = self.on_hand.get(pick["sku"], 0)
            if have > 0:
                return "pick", NewEvent(
                    sku=pick["sku"],
                    kind=Kind.SHIP,
                    quantity=min(int(pick["qty"]), have),
                    reservation_id=pick["reservation_id"],
                )
            return "receive", self._receipt(pick["sku"])  # restock to fill the order
        label = rng.choices([m[0] for m in MIX], weights=[m[1] for m in MIX])[0]
        if label == "receive":
            # Replenish the SKU with the least cover for its demand.
            sku = min(self.skus, key=lambda s: self.on_hand.get(s, 0) / self._weight(s))
            return "receive", self._receipt(sku)
        sku = self._pick_sku()
        have = self.on_hand.get(sku, 0) - self.reserved.get(sku, 0)
        if label == "found":
            return "found", NewEvent(sku=sku, kind=Kind.ADJUST, quantity=1, reason="found")
        if label == "count":
            return "count", self._count(sku, self.on_hand.get(sku, 0))
        if have <= 0:
            return "receive", self._receipt(sku)  # nothing to pick: restock first
        if label == "damage":
            qty = min(rng.randint(1, 3), have)
            return "damage", NewEvent(sku=sku, kind=Kind.ADJUST, quantity=-qty, reason="damage")
        qty = min(rng.choices(PICK_UNITS[0], weights=PICK_UNITS[1])[0], have)
        return "ship", NewEvent(sku=sku, kind=Kind.SHIP, quantity=qty)

    def _weight(self, sku: str) -> float:
        try:
            return self.weights[self.skus.index(sku)]
        except ValueError:
            return 1.0

    def _receipt(self, sku: str) -> NewEvent:
        return NewEvent(sku=sku, kind=Kind.RECEIVE, quantity=self.rng.randint(*PALLET))

    def _pick_sku(self) -> str:
        rng = self.rng
        if self._flash is None and rng.random() < FLASH_START:
            self._flash = (rng.choice(self.skus), rng.randint(*FLASH_LENGTH))
        if self._flash is not None:
            sku, left = self._flash
            self._flash = (sku, left - 1) if left > 1 else None
            if rng.random() < FLASH_SHARE:
                return sku
        return rng.choices(self.skus, weights=self.weights)[0]

    def _count(self, sku: str, have: int) -> NewEvent:
        rng = self.rng
        back = min(COUNT_MAX_BACK, self.high_seq)
        as_of: int | None = None
        base = have
        if back and rng.random() < COUNT_BACKDATED:
            as_of = self.high_seq - rng.randint(1, back)
            base = dict(self.store.snapshot(as_of)).get(sku, 0)
        # Never make the books negative, nor lose units set aside for picks:
        # the moves since as_of survive the count.
        floor = base - have + self.reserved.get(sku, 0)
        counted = max(0, floor, base + rng.choice(COUNT_DRIFT))
        return NewEvent(
            sku=sku, kind=Kind.COUNT, quantity=counted, reason="cycle count", as_of_seq=as_of
        )


@dataclass
class HubView:
    """What the hub holds, as its gRPC API answers."""

    stock: dict[str, dict[str, int]] = field(default_factory=dict)
    """on_hand per SKU, per warehouse (warehouses with a row only)."""
    sellable: dict[str, int] = field(default_factory=dict)
    """What the hub would sell now, per SKU."""
    warehouses: dict[str, inventory_pb2.WarehouseStatus] = field(default_factory=dict)


@dataclass
class _Agent:
    """One ``stocksync-agent run`` subprocess and its files."""

    warehouse: str
    db: Path
    log: Path
    proc: AgentChild | None = None

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def log_tail(self, lines: int = 5) -> list[str]:
        """The last lines of its log."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]


def _fmt_int(value: int | None, width: int) -> str:
    return f"{'-' if value is None else value:>{width}}"


def render_stock(
    skus: Sequence[str],
    warehouses: Sequence[str],
    view: HubView | None,
    recorded: dict[str, int],
    rates: dict[str, float],
    agent_state: dict[str, str],
) -> list[str]:
    """The SKU × warehouse table of the hub's on_hand, and each link's state.

    Args:
        skus: the rows.
        warehouses: the columns.
        view: what the hub answered; None if it did not.
        recorded: each warehouse's highest recorded seq (the agent's books).
        rates: events recorded per second lately, per warehouse.
        agent_state: "running", "exited 1"... per warehouse.

    Returns:
        Lines without newlines.
    """
    sku_w = max(12, *(len(s) for s in skus))
    col_w = max(8, *(len(w) + 2 for w in warehouses))
    lines = [
        f"{'SKU':<{sku_w}}"
        + "".join(f"{w:>{col_w}}" for w in warehouses)
        + f"{'TOTAL':>9}{'SELLABLE':>10}"
    ]
    known = set(view.warehouses) if view else set()
    totals: dict[str, int] = dict.fromkeys(warehouses, 0)
    for sku in skus:
        row = view.stock.get(sku, {}) if view else {}
        cells = []
        for w in warehouses:
            q = row.get(w, 0) if w in known else None
            totals[w] += q or 0
            cells.append(_fmt_int(q, col_w))
        total = sum(row.values()) if view else None
        sellable = view.sellable.get(sku) if view else None
        lines.append(
            f"{sku:<{sku_w}}" + "".join(cells) + _fmt_int(total, 9) + _fmt_int(sellable, 10)
        )
    lines.append(
        f"{'all SKUs':<{sku_w}}"
        + "".join(_fmt_int(totals[w] if w in known else None, col_w) for w in warehouses)
        + _fmt_int(sum(totals.values()) if view else None, 9)
        + _fmt_int(
            sum(view.sellable.get(s, 0) for s in skus) if view and view.sellable else None, 10
        )
    )
    lines.append("")
    lines.append(
        f"{'WAREHOUSE':<11}{'AGENT':<11}{'LINK':<8}{'RECORDED':>9}{'HUB WM':>9}{'LAG':>7}"
        f"{'EV/S':>7}"
    )
    for w in warehouses:
        status = view.warehouses.get(w) if view else None
        link = "?" if view is None else ("up" if status and status.connected else "down")
        wm = status.watermark if status else None
        lag = recorded[w] - wm if wm is not None else None
        lines.append(
            f"{w:<11}{agent_state.get(w, '-'):<11}{link:<8}{recorded[w]:>9}"
            f"{_fmt_int(wm, 9)}{_fmt_int(lag, 7)}{rates.get(w, 0.0):>7.1f}"
        )
    if view is None:
        lines.append("(the hub did not answer)")
    return lines


class _Demo:
    """The whole run: directories, hub, agents, traffic, display, summary."""

    def __init__(
        self,
        root: Path,
        keep: bool,
        port: int,
        rate: float,
        seed: int,
        skus: list[str],
        duration: float | None,
        out: IO[str],
        buyers: float = 3.0,
        switch_s: float = 120.0,
        http_port: int = 0,
    ) -> None:
        self.root = root
        self.buyers = buyers
        self.switch_s = switch_s
        self.http_port = http_port
        self.host: Host | None = None
        self.shop: Shop | None = None
        self.keep = keep
        self.port = port
        self.rate = rate
        self.seed = seed
        self.skus = skus
        self.duration = duration
        self.out = out
        self.tty = out.isatty()
        self.hub: Hub | None = None
        self.channel: grpc.aio.Channel | None = None
        self.stub: inventory_pb2_grpc.InventoryServiceStub | None = None
        self.sims: dict[str, WarehouseSim] = {}
        self.agents: dict[str, _Agent] = {
            w: _Agent(w, root / f"{w}.db", root / f"{w}.log") for w in WAREHOUSES
        }
        self.executor = ThreadPoolExecutor(len(WAREHOUSES), thread_name_prefix="demo-wms")
        self.traffic_started = 0.0
        self.traffic_s = 0.0

    # -- output ----------------------------------------------------------------

    def echo(self, text: str = "") -> None:
        click.echo(text, file=self.out)

    def header(self) -> list[str]:
        """Where the hub and the stores are, and how to stop."""
        stop = (
            "Ctrl-C to stop."
            if self.duration is None
            else f"stops after {self.duration:g} s (Ctrl-C works too)."
        )
        where = str(self.root) if self.keep else f"{self.root} (deleted on exit; --keep DIR)"
        lines = [
            f"stocksync demo: hub 127.0.0.1:{self.port}, {', '.join(WAREHOUSES)}, "
            f"~{self.rate:g} events/s each, ~{self.buyers:g} buyers/s, seed {self.seed}. {stop}",
            f"stores and logs: {where}",
        ]
        for room in ROOMS:
            featured = ", ".join(self.host.now.get(room, [])) if self.host else ""
            lines.append(
                f"room {room} overlay (OBS browser source): "
                f"http://127.0.0.1:{self.http_port}/rooms/{room}/overlay   [{featured}]"
            )
        return lines

    # -- hub -------------------------------------------------------------------

    async def hub_view(self, skus: Sequence[str] | None = None) -> HubView | None:
        """Ask the hub (over its gRPC API) for on_hand and warehouse states."""
        assert self.stub is not None
        wanted = list(self.skus if skus is None else skus)
        view = HubView()
        try:
            for i in range(0, len(wanted), MAX_QUERY_SKUS):
                reply = await self.stub.GetStock(
                    inventory_pb2.GetStockRequest(skus=wanted[i : i + MAX_QUERY_SKUS]),
                    timeout=RPC_TIMEOUT_S,
                )
                for s in reply.skus:
                    view.stock[s.sku] = {w.warehouse: w.on_hand for w in s.warehouses}
                    view.sellable[s.sku] = s.sellable
            listing = await self.stub.ListWarehouses(
                inventory_pb2.ListWarehousesRequest(), timeout=RPC_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as e:
            log.warning("hub query failed: %s", e.details())
            return None
        view.warehouses = {w.warehouse: w for w in listing.warehouses}
        return view

    async def start_hub(self) -> None:
        config = HubConfig(
            listen=f"127.0.0.1:{self.port}",
            http=f"127.0.0.1:{self.http_port}",
            db=str(self.root / "hub.db"),
            insecure=True,
        ).validate()
        try:
            self.hub = Hub(config)
        except StocksyncError as e:  # an unreadable or foreign database file
            raise click.ClickException(f"cannot open hub store {config.db}: {e}") from None
        try:
            self.port = await self.hub.start()
        except RuntimeError as e:
            raise click.ClickException(f"cannot start the hub: {e}") from None
        self.http_port = self.hub.http_port
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = inventory_pb2_grpc.InventoryServiceStub(self.channel)

    async def stop_hub(self) -> None:
        if self.channel is not None:
            await self.channel.close(None)
            self.channel = None
        if self.hub is not None:
            await self.hub.stop(grace=2.0)
            self.hub = None

    # -- agents ----------------------------------------------------------------

    async def start_agents(self) -> None:
        for agent in self.agents.values():
            agent.proc = AgentChild(
                agent.warehouse,
                agent.db,
                f"127.0.0.1:{self.port}",
                agent.log,
                env={"STOCKSYNC_AGENT_BACKOFF_MAX_S": "2"},
                # Its own session: a terminal's Ctrl-C reaches only the demo,
                # which stops the agents itself once they have caught up.
                new_session=True,
            )

    async def stop_agents(self) -> None:
        def stop_one(agent: _Agent) -> None:
            if agent.proc is None or agent.proc.returncode is not None:
                return
            agent.proc.stop(AGENT_STOP_S)
            if agent.proc.returncode == -signal.SIGKILL:
                self.echo(f"{agent.warehouse}: agent did not stop in {AGENT_STOP_S:g} s; killed")

        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(None, stop_one, a) for a in self.agents.values())
        )

    def agent_state(self) -> dict[str, str]:
        state = {}
        for w, agent in self.agents.items():
            code = agent.exit_code
            if agent.proc is None:
                state[w] = "-"
            elif code is None:
                state[w] = "running"
            else:
                state[w] = f"exited {code}"
            if self.sims.get(w) and self.sims[w].error:
                state[w] = "WMS error"
        return state

    # -- traffic ---------------------------------------------------------------

    def open_stores(self) -> None:
        for i, w in enumerate(WAREHOUSES):
            try:
                store = AgentStore(self.agents[w].db)
                store.claim(w)
            except StoreError as e:
                raise click.ClickException(str(e)) from None
            self.sims[w] = WarehouseSim(w, store, self.skus, random.Random(f"{self.seed}:{i}:{w}"))

    async def seed_stock(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self.executor, sim.seed) for sim in self.sims.values())
        )

    async def traffic(self, sim: WarehouseSim, stop: asyncio.Event) -> None:
        """Record events into one store at ~``rate`` per second until ``stop``."""
        loop = asyncio.get_running_loop()
        pace = random.Random(f"{self.seed}:pace:{sim.warehouse}")
        next_at = loop.time()
        while not stop.is_set():
            next_at += pace.expovariate(self.rate)  # Poisson arrivals
            delay = next_at - loop.time()
            if delay > 0:
                await _wait(stop, delay)
                if stop.is_set():
                    break
            elif delay < -1.0:
                next_at = loop.time()  # fell behind (slow disk): no burst to catch up
            try:
                await loop.run_in_executor(self.executor, sim.step)
            except Exception as e:
                sim.error = f"{type(e).__name__}: {e}"
                log.exception("%s: recording failed; its traffic stops", sim.warehouse)
                return

    # -- display ---------------------------------------------------------------

    async def display(self, stop: asyncio.Event) -> None:
        """Show the hub's on_hand until ``stop``: redrawn each second on a
        terminal, a compact block every 2 s otherwise."""
        period = 1.0 if self.tty else 2.0
        last = {w: (time.monotonic(), sim.recorded) for w, sim in self.sims.items()}
        rates: dict[str, float] = {}
        if not self.tty:
            for line in self.header():
                self.echo(line)
            await self._display_loop(stop, period, last, rates)
            return
        # Hide the cursor, clear the screen, show where things are at once.
        head = "".join(f"{line}\n" for line in self.header())
        self.out.write(f"\x1b[?25l\x1b[2J\x1b[H{head}")
        self.out.flush()
        try:
            await self._display_loop(stop, period, last, rates)
        finally:
            self.out.write("\x1b[?25h")
            self.out.flush()

    async def _display_loop(
        self,
        stop: asyncio.Event,
        period: float,
        last: dict[str, tuple[float, int]],
        rates: dict[str, float],
    ) -> None:
        while not stop.is_set():
            await _wait(stop, period)
            if stop.is_set():
                return
            view = await self.hub_view()
            now = time.monotonic()
            for w, sim in self.sims.items():
                then, count = last[w]
                rates[w] = (sim.recorded - count) / max(now - then, 1e-6)
                last[w] = (now, sim.recorded)
            recorded = {w: sim.high_seq for w, sim in self.sims.items()}
            table = render_stock(self.skus, WAREHOUSES, view, recorded, rates, self.agent_state())
            elapsed = now - self.traffic_started
            if self.tty:
                lines = [*self.header(), "", f"t = {elapsed:.0f} s: the hub's on_hand", *table]
                self.out.write("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
                self.out.flush()
            else:
                self.echo(f"--- t={elapsed:.0f}s hub on_hand ---")
                for line in table:
                    if line:
                        self.echo(line)

    # -- run -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, hurry: asyncio.Event) -> bool:
        """Run until ``stop``, then wind down; returns whether every warehouse matches."""
        try:
            await self.start_hub()
            self.open_stores()
            await self.seed_stock()
            await self.start_agents()
            assert self.channel is not None
            self.host = Host(self.channel, self.skus, self.switch_s)
            await self.host.feature()
            self.shop = Shop(
                self.channel, self.host, self.buyers, random.Random(f"{self.seed}:shop")
            )
            self.traffic_started = time.monotonic()
            if self.duration is not None:
                asyncio.get_running_loop().call_later(self.duration, stop.set)
            traffic_stop = asyncio.Event()
            tasks = [
                asyncio.ensure_future(self.traffic(s, traffic_stop)) for s in self.sims.values()
            ]
            tasks.append(asyncio.ensure_future(self.shop.run(traffic_stop)))
            tasks.append(asyncio.ensure_future(self.host.run(traffic_stop)))
            display = asyncio.ensure_future(self.display(stop))
            try:
                await stop.wait()
            finally:
                traffic_stop.set()
                await asyncio.gather(*tasks, display, return_exceptions=True)
                self.traffic_s = time.monotonic() - self.traffic_started
            if self.tty:
                self.echo()
            self.echo("stopping: traffic stopped; waiting for the agents to catch up")
            await self.catch_up(hurry)
            shop = await self.shop_summary()
            await self.stop_agents()
            return await self.summary() and shop
        finally:
            await self.stop_agents()
            await self.stop_hub()
            self.executor.shutdown(wait=True)
            for sim in self.sims.values():
                sim.store.close()

    async def catch_up(self, hurry: asyncio.Event) -> None:
        """Wait until the hub's watermark of each warehouse is its agent's high seq."""
        started = time.monotonic()
        while True:
            view = await self.hub_view([])
            behind = self._behind(view)
            if not behind:
                self.echo(f"all agents caught up in {time.monotonic() - started:.1f} s")
                return
            if hurry.is_set() or time.monotonic() - started > CATCH_UP_S:
                why = "asked to hurry" if hurry.is_set() else f"after {CATCH_UP_S:g} s"
                self.echo(f"not caught up ({why}): {', '.join(behind.values())}")
                return
            if all(self.agents[w].exit_code is not None for w in behind):
                self.echo(f"not caught up, agents not running: {', '.join(behind.values())}")
                return
            await _wait(hurry, 0.1)

    def _behind(self, view: HubView | None) -> dict[str, str]:
        """The warehouses whose events the hub does not all have, and how far behind."""
        behind = {}
        for w, sim in self.sims.items():
            status = view.warehouses.get(w) if view else None
            if status is None or status.epoch != sim.store.epoch:
                behind[w] = f"{w} (hub has nothing of this store)"
            elif status.watermark != sim.high_seq:
                behind[w] = f"{w} ({sim.high_seq - status.watermark} events behind)"
        return behind

    async def shop_summary(self) -> bool:
        """What the buyers did and how their reservations stand; returns
        whether nothing was oversold."""
        assert self.shop is not None and self.stub is not None
        tally = self.shop.tally
        outcome = await self.shop.outcome()
        try:
            open_conflicts = await self.stub.ListConflicts(
                inventory_pb2.ListConflictsRequest(open_only=True), timeout=RPC_TIMEOUT_S
            )
            oversold = int(sum(c.units for c in open_conflicts.conflicts if c.kind == "oversold"))
        except grpc.aio.AioRpcError as e:
            self.echo(f"cannot list conflicts: {e.details()}")
            return False
        self.echo()
        self.echo(
            f"shop: {tally.asked} buyers tapped Buy in {', '.join(ROOMS)}: "
            f"{tally.granted} reserved ({tally.units} units), {tally.sold_out} refused (sold out); "
            f"{tally.paid} paid (committed), {tally.cancelled} cancelled, "
            f"{tally.walked_away} walked away"
        )
        shown = ", ".join(f"{k.lower()} {v}" for k, v in sorted(outcome.items()))
        self.echo(f"reservations now: {shown or 'none'}")
        self.echo(f"shipped: {outcome.get('SETTLED', 0)} paid orders picked, shipped and settled")
        if self.host is not None:
            for room in ROOMS:
                now = ", ".join(self.host.now.get(room, []))
                self.echo(
                    f"room {room}: the host changed products {self.host.turn} times; "
                    f"featuring {now}"
                )
        self.echo(f"oversold: {oversold} units")
        if tally.errors:
            self.echo(f"errors from the hub: {dict(tally.errors)}")
        return oversold == 0

    async def summary(self) -> bool:
        """Compare each agent store's stock table with the hub and print the result."""
        agent_stock = {w: sim.store.on_hand() for w, sim in self.sims.items()}
        skus = sorted(set(self.skus).union(*agent_stock.values()))
        view = await self.hub_view(skus)
        self.echo()
        self.echo(f"summary after {self.traffic_s:.1f} s of traffic (seed {self.seed}):")
        self.echo(
            f"{'WAREHOUSE':<11}{'EVENTS':>8}{'RECEIVE':>9}{'PICK':>6}{'SHIP':>7}{'DAMAGE':>8}"
            f"{'FOUND':>7}"
            f"{'COUNT':>7}{'HIGH SEQ':>10}{'HUB WM':>8}  HUB ON_HAND = AGENT STORE"
        )
        all_match = True
        notes: list[str] = []
        for w, sim in self.sims.items():
            status = view.warehouses.get(w) if view else None
            wm = status.watermark if status and status.epoch == sim.store.epoch else None
            theirs = (
                {s: q.get(w, 0) for s, q in view.stock.items() if q.get(w, 0) != 0}
                if view
                else None
            )
            ours = {s: q for s, q in agent_stock[w].items() if q != 0}
            match = theirs == ours
            all_match &= match
            k = sim.kinds
            self.echo(
                f"{w:<11}{sim.recorded:>8}{k['receive']:>9}{k['pick']:>6}{k['ship']:>7}{k['damage']:>8}"
                f"{k['found']:>7}{k['count']:>7}{sim.high_seq:>10}{_fmt_int(wm, 8)}  "
                f"{'yes' if match else 'no'}"
            )
            if theirs is not None and not match:
                diff = sorted(s for s in set(theirs) | set(ours) if theirs.get(s) != ours.get(s))
                notes += [
                    f"  {w} {s}: agent store {ours.get(s, 0)}, hub {theirs.get(s, 0)}"
                    for s in diff[:5]
                ]
            agent = self.agents[w]
            if sim.error:
                notes.append(f"  {w}: recording stopped early: {sim.error}")
            if agent.exit_code not in (0, None):
                notes.append(f"  {w}: agent exited with code {agent.exit_code}; log {agent.log}:")
                notes += [f"    {line}" for line in agent.log_tail()]
        if view is None:
            notes.append("  the hub did not answer, so nothing could be compared")
        for note in notes:
            self.echo(note)
        self.echo(f"every warehouse matches: {'yes' if all_match else 'no'}")
        if self.keep:
            self.echo(f"stores and logs kept in {self.root}")
        return all_match


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``event`` is set."""
    # asyncio.timeout, not wait_for (see stocksync.agent.link._sleep).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def _run_until_stopped(main: Callable[[asyncio.Event, asyncio.Event], Awaitable[bool]]) -> bool:
    """Run ``main(stop, hurry)``: the first SIGINT/SIGTERM sets ``stop``, the next ``hurry``."""

    async def runner() -> bool:
        stop, hurry = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                hurry.set()
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        return await main(stop, hurry)

    return asyncio.run(runner())


@click.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop after this many seconds of traffic [default: run until Ctrl-C or SIGTERM].",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Hub port on 127.0.0.1 (0: any free port).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, max=1000, min_open=True),
    default=20.0,
    show_default=True,
    metavar="EVENTS_PER_S",
    help="Events recorded per second at each warehouse (on average).",
)
@click.option("--seed", type=int, default=None, help="Seed of the traffic [default: random].")
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Keep the stores and logs in DIR (reused if it holds a previous run).",
)
@click.option(
    "--skus",
    type=click.IntRange(1, 500),
    default=8,
    show_default=True,
    metavar="N",
    help="How many SKUs of the demo catalogue to stock.",
)
@click.option(
    "--buyers",
    type=click.FloatRange(min=0, max=500, min_open=True),
    default=3.0,
    show_default=True,
    metavar="PER_S",
    help="Buyers tapping Buy in the live rooms per second (on average).",
)
@click.option(
    "--switch",
    "switch_s",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    metavar="SECONDS",
    help="The hosts feature other products this often.",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port of the hub's HTTP listener (rooms' overlays) on 127.0.0.1 (0: any).",
)
def demo(
    duration: float | None,
    port: int,
    rate: float,
    seed: int | None,
    keep: Path | None,
    skus: int,
    buyers: float,
    switch_s: float,
    http_port: int,
) -> None:
    """Run a hub, three simulated warehouses and two live rooms with buyers.

    The hub runs in this process; WH-LAX, WH-FRA and WH-CGK are real agents
    ("stocksync-agent run") on their own SQLite stores, fed with receipts,
    walk-in orders, damage and cycle counts. Two live rooms feature
    overlapping products (their overlay URLs are printed: open them in a
    browser or OBS); buyers reserve in them, most pay, and the warehouses
    pick and ship what the hub tells them to. The hub's stock is shown live.
    On Ctrl-C the agents catch up and stop; the demo prints what the shop
    did and checks that nothing was oversold and that the hub's on_hand
    equals every agent's store (exit 1 otherwise).

    Example:

        stocksync-hub demo --duration 30 --seed 7 --keep ./demo-stores
    """
    if seed is None:
        seed = random.SystemRandom().randrange(1_000_000)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        root = keep.resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="stocksync-demo-"))
    handler = logging.FileHandler(root / "hub.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    run = _Demo(
        root,
        keep is not None,
        port,
        rate,
        seed,
        catalogue(skus),
        duration,
        sys.stdout,
        buyers=buyers,
        switch_s=switch_s,
        http_port=http_port,
    )
    try:
        all_match = _run_until_stopped(run.run)
    finally:
        root_logger.removeHandler(handler)
        handler.close()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if not all_match:
        raise click.ClickException(
            "the hub's on_hand differs from an agent's store, or units were oversold"
        )
