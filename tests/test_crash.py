"""kill -9 at random moments loses nothing and applies nothing twice (DESIGN §6, §11).

Real processes only: ``stocksync-hub serve``, ``stocksync-agent run`` and a
producer (tests/producer.py) that records events into the agent's store and
logs every seq it was told "recorded". The kill schedule comes from a seeded
RNG; set ``STOCKSYNC_CRASH_SEED`` to replay another one.

What is checked afterwards (§11 invariants 1, 2, 3 and 6):

- every seq the producer logged is at the hub, once, with the sku, kind and
  quantity the producer asked for;
- the hub's event ids for the warehouse equal the agent's, with no duplicates,
  and its seqs are exactly 1..N, N being the agent's high seq;
- hub on_hand equals the agent's, and equals the sum of the hub's own log;
- after each hub crash the hub's durable watermark is at least what the agent
  had already been acknowledged;
- agents outlive every hub crash (reconnecting forever, §6.6), and a SIGTERM
  stops one cleanly with exit code 0.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from conftest import (
    AGENT,
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

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("STOCKSYNC_CRASH_SEED", "20240611"))
PRODUCER = Path(__file__).with_name("producer.py")
CATCH_UP_S = 120.0
"""Generous: a loaded 2-core CI box may take a while to drain the outbox."""


# -- helpers ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recorded:
    """One line of the producer's log: an event it was told was recorded."""

    seq: int
    sku: str
    kind: int
    quantity: int


class Producer:
    """tests/producer.py in a subprocess, restartable; all runs share one log."""

    def __init__(
        self,
        db: Path,
        log: Path,
        seed: int,
        pause_ms: float = 3.0,
        synchronous: str = "FULL",
        env: dict[str, str] | None = None,
    ) -> None:
        self.db, self.log, self.seed = db, log, seed
        self.pause_ms, self.synchronous, self.env = pause_ms, synchronous, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> Producer:
        self.runs += 1
        with self.log.with_suffix(f".{self.runs}.err").open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(PRODUCER),
                    str(self.db),
                    str(self.log),
                    "--seed",
                    str(self.seed * 1000 + self.runs),
                    "--pause-ms",
                    str(self.pause_ms),
                    "--synchronous",
                    self.synchronous,
                ],
                stderr=err,
                env={**os.environ, **(self.env or {})},
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 in the middle of whatever it is recording."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM: finish the record in progress, then exit."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def read_recorded(log: Path) -> list[Recorded]:
    """Parse the producer's log; every line must be whole."""
    text = log.read_text() if log.exists() else ""
    assert not text or text.endswith("\n"), "the producer log ends in half a line"
    out = []
    for line in text.splitlines():
        seq, sku, kind, qty = line.split(" ")
        out.append(Recorded(int(seq), sku, int(kind), int(qty)))
    return out


def agent_meta(db: Path, key: str) -> str | None:
    """One value of the agent store's ``meta`` table, read without writing."""
    conn = read_only(db)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def agent_acked_seq(db: Path) -> int:
    """The hub acknowledgement the agent last saved (``meta.acked_seq``)."""
    return int(agent_meta(db, "acked_seq") or 0)


def agent_high_seq(db: Path) -> int:
    conn = read_only(db)
    try:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    finally:
        conn.close()


def hub_rows(db: Path, warehouse: str) -> dict[int, tuple[str, str, int, int, int]]:
    """The hub's applied log of the warehouse's current epoch: seq -> (id, sku, kind, qty, delta).

    Raises AssertionError if one seq appears twice (the table's key forbids
    it, but the query would hide nothing if that changed).
    """
    conn = read_only(db)
    try:
        rows = conn.execute(
            "SELECT e.seq, e.event_id, e.sku, e.kind, e.quantity, e.delta FROM events e "
            "JOIN warehouses w ON w.source_id = e.source_id WHERE w.warehouse = ? "
            "ORDER BY e.seq",
            (warehouse,),
        ).fetchall()
    finally:
        conn.close()
    seqs = [r[0] for r in rows]
    assert len(seqs) == len(set(seqs)), "the hub applied one seq twice"
    return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}


