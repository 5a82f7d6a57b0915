"""A warehouse producer for the crash tests: records events until told to stop.

Run as a subprocess next to a real agent daemon::

    python tests/producer.py AGENT.db RECORDED.log --seed 7

It records a random mix of events (receives, ships with and without a
reservation id, positive and negative adjusts, cycle counts with and without
an as-of seq), one at a time through ``AgentStore.record`` or a few at a time
through ``record_many``, into the agent's store. Each time a call returns —
the moment a WMS would be told "recorded" — it appends one line per event,
``seq sku kind quantity``, to the log in a single ``write`` on an ``O_APPEND``
descriptor. That write reaches the kernel before the next record starts, so a
``kill -9`` of this process can lose only a record that was never reported,
and never leaves half a line.

SIGTERM (or the file ``STOP`` next to the log) ends it cleanly after the
record in progress, with exit code 0.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import time
from pathlib import Path

from stocksync.agent.store import AgentStore
from stocksync.events import Kind, NewEvent

SKUS = ("SKU-A", "SKU-B", "EU/FRA:boots-42.L", "sku_d", "X-1")
"""A few SKUs, so counts and ships land on stock that moved recently."""


def random_event(rng: random.Random, known_high: int, serial: int) -> NewEvent:
    """One well-formed event; a COUNT may rebase on any seq up to ``known_high``."""
    sku = rng.choice(SKUS)
    roll = rng.random()
    if roll < 0.30:
        return NewEvent(sku=sku, kind=Kind.RECEIVE, quantity=rng.randint(1, 50))
    if roll < 0.55:
        reservation = f"R-{os.getpid()}-{serial}" if rng.random() < 0.3 else ""
        return NewEvent(
            sku=sku, kind=Kind.SHIP, quantity=rng.randint(1, 20), reservation_id=reservation
        )
    if roll < 0.85:
        qty = rng.choice([-1, 1]) * rng.randint(1, 10)
        reason = "damage" if qty < 0 else "found"
        return NewEvent(sku=sku, kind=Kind.ADJUST, quantity=qty, reason=reason)
    as_of = None if rng.random() < 0.5 else rng.randint(max(0, known_high - 30), known_high)
    return NewEvent(sku=sku, kind=Kind.COUNT, quantity=rng.randint(0, 100), as_of_seq=as_of)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path, help="the agent's store")
    parser.add_argument("log", type=Path, help="where reported seqs are appended")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pause-ms", type=float, default=3.0, help="most sleep between records")
    parser.add_argument("--synchronous", default="FULL", help="the store's synchronous pragma")
    args = parser.parse_args()

    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    stop_file = args.log.with_name("STOP")
    rng = random.Random(args.seed)
    fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    serial = 0
    with AgentStore(args.db, synchronous=args.synchronous) as store:
        known_high = store.high_seq()
        while not stopping and not stop_file.exists():
            size = 1 if rng.random() < 0.6 else rng.randint(2, 6)
            events = []
            for _ in range(size):
                serial += 1
                events.append(random_event(rng, known_high, serial))
            seqs = store.record_many(events) if size > 1 else [store.record(events[0])]
            # "recorded": report every seq of the call in one write.
            lines = "".join(
                f"{seq} {e.sku} {int(e.kind)} {e.quantity}\n"
                for seq, e in zip(seqs, events, strict=True)
            )
            os.write(fd, lines.encode())
            known_high = seqs[-1]
            time.sleep(rng.uniform(0, args.pause_ms / 1000))
    os.close(fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
