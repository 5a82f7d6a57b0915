"""kill -9 campaigns: the agent at random moments, the hub at random moments and
at the fault point "committed, not yet acknowledged"."""

from __future__ import annotations

import random
import time
from pathlib import Path

from .common import (
    FAST_AGENT,
    AgentChild,
    Campaign,
    HubChild,
    Producer,
    agent_acked_seq,
    check_exact,
    exactness,
    hub_watermark,
    new_store,
    progress,
    read_recorded,
    running,
    wait_caught_up,
    wait_for,
)


def agent_kills(workdir: Path, count: int, seed: int) -> Campaign:
    """kill -9 the agent ``count`` times while a producer records."""
    c = Campaign("agent-kills", f"python -m tests.campaigns agent-kills --count {count}")
    rng = random.Random(seed)
    warehouse = "WH-KILL"
    db = workdir / "agent.db"
    new_store(db)
    hub = HubChild(workdir / "hub.db", workdir / "hub.log")
    agent: AgentChild | None = None
    producer = Producer(db, workdir / "recorded.log", seed)
    with running(hub, producer):
        hub.wait_ready(60)

        def start_agent() -> AgentChild:
            return AgentChild(warehouse, db, hub.target, workdir / "agent.log", env=FAST_AGENT)

        agent = start_agent()
        producer.start()
        wait_for(lambda: hub_watermark(hub.db, warehouse) > 0, 60, "first events at the hub")
        began = time.monotonic()
        streaming_kills = 0
        for i in range(count):
            if i % 4 == 1:
                # Some kills land while events flow on a live stream; the rest
                # may also hit start-up, the Hello or the first batch.
                mark = hub_watermark(hub.db, warehouse)
                wait_for(lambda m=mark: hub_watermark(hub.db, warehouse) > m, 60, "streaming again")
                streaming_kills += 1
            time.sleep(rng.uniform(0.0, 0.4))
            agent.kill()
            if i == count // 2:
                producer.kill()  # the producer dies too, maybe between commit and report
                producer.start()
            agent = start_agent()
            progress(i + 1, count, "agent kills", 50)
        elapsed = time.monotonic() - began
        time.sleep(rng.uniform(0.05, 0.5))
        producer.stop()
        recorded = read_recorded(producer.log)
        catch_up = wait_caught_up(hub.db, db, warehouse)
        figures = exactness(hub.db, db, warehouse, recorded)
        agent.stop()
        c.figures = {
            "kills": count,
            "kills_while_streaming": streaming_kills,
            "producer_kills": 1,
            **figures,
            "catch_up_s": round(catch_up, 2),
            "campaign_s": round(elapsed, 1),
        }
        check_exact(c, figures)
        c.expect(bool(recorded), "the producer reported nothing")
    return c


def hub_kills(workdir: Path, count: int, seed: int) -> Campaign:
    """kill -9 the hub ``count`` times: half from outside at random moments, half
    by itself at the fault point between commit and ack."""
    c = Campaign("hub-kills", f"python -m tests.campaigns hub-kills --count {count}")
    rng = random.Random(seed)
    warehouse = "WH-HUBKILL"
    db = workdir / "agent.db"
    new_store(db)
    hub_db, hub_log = workdir / "hub.db", workdir / "hub.log"
    hub = HubChild(hub_db, hub_log)
    port = hub.wait_ready(60)
    listen = f"127.0.0.1:{port}"
    agent = AgentChild(warehouse, db, hub.target, workdir / "agent.log", env=FAST_AGENT)
    producer = Producer(db, workdir / "recorded.log", seed)
    external = fault_crashes = 0
    acked_not_durable = 0
    with running(agent, producer):
        producer.start()
        wait_for(lambda: hub_watermark(hub_db, warehouse) > 0, 60, "first events at the hub")
        for i in range(count):
            acked = agent_acked_seq(db)
            if i % 2 == 0:
                # From outside, at a random moment.
                wait_for(lambda a=acked: agent_acked_seq(db) > a, 60, "a new ack")
                time.sleep(rng.uniform(0.0, 0.3))
                before = agent_acked_seq(db)
                hub.kill()
                external += 1
            else:
                # By itself, right after a commit and before its ack: restart
                # the hub with the fault point armed and wait for it to die.
                hub.kill()
                before = agent_acked_seq(db)
                hub = HubChild(
                    hub_db,
                    hub_log,
                    listen,
                    env={"STOCKSYNC_TEST_FAULT": "hub-after-commit:0.2"},
                )
                wait_for(lambda h=hub: h.proc.poll() is not None, 60, "the fault point")
                c.expect(hub.proc.returncode == -9, f"hub exited {hub.proc.returncode}, not -9")
                fault_crashes += 1
            acked = max(before, agent_acked_seq(db))
            durable = hub_watermark(hub_db, warehouse)
            if durable < acked:
                acked_not_durable += 1
            hub = HubChild(hub_db, hub_log, listen)
            hub.wait_ready(60)
            progress(i + 1, count, "hub kills", 20)
        producer.stop()
        recorded = read_recorded(producer.log)
        catch_up = wait_caught_up(hub_db, db, warehouse)
        figures = exactness(hub_db, db, warehouse, recorded)
        c.figures = {
            "kills": count,
            "external_kills": external,
            "fault_point_crashes": fault_crashes,
            "acked_but_not_durable": acked_not_durable,
            **figures,
            "catch_up_s": round(catch_up, 2),
        }
        check_exact(c, figures)
        c.expect(acked_not_durable == 0, f"{acked_not_durable} acks were not durable")
    hub.kill()
    return c