def hub_sources(db: Path, warehouse: str) -> list[tuple[str, int]]:
    """Every (epoch, watermark) the hub holds for the warehouse."""
    conn = read_only(db)
    try:
        return conn.execute(
            "SELECT epoch, watermark FROM sources WHERE warehouse = ? ORDER BY id", (warehouse,)
        ).fetchall()
    finally:
        conn.close()


class AgentDied(AssertionError):
    """An agent daemon exited on its own; DESIGN §6.6 says it reconnects forever."""


def check_alive(agent: AgentProcess) -> None:
    """Raise :class:`AgentDied`, with the end of its log, if the daemon exited."""
    assert agent.proc is not None
    code = agent.proc.poll()
    if code is not None:
        tail = " | ".join(agent.log.read_text(errors="replace").strip().splitlines()[-3:])
        raise AgentDied(f"{agent.warehouse} agent exited with code {code}: {tail}")


def new_store(db: Path) -> str:
    """Create the agent's store before two processes open it at once; returns its epoch."""
    with AgentStore(db) as store:
        return str(store.epoch)


def wait_past(read: Callable[[], int], floor: int, what: str) -> int:
    """Wait until ``read()`` passes ``floor``; returns the new value."""

    def passed() -> int | None:
        value = read()
        return value if value > floor else None

    return int(wait_until(passed, 60, f"{what}: past {floor}"))


def wait_caught_up(hub_db: Path, agent_db: Path, warehouse: str) -> int:
    """Wait until the hub holds every event the agent recorded; returns that seq."""
    high = agent_high_seq(agent_db)
    wait_until(
        lambda: hub_watermark(hub_db, warehouse) >= high,
        CATCH_UP_S,
        f"hub to reach the agent's high seq {high}",
    )
    return high


def assert_exactly_once(
    hub_db: Path, agent_db: Path, warehouse: str, recorded: list[Recorded]
) -> None:
    """§11 invariants 1-3 between one agent store, the hub and the producer's log."""
    high = agent_high_seq(agent_db)
    epoch = agent_meta(agent_db, "epoch")

    # One epoch, fully applied: a crash must never make the agent look new.
    assert hub_sources(hub_db, warehouse) == [(epoch, high)]

    # Every reported "recorded" is at the hub once, as the producer asked for it.
    logged = [r.seq for r in recorded]
    assert len(logged) == len(set(logged)), "the agent store gave one seq out twice"
    rows = hub_rows(hub_db, warehouse)
    missing = sorted(set(logged) - rows.keys())
    assert not missing, f"{len(missing)} reported events never reached the hub: {missing[:20]}"
    wrong = [
        (r, rows[r.seq][1:4]) for r in recorded if rows[r.seq][1:4] != (r.sku, r.kind, r.quantity)
    ]
    assert not wrong, f"hub holds other events at reported seqs: {wrong[:5]}"

    # Gap-free 1..N, the same events by id, none twice.
    assert sorted(rows) == list(range(1, high + 1))
    hub_ids = hub_event_ids(hub_db, warehouse)
    assert len(hub_ids) == len(set(hub_ids)), "one event id applied twice"
    assert hub_ids == agent_event_ids(agent_db)

    # Stock mirrors the agent's, and the hub's own log adds up to it.
    on_hand = hub_on_hand(hub_db, warehouse)
    assert on_hand == agent_on_hand(agent_db)
    folded: dict[str, int] = {}
    for _, sku, _, _, delta in rows.values():
        folded[sku] = folded.get(sku, 0) + delta
    assert on_hand == {s: q for s, q in folded.items() if q != 0}
    # ...and the agent's books add up too (a producer killed mid-commit left no half).
    conn = read_only(agent_db)
    try:
        agent_folded = dict(conn.execute("SELECT sku, sum(delta) FROM events GROUP BY sku"))
    finally:
        conn.close()
    assert on_hand == {s: q for s, q in agent_folded.items() if q != 0}


