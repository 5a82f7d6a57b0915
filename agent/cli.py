"""``stocksync-agent``: record stock events and stream them to the hub.

Every failure of the store (a full disk, the wrong file, a damaged one, a
second daemon) ends a command with one line on stderr and a non-zero exit;
what was refused is not stored, not even in part.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from stocksync.agent.lock import DaemonLock
from stocksync.agent.salvage import salvage as salvage_store
from stocksync.agent.store import AgentStore, StoreError, read_csv_entries, status_info
from stocksync.cli_common import (
    config_option,
    load_config,
    run_until_signal,
    setup_logging,
    tune_gc,
)
from stocksync.clock import wall_ms
from stocksync.config import AgentConfig
from stocksync.events import InvalidEvent, Kind, NewEvent, validate_new_event

__all__ = ["main"]

log = logging.getLogger("stocksync.agent")

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


@contextmanager
def _store(db: str, synchronous: str = "FULL", *, read_only: bool = False) -> Iterator[AgentStore]:
    """The store, open for the block; any :class:`StoreError`, opening it or
    inside the block, becomes the command's one-line error."""
    try:
        with AgentStore(db, synchronous=synchronous, read_only=read_only) as store:
            yield store
    except StoreError as e:
        raise click.ClickException(str(e)) from None


NOT_RECORDED = "nothing was recorded"


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
        with _store(db) as store:
            try:
                seq = store.record(event)
            except InvalidEvent as e:
                raise click.ClickException(str(e)) from None
            except StoreError as e:
                raise click.ClickException(f"{e}; {NOT_RECORDED}") from None
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
    # Every row is read and checked before the store is opened (opening
    # creates it); then they are all recorded in one transaction. The rows
    # make no reference cycles, and the collector would scan them again and
    # again as they pile up (a third of the time of a large file): it is off
    # for this short-lived command.
    gc.disable()
    try:
        with Path(csv_file).open(newline="", encoding="utf-8-sig") as f:
            entries = read_csv_entries(f.read())
    except InvalidEvent as e:
        raise click.ClickException(f"{csv_file}: {e}; nothing was recorded") from None
    except UnicodeDecodeError:
        raise click.ClickException(f"{csv_file} is not UTF-8 text; nothing was recorded") from None
    total = len(entries)
    with _store(db) as store:
        try:
            if total >= PROGRESS_MIN_ROWS:
                with click.progressbar(length=total, label="importing", file=sys.stderr) as bar:
                    done = [0]

                    def advance(n: int) -> None:
                        bar.update(n - done[0])
                        done[0] = n

                    seqs = store.record_entries(entries, on_progress=advance)
            else:
                seqs = store.record_entries(entries)
        except InvalidEvent as e:
            raise click.ClickException(f"{csv_file}: {e}; {NOT_RECORDED}") from None
        except StoreError as e:
            raise click.ClickException(f"{e}; {NOT_RECORDED}") from None
    if seqs:
        click.echo(f"recorded {len(seqs)} events, seq {seqs[0]}..{seqs[-1]}")
    else:
        click.echo("no events in file")


