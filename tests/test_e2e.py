"""End to end: real hubs and agents as subprocesses, real SQLite files.

Checks DESIGN §11 invariants 1-3 over the whole system: every event an agent
recorded reaches the hub exactly once, in seq order, and the hub's on_hand
per warehouse equals the agent's store — with agents recording while they
stream, while the hub is down, across a hub restart and after a store is
replaced by a new one (a new epoch). Also the JSON the operators' commands
print (``stocksync-hub stock/warehouses``, ``stocksync-agent status``).
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from conftest import (
    AGENT,
    HUB,
    AgentProcess,
    HubProcess,
    agent_event_ids,
    agent_on_hand,
    hub_event_ids,
    hub_on_hand,
    hub_watermark,
    read_only,
    run_cli,
    wait_until,
)

from stocksync.agent.store import AgentStore
from stocksync.events import Kind, NewEvent

REASONS = ("damage", "found", "correction", "transfer-out", "transfer-in")
EVENT_COLUMNS = (
    "seq, event_id, sku, kind, quantity, delta, reason, reservation_id, as_of_seq, recorded_at_ms"
)

StartAgent = Callable[..., AgentProcess]


# -- helpers ---------------------------------------------------------------------


def fresh(on_hand: int) -> dict[str, Any]:
    """A warehouse's figures in `stock --json`, fresh and with nothing committed."""
    return {
        "on_hand": on_hand,
        "committed": 0,
        "available": on_hand,
        "stale": False,
        "freshness": "fresh",
    }


def without_times(item: dict[str, Any]) -> dict[str, Any]:
    """`stock --json` output without the last-seen timestamps (they move)."""
    for figures in item["warehouses"].values():
        assert figures.pop("last_seen_unix_ms") > 0
    return item


def random_events(rng: random.Random, n: int, skus: Sequence[str], high: int) -> list[NewEvent]:
    """``n`` events of every kind for a store whose last seq is ``high``.

    Receives, ships (a third settling a reservation), adjustments both ways
    with a reason, counts taken now and counts as of a seq in the past.
    """
    events: list[NewEvent] = []
    for _ in range(n):
        sku = rng.choice(skus)
        roll = rng.random()
        if roll < 0.35:
            events.append(NewEvent(sku, Kind.RECEIVE, rng.randint(1, 50)))
        elif roll < 0.65:
            reservation = f"R-{rng.getrandbits(48):012x}" if rng.random() < 0.3 else ""
            events.append(NewEvent(sku, Kind.SHIP, rng.randint(1, 20), reservation_id=reservation))
        elif roll < 0.85:
            qty = rng.randint(1, 10) * rng.choice((1, -1))
            events.append(NewEvent(sku, Kind.ADJUST, qty, reason=rng.choice(REASONS)))
        elif roll < 0.93:
            events.append(NewEvent(sku, Kind.COUNT, rng.randint(0, 100)))
        else:
            as_of = rng.randint(max(0, high - 3000), high)
            events.append(NewEvent(sku, Kind.COUNT, rng.randint(0, 100), as_of_seq=as_of))
    return events


def skus_for(warehouse: str) -> list[str]:
    """100 SKUs every warehouse stocks, and 50 of its own."""
    return [f"SKU-{i:04d}" for i in range(100)] + [f"{warehouse}:LOCAL-{i}" for i in range(50)]


def record_random(store: AgentStore, rng: random.Random, n: int, warehouse: str) -> list[int]:
    """Record ``n`` random events through the store API; returns their seqs."""
    return store.record_many(random_events(rng, n, skus_for(warehouse), store.high_seq()))


def agent_rows(db: Path) -> list[tuple[Any, ...]]:
    """Every event row of an agent store, by seq."""
    with contextlib.closing(read_only(db)) as conn:
        return conn.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq").fetchall()


def hub_rows(db: Path, warehouse: str) -> list[tuple[Any, ...]]:
    """Every event row the hub applied for the warehouse's current epoch, by seq."""
    cols = ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
    with contextlib.closing(read_only(db)) as conn:
        return conn.execute(
            f"SELECT {cols} FROM events e JOIN warehouses w ON w.source_id = e.source_id "
            "WHERE w.warehouse = ? ORDER BY e.seq",
            (warehouse,),
        ).fetchall()


def assert_in_sync(hub_db: Path, warehouse: str, agent_db: Path) -> None:
    """Invariants 1-3: the same events, exactly once, in seq order; the same on_hand."""
    ids = agent_event_ids(agent_db)
    assert len(ids) == len(set(ids))
    assert hub_event_ids(hub_db, warehouse) == ids
    assert hub_rows(hub_db, warehouse) == agent_rows(agent_db)
    assert hub_on_hand(hub_db, warehouse) == agent_on_hand(agent_db)