@pytest.fixture
def producers() -> Iterator[list[Producer]]:
    """Producers a test starts; any still running are killed afterwards."""
    started: list[Producer] = []
    yield started
    for p in started:
        p.kill()


# -- 1. agent crash --------------------------------------------------------


def test_agent_kill9_loop_loses_nothing_and_duplicates_nothing(
    tmp_path: Path,
    hub: HubProcess,
    start_agent: Callable[..., AgentProcess],
    producers: list[Producer],
) -> None:
    rng = random.Random(SEED)
    warehouse = "WH-CRASH"
    db = tmp_path / "agent.db"
    new_store(db)
    agent = start_agent(warehouse, db)
    producer = Producer(db, tmp_path / "recorded.log", SEED).start()
    producers.append(producer)
    wait_until(lambda: hub_watermark(hub.db, warehouse) > 0, 60, "first events at the hub")

    kills = 20
    for i in range(kills):
        if i % 2:
            # Every other kill lands while events are flowing on a live stream;
            # the rest may also hit start-up, Hello or the first batch.
            wait_past(
                partial(hub_watermark, hub.db, warehouse),
                hub_watermark(hub.db, warehouse),
                f"agent to stream again after kill {i}",
            )
        time.sleep(rng.uniform(0.05, 0.6))
        agent.kill()
        if i == kills // 2:
            # The producer dies too, maybe between commit and report: what
            # it reported must arrive; what it did not may or may not.
            producer.kill()
            producer.start()
        agent.start()
        assert producer.alive(), producer.error_output()

    time.sleep(rng.uniform(0.05, 0.6))
    assert producer.stop() == 0, producer.error_output()
    recorded = read_recorded(producer.log)
    assert recorded, "the producer reported nothing"
    assert producer.runs == 2
    high = wait_caught_up(hub.db, db, warehouse)
    assert high >= max(r.seq for r in recorded)

    assert_exactly_once(hub.db, db, warehouse, recorded)
    assert agent.stop() == 0
    assert agent_acked_seq(db) == high


# -- 2. hub crash ----------------------------------------------------------


def test_hub_kill9_loop_loses_nothing_acknowledged(
    tmp_path: Path,
    hub: HubProcess,
    start_agent: Callable[..., AgentProcess],
    producers: list[Producer],
) -> None:
    rng = random.Random(SEED + 1)
    warehouse = "WH-HUBCRASH"
    db = tmp_path / "agent.db"
    new_store(db)
    agent = start_agent(warehouse, db)
    producer = Producer(db, tmp_path / "recorded.log", SEED + 1).start()
    producers.append(producer)
    port = hub.port
    wait_until(lambda: hub_watermark(hub.db, warehouse) > 0, 60, "first events at the hub")

    acked = 0
    for i in range(5):
        # The agent has saved an ack newer than the last crash, so the
        # check below always has something to lose.
        wait_past(
            partial(agent_acked_seq, db), acked, f"agent to be acknowledged (hub restart {i})"
        )
        time.sleep(rng.uniform(0.05, 0.6))
        acked_before = agent_acked_seq(db)
        hub.kill()
        # Acks the agent saved since can only have come from the dead hub too.
        acked = max(acked_before, agent_acked_seq(db))
        durable = hub_watermark(hub.db, warehouse)
        assert durable >= acked, (
            f"kill {i}: the agent was acknowledged up to seq {acked}, "
            f"but the dead hub's store holds only {durable}"
        )
        hub.start()  # same db, same port
        assert hub.port == port
        assert hub_watermark(hub.db, warehouse) >= acked
        assert producer.alive(), producer.error_output()
        check_alive(agent)

    time.sleep(rng.uniform(0.05, 0.6))
    assert producer.stop() == 0, producer.error_output()
    recorded = read_recorded(producer.log)
    assert recorded, "the producer reported nothing"
    check_alive(agent)
    high = wait_caught_up(hub.db, db, warehouse)
    assert_exactly_once(hub.db, db, warehouse, recorded)
    assert agent.stop() == 0
    assert agent_acked_seq(db) == high


