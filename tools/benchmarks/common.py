"""What every scenario of ``stocksync-bench`` shares: result rows, the table,
the machine and versions, percentiles and process figures.

A scenario returns a :class:`Scenario`: its parameters, its rows and any
details. A :class:`Row` is one measured number with what it is held against:
its raw limit measured in the same run (grpc.aio alone, sqlite3 alone) and,
where there is one, the peer pipeline (NATS JetStream) doing the same work.
Every comparison prints as ``measured ÷ against``: for a rate, 1.0 is the
limit and less is slower; for a latency, 1.0 is the limit and more is slower.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import os
import platform
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Against",
    "CpuMeter",
    "Row",
    "Scenario",
    "collecting_as_a_daemon",
    "cpu_rows",
    "cpu_s",
    "format_rows",
    "machine",
    "percentiles",
    "rss_kb",
    "run_queue",
    "versions",
]


@dataclass
class Against:
    """What a measured number is held against.

    Args:
        name: what it is (``raw sqlite3 batched apply``, ``peer: ...``).
        value: its number, in the row's unit.
        kind: ``limit`` (what the parts alone do), ``peer`` (the pipeline a
            team would build instead) or ``baseline`` (the same thing in
            easier conditions: loopback for wan, no slow watchers).
    """

    name: str
    value: float
    kind: str = "limit"

    def ratio(self, measured: float) -> float | None:
        """``measured / value``; None when the value is 0."""
        return measured / self.value if self.value else None


@dataclass
class Row:
    """One measured number.

    Args:
        measure: what was measured, with the size (``1,000,000 events``).
        value: the number.
        unit: ``ev/s``, ``ms``, ``calls/s``, ``MiB``, ``%``, ...
        against: its limits, the peer and baselines, in that order.
        target: the issue's target for it, as text (``>= 0.7 x raw``).
    """

    measure: str
    value: float
    unit: str
    against: list[Against] = field(default_factory=list)
    target: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain data, each comparison with its ratio."""
        d = asdict(self)
        for a, entry in zip(self.against, d["against"], strict=True):
            entry["ratio"] = a.ratio(self.value)
        return d


@dataclass
class Scenario:
    """One scenario's result: its parameters, rows and details."""

    name: str
    params: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str = ""
    """Why parts did not run (the peer without NATS), or empty."""

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--out``."""
        return {
            "scenario": self.name,
            "params": self.params,
            "rows": [r.as_dict() for r in self.rows],
            "details": self.details,
            "seconds": round(self.seconds, 2),
            "skipped": self.skipped,
        }


# -- numbers ----------------------------------------------------------------------


def percentiles(values: Iterable[float], qs: Sequence[float] = (0.5, 0.99, 0.999)) -> list[float]:
    """Nearest-rank percentiles of ``values`` (0.0 for none)."""
    ordered = sorted(values)
    if not ordered:
        return [0.0 for _ in qs]
    top = len(ordered) - 1
    return [ordered[min(top, max(0, round(q * top)))] for q in qs]


def latency_summary(seconds: Iterable[float]) -> dict[str, float]:
    """count, p50, p99, p999 and max in ms of latencies given in seconds."""
    values = sorted(seconds)
    p50, p99, p999 = percentiles(values)
    return {
        "count": len(values),
        "p50_ms": round(p50 * 1000, 3),
        "p99_ms": round(p99 * 1000, 3),
        "p999_ms": round(p999 * 1000, 3),
        "max_ms": round((values[-1] if values else 0.0) * 1000, 3),
    }


@contextlib.contextmanager
def collecting_as_a_daemon() -> Iterator[None]:
    """Within: this process's garbage collector set as stocksync's daemons set
    theirs (:func:`stocksync.cli_common.tune_gc`: what is loaded is frozen,
    young collections are rarer), for a servicer measured in this process;
    as it was, after. Without it, a full collection of the benchmark's own
    heap (~30-45 ms, once in the first second of a fan-out run) stalls the
    servicer in a way the hub does not."""
    from stocksync.cli_common import tune_gc

    threshold = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_queue(pid: int) -> dict[int, tuple[int, int]]:
    """Per thread of a process: (ns spent runnable but waiting for a core,
    times it was put on a core) since the thread began, from
    ``/proc/<pid>/task/<tid>/schedstat`` (the kernel's scheduler delay
    accounting). Threads that end between two readings drop out."""
    out: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    _on_cpu, waited, runs = (int(v) for v in f.read().split()[:3])
                out[int(tid)] = (waited, runs)
    return out


def _waits(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], elapsed: float
) -> dict[str, float]:
    """What :func:`run_queue` readings say of the stretch between them: the
    share of it the process's threads spent waiting for a core (summed over
    threads, so it can pass 100), and the mean wait each time one was put on
    a core."""
    waited = runs = 0
    for tid, (w, r) in after.items():
        w0, r0 = before.get(tid, (0, 0))
        waited += w - w0
        runs += r - r0
    return {
        "waited_pct": round(100 * waited / 1e9 / max(elapsed, 1e-9), 1),
        "mean_wait_us": round(waited / 1e3 / runs, 1) if runs else 0.0,
        "runs_per_s": round(runs / max(elapsed, 1e-9)),
    }


def _machine_jiffies() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies over every core since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq, steal, sum(fields)


class CpuMeter:
    """CPU over a stretch of a run: the machine's, and each named process's.

    ``with CpuMeter({"hub": pid, ...}) as cpu: ...``; then :attr:`figures`:
    ``machine_busy_pct`` (user, system and interrupts, as % of every core:
    100 is the whole machine), ``machine_steal_pct`` (taken by the host
    under a virtual machine, same scale), ``cores``, and ``processes``: each
    named process's user + system CPU as % of one core; and ``waits``: for
    each named process, how long its threads were ready to run but waited
    for a core (:func:`run_queue`: ``waited_pct`` of the stretch, summed over
    threads; ``mean_wait_us`` each time one was put on a core; ``runs_per_s``,
    how often that was). What a latency scenario is limited by when the
    machine is near 100 % busy: every hop of a message waits there.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.figures: dict[str, Any] = {}

    def __enter__(self) -> CpuMeter:
        self._machine = _machine_jiffies()
        self._procs = {name: cpu_s(pid) for name, pid in self.pids.items()}
        self._queues = {name: run_queue(pid) for name, pid in self.pids.items()}
        self._at = time.monotonic()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:
            return  # the stretch failed: its processes may be gone, and the error says why
        elapsed = time.monotonic() - self._at
        busy0, steal0, total0 = self._machine
        busy, steal, total = _machine_jiffies()
        ticks = max(1, total - total0)
        self.figures = {
            "seconds": round(elapsed, 3),
            "cores": os.cpu_count() or 1,
            "machine_busy_pct": round(100 * (busy - busy0) / ticks, 1),
            "machine_steal_pct": round(100 * (steal - steal0) / ticks, 1),
            "processes": {
                name: round(100 * (cpu_s(pid) - self._procs[name]) / max(elapsed, 1e-9), 1)
                for name, pid in self.pids.items()
            },
            "waits": {
                name: _waits(self._queues[name], run_queue(pid), elapsed)
                for name, pid in self.pids.items()
            },
        }