def wait_synced(hub_db: Path, warehouse: str, agent_db: Path, timeout: float = 60) -> None:
    """Wait until the hub's watermark reaches the agent's last seq."""
    with AgentStore(agent_db) as store:
        high = store.high_seq()
    wait_until(
        lambda: hub_watermark(hub_db, warehouse) >= high,
        timeout,
        f"hub to apply {warehouse} up to seq {high}",
    )


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_status(db: Path) -> dict[str, Any]:
    result = run_cli(AGENT, "status", "--db", str(db), "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def agent_connected(db: Path) -> bool:
    """Whether the daemon on ``db`` is connected; False while it is still creating
    the store (``status`` refuses a file that is not a store yet, in one line)."""
    result = run_cli(AGENT, "status", "--db", str(db), "--json")
    if result.returncode != 0:
        assert "not an agent store yet" in result.stderr or "no agent store" in result.stderr, (
            result.stderr
        )
        return False
    return bool(json.loads(result.stdout)["connected"])


def hub_json(target: str, *args: str) -> Any:
    result = run_cli(HUB, *args, "--hub", target, "--insecure", "--json", check=True)
    return json.loads(result.stdout)


def local_high(db: Path) -> int:
    """The agent store's last seq, read without writing."""
    with contextlib.closing(read_only(db)) as conn:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])


def epoch_of(db: Path) -> str:
    with AgentStore(db) as store:
        return store.epoch


# -- tests -------------------------------------------------------------------------


def test_three_warehouses_stream_ten_thousand_events_each(
    tmp_path: Path, hub: HubProcess, start_agent: StartAgent
) -> None:
    warehouses = ("WH-LAX", "WH-FRA", "WH-CGK")
    dbs = {wh: tmp_path / f"{wh}.db" for wh in warehouses}
    stores = {wh: AgentStore(dbs[wh]) for wh in warehouses}
    rngs = {wh: random.Random(f"e2e-{wh}") for wh in warehouses}
    try:
        for wh in warehouses:
            start_agent(wh, dbs[wh])
        # Recorded while the agents run, interleaved, in 20 transactions each.
        for _ in range(20):
            for wh in warehouses:
                record_random(stores[wh], rngs[wh], 500, wh)
        for wh in warehouses:
            assert stores[wh].high_seq() == 10_000
    finally:
        for store in stores.values():
            store.close()

    for wh in warehouses:
        wait_synced(hub.db, wh, dbs[wh], timeout=120)
    for wh in warehouses:
        assert_in_sync(hub.db, wh, dbs[wh])
        assert hub_watermark(hub.db, wh) == 10_000

    # Every kind of event went through, including the awkward ones.
    with contextlib.closing(read_only(dbs["WH-LAX"])) as conn:
        kinds = {k for (k,) in conn.execute("SELECT DISTINCT kind FROM events")}
        settled = conn.execute("SELECT count(*) FROM events WHERE reservation_id != ''")
        past_counts = conn.execute(
            "SELECT count(*) FROM events WHERE kind = 4 AND as_of_seq < seq - 1"
        )
        negative_adjusts = conn.execute(
            "SELECT count(*) FROM events WHERE kind = 3 AND quantity < 0"
        )
        assert kinds == {1, 2, 3, 4}
        assert settled.fetchone()[0] > 0
        assert past_counts.fetchone()[0] > 0
        assert negative_adjusts.fetchone()[0] > 0

    # The query path agrees with the tables: a SKU every warehouse stocks.
    expected = {wh: agent_on_hand(dbs[wh]).get("SKU-0007", 0) for wh in warehouses}
    shown = hub_json(hub.target, "stock", "SKU-0007")
    assert shown["sku"] == "SKU-0007"
    assert shown["on_hand"] == sum(expected.values())
    # A warehouse whose moves net to zero may be listed with 0 or left out.
    assert {w: v["on_hand"] for w, v in shown["warehouses"].items() if v["on_hand"]} == {
        wh: q for wh, q in expected.items() if q != 0
    }


