"""``stocksync.tools.demo`` (hub/demo.py): the whole system in one command.

The end-to-end tests run the real command as a subprocess without a terminal
(so it prints compact blocks) and check what an operator would: it exits 0,
shows the three warehouses, and its final summary says the hub's on_hand
equals every agent's store. They check that claim again by reading the kept
stores directly. The unit tests check the traffic generator and the table.
No test asserts speed.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import HUB, agent_on_hand, hub_on_hand, read_only, run_cli, wait_until

from stocksync.agent.store import AgentStore
from stocksync.events import SKU_PATTERN, Kind, NewEvent
from stocksync.tools.demo import WAREHOUSES, HubView, WarehouseSim, catalogue, render_stock
from stocksync.v1 import inventory_pb2

SUMMARY_ROW = re.compile(r"^(WH-[A-Z]+)\s+(\d+)\s.*\s(yes|no)$", re.MULTILINE)


def summary_rows(out: str) -> dict[str, tuple[int, str]]:
    """The final summary's rows: warehouse -> (events recorded, matches)."""
    summary = out[out.rindex("summary after") :]
    return {m[1]: (int(m[2]), m[3]) for m in SUMMARY_ROW.finditer(summary)}


def assert_clean_finish(out: str, err: str, keep: Path) -> None:
    """The summary says every warehouse matches, and the stores agree."""
    assert "Traceback" not in out + err, err
    for warehouse in WAREHOUSES:
        assert warehouse in out
    rows = summary_rows(out)
    assert set(rows) == set(WAREHOUSES), out
    for warehouse, (events, matches) in rows.items():
        assert events > 0, f"{warehouse} recorded nothing"
        assert matches == "yes", out
    assert "every warehouse matches: yes" in out
    # Check the summary's claim independently, from the files it kept.
    for warehouse in WAREHOUSES:
        agent = agent_on_hand(keep / f"{warehouse}.db")
        assert agent, f"{warehouse} holds no stock"
        assert hub_on_hand(keep / "hub.db", warehouse) == agent
        with read_only(keep / f"{warehouse}.db") as conn:
            (link,) = conn.execute("SELECT value FROM meta WHERE key = 'daemon'").fetchone()
        assert json.loads(link)["connected"] is False, "the agent did not stop cleanly"


