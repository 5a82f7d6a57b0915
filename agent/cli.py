"""``stocksync-agent``: record stock events and stream them to the hub."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from stocksync.agent.link import AgentLink
from stocksync.agent.store import AgentStore, StoreError, parse_events_csv, status_info
from stocksync.cli_common import (
    config_option,
    load_config,
    run_until_signal,
    setup_logging,
    tune_gc,
)
from stocksync.config import AgentConfig
from stocksync.events import InvalidEvent, Kind, NewEvent, validate_new_event

__all__ = ["main"]

PROGRESS_MIN_ROWS = 10_000
"""CSV imports at least this long show a progress bar."""

db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False),
    envvar="STOCKSYNC_AGENT_DB",
    default="stocksync-agent.db",
    show_default=True,
    help="The agent's SQLite store (env STOCKSYNC_AGENT_DB).",
)


def _open(db: str, synchronous: str = "FULL") -> AgentStore:
    try:
        return AgentStore(db, synchronous=synchronous)
    except StoreError as e:
        raise click.ClickException(str(e)) from None


@click.group()
@click.version_option(package_name="stocksync")
def main() -> None:
    """Record warehouse stock events and stream them to the stocksync hub.

    Example:

        stocksync-agent record receive SKU-1 24 --db lax.db
    """


@main.group()
def record() -> None:
    """Record one stock event durably in the local store.

    "Recorded" means committed with its seq; a running daemon sends it to
    the hub within milliseconds, and a stopped one when it starts.
    """


def _record_command(kind: Kind, help_text: str, example: str) -> Callable[..., None]:
    @click.argument("sku")
    @click.argument("qty", type=int)
    @click.option("--reason", default="", help="Why (damage, found, transfer...).")
    @db_option
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def command(sku: str, qty: int, reason: str, db: str, as_json: bool, **extra: Any) -> None:
        event = NewEvent(
            sku=sku,
            kind=kind,
            quantity=qty,
            reason=reason,
            reservation_id=extra.get("reservation") or "",
            as_of_seq=extra.get("as_of_seq"),
        )
        # Refuse bad input before the store is opened: opening creates it.
        try:
            validate_new_event(event)
        except InvalidEvent as e:
            raise click.ClickException(str(e)) from None
        if event.as_of_seq and not Path(db).exists():
            raise click.ClickException(
                f"no agent store at {db}: a count as of seq {event.as_of_seq} needs its events"
            )
        with _open(db) as store:
            try:
                seq = store.record(event)
            except InvalidEvent as e:
                raise click.ClickException(str(e)) from None
            on_hand = store.on_hand(sku).get(sku, 0)
        if as_json:
            click.echo(json.dumps({"seq": seq, "sku": sku, "kind": kind.name, "on_hand": on_hand}))
        else:
            click.echo(f"recorded seq {seq}: {kind.name.lower()} {qty} {sku} (on_hand {on_hand})")

    command.__doc__ = f"{help_text}\n\nExample:\n\n    {example}"
    return command


def _add_record_commands() -> None:
    # Negative quantities (`record adjust SKU -5`) must reach QTY, not be
    # taken for an option; ignore_unknown_options passes them through.
    settings = {"ignore_unknown_options": True}
    receive = _record_command(
        Kind.RECEIVE, "Goods in: add QTY (> 0) units.", "stocksync-agent record receive SKU-1 24"
    )
    record.command("receive", context_settings=settings)(receive)
    ship = _record_command(
        Kind.SHIP,
        "Goods out: remove QTY (> 0) units; --reservation settles a hub reservation.",
        "stocksync-agent record ship SKU-1 2 --reservation R-1001",
    )
    ship = click.option("--reservation", default="", help="The reservation this ship settles.")(
        ship
    )
    record.command("ship", context_settings=settings)(ship)
    adjust = _record_command(
        Kind.ADJUST,
        "Correct on_hand by QTY (+ or -, not 0): damage, found, transfer.",
        "stocksync-agent record adjust SKU-1 -5 --reason damage",
    )
    record.command("adjust", context_settings=settings)(adjust)
    count = _record_command(
        Kind.COUNT,
        "A cycle count of QTY (>= 0) units. Moves recorded after --as-of-seq "
        "(default: now) survive it.",
        "stocksync-agent record count SKU-1 40 --as-of-seq 1200",
    )
    count = click.option(
        "--as-of-seq",
        type=click.IntRange(min=0),
        default=None,
        help="The seq the count was taken at (default: the last recorded one).",
    )(count)
    record.command("count", context_settings=settings)(count)


_add_record_commands()


@main.command("import")
@click.argument("csv_file", metavar="FILE.csv", type=click.Path(exists=True, dir_okay=False))
@db_option
def import_(csv_file: str, db: str) -> None:
    """Record every row of a CSV file, all or nothing.

    Columns: sku,kind,qty[,reason] (a header row is allowed). One bad row and
    nothing is recorded.

    Example:

        stocksync-agent import receipts.csv --db lax.db
    """
    path = Path(csv_file)

    def rows() -> Iterator[NewEvent]:
        with path.open(newline="", encoding="utf-8-sig") as lines:
            yield from parse_events_csv(lines)

    # A first pass checks every row before the store is opened (opening
    # creates it); the second records them all in one transaction.
    try:
        total = sum(1 for _ in rows())
    except InvalidEvent as e:
        raise click.ClickException(f"{csv_file}: {e}; nothing was recorded") from None
    except UnicodeDecodeError:
        raise click.ClickException(f"{csv_file} is not UTF-8 text; nothing was recorded") from None
    with _open(db) as store:
        try:
            if total >= PROGRESS_MIN_ROWS:
                with click.progressbar(length=total, label="importing", file=sys.stderr) as bar:
                    done = [0]

                    def advance(n: int) -> None:
                        bar.update(n - done[0])
                        done[0] = n

                    seqs = store.record_many(rows(), on_progress=advance)
            else:
                seqs = store.record_many(rows())
        except InvalidEvent as e:
            raise click.ClickException(f"{csv_file}: {e}; nothing was recorded") from None
    if seqs:
        click.echo(f"recorded {len(seqs)} events, seq {seqs[0]}..{seqs[-1]}")
    else:
        click.echo("no events in file")


@main.command()
@click.option("--warehouse", default=None, help="Warehouse id, e.g. WH-LAX (required).")
@click.option("--hub", default=None, help="The hub's HOST:PORT [127.0.0.1:50051].")
@click.option("--db", default=None, help="The agent's SQLite store [stocksync-agent.db].")
@click.option("--insecure", is_flag=True, default=None, help="Plaintext to the hub.")
@click.option("--tls-cert", default=None, help="Client certificate (PEM), CN = warehouse id.")
@click.option("--tls-key", default=None, help="Its private key (PEM).")
@click.option("--tls-ca", default=None, help="CA (PEM) that signed the hub's certificate.")
@config_option
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def run(config_file: str | None, verbose: bool, **flags: Any) -> None:
    """Stream recorded events to the hub, reconnecting forever.

    Stops cleanly on SIGTERM or Ctrl-C. Mutual TLS by default (--tls-cert,
    --tls-key, --tls-ca); plaintext only with --insecure. Settings: flags >
    STOCKSYNC_AGENT_* environment > --config TOML > defaults.

    Example:

        stocksync-agent run --warehouse WH-LAX --hub hub.example:50051 --db lax.db --insecure
    """
    config = load_config(AgentConfig, config_file, flags)
    setup_logging(verbose)
    store = _open(config.db, config.synchronous)

    async def main_(stop: asyncio.Event) -> None:
        link = AgentLink(config, store)
        task = asyncio.ensure_future(link.run())
        await asyncio.wait(
            {task, asyncio.ensure_future(stop.wait())}, return_when="FIRST_COMPLETED"
        )
        link.stop()
        await task

    try:
        tune_gc()
        run_until_signal(main_)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()


@main.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(db: str, as_json: bool) -> None:
    """Show the store's warehouse, epoch, daemon, backlog and last hub error.

    Example:

        stocksync-agent status --db lax.db --json
    """
    if not Path(db).exists():
        raise click.ClickException(f"no agent store at {db}")
    with _open(db) as store:
        try:
            info = status_info(store)
        except StoreError as e:
            raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(info))
        return
    age = info["oldest_pending_age_s"]
    error = "-"
    if info["last_error"]:
        ago = max(0.0, (time.time_ns() // 1_000_000 - info["last_error_unix_ms"]) / 1000)
        error = f"{info['last_error']} ({ago:.0f} s ago)"
    pid = info["daemon_pid"]
    lines = [
        ("warehouse", info["warehouse"] or "(not yet run)"),
        ("epoch", info["epoch"]),
        ("daemon", f"running (pid {pid})" if pid else "not running"),
        ("connected", "yes" if info["connected"] else "no"),
        ("hub", info["hub"] or "-"),
        ("local high seq", info["high_seq"]),
        ("hub watermark", info["hub_watermark"]),
        ("pending events", info["pending"]),
        ("oldest pending", "-" if age is None else f"{age:.1f} s"),
        ("last error", error),
    ]
    for label, value in lines:
        click.echo(f"{label:<16}{value}")


if __name__ == "__main__":  # pragma: no cover
    main()