def test_cli_records_reach_the_hub_and_queries_show_them(
    tmp_path: Path, hub: HubProcess, start_agent: StartAgent
) -> None:
    lax, fra = tmp_path / "WH-LAX.db", tmp_path / "WH-FRA.db"
    start_agent("WH-LAX", lax)
    start_agent("WH-FRA", fra)
    for args in (
        ("receive", "SKU-1", "10"),
        ("ship", "SKU-1", "3", "--reservation", "R-1001"),
        ("adjust", "SKU-1", "-2", "--reason", "damage"),
        ("count", "SKU-2", "7"),
    ):
        run_cli(AGENT, "record", *args, "--db", str(lax), check=True)
    run_cli(AGENT, "record", "receive", "SKU-1", "4", "--db", str(fra), check=True)

    wait_synced(hub.db, "WH-LAX", lax)
    wait_synced(hub.db, "WH-FRA", fra)
    assert_in_sync(hub.db, "WH-LAX", lax)
    assert_in_sync(hub.db, "WH-FRA", fra)
    assert hub_on_hand(hub.db, "WH-LAX") == {"SKU-1": 5, "SKU-2": 7}

    one = without_times(hub_json(hub.target, "stock", "SKU-1"))
    assert one == {
        "sku": "SKU-1",
        "sellable": 9,
        "on_hand": 9,
        "held": 0,
        "committed": 0,
        "safety_stock": 0,
        "quota_free": 0,
        "warehouses": {"WH-FRA": fresh(4), "WH-LAX": fresh(5)},
    }
    several = [
        without_times(i) for i in hub_json(hub.target, "stock", "SKU-1", "SKU-2", "SKU-NONE")
    ]
    assert [(i["sku"], i["sellable"], i["on_hand"], i["warehouses"]) for i in several] == [
        ("SKU-1", 9, 9, one["warehouses"]),
        ("SKU-2", 7, 7, {"WH-LAX": fresh(7)}),
        ("SKU-NONE", 0, 0, {}),
    ]

    def caught_up() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = hub_json(hub.target, "warehouses")
        return items if all(i["lag_events"] == 0 for i in items) else None

    items = wait_until(caught_up, 30, "lag to reach 0")
    by_wh = {i["warehouse"]: i for i in items}
    assert set(by_wh) == {"WH-LAX", "WH-FRA"}
    for wh, db, high in (("WH-LAX", lax, 4), ("WH-FRA", fra, 1)):
        item = by_wh[wh]
        assert {
            "connected",
            "epoch",
            "watermark",
            "last_seen_unix_ms",
            "lag_events",
            "lag_seconds",
        } <= set(item)
        assert item["connected"] is True
        assert item["epoch"] == epoch_of(db)
        assert item["watermark"] == high
        assert isinstance(item["last_seen_unix_ms"], int)
        assert item["last_seen_unix_ms"] > 0
        assert item["lag_events"] == 0
        assert item["lag_seconds"] == 0


def test_agent_buffers_offline_and_delivers_when_hub_starts(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "WH-CGK.db"
    hub_db = tmp_path / "hub.db"
    with AgentStore(db) as store:
        record_random(store, random.Random("offline-1"), 1000, "WH-CGK")
    agent = AgentProcess("WH-CGK", db, f"127.0.0.1:{port}", tmp_path / "agent.log").start()
    hub = HubProcess(hub_db, tmp_path / "hub.log", port=port)
    try:
        # Recorded while the daemon runs and the hub is nowhere.
        with AgentStore(db) as store:
            for _ in range(4):
                record_random(store, random.Random(f"offline-{store.high_seq()}"), 1000, "WH-CGK")
            assert store.high_seq() == 5000
        status = wait_until(
            lambda: (s := agent_status(db))["warehouse"] == "WH-CGK" and s,
            30,
            "the daemon to claim its store",
        )
        assert status["connected"] is False
        assert status["pending"] == 5000
        assert status["high_seq"] == 5000
        assert status["oldest_pending_age_s"] is not None
        assert not hub_db.exists()

        hub.start()
        assert hub.port == port
        wait_synced(hub_db, "WH-CGK", db, timeout=60)
        assert_in_sync(hub_db, "WH-CGK", db)

        wait_until(lambda: agent_status(db)["connected"], 30, "status to show connected")
        assert agent.stop() == 0
        status = agent_status(db)
        assert status["connected"] is False
        assert status["pending"] == 0
        assert status["hub_watermark"] == 5000
        assert status["oldest_pending_age_s"] is None
    finally:
        agent.kill()
        hub.kill()


def test_replaced_store_becomes_a_new_epoch_at_the_hub(
    tmp_path: Path, hub: HubProcess, start_agent: StartAgent
) -> None:
    db = tmp_path / "WH-LAX.db"
    with AgentStore(db) as store:
        store.record_many(
            [NewEvent(f"OLD-{i}", Kind.RECEIVE, 10 + i) for i in range(5)]
            + [NewEvent("SKU-SHARED", Kind.RECEIVE, 100)]
        )
        old_epoch = store.epoch
    agent = start_agent("WH-LAX", db)
    wait_synced(hub.db, "WH-LAX", db)
    assert_in_sync(hub.db, "WH-LAX", db)
    assert agent.stop() == 0

    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with AgentStore(db) as store:
        store.record_many(
            [
                NewEvent("NEW-1", Kind.RECEIVE, 3),
                NewEvent("SKU-SHARED", Kind.RECEIVE, 7),
                NewEvent("SKU-SHARED", Kind.SHIP, 2),
            ]
        )
        new_epoch = store.epoch
    assert new_epoch != old_epoch

    start_agent("WH-LAX", db)

    def on_new_epoch() -> bool:
        (item,) = hub_json(hub.target, "warehouses")
        return bool(item["epoch"] == new_epoch and item["watermark"] == 3)

    wait_until(on_new_epoch, 30, "the hub to switch to the new epoch")
    assert hub_on_hand(hub.db, "WH-LAX") == {"NEW-1": 3, "SKU-SHARED": 5}
    assert_in_sync(hub.db, "WH-LAX", db)
    assert hub_json(hub.target, "stock", "OLD-1")["on_hand"] == 0


def test_hub_restart_mid_stream_loses_and_doubles_nothing(
    tmp_path: Path, hub: HubProcess, start_agent: StartAgent
) -> None:
    db = tmp_path / "WH-FRA.db"
    with AgentStore(db) as store:
        store.record(NewEvent("SKU-0", Kind.RECEIVE, 1))
    start_agent("WH-FRA", db)
    stop_recording = threading.Event()
    errors: list[BaseException] = []

    def recorder() -> None:
        rng = random.Random("restart")
        try:
            with AgentStore(db) as store:
                while not stop_recording.is_set():
                    record_random(store, rng, 100, "WH-FRA")
                    stop_recording.wait(0.01)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=recorder)
    thread.start()
    try:
        wait_until(lambda: hub_watermark(hub.db, "WH-FRA") >= 1000, 60, "streaming to start")
        assert hub.stop() == 0  # SIGTERM while batches are in flight: a clean exit
        stopped_at = hub_watermark(hub.db, "WH-FRA")
        # Events keep being recorded while the hub is away...
        wait_until(lambda: local_high(db) > stopped_at + 500, 60, "recording to go on")
        hub.start()
        # ...and after it is back.
        wait_until(
            lambda: hub_watermark(hub.db, "WH-FRA") > stopped_at + 500,
            60,
            "streaming to resume",
        )
    finally:
        stop_recording.set()
        thread.join(60)
    assert not errors, errors
    assert not thread.is_alive()
    wait_synced(hub.db, "WH-FRA", db, timeout=60)
    assert_in_sync(hub.db, "WH-FRA", db)
    seqs = [row[0] for row in hub_rows(hub.db, "WH-FRA")]
    assert seqs == list(range(1, local_high(db) + 1))