def test_agents_survive_the_hub_dying_under_their_writes(
    tmp_path: Path, hub: HubProcess, producers: list[Producer]
) -> None:
    """Three busy agents that poll every millisecond are always writing when the hub dies.

    That makes the moment the bug needs (the stream is over, the sender has
    not noticed and writes) likely on every kill rather than now and then.
    """
    rng = random.Random(SEED + 2)
    config = tmp_path / "agent.toml"
    config.write_text("poll_interval_ms = 1\nbatch_linger_ms = 0\n")
    agents: list[AgentProcess] = []
    try:
        for k, name in enumerate(("WH-A", "WH-B", "WH-C")):
            db = tmp_path / f"{name}.db"
            new_store(db)
            log = tmp_path / f"{name}.log"
            agents.append(AgentProcess(name, db, hub.target, log, "--config", str(config)).start())
            producer = Producer(db, tmp_path / f"{name}.recorded", SEED + 10 + k)
            producers.append(producer.start())

        def streaming(marks: list[int]) -> bool:
            for agent in agents:
                check_alive(agent)
            return all(
                hub_watermark(hub.db, a.warehouse) > m for a, m in zip(agents, marks, strict=True)
            )

        for i in range(20):
            marks = [hub_watermark(hub.db, a.warehouse) for a in agents]
            wait_until(partial(streaming, marks), 60, f"all agents to stream (hub restart {i})")
            time.sleep(rng.uniform(0.05, 0.3))
            hub.kill()
            hub.start()

        for producer in producers:
            assert producer.stop() == 0, producer.error_output()
        for agent in agents:
            check_alive(agent)
            wait_caught_up(hub.db, agent.db, agent.warehouse)
            recorded = read_recorded(agent.log.with_suffix(".recorded"))
            assert_exactly_once(hub.db, agent.db, agent.warehouse, recorded)
    finally:
        for agent in agents:
            agent.kill()


# -- 3. agent SIGTERM ------------------------------------------------------


def agent_status(db: Path) -> dict[str, object]:
    result = run_cli(AGENT, "status", "--db", str(db), "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def saved_link(db: Path) -> dict[str, object]:
    """The state the daemon itself last wrote (status also checks the pid)."""
    raw = agent_meta(db, "daemon")
    return dict(json.loads(raw)) if raw else {}


@pytest.mark.parametrize("hub_up", [True, False], ids=["hub-up", "hub-down"])
def test_agent_sigterm_stops_cleanly(
    tmp_path: Path, hub: HubProcess, start_agent: Callable[..., AgentProcess], hub_up: bool
) -> None:
    warehouse = "WH-TERM"
    db = tmp_path / "agent.db"
    for kind, qty in (("receive", "24"), ("adjust", "-3")):
        result = run_cli(AGENT, "record", kind, "SKU-1", qty, "--db", str(db))
        assert result.returncode == 0, result.stderr
    agent = start_agent(warehouse, db)
    wait_until(lambda: agent_status(db)["connected"], 60, "agent to connect")
    wait_until(lambda: hub_watermark(hub.db, warehouse) == 2, 60, "hub to apply both events")
    assert hub_on_hand(hub.db, warehouse) == {"SKU-1": 21}
    if not hub_up:
        hub.kill()
        wait_until(lambda: not saved_link(db).get("connected"), 60, "agent to see the hub gone")

    assert agent.stop() == 0
    assert saved_link(db)["connected"] is False
    status = agent_status(db)
    assert status["connected"] is False
    assert status["warehouse"] == warehouse
    # A clean stop saves the hub's watermark: nothing is pending.
    assert status["hub_watermark"] == 2
    assert status["pending"] == 0
