"""Partitions through the fault proxy while three agents write."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

from stocksync.tools.faultproxy import ThreadedFaultProxy

from .common import (
    FAST_AGENT,
    AgentChild,
    Campaign,
    HubChild,
    Producer,
    agent_high_seq,
    check_exact,
    exactness,
    hub_watermark,
    new_store,
    percentile,
    progress,
    read_recorded,
    running,
    wait_caught_up,
    wait_for,
)

KINDS = ("latency", "blackhole", "blackhole-up", "blackhole-down", "reset", "cut-up", "cut-down")
KINDS_ALL = (*KINDS, "flap")


def _inject(proxy: ThreadedFaultProxy, kind: str, rng: random.Random) -> None:
    if kind == "latency":
        proxy.set_latency(rng.uniform(0.05, 0.3), jitter=rng.uniform(0.0, 0.05))
    elif kind == "blackhole":
        proxy.blackhole()
    elif kind == "blackhole-up":
        proxy.blackhole("up")
    elif kind == "blackhole-down":
        proxy.blackhole("down")
    elif kind == "reset":
        proxy.reset(refuse_for=rng.uniform(0.0, 1.0))
    elif kind == "cut-up":
        proxy.cut_after(rng.randint(0, 4000), "up")
    elif kind == "cut-down":
        proxy.cut_after(rng.randint(0, 4000), "down")
    elif kind == "flap":
        proxy.flap((0.1, 0.5), (0.05, 0.3), seed=rng.randint(0, 10**6))
    else:
        raise ValueError(kind)


def partitions(workdir: Path, count: int, seed: int) -> Campaign:
    """``count`` random faults, every kind, on three agents' links; convergence
    time is from a fault's heal until the hub holds what that agent had then."""
    c = Campaign("partitions", f"python -m tests.campaigns partitions --count {count}")
    rng = random.Random(seed)
    hub = HubChild(workdir / "hub.db", workdir / "hub.log")
    names = ("WH-P1", "WH-P2", "WH-P3")
    proxies: list[ThreadedFaultProxy] = []
    agents: list[AgentChild] = []
    producers: list[Producer] = []
    converge: list[float] = []
    kinds: Counter[str] = Counter()
    # Keepalive and connect timeout short: a blackholed link is noticed in
    # seconds, as a real agent's would be with these settings.
    env = {
        **FAST_AGENT,
        "STOCKSYNC_AGENT_KEEPALIVE_S": "1",
        "STOCKSYNC_AGENT_CONNECT_TIMEOUT_S": "2",
    }
    with running(hub, *agents):
        hub.wait_ready(60)
        try:
            for k, name in enumerate(names):
                db = workdir / f"{name}.db"
                new_store(db)
                proxy = ThreadedFaultProxy("127.0.0.1", hub.port, seed=seed + k)
                proxy.start()
                proxies.append(proxy)
                agents.append(
                    AgentChild(
                        name, db, f"127.0.0.1:{proxy.port}", workdir / f"{name}.log", env=env
                    )
                )
                producers.append(
                    Producer(db, workdir / f"{name}.recorded", seed + k, pause_ms=20).start()
                )
            for name in names:
                wait_for(lambda n=name: hub_watermark(hub.db, n) > 0, 60, f"{name} streaming")
            # Every kind at least once, then at random.
            plan = [KINDS_ALL[i % len(KINDS_ALL)] for i in range(count)]
            rng.shuffle(plan)
            for i, kind in enumerate(plan):
                k = rng.randrange(len(names))
                proxy, agent = proxies[k], agents[k]
                _inject(proxy, kind, rng)
                kinds[kind] += 1
                time.sleep(rng.uniform(0.2, 1.5))
                proxy.heal()
                healed = time.monotonic()
                high = agent_high_seq(agent.db)
                wait_for(
                    lambda n=names[k], h=high: hub_watermark(hub.db, n) >= h,
                    120,
                    f"{names[k]} to converge after {kind}",
                    poll=0.01,
                )
                converge.append(time.monotonic() - healed)
                progress(i + 1, count, "faults", 25)
            for p in producers:
                p.stop()
            per_agent = {}
            for name, agent, p in zip(names, agents, producers, strict=True):
                agent.check_alive()
                wait_caught_up(hub.db, agent.db, name)
                per_agent[name] = exactness(hub.db, agent.db, name, read_recorded(p.log))
                check_exact(c, per_agent[name], f"{name}: ")
        finally:
            for p in producers:
                p.kill()
            for agent in agents:
                agent.kill()
            for proxy in proxies:
                proxy.stop()
    c.figures = {
        "faults": count,
        "faults_by_kind": dict(sorted(kinds.items())),
        "agents": len(names),
        "recorded": sum(int(f["recorded"]) for f in per_agent.values()),
        "lost": sum(int(f["lost"]) for f in per_agent.values()),
        "duplicated": sum(int(f["duplicated"]) for f in per_agent.values()),
        "gaps": sum(int(f["gaps"]) for f in per_agent.values()),
        "hub_equals_every_store": all(bool(f["on_hand_equal"]) for f in per_agent.values()),
        "convergence_p50_s": round(percentile(converge, 50), 3),
        "convergence_p99_s": round(percentile(converge, 99), 3),
        "convergence_max_s": round(max(converge, default=0.0), 3),
    }
    c.expect(set(kinds) == set(KINDS_ALL) or count < len(KINDS_ALL), "not every fault kind ran")
    return c