def test_agent_status_follows_the_link(
    tmp_path: Path, hub: HubProcess, start_agent: StartAgent
) -> None:
    db = tmp_path / "WH-LAX.db"
    agent = start_agent("WH-LAX", db)
    run_cli(AGENT, "record", "receive", "SKU-1", "5", "--db", str(db), check=True)

    status = wait_until(
        lambda: (s := agent_status(db))["connected"] and s, 30, "status to show connected"
    )
    assert status["warehouse"] == "WH-LAX"
    assert status["hub"] == hub.target
    assert status["epoch"] == epoch_of(db)
    wait_synced(hub.db, "WH-LAX", db)

    assert hub.stop() == 0
    wait_until(lambda: not agent_status(db)["connected"], 30, "status to show the link down")
    run_cli(AGENT, "record", "ship", "SKU-1", "2", "--db", str(db), check=True)
    run_cli(AGENT, "record", "receive", "SKU-2", "9", "--db", str(db), check=True)
    status = agent_status(db)
    assert status["connected"] is False
    assert status["high_seq"] == 3
    assert status["pending"] >= 2
    assert status["oldest_pending_age_s"] is not None
    assert status["oldest_pending_age_s"] >= 0

    hub.start()
    wait_until(lambda: agent_status(db)["connected"], 30, "status to show the link back")
    wait_synced(hub.db, "WH-LAX", db)
    assert_in_sync(hub.db, "WH-LAX", db)

    # A clean stop saves the last acknowledgement.
    assert agent.stop() == 0
    status = agent_status(db)
    assert status["connected"] is False
    assert status["pending"] == 0
    assert status["hub_watermark"] == status["high_seq"] == 3
    assert status["oldest_pending_age_s"] is None


def test_status_pending_reaches_zero_while_the_daemon_runs(
    tmp_path: Path, hub: HubProcess, start_agent: StartAgent
) -> None:
    db = tmp_path / "WH-LAX.db"
    start_agent("WH-LAX", db)
    wait_until(lambda: agent_connected(db), 30, "the agent to connect")
    with AgentStore(db) as store:
        # More than one batch (max_batch_events is 1000): several acks in a row.
        record_random(store, random.Random("burst"), 1500, "WH-LAX")
    wait_synced(hub.db, "WH-LAX", db)

    def drained() -> dict[str, Any] | None:
        s = agent_status(db)
        return s if s["pending"] == 0 else None

    status = wait_until(drained, 5, "status to show pending 0 while the daemon runs")
    assert status["hub_watermark"] == 1500
    assert status["connected"] is True
    assert status["oldest_pending_age_s"] is None
