"""``stocksync-bench``: every path users feel, held against its raw limit and a peer.

    stocksync-bench all --quick                 # every scenario, small (a few minutes)
    stocksync-bench all --out results.json      # every scenario at full size
    stocksync-bench catch-up --events 300000    # one scenario
    stocksync-bench fanout --param watchers=200 # one size changed

Each scenario prints its table; ``--out`` writes the machine, the versions
and every scenario's rows and details as JSON. docs/benchmarks.md says what
each one measures and against what.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click

from stocksync.tools.benchmarks.common import Scenario, format_rows, machine, versions

__all__ = ["PRESETS", "SCENARIOS", "main", "run_scenario"]

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "ingest": {
        "full": {"agents": [1, 10, 50], "events": 200_000},
        "quick": {"agents": [1, 10], "events": 20_000},
    },
    "catch-up": {
        "full": {"events": 1_000_000, "skus": 2000, "peer_events": 300_000},
        "quick": {"events": 50_000, "skus": 2000, "peer_events": 50_000},
    },
    "record": {
        "full": {"singles": 2000, "processes": 50, "rows": 300_000},
        "quick": {"singles": 300, "processes": 5, "rows": 20_000},
    },
    "latency": {
        "full": {
            "watchers": 500,
            "rate": 5000,
            "seconds": 5,
            "via": ["edge", "edge-sse", "hub"],
        },
        "quick": {"watchers": 50, "rate": 1000, "seconds": 2, "via": ["edge"]},
    },
    "wan": {
        "full": {"events": 300_000, "delay_ms": 125, "live_events": 200, "live_rate": 50},
        "quick": {"events": 20_000, "delay_ms": 125, "live_events": 40, "live_rate": 50},
    },
    "fanout": {
        "full": {"rooms": [1, 10, 100], "watchers": 1000, "updates": 300, "rate": 100},
        "quick": {"rooms": [1, 10], "watchers": 100, "updates": 100, "rate": 100},
    },
    "slow-watchers": {
        "full": {"watchers": 1000, "updates": 300, "rate": 50, "slow_share": 0.05, "rounds": 3},
        "quick": {"watchers": 100, "updates": 100, "rate": 50, "slow_share": 0.05, "rounds": 1},
    },
    "reserve": {
        "full": {"callers": 1000, "attempts": 20_000, "units": 10_000, "rounds": 3},
        "quick": {"callers": 100, "attempts": 2000, "units": 1000, "rounds": 1},
    },
    "footprint": {
        "full": {"skus": 100_000, "warehouses": 10, "idle_s": 10},
        "quick": {"skus": 2000, "warehouses": 10, "idle_s": 3},
    },
}
"""Each scenario's sizes: ``full`` by default, ``quick`` with ``--quick``."""