def cpu_rows(figures: dict[str, Any], title: str) -> list[Row]:
    """A :class:`CpuMeter`'s figures as rows: how busy the whole machine was
    (when near 100 %, every process waits for a core), then each process, as
    % of one core, and how long its threads waited for a core each time one
    woke (the kernel's run-queue delay; every hop of a message pays it)."""
    out = [
        Row(
            f"{title}: machine busy, of {figures['cores']} cores", figures["machine_busy_pct"], "%"
        ),
        Row("  taken by the host (steal), of all cores", figures["machine_steal_pct"], "%"),
    ]
    waits = figures.get("waits", {})
    for name, pct in figures["processes"].items():
        out.append(Row(f"  {name}, of one core", pct, "%"))
        if name in waits:
            out.append(
                Row("    waited for a core, mean per wake-up", waits[name]["mean_wait_us"], "us")
            )
    return out


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB, from /proc/<pid>/status."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


# -- the machine ----------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def ram_gib() -> float:
    """The machine's RAM (``MemTotal``) in GiB, to 0.1; 0 where unknown."""
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return round(mem_kb / 1024 / 1024, 1)


def machine() -> dict[str, Any]:
    """nproc, RAM, CPU model, kernel and the load average now."""
    return {
        "nproc": os.cpu_count(),
        "ram_gib": ram_gib(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nats_server_version() -> str | None:
    exe = shutil.which("nats-server")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, Any]:
    """Python, grpcio, protobuf, SQLite, stocksync, nats-py and nats-server."""
    return {
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "sqlite": sqlite3.sqlite_version,
        "stocksync": _version("stocksync"),
        "nats-py": _version("nats-py"),
        "nats-server": _nats_server_version(),
    }


# -- the table ------------------------------------------------------------------------


def fmt(value: float, unit: str) -> str:
    """A number as the table shows it in ``unit``."""
    if unit in ("ms",):
        return f"{value:,.2f}"
    if unit in ("MiB", "%", "x", "s"):
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def format_rows(scenarios: Sequence[Scenario]) -> str:
    """The table of every scenario's rows: one line per comparison."""
    head = (
        f"{'scenario':<14}{'measurement':<46}{'value':>12} {'unit':<8}"
        f"{'held against':<46}{'its value':>12}{'ratio':>8}"
    )
    lines = [head, "-" * len(head)]
    for s in scenarios:
        if not s.rows and s.skipped:
            lines.append(f"{s.name:<14}skipped: {s.skipped}")
            continue
        name = s.name
        for row in s.rows:
            left = f"{name:<14}{row.measure:<46}{fmt(row.value, row.unit):>12} {row.unit:<8}"
            name = ""
            if not row.against:
                lines.append((left + (f"target {row.target}" if row.target else "")).rstrip())
            for i, a in enumerate(row.against):
                ratio = a.ratio(row.value)
                label = a.name if a.kind == "limit" else f"{a.kind}: {a.name}"
                lines.append(
                    (left if i == 0 else " " * len(left))
                    + f"{label:<46}{fmt(a.value, row.unit):>12}"
                    + (f"{ratio:>8.2f}" if ratio is not None else f"{'-':>8}")
                )
            if row.target and row.against:
                lines.append(" " * (len(left)) + f"target: {row.target}")
        if s.skipped and s.rows:
            lines.append(f"{'':<14}(skipped: {s.skipped})")
    return "\n".join(lines)