@main.command()
@click.option("--warehouse", default=None, help="Warehouse id, e.g. WH-LAX (required).")
@click.option("--hub", default=None, help="The hub's HOST:PORT [127.0.0.1:50051].")
@click.option("--db", default=None, help="The agent's SQLite store [stocksync-agent.db].")
@click.option("--insecure", is_flag=True, default=None, help="Plaintext to the hub.")
@click.option("--tls", default=None, metavar="DIR", help="Directory of cert.pem, key.pem, ca.pem.")
@click.option("--tls-cert", default=None, help="Client certificate (PEM) naming the warehouse.")
@click.option("--tls-key", default=None, help="Its private key (PEM).")
@click.option("--tls-ca", default=None, help="CA (PEM) that signed the hub's certificate.")
@click.option(
    "--local-api",
    default=None,
    metavar="ADDRESS",
    help="Serve the local API for producers on unix:PATH or a loopback HOST:PORT.",
)
@click.option(
    "--metrics",
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus /metrics here (port 0: any free one, shown by status).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text [default] or one JSON object each.",
)
@config_option
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def run(config_file: str | None, verbose: bool, **flags: Any) -> None:
    """Stream recorded events to the hub, reconnecting forever.

    Stops cleanly on SIGTERM or Ctrl-C. Mutual TLS by default (--tls DIR as
    `stocksync-hub certs issue-agent` writes it, or --tls-cert, --tls-key,
    --tls-ca); plaintext only with --insecure. Settings: flags >
    STOCKSYNC_AGENT_* environment > --config TOML > defaults.

    One daemon per store: a second one refuses to start, naming the first
    one's pid (the lock is DB.lock). A damaged store is refused at start
    (PRAGMA quick_check), and a read that fails later stops the daemon.

    --metrics HOST:PORT serves Prometheus metrics (no authentication: bind
    it where only Prometheus reaches). Under systemd (Type=notify) the
    daemon sends READY=1 once it runs, WATCHDOG=1 pings when the unit asks
    for them, and STOPPING=1 on its way out.

    Example:

        stocksync-agent run --warehouse WH-LAX --hub hub.example:50051 --db lax.db --insecure
    """
    config = load_config(AgentConfig, config_file, flags)
    setup_logging(verbose, config.log_format, config.warehouse)
    lock = DaemonLock(config.db)
    try:
        lock.acquire()
        store = AgentStore(config.db, synchronous=config.synchronous)
    except StoreError as e:
        lock.release()
        raise click.ClickException(str(e)) from None
    try:
        _refuse_damage(store)
    except click.ClickException:
        store.close()
        lock.release()
        raise

    # Imported here: gRPC and the link take ~0.25 s to load, which every
    # short command (record, import, status) would otherwise pay.
    import asyncio

    from stocksync.agent.counts import Uncounted
    from stocksync.agent.link import AgentLink
    from stocksync.agent.wake import WakeListener
    from stocksync.sdnotify import Notifier

    async def main_(stop: asyncio.Event) -> None:
        systemd = Notifier()
        server = None
        if config.metrics:
            from stocksync.agent.metrics import AgentMetrics
            from stocksync.metrics import MetricsServer

            metrics = AgentMetrics(config.warehouse)
            link = AgentLink(config, store, metrics)
            server = MetricsServer(metrics.registry, config.metrics)
            try:
                port = await server.start()
            except OSError as e:
                raise click.ClickException(
                    f"cannot serve metrics on {config.metrics}: {e.strerror}"
                ) from None
            host = config.metrics.rpartition(":")[0]
            link.state.metrics = f"{host}:{port}"
            log.info("serving /metrics on %s", link.state.metrics)
        else:
            # Nothing could read a count: prometheus_client is never loaded.
            link = AgentLink(config, store, Uncounted())
        wakes = WakeListener(config.db, link.wake)
        wakes.start()
        api = None
        try:
            if config.local_api:
                from stocksync.agent.local_api import LocalApi, LocalApiError

                api = LocalApi(config.local_api, config.db, config.synchronous, link.wake)
                try:
                    await api.start()
                except LocalApiError as e:
                    raise click.ClickException(str(e)) from None
            task = asyncio.ensure_future(link.run())
            systemd.ready(f"streaming {config.warehouse} to {config.hub}")
            try:
                await asyncio.wait(
                    {task, asyncio.ensure_future(stop.wait())}, return_when="FIRST_COMPLETED"
                )
            finally:
                await systemd.stopping()
                if api is not None:
                    await api.stop()  # before the link: what it recorded is sent on the next run
            link.stop()
            await task
        finally:
            wakes.stop()
            if server is not None:
                await server.stop()

    try:
        tune_gc()
        run_until_signal(main_)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()
        lock.release()


RECOVERY = (
    "keep the file; `stocksync-agent salvage` starts a new store from its readable "
    "stock (README, operating notes)"
)


def _refuse_damage(store: AgentStore) -> None:
    """Stream nothing from a damaged store: ``PRAGMA quick_check`` first."""
    problems = store.integrity(full=False)
    if problems:
        more = f" and {len(problems) - 1} more problems" if len(problems) > 1 else ""
        raise click.ClickException(
            f"agent store {store.path} is damaged ({problems[0]}{more}); nothing was sent: "
            f"{RECOVERY}"
        )


