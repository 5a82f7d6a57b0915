"""Reservations end to end, with real agent processes (DESIGN §4, §5).

- reserve → commit → the pick command reaches the agent (also one that was
  offline at commit time) → the warehouse records the SHIP with the
  reservation id → settled; totals right at hub and agent; ``picks`` empty;
- a released order withdraws its picks, sent or still waiting at the hub;
- a cycle count taken at seq k, with picks shipped after k, ends as the
  rebase rule says;
- late bad news: an agent offline while the hub sells its stock comes back
  with damage → the paid line moves to a warehouse that has the units, or,
  with none, is AT_RISK and listed by ``conflicts``;
- staleness: a silent warehouse counts less after ``stale_after_s``, nothing
  new after ``offline_after_s``, and fully again once its agent reconnects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import AGENT, HUB, AgentProcess, HubProcess, hub_watermark, run_cli, wait_until

from stocksync.agent.store import AgentStore
from stocksync.events import Kind, NewEvent


def hub(*args: str, target: str) -> Any:
    out = run_cli(HUB, *args, "--hub", target, "--insecure", "--json", check=True)
    return json.loads(out.stdout)


def agent(*args: str) -> Any:
    return json.loads(run_cli(AGENT, *args, "--json", check=True).stdout)


def stocked(db: Path, warehouse: str, **skus: int) -> int:
    with AgentStore(db) as store:
        store.claim(warehouse)
        seqs = store.record_many([NewEvent(s, Kind.RECEIVE, q) for s, q in skus.items()])
    return seqs[-1]


def start_hub(tmp_path: Path, **settings: float) -> HubProcess:
    config = tmp_path / "hub.toml"
    config.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    return HubProcess(tmp_path / "hub.db", tmp_path / "hub.log", 0, "--config", str(config)).start()


def sync(h: HubProcess, db: Path, warehouse: str) -> None:
    with AgentStore(db, read_only=True) as store:
        high = store.high_seq()
    wait_until(lambda: hub_watermark(h.db, warehouse) == high, 60, f"{warehouse} in sync")


def test_a_paid_order_is_picked_shipped_and_settled(tmp_path: Path) -> None:
    h = start_hub(tmp_path)
    lax, fra = tmp_path / "lax.db", tmp_path / "fra.db"
    stocked(lax, "WH-LAX", LIP=6)
    stocked(fra, "WH-FRA", LIP=10)
    agents = [
        AgentProcess("WH-LAX", lax, h.target, tmp_path / "lax.log").start(),
        AgentProcess("WH-FRA", fra, h.target, tmp_path / "fra.log").start(),
    ]
    try:
        sync(h, lax, "WH-LAX")
        sync(h, fra, "WH-FRA")
        # WH-LAX goes offline before the order is paid.
        agents[0].stop()
        r = hub("reserve", "LIP", "14", "--room", "live-a", "--key", "order-1", target=h.target)
        assert r["status"] == "HELD"
        paid = hub("commit", r["id"], target=h.target)
        assert paid["lines"][0]["allocations"] == {
            "WH-FRA": {"qty": 10, "shipped": 0},
            "WH-LAX": {"qty": 4, "shipped": 0},
        }
        # WH-FRA gets its pick at once; WH-LAX's waits at the hub.
        wait_until(lambda: agent("picks", "--db", str(fra)), 30, "WH-FRA's pick")
        [fra_pick] = agent("picks", "--db", str(fra))
        assert (fra_pick["reservation_id"], fra_pick["sku"], fra_pick["qty"]) == (
            r["id"],
            "LIP",
            10,
        )
        assert agent("picks", "--db", str(lax)) == []
        agents[0] = AgentProcess("WH-LAX", lax, h.target, tmp_path / "lax2.log").start()
        wait_until(lambda: agent("picks", "--db", str(lax)), 30, "WH-LAX's pick on reconnect")
        [lax_pick] = agent("picks", "--db", str(lax))
        assert lax_pick["qty"] == 4

        # The warehouses ship what they were told, naming the reservation.
        run_cli(
            AGENT,
            "record",
            "ship",
            "LIP",
            "10",
            "--reservation",
            r["id"],
            "--db",
            str(fra),
            check=True,
        )
        run_cli(
            AGENT,
            "record",
            "ship",
            "LIP",
            "4",
            "--reservation",
            r["id"],
            "--db",
            str(lax),
            check=True,
        )
        assert agent("picks", "--db", str(fra)) == [] == agent("picks", "--db", str(lax))
        wait_until(
            lambda: hub("reservation", r["id"], target=h.target)["status"] == "SETTLED",
            30,
            "settlement",
        )
        stock = hub("stock", "LIP", target=h.target)
        assert (stock["on_hand"], stock["committed"], stock["held"], stock["sellable"]) == (
            2,
            0,
            0,
            2,
        )
        assert {w: v["on_hand"] for w, v in stock["warehouses"].items()} == {
            "WH-FRA": 0,
            "WH-LAX": 2,
        }
        with AgentStore(lax, read_only=True) as s1, AgentStore(fra, read_only=True) as s2:
            assert (s1.on_hand("LIP"), s2.on_hand("LIP")) == ({"LIP": 2}, {"LIP": 0})
        # The hub resent nothing it did not need to: both commands were acknowledged.
        wait_until(
            lambda: "pick" not in json.dumps(hub("conflicts", target=h.target)), 5, "no conflicts"
        )
        assert hub("conflicts", target=h.target) == []
    finally:
        for a in agents:
            a.kill()
        h.kill()
    assert run_cli(HUB, "check", "--db", str(h.db)).returncode == 0


def test_a_released_order_withdraws_its_picks_online_and_offline(tmp_path: Path) -> None:
    h = start_hub(tmp_path)
    lax, fra = tmp_path / "lax.db", tmp_path / "fra.db"
    stocked(lax, "WH-LAX", LIP=5)
    stocked(fra, "WH-FRA", LIP=5)
    agents = [
        AgentProcess("WH-LAX", lax, h.target, tmp_path / "lax.log").start(),
        AgentProcess("WH-FRA", fra, h.target, tmp_path / "fra.log").start(),
    ]
    try:
        sync(h, lax, "WH-LAX")
        sync(h, fra, "WH-FRA")
        agents[0].stop()
        r = hub("reserve", "LIP", "8", "--room", "live-a", target=h.target)
        hub("commit", r["id"], target=h.target)
        wait_until(lambda: agent("picks", "--db", str(fra)), 30, "WH-FRA's pick")
        released = hub("release", r["id"], target=h.target)
        assert released["status"] == "RELEASED"
        # The connected warehouse's pick is withdrawn at once ...
        wait_until(lambda: agent("picks", "--db", str(fra)) == [], 30, "WH-FRA's pick withdrawn")
        # ... and the offline one never receives its pick.
        agents[0] = AgentProcess("WH-LAX", lax, h.target, tmp_path / "lax2.log").start()
        sync(h, lax, "WH-LAX")
        assert hub("stock", "LIP", target=h.target)["sellable"] == 10
        # A later order's pick arrives; picks go down in order, so the
        # withdrawn one would be there by now.
        later = hub("reserve", "LIP", "10", "--room", "live-a", target=h.target)
        hub("commit", later["id"], target=h.target)
        wait_until(lambda: agent("picks", "--db", str(lax)), 30, "WH-LAX's later pick")
        assert [p["reservation_id"] for p in agent("picks", "--db", str(lax))] == [later["id"]]
    finally:
        for a in agents:
            a.kill()
        h.kill()


def test_a_count_taken_in_the_past_survives_the_picks_shipped_after_it(tmp_path: Path) -> None:
    h = start_hub(tmp_path)
    db = tmp_path / "lax.db"
    k = stocked(db, "WH-LAX", SERUM=20)
    a = AgentProcess("WH-LAX", db, h.target, tmp_path / "lax.log").start()
    try:
        sync(h, db, "WH-LAX")
        r = hub("reserve", "SERUM", "3", "--key", "c-1", target=h.target)
        hub("commit", r["id"], target=h.target)
        wait_until(lambda: agent("picks", "--db", str(db)), 30, "the pick")
        run_cli(
            AGENT,
            "record",
            "ship",
            "SERUM",
            "3",
            "--reservation",
            r["id"],
            "--db",
            str(db),
            check=True,
        )
        # The count was taken at seq k (before the ship): 18 on the shelf then.
        run_cli(
            AGENT,
            "record",
            "count",
            "SERUM",
            "18",
            "--as-of-seq",
            str(k),
            "--db",
            str(db),
            check=True,
        )
        sync(h, db, "WH-LAX")
        stock = hub("stock", "SERUM", target=h.target)
        assert stock["on_hand"] == 15  # 18 counted, minus the 3 shipped after it
        assert hub("reservation", r["id"], target=h.target)["status"] == "SETTLED"
        with AgentStore(db, read_only=True) as store:
            assert store.on_hand("SERUM") == {"SERUM": 15}
    finally:
        a.kill()
        h.kill()


def test_late_damage_moves_a_paid_line_or_flags_it_at_risk(tmp_path: Path) -> None:
    h = start_hub(tmp_path)
    lax, fra = tmp_path / "lax.db", tmp_path / "fra.db"
    stocked(lax, "WH-LAX", A=5, B=5)
    stocked(fra, "WH-FRA", A=4)
    la = AgentProcess("WH-LAX", lax, h.target, tmp_path / "lax.log").start()
    fr = AgentProcess("WH-FRA", fra, h.target, tmp_path / "fra.log").start()
    try:
        sync(h, lax, "WH-LAX")
        sync(h, fra, "WH-FRA")
        la.stop()  # WH-LAX goes offline; the hub goes on selling its stock
        a = hub("reserve", "A", "5", "--key", "a-1", target=h.target)
        b = hub("reserve", "B", "5", "--key", "b-1", target=h.target)
        assert hub("commit", a["id"], target=h.target)["lines"][0]["allocations"] == {
            "WH-LAX": {"qty": 5, "shipped": 0}
        }
        hub("commit", b["id"], target=h.target)
        # Offline, WH-LAX found damage it reports when it comes back.
        run_cli(
            AGENT, "record", "adjust", "A", "-3", "--reason", "damage", "--db", str(lax), check=True
        )
        run_cli(
            AGENT, "record", "adjust", "B", "-2", "--reason", "damage", "--db", str(lax), check=True
        )
        la = AgentProcess("WH-LAX", lax, h.target, tmp_path / "lax2.log").start()
        sync(h, lax, "WH-LAX")
        # A: WH-FRA has the units: the line moves, a pick goes there.
        moved = hub("reservation", a["id"], target=h.target)
        assert moved["status"] == "COMMITTED"
        assert moved["lines"][0]["allocations"] == {
            "WH-FRA": {"qty": 3, "shipped": 0},
            "WH-LAX": {"qty": 2, "shipped": 0},
        }
        wait_until(lambda: agent("picks", "--db", str(fra)), 30, "the moved pick")
        assert [p["qty"] for p in agent("picks", "--db", str(fra))] == [3]
        wait_until(
            lambda: [p["qty"] for p in agent("picks", "--db", str(lax)) if p["sku"] == "A"] == [2],
            30,
            "WH-LAX's smaller pick",
        )
        # B: nobody has it: at risk, shown as 0, listed as a conflict.
        risky = hub("reservation", b["id"], target=h.target)
        assert risky["status"] == "AT_RISK" and risky["lines"][0]["at_risk"] == 2
        assert hub("stock", "B", target=h.target)["sellable"] == 0
        conflicts = hub("conflicts", target=h.target)
        kinds = {(c["kind"], c["sku"]) for c in conflicts}
        assert ("reallocated", "A") in kinds and ("oversold", "B") in kinds
        [open_one] = hub("conflicts", "--open", target=h.target)
        assert (open_one["kind"], open_one["units"], open_one["reservation_id"]) == (
            "oversold",
            2,
            b["id"],
        )
        text = run_cli(HUB, "conflicts", "--hub", h.target, "--insecure", check=True).stdout
        assert "oversold" in text and "OPEN" in text
    finally:
        la.kill()
        fr.kill()
        h.kill()
    assert run_cli(HUB, "check", "--db", str(h.db)).returncode == 0


def test_a_silent_warehouse_counts_less_then_nothing_then_fully_again(tmp_path: Path) -> None:
    h = start_hub(tmp_path, stale_after_s=1.0, stale_buffer=0.5, offline_after_s=2.5)
    lax, fra = tmp_path / "lax.db", tmp_path / "fra.db"
    stocked(lax, "WH-LAX", S=10)
    stocked(fra, "WH-FRA", S=10)
    # Pings keep a connected warehouse fresh (every 5 s by default: too slow here).
    pings = tmp_path / "agent.toml"
    pings.write_text("ping_interval_s = 0.2\n")
    la = AgentProcess("WH-LAX", lax, h.target, tmp_path / "lax.log", "--config", str(pings))
    la.start()
    fr = AgentProcess("WH-FRA", fra, h.target, tmp_path / "fra.log", "--config", str(pings))
    fr.start()
    try:
        sync(h, lax, "WH-LAX")
        sync(h, fra, "WH-FRA")
        wait_until(lambda: hub("stock", "S", target=h.target)["sellable"] == 20, 30, "both fresh")
        la.kill()  # WH-LAX falls silent
        stale = wait_until(
            lambda: (
                (s := hub("stock", "S", target=h.target))["warehouses"]["WH-LAX"]["stale"] and s
            ),
            30,
            "WH-LAX stale",
        )
        assert stale["sellable"] in (15, 10)  # 10 + 10 x (1 - 0.5), or already offline
        offline = wait_until(
            lambda: (
                (s := hub("stock", "S", target=h.target))["warehouses"]["WH-LAX"]["freshness"]
                == "offline"
                and s
            ),
            30,
            "WH-LAX offline",
        )
        assert offline["sellable"] == 10
        la = AgentProcess("WH-LAX", lax, h.target, tmp_path / "lax2.log", "--config", str(pings))
        la.start()
        wait_until(lambda: hub("stock", "S", target=h.target)["sellable"] == 20, 30, "WH-LAX back")
    finally:
        la.kill()
        fr.kill()
        h.kill()
