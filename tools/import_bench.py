"""``stocksync-agent import`` against raw ``sqlite3`` inserting the same rows.

    python -m stocksync.tools.import_bench                 # 300,000 rows, 2,000 SKUs
    python -m stocksync.tools.import_bench --rows 30000 --repeat 1 --json

One run, on this machine, alternating the sides ``--repeat`` times:

- **import**: the real command, ``stocksync-agent import FILE.csv --db NEW``, as a
  subprocess, timed from spawning it to its exit (Python start-up, reading
  and checking the file, one transaction, the fsync). The CSV is the bench's
  usual mix (45 % receive, 45 % ship, 10 % adjust over ``--skus``).
- **raw**: the same rows, already built as the exact tuples the import stores
  (event ids included), inserted into a fresh agent store (same schema, WAL,
  ``synchronous=FULL``) with plain ``sqlite3``: one ``BEGIN IMMEDIATE``, one
  ``executemany`` into ``events``, the stock summed per SKU in one
  ``executemany`` upsert, one ``COMMIT``. Nothing but the statements and the
  commit is timed: the best a program could do with the same durability.
  For reference, ``raw, upsert per event`` is the same with one stock upsert
  per row (the plain way).

The ratio is raw seconds / import seconds (events/s of the import over events/s
of raw), from the median of each side.
"""

from __future__ import annotations

import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from stocksync.agent.event_ids import block
from stocksync.agent.store import AgentStore

__all__ = ["main"]

_INSERT = (
    "INSERT INTO events (seq, event_id, sku, kind, quantity, delta, reason, reservation_id, "
    "as_of_seq, recorded_at_ms) VALUES (?,?,?,?,?,?,?,?,?,?)"
)
_UPSERT = (
    "INSERT INTO stock(sku, on_hand) VALUES (?, ?) "
    "ON CONFLICT(sku) DO UPDATE SET on_hand = on_hand + excluded.on_hand"
)


def write_csv(path: Path, rows: int, skus: int, seed: int = 7) -> list[tuple[str, int, int, str]]:
    """The workload as a CSV file; returns (sku, kind, quantity, reason) per row."""
    rng = random.Random(seed)
    names = [f"SKU-{i:06d}" for i in range(skus)]
    out = []
    for _ in range(rows):
        sku = names[rng.randrange(skus)]
        roll = rng.random()
        if roll < 0.45:
            out.append((sku, 1, rng.randint(1, 24), ""))
        elif roll < 0.90:
            out.append((sku, 2, rng.randint(1, 6), ""))
        else:
            out.append((sku, 3, rng.choice((-3, -2, -1, 1, 2, 3)), "bench"))
    kinds = {1: "receive", 2: "ship", 3: "adjust"}
    with path.open("w") as f:
        f.write("sku,kind,qty,reason\n")
        f.writelines(f"{s},{kinds[k]},{q},{r}\n" for s, k, q, r in out)
    return out


def _fresh_store(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    AgentStore(path).close()


def time_raw(
    path: Path, workload: list[tuple[str, int, int, str]], per_event: bool
) -> tuple[float, float]:
    """Seconds (wall, CPU) for plain sqlite3 to store the rows in a fresh agent store."""
    _fresh_store(path)
    stamp = time.time_ns() // 1_000_000
    ids = block(len(workload))
    rows = [
        (seq, eid, s, k, q, -q if k == 2 else q, r, "", 0, stamp)
        for seq, (eid, (s, k, q, r)) in enumerate(zip(ids, workload, strict=True), start=1)
    ]
    moved: dict[str, int] = {}
    for row in rows:
        moved[row[2]] = moved.get(row[2], 0) + row[5]
    stock = [(r[2], r[5]) for r in rows] if per_event else list(moved.items())
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        started, cpu = time.perf_counter(), time.process_time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT, rows)
        conn.executemany(_UPSERT, stock)
        conn.execute("COMMIT")
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        conn.close()


def time_import(path: Path, csv_path: Path, rows: int) -> tuple[float, float]:
    """Seconds (wall, CPU) of ``stocksync-agent import`` as a subprocess, spawn to exit."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "stocksync.agent.cli",
        "import",
        str(csv_path),
        "--db",
        str(path),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 0 or f"recorded {rows} events" not in done.stdout:
        raise click.ClickException(f"import failed: {done.stdout}{done.stderr}")
    return elapsed, cpu


@click.command()
@click.option("--rows", default=300_000, show_default=True, help="CSV rows to import.")
@click.option("--skus", default=2_000, show_default=True, help="Distinct SKUs.")
@click.option("--repeat", default=3, show_default=True, help="Runs of each side, alternating.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def main(rows: int, skus: int, repeat: int, as_json: bool) -> None:
    """Time `stocksync-agent import` against raw sqlite3 on the same rows."""
    with tempfile.TemporaryDirectory(prefix="stocksync-import-bench-") as tmp:
        work = Path(tmp)
        csv_path = work / "rows.csv"
        workload = write_csv(csv_path, rows, skus)
        sides: dict[str, Callable[[], tuple[float, float]]] = {
            "raw": lambda: time_raw(work / "raw.db", workload, per_event=False),
            "import": lambda: time_import(work / "import.db", csv_path, rows),
            "raw, upsert per event": lambda: time_raw(work / "raw.db", workload, per_event=True),
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        cpu: dict[str, list[float]] = {name: [] for name in sides}
        load_before = os.getloadavg()
        for _ in range(repeat):
            for name, side in sides.items():
                wall, used = side()
                times[name].append(wall)
                cpu[name].append(used)
        load_after = os.getloadavg()
    median = {k: statistics.median(v) for k, v in times.items()}
    median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    result: dict[str, Any] = {
        "rows": rows,
        "skus": skus,
        "repeat": repeat,
        "loadavg": [list(load_before), list(load_after)],
        "seconds": times,
        "cpu_seconds": cpu,
        "events_per_s": {k: rows / v for k, v in median.items()},
        "ratio": median["raw"] / median["import"],
        "ratio_vs_upsert_per_event": median["raw, upsert per event"] / median["import"],
        "cpu_ratio": median_cpu["raw"] / median_cpu["import"],
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"{rows:,} rows over {skus:,} SKUs, {repeat} runs each "
        f"(load {load_before[0]:.2f} -> {load_after[0]:.2f})"
    )
    click.echo(f"{'side':<24}{'events/s':>12}{'median s':>10}{'CPU s':>8}  runs (s)")
    for name, runs in times.items():
        click.echo(
            f"{name:<24}{rows / median[name]:>12,.0f}{median[name]:>10.3f}"
            f"{median_cpu[name]:>8.3f}  " + " ".join(f"{t:.3f}" for t in runs)
        )
    click.echo(
        f"import / raw: {result['ratio']:.2f}   "
        f"(import / raw with an upsert per event: {result['ratio_vs_upsert_per_event']:.2f}; "
        f"by CPU seconds: {result['cpu_ratio']:.2f})"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