@main.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(db: str, as_json: bool) -> None:
    """Show the store's warehouse, epoch, daemon, backlog and last hub error.

    Example:

        stocksync-agent status --db lax.db --json
    """
    with _store(db, read_only=True) as store:
        info = status_info(store)
    if as_json:
        click.echo(json.dumps(info))
        return
    age = info["oldest_pending_age_s"]
    error = "-"
    if info["last_error"]:
        ago = max(0.0, (wall_ms() - info["last_error_unix_ms"]) / 1000)
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
        ("open picks", "-" if info["open_picks"] is None else info["open_picks"]),
        ("oldest pending", "-" if age is None else f"{age:.1f} s"),
        ("last error", error),
        ("oldest kept seq", "-" if info["oldest_seq"] is None else info["oldest_seq"]),
        ("store size", f"{info['size_bytes']:,} bytes"),
        ("metrics", info["metrics"] or "-"),
    ]
    for label, value in lines:
        click.echo(f"{label:<16}{value}")


@main.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def picks(db: str, as_json: bool) -> None:
    """List the pick commands received from the hub and not yet shipped.

    Each is part of a paid reservation: pick QTY of SKU and record the
    shipment with ``record ship SKU QTY --reservation ID``, which closes it.

    Example:

        stocksync-agent picks --db lax.db --json
    """
    with _store(db, read_only=True) as store:
        try:
            items = store.open_picks()
        except StoreError as e:
            if "no such table" not in str(e):
                raise click.ClickException(str(e)) from None
            items = []  # a store from before pick commands: none received yet
    if as_json:
        click.echo(json.dumps(items))
        return
    if not items:
        click.echo("no open picks")
        return
    click.echo(f"{'RESERVATION':<42}{'SKU':<24}{'QTY':>6}  RECEIVED (UTC)")
    for p in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(p["received_at_ms"] / 1000))
        click.echo(f"{p['reservation_id']:<42}{p['sku']:<24}{p['qty']:>6}  {when}")


@main.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(db: str, as_json: bool) -> None:
    """Check every page and index of the store (PRAGMA integrity_check).

    Exit 0 when the store is sound, 1 when it is damaged. Only reads: works
    on a full disk and beside a running daemon (it can take a while on a big
    store).

    Example:

        stocksync-agent check --db lax.db --json
    """
    with _store(db, read_only=True) as store:
        problems = store.integrity(full=True)
    if as_json:
        click.echo(json.dumps({"db": db, "sound": not problems, "problems": problems}))
    elif not problems:
        click.echo(f"{db}: sound (integrity_check found no problem)")
    else:
        click.echo(f"{db}: damaged; integrity_check found {len(problems)} problems:")
        for problem in problems:
            click.echo(f"  {problem}")
        click.echo(RECOVERY)
    if problems:
        sys.exit(1)


@main.command()
@db_option
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="The new store to create (never overwritten).",
)
def salvage(db: str, out: str) -> None:
    """Start a new store from the readable stock of a damaged one.

    Copies on_hand per SKU from --db (which is only read, and kept) into a
    new store at --out, one COUNT per SKU, under a new epoch: the hub takes a
    snapshot of it and replaces the warehouse's stock. Run the daemon on the
    new store afterwards.

    Example:

        stocksync-agent salvage --db lax.db --out lax-new.db
    """
    try:
        done = salvage_store(db, out)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    owner = f", warehouse {done.warehouse}" if done.warehouse else ""
    click.echo(
        f"salvaged the on_hand of {done.skus} SKUs from {db} into {out} "
        f"(new epoch {done.epoch}{owner}); run the daemon on {out}"
    )
    if done.unreadable:
        click.echo(
            f"warning: the on_hand of {done.unreadable} SKUs could not be read from {db}; "
            f"they are not in {out}: count them and record the counts",
            err=True,
        )


if __name__ == "__main__":  # pragma: no cover
    main()