def _say(message: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {message}", err=True)


def _peer_reason(no_peer: bool) -> str:
    if no_peer:
        return "--no-peer"
    from stocksync.tools.benchmarks.peer import unavailable

    return unavailable()


def _ingest(p: dict[str, Any], tmp: Path, peer: str) -> Scenario:
    from stocksync.tools.benchmarks import ingest

    return ingest.scenario(list(p["agents"]), int(p["events"]), tmp, _say)


def _catchup(p: dict[str, Any], tmp: Path, peer: str) -> Scenario:
    from stocksync.tools.benchmarks import catchup

    return catchup.scenario(
        int(p["events"]), int(p["skus"]), tmp, _say, peer, int(p["peer_events"])
    )


def _record(p: dict[str, Any], tmp: Path, peer: str) -> Scenario:
    from stocksync.tools.benchmarks import record

    return record.scenario(int(p["singles"]), int(p["processes"]), int(p["rows"]), tmp, _say)


def _latency(p: dict[str, Any], tmp: Path, peer: str) -> Scenario:
    from stocksync.tools.benchmarks import latency

    return latency.scenario(
        int(p["watchers"]),
        float(p["rate"]),
        float(p["seconds"]),
        tmp,
        peer,
        [str(v) for v in p["via"]],
    )


def _wan(p: dict[str, Any], tmp: Path, peer: str) -> Scenario:
    from stocksync.tools.benchmarks import wan

    return wan.scenario(
        int(p["events"]),
        float(p["delay_ms"]),
        int(p["live_events"]),
        float(p["live_rate"]),
        tmp,
        _say,
    )


def _fanout(p: dict[str, Any], tmp: Path, peer: str) -> Scenario:
    from stocksync.tools.benchmarks import fanout

    return fanout.scenario(
        list(p["rooms"]), int(p["watchers"]), int(p["updates"]), float(p["rate"]), _say
    )


def _slow(p: dict[str, Any], tmp: Path, peer: str) -> Scenario:
    from stocksync.tools.benchmarks import fanout

    return fanout.slow_scenario(
        int(p["watchers"]),
        int(p["updates"]),
        float(p["rate"]),
        float(p["slow_share"]),
        _say,
        int(p["rounds"]),
    )


def _reserve(p: dict[str, Any], tmp: Path, peer: str) -> Scenario:
    from stocksync.tools.benchmarks import reserve

    return reserve.scenario(
        int(p["callers"]), int(p["attempts"]), int(p["units"]), tmp, int(p["rounds"])
    )


def _footprint(p: dict[str, Any], tmp: Path, peer: str) -> Scenario:
    from stocksync.tools.benchmarks import footprint

    return footprint.scenario(int(p["skus"]), int(p["warehouses"]), float(p["idle_s"]), tmp, _say)


SCENARIOS: dict[str, Callable[[dict[str, Any], Path, str], Scenario]] = {
    "ingest": _ingest,
    "catch-up": _catchup,
    "record": _record,
    "latency": _latency,
    "wan": _wan,
    "fanout": _fanout,
    "slow-watchers": _slow,
    "reserve": _reserve,
    "footprint": _footprint,
}
"""Every scenario, in the order ``all`` runs them."""


def run_scenario(name: str, params: dict[str, Any], peer: str = "") -> Scenario:
    """Run one scenario in a temporary directory of its own.

    Args:
        name: a key of :data:`SCENARIOS`.
        params: its sizes (see :data:`PRESETS`).
        peer: '' to measure the peer too, else why it is skipped.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"stocksync-bench-{name}-") as tmp:
        result = SCENARIOS[name](params, Path(tmp), peer)
    result.seconds = time.perf_counter() - started
    return result


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r}: expected KEY=VALUE")
    try:
        parsed = json.loads(value if not value.count(",") else f"[{value}]")
    except ValueError:
        parsed = value
    return key.replace("-", "_"), parsed


def _like(default: Any, value: Any) -> Any:
    """A single value given for a size that is a list (``agents=10``) is a list of one."""
    if isinstance(default, list | tuple) and not isinstance(value, list):
        return [value]
    return value


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM becomes SystemExit, so every ``finally`` stops its subprocesses."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _byte_compiled() -> None:
    """Byte-compile stocksync's modules once before the run.

    An installed wheel ships them compiled (pip compiles on install); a source
    checkout run with ``PYTHONDONTWRITEBYTECODE`` set would compile every
    module again in each hub, agent and edge the run starts (~70 ms of CPU
    each), which no deployment pays.
    """
    import compileall
    import importlib

    for name in (
        "stocksync",
        "stocksync.agent",
        "stocksync.hub",
        "stocksync.tools",
        "stocksync.v1",
    ):
        for folder in importlib.import_module(name).__path__:
            compileall.compile_dir(folder, maxlevels=0 if name == "stocksync" else 2, quiet=1)


def _run(
    names: list[str], quick: bool, params: tuple[str, ...], no_peer: bool, out: str | None
) -> None:
    overrides = dict(_parse_param(p) for p in params)
    if len(names) == 1:
        unknown = set(overrides) - set(PRESETS[names[0]]["full"])
        if unknown:
            raise click.BadParameter(
                f"{', '.join(sorted(unknown))}: not a size of {names[0]} "
                f"(it has {', '.join(PRESETS[names[0]]['full'])})",
                param_hint="--param",
            )
    _byte_compiled()
    peer = _peer_reason(no_peer)
    if peer:
        _say(f"the peer (NATS JetStream) is skipped: {peer}")
    report: dict[str, Any] = {
        "command": " ".join(["stocksync-bench", *sys.argv[1:]]),
        "size": "quick" if quick else "full",
        "machine": machine(),
        "versions": versions(),
        "peer_skipped": peer,
        "scenarios": [],
    }
    results: list[Scenario] = []
    failed = []
    with _sigterm_exits():
        for name in names:
            preset = dict(PRESETS[name]["quick" if quick else "full"])
            preset.update({k: _like(preset[k], v) for k, v in overrides.items() if k in preset})
            _say(f"{name}: {json.dumps(preset)}")
            try:
                result = run_scenario(name, preset, peer)
            except Exception as e:
                if len(names) == 1:
                    raise click.ClickException(f"{name}: {e}") from None
                _say(f"{name} FAILED: {e}\n{traceback.format_exc()}")
                result = Scenario(name, preset, skipped=f"failed: {e}")
                failed.append(name)
            results.append(result)
            report["scenarios"].append(result.as_dict())
            click.echo(format_rows([result]))
            click.echo("")
    report["load_avg_at_end"] = machine()["load_avg"]
    m = report["machine"]
    if len(results) > 1:
        click.echo(format_rows(results))
    click.echo(
        f"\nmachine: {m['nproc']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB; "
        f"load average {m['load_avg']} at start, {report['load_avg_at_end']} at end"
    )
    v = report["versions"]
    click.echo(
        f"versions: Python {v['python']}, grpcio {v['grpcio']}, protobuf {v['protobuf']}, "
        f"SQLite {v['sqlite']}, nats-py {v['nats-py']}, {v['nats-server'] or 'no nats-server'}"
    )
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        _say(f"wrote {out}")
    if failed:
        raise click.ClickException(f"failed: {', '.join(failed)}")


def _options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--out", type=click.Path(dir_okay=False), help="Write the results as JSON.")(f)
    f = click.option("--no-peer", is_flag=True, help="Leave out the NATS JetStream peer pipeline.")(
        f
    )
    f = click.option(
        "--param",
        "params",
        multiple=True,
        metavar="KEY=VALUE",
        help="Change one size (e.g. watchers=200, rooms=1,10); repeatable.",
    )(f)
    return click.option("--quick", is_flag=True, help="Small sizes: seconds, not minutes.")(f)


@click.group()
def main() -> None:
    """Measure stocksync against its raw limits and a NATS JetStream peer.

    Example:

        stocksync-bench all --quick --out results.json
    """


@main.command("all")
@_options
def all_(quick: bool, params: tuple[str, ...], no_peer: bool, out: str | None) -> None:
    """Every scenario, one after another, and the table of all of them.

    Example:

        stocksync-bench all --out results.json
    """
    _run(list(SCENARIOS), quick, params, no_peer, out)


def _scenario_command(name: str, doc: str) -> None:
    def command(
        quick: bool, params: tuple[str, ...], no_peer: bool, out: str | None, **kw: Any
    ) -> None:
        extra = tuple(f"{k}={v}" for k, v in kw.items() if v is not None)
        _run([name], quick, params + extra, no_peer, out)

    sizes = json.dumps(PRESETS[name]["full"])
    command.__doc__ = (
        f"{doc}\n\nSizes (full): {sizes}\n\nExample:\n\n    stocksync-bench {name} --quick"
    )
    decorated = _options(command)
    if name == "catch-up":
        decorated = click.option(
            "--events", type=click.IntRange(min=1), default=None, help="Events buffered offline."
        )(decorated)
    main.command(name)(decorated)


for _name, _doc in {
    "ingest": "1 / 10 / 50 agents into one durable hub: with a backlog, then live.",
    "catch-up": "Events buffered offline, then one agent catches up.",
    "record": "Single events via the local API and the CLI, and a CSV import.",
    "latency": "Recorded at the agent -> applied at the hub, and -> room watchers.",
    "wan": "Catch-up and live latency through a proxy adding a one-way delay.",
    "fanout": "Rooms x watchers with a hot SKU, against a plain gRPC fan-out.",
    "slow-watchers": "Some watchers read slowly: the others' p99 against a run without.",
    "reserve": "Many callers reserving one hot SKU, against a unary echo.",
    "footprint": "Idle agent RSS and CPU; hub RSS holding many SKUs x warehouses.",
}.items():
    _scenario_command(_name, _doc)