def test_demo_runs_for_a_duration_and_every_warehouse_matches(tmp_path: Path) -> None:
    keep = tmp_path / "demo"
    result = run_cli(
        HUB, "demo", "--duration", "6", "--seed", "1", "--keep", str(keep), "--switch", "2"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Ctrl-C" in out and str(keep) in out  # the header says how to stop and where
    assert "--- t=" in out, "no live block was printed"
    for sku in catalogue(8):
        assert sku in out
    assert_clean_finish(out, result.stderr, keep)
    # Buyers reserved and paid in two rooms; the warehouses shipped their picks.
    for room in ("live-a", "live-b"):
        overlay = rf"room {room} overlay .*http://127\.0\.0\.1:\d+/rooms/{room}/overlay"
        assert re.search(overlay, out), out
        changes = re.search(rf"room {room}: the host changed products (\d+) times", out)
        assert changes and int(changes[1]) >= 1, out
    shop = re.search(r"shop: (\d+) buyers .*: (\d+) reserved .*; (\d+) paid", out)
    assert shop and int(shop[2]) > 0 and int(shop[3]) > 0, out
    settled = re.search(r"shipped: (\d+) paid orders", out)
    assert settled and int(settled[1]) > 0, out
    assert "oversold: 0 units" in out
    # The hub's own check agrees with the summary.
    checked = run_cli(HUB, "check", "--db", str(keep / "hub.db"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_stops_cleanly_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    keep = tmp_path / "demo"
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        proc = subprocess.Popen(
            [HUB, "demo", "--seed", "2", "--keep", str(keep)],
            stdout=out_file,
            stderr=err_file,
            stdin=subprocess.DEVNULL,
        )
        try:
            # Running with traffic and a first live block: now interrupt it.
            wait_until(
                lambda: proc.poll() is not None or "--- t=" in out_path.read_text(),
                60,
                "the demo's first live block",
            )
            assert proc.poll() is None, out_path.read_text() + err_path.read_text()
            proc.send_signal(sig)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out, err = out_path.read_text(), err_path.read_text()
    assert code == 0, out + err
    assert "stopping" in out
    assert_clean_finish(out, err, keep)


def test_demo_without_keep_removes_its_stores(tmp_path: Path) -> None:
    result = run_cli(HUB, "demo", "--duration", "2", "--seed", "3", "--skus", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    m = re.search(r"stores and logs: (\S+) \(deleted on exit", result.stdout)
    assert m, result.stdout
    assert not Path(m[1]).exists()
    assert "every warehouse matches: yes" in result.stdout


# -- the traffic generator ----------------------------------------------------


def run_sim(path: Path, seed: str, steps: int) -> tuple[WarehouseSim, list[tuple[object, ...]]]:
    """Seed a fresh store and record ``steps`` events; returns the sim and its rows."""
    store = AgentStore(path, synchronous="NORMAL")
    sim = WarehouseSim("WH-LAX", store, catalogue(8), random.Random(seed))
    sim.seed()
    for _ in range(steps):
        sim.step()
        assert min(sim.on_hand.values()) >= 0
    rows = [row[2:9] for row in store.events(1, store.high_seq())]  # no ids or times
    return sim, rows


def test_generator_traffic_mix_and_never_picks_more_than_on_hand(
    tmp_path: Path,
) -> None:
    sim, rows = run_sim(tmp_path / "a.db", "7", 3000)
    try:
        assert sim.on_hand == sim.store.on_hand()
        assert all(q >= 0 for q in sim.store.on_hand().values())
        assert set(sim.kinds) == {"receive", "ship", "damage", "found", "count"}
        assert sim.kinds.most_common(1)[0][0] == "ship"
        assert sim.recorded == sim.high_seq == len(rows)
        # (sku, kind, quantity, delta, reason, reservation_id, as_of_seq)
        receipts = [r for r in rows if r[1] == Kind.RECEIVE]
        assert rows[0][1] == Kind.RECEIVE, "the books start with receipts"
        assert all(12 <= int(r[2]) <= 120 for r in receipts)
        ships = [r for r in rows if r[1] == Kind.SHIP]
        assert all(1 <= int(r[2]) <= 3 for r in ships)
        adjusts = {(r[4], int(r[2])) for r in rows if r[1] == Kind.ADJUST}
        assert {reason for reason, _ in adjusts} == {"damage", "found"}
        assert all(-3 <= q <= -1 for reason, q in adjusts if reason == "damage")
        assert all(q == 1 for reason, q in adjusts if reason == "found")
        counts = [(seq, r) for seq, r in enumerate(rows, start=1) if r[1] == Kind.COUNT]
        assert any(int(r[6]) < seq - 1 for seq, r in counts), "no back-dated count"
    finally:
        sim.store.close()


def test_generator_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    a, rows_a = run_sim(tmp_path / "a.db", "1:WH-LAX", 300)
    b, rows_b = run_sim(tmp_path / "b.db", "1:WH-LAX", 300)
    c, rows_c = run_sim(tmp_path / "c.db", "2:WH-LAX", 300)
    for sim in (a, b, c):
        sim.store.close()
    assert rows_a == rows_b
    assert rows_a != rows_c


def test_generator_resyncs_when_another_producer_writes(tmp_path: Path) -> None:
    store = AgentStore(tmp_path / "a.db", synchronous="NORMAL")
    other = AgentStore(tmp_path / "a.db", synchronous="NORMAL")
    try:
        sim = WarehouseSim("WH-LAX", store, catalogue(4), random.Random(5))
        sim.seed()
        other.record(NewEvent(sku="LIP-RED-01", kind=Kind.RECEIVE, quantity=500))
        for _ in range(50):
            sim.step()
        assert sim.on_hand == store.on_hand()
        assert sim.high_seq == store.high_seq()
    finally:
        store.close()
        other.close()


# -- the table ------------------------------------------------------------------


def test_catalogue_names_realistic_valid_skus() -> None:
    assert catalogue(8)[:3] == ["LIP-RED-01", "SERUM-30ML", "HOODIE-BLK-M"]
    many = catalogue(40)
    assert len(set(many)) == 40
    assert all(SKU_PATTERN.fullmatch(s) for s in many)


def test_render_stock_shows_hub_figures_totals_and_lag() -> None:
    view = HubView(
        stock={"LIP-RED-01": {"WH-LAX": 5, "WH-FRA": 7}, "SERUM-30ML": {"WH-LAX": 2}},
        sellable={"LIP-RED-01": 9, "SERUM-30ML": 2},
        warehouses={
            "WH-LAX": inventory_pb2.WarehouseStatus(
                warehouse="WH-LAX", connected=True, watermark=40
            ),
            "WH-FRA": inventory_pb2.WarehouseStatus(
                warehouse="WH-FRA", connected=False, watermark=10
            ),
        },
    )
    lines = render_stock(
        ["LIP-RED-01", "SERUM-30ML"],
        WAREHOUSES,
        view,
        {"WH-LAX": 42, "WH-FRA": 10, "WH-CGK": 3},
        {"WH-LAX": 20.0},
        {"WH-LAX": "running", "WH-FRA": "running", "WH-CGK": "running"},
    )
    text = "\n".join(lines)
    assert re.search(r"^LIP-RED-01\s+5\s+7\s+-\s+12\s+9$", text, re.MULTILINE), text
    assert re.search(r"^SERUM-30ML\s+2\s+0\s+-\s+2\s+2$", text, re.MULTILINE), text
    assert re.search(r"^all SKUs\s+7\s+7\s+-\s+14\s+11$", text, re.MULTILINE), text
    assert re.search(r"^WH-LAX\s+running\s+up\s+42\s+40\s+2\s+20\.0$", text, re.MULTILINE), text
    assert re.search(r"^WH-FRA\s+running\s+down\s+10\s+10\s+0", text, re.MULTILINE), text
    assert re.search(r"^WH-CGK\s+running\s+\S+\s+3\s+-\s+-", text, re.MULTILINE), text
    unanswered = "\n".join(
        render_stock(["LIP-RED-01"], WAREHOUSES, None, {w: 0 for w in WAREHOUSES}, {}, {})
    )
    assert "did not answer" in unanswered
