"""``stocksync-hub``: serve agents, and ask a running hub what it holds."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import click

from stocksync.cli_common import (
    LazyGroup,
    config_option,
    load_config,
    run_until_signal,
    setup_logging,
    tune_gc,
)
from stocksync.clock import wall_ms
from stocksync.config import HubConfig
from stocksync.errors import StocksyncError
from stocksync.hub.check import check_store
from stocksync.hub.cli_client import client_options, json_option, query
from stocksync.hub.cli_reservations import COMMANDS
from stocksync.sdnotify import Notifier
from stocksync.tls import TlsError
from stocksync.v1 import inventory_pb2

__all__ = ["client_options", "json_option", "main"]


@click.group(
    cls=LazyGroup,
    lazy_subcommands={
        # Tools that run stocksync, never loaded by `serve`.
        "demo": "stocksync.tools.demo:demo",
        "bench": "stocksync.tools.benchmarks.catchup:bench",
        # Loaded when run: a client command (stock, reserve, ...) need not load the
        # server, the certificate tools or the rooms' model.
        "rooms": "stocksync.hub.rooms_cli:rooms",
        "webhooks": "stocksync.hub.webhooks_cli:webhooks",
        "certs": "stocksync.hub.certs_cli:certs",
        "tokens": "stocksync.hub.certs_cli:tokens",
    },
)
@click.version_option(package_name="stocksync")
def main() -> None:
    """The stocksync hub: mirrors every warehouse's stock, serves rooms.

    Example:

        stocksync-hub serve --db hub.db --listen 0.0.0.0:50051 --insecure
    """


@main.command()
@click.option("--db", default=None, help="The hub's SQLite store [stocksync-hub.db].")
@click.option("--listen", default=None, help="HOST:PORT to serve on [127.0.0.1:50051].")
@click.option("--http", default=None, help="HOST:PORT for rooms' SSE, overlays, /metrics.")
@click.option("--insecure", is_flag=True, default=None, help="Serve plaintext.")
@click.option("--tls", default=None, metavar="DIR", help="Directory of cert.pem, key.pem, ca.pem.")
@click.option("--tls-cert", default=None, help="Server certificate (PEM).")
@click.option("--tls-key", default=None, help="Its private key (PEM).")
@click.option("--tls-ca", default=None, help="CA (PEM) that signs agents' client certificates.")
@click.option("--token-listen", default=None, help="HOST:PORT for bearer-token callers (TLS).")
@click.option("--tokens-file", default=None, help="TOML of accepted tokens (hashes).")
@config_option
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Once serving, write {pid, port} as JSON here (for supervisors and tests).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text [default] or one JSON object each.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def serve(config_file: str | None, ready_file: str | None, verbose: bool, **flags: Any) -> None:
    """Serve agent streams and queries until SIGTERM or Ctrl-C.

    Mutual TLS by default (--tls DIR, or --tls-cert, --tls-key, --tls-ca:
    every agent presents a certificate naming its warehouse; renewed files
    are served without a restart); plaintext only with --insecure. Callers
    with a bearer token and no certificate use --token-listen. Settings:
    flags > STOCKSYNC_HUB_* environment > --config TOML > defaults.

    With --http, Prometheus metrics are at /metrics (no authentication, like
    any exporter). Under systemd (Type=notify) the hub sends READY=1 once it
    serves, WATCHDOG=1 pings when the unit asks for them, and STOPPING=1.

    Example:

        stocksync-hub serve --db hub.db --listen 0.0.0.0:50051 --insecure
    """
    from stocksync.auth import TokenFileError
    from stocksync.hub.server import Hub, check_free, write_ready_file

    config = load_config(HubConfig, config_file, flags)
    setup_logging(verbose, config.log_format)
    try:
        check_free(config.listen)  # before the store is opened (or created)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    try:
        hub = Hub(config)
    except StocksyncError as e:  # an unreadable or foreign database file
        raise click.ClickException(f"cannot open hub store {config.db}: {e}") from None
    except (TokenFileError, TlsError) as e:
        raise click.ClickException(str(e)) from None

    def say(text: str) -> None:
        # A line for the operator; as a log record when logs are JSON, so
        # every line on stderr stays one object.
        if config.log_format == "json":
            logging.getLogger("stocksync.hub").info("%s", text)
        else:
            click.echo(text, err=True)

    async def main_(stop: asyncio.Event) -> None:
        systemd = Notifier()
        try:
            await hub.start()
        except RuntimeError as e:
            await hub.stop()
            raise click.ClickException(str(e)) from None
        systemd.ready(f"serving on port {hub.port}")
        say(f"stocksync hub serving on port {hub.port}")
        if hub.token_port:
            say(f"stocksync hub token callers on port {hub.token_port}")
        if hub.http_port:
            say(f"stocksync hub HTTP (rooms, overlays, /metrics) on port {hub.http_port}")
        if ready_file:
            write_ready_file(
                ready_file,
                port=hub.port,
                listen=config.listen,
                http_port=hub.http_port,
                token_port=hub.token_port,
            )
        await stop.wait()
        await systemd.stopping()
        say("stocksync hub stopping: agents are told, queued writes finish")
        await hub.stop()

    tune_gc()
    run_until_signal(main_)


@main.command()
@click.option(
    "--hub",
    "target",
    envvar="STOCKSYNC_HUB_ADDRESS",
    default="127.0.0.1:50051",
    show_default=True,
    help="The hub's HOST:PORT (env STOCKSYNC_HUB_ADDRESS).",
)
@click.option(
    "--listen", default="127.0.0.1:50061", show_default=True, help="HOST:PORT to serve viewers."
)
@click.option(
    "--http",
    default="",
    help="HOST:PORT for the rooms' Server-Sent Events and overlay pages (as the hub's).",
)
@click.option("--insecure", is_flag=True, help="Plaintext, to the hub and to viewers.")
@click.option(
    "--tls",
    "tls_dir",
    metavar="DIR",
    default=None,
    help="The edge's server certificate: cert.pem, key.pem, ca.pem (viewers use tokens).",
)
@click.option(
    "--hub-tls",
    "hub_tls_dir",
    metavar="DIR",
    default=None,
    help="The edge's client certificate for the hub, with the rooms:watch scope "
    "(stocksync-hub certs issue-client --scope rooms:watch).",
)
@click.option("--tokens-file", default=None, help="TOML of the viewers' accepted tokens.")
# The viewers' quotas: the hub's settings of the same names, with its defaults.
@click.option(
    "--max-watchers-per-identity",
    type=click.IntRange(1, 1_000_000),
    default=HubConfig.max_watchers_per_identity,
    show_default=True,
    help="Watches one token may hold open at once (gRPC and Server-Sent Events together).",
)
@click.option(
    "--max-requests-per-s",
    type=click.FloatRange(0.001, 1_000_000),
    default=HubConfig.max_requests_per_s,
    show_default=True,
    help="Calls and HTTP requests per second one token may make, sustained.",
)
@click.option(
    "--request-burst",
    type=click.IntRange(1, 10_000_000),
    default=HubConfig.request_burst,
    show_default=True,
    help="Calls one token may make at once before --max-requests-per-s applies.",
)
@click.option(
    "--room-max-writes-per-s",
    type=click.FloatRange(0, 10_000_000),
    default=HubConfig.room_max_writes_per_s,
    show_default=True,
    help="Most messages a second one room asks this edge to write: a room with more "
    "viewers than this x the hub's room_update_interval_ms wakes them less often (what "
    "comes meanwhile merges), so the edge stays responsive. 0: no bound.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Once serving, write {pid, port} as JSON here.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    help="Log lines as text or one JSON object each.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def edge(
    target: str,
    listen: str,
    http: str,
    insecure: bool,
    tls_dir: str | None,
    hub_tls_dir: str | None,
    tokens_file: str | None,
    max_watchers_per_identity: int,
    max_requests_per_s: float,
    request_burst: int,
    room_max_writes_per_s: float,
    ready_file: str | None,
    log_format: str,
    verbose: bool,
) -> None:
    """Serve the hub's live rooms to viewers from this process (a room edge).

    For each room its viewers follow, the edge keeps one Watch stream to the
    hub and serves Watch to any number of viewers with the hub's messages
    and positions, so the hub's own cores stay with warehouses and shops.
    Run as many edges as the viewers need. The hub going away does not end
    a viewer's stream; the edge resumes by itself.

    TLS by default: --tls DIR serves viewers (bearer tokens with a
    rooms:watch scope, --tokens-file), --hub-tls DIR reaches the hub with a
    client certificate; plaintext both ways only with --insecure.

    Example:

        stocksync-hub edge --hub 127.0.0.1:50051 --listen 0.0.0.0:50061 --insecure
    """
    from stocksync.auth import TokenFile, TokenFileError
    from stocksync.config import ConfigError, check_listen
    from stocksync.hub.access import Limits
    from stocksync.hub.edge import Edge
    from stocksync.hub.server import write_ready_file
    from stocksync.tls import CertificateReloader, TlsFiles

    setup_logging(verbose, log_format)
    try:
        check_listen("listen", listen)
        check_listen("hub", target)
        if http:
            check_listen("http", http)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    limits = Limits(
        max_watchers_per_identity=max_watchers_per_identity,
        max_requests_per_s=max_requests_per_s,
        request_burst=request_burst,
    )
    if insecure:
        if tls_dir or hub_tls_dir or tokens_file:
            raise click.UsageError("--insecure is plaintext: give it no --tls, --hub-tls or tokens")
        ctx = click.get_current_context()
        quotas = [
            f"--{name.replace('_', '-')}"
            for name in ("max_watchers_per_identity", "max_requests_per_s", "request_burst")
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if quotas:
            # Quotas are per viewer token; plaintext viewers have none to charge.
            raise click.UsageError(
                f"{', '.join(quotas)}: quotas are per viewer token, and an --insecure edge "
                "takes no tokens; serve with --tls and --tokens-file to apply them"
            )
        edge_ = Edge(
            target, listen, limits=limits, http=http, max_writes_per_s=room_max_writes_per_s
        )
    else:
        if not (tls_dir and hub_tls_dir and tokens_file):
            raise click.UsageError(
                "an edge needs --tls DIR (its server certificate), --hub-tls DIR (its client "
                "certificate for the hub) and --tokens-file (the viewers' tokens), or --insecure"
            )
        try:
            serving = CertificateReloader(TlsFiles.from_dir(tls_dir), require_client_auth=False)
            upstream = TlsFiles.from_dir(hub_tls_dir).channel_credentials()
            tokens = TokenFile(tokens_file)
        except (TlsError, TokenFileError) as e:
            raise click.ClickException(str(e)) from None
        edge_ = Edge(
            target,
            listen,
            upstream=upstream,
            serving=serving.credentials(),
            tokens=tokens,
            limits=limits,
            http=http,
            max_writes_per_s=room_max_writes_per_s,
        )

    async def main_(stop: asyncio.Event) -> None:
        systemd = Notifier()
        try:
            await edge_.start()
        except RuntimeError as e:
            await edge_.stop()
            raise click.ClickException(str(e)) from None
        systemd.ready(f"serving on port {edge_.port}")
        click.echo(f"stocksync room edge for {target} serving on port {edge_.port}", err=True)
        if edge_.http_port:
            click.echo(
                f"stocksync room edge HTTP (events, overlays) on port {edge_.http_port}", err=True
            )
        if ready_file:
            write_ready_file(ready_file, port=edge_.port, listen=listen, http_port=edge_.http_port)
        await stop.wait()
        await systemd.stopping()
        await edge_.stop()

    tune_gc()
    run_until_signal(main_)


@main.command()
@click.argument("skus", metavar="SKU...", nargs=-1, required=True)
@click.option("--room", default="", help="Sellable as this room sees it (its quota included).")
@client_options
@json_option
def stock(skus: tuple[str, ...], room: str, target: str, as_json: bool, **conn: Any) -> None:
    """Show sellable and on_hand of SKUs, in total and per warehouse.

    Per warehouse: on_hand, committed (paid, not yet shipped), available
    (what new reservations may draw on) and whether its figures are stale.

    Example:

        stocksync-hub stock SKU-1 SKU-2 --json --insecure
    """
    request = inventory_pb2.GetStockRequest(skus=list(skus), room_id=room)
    reply = query(target, "GetStock", request, **conn)
    items = [
        {
            "sku": s.sku,
            "sellable": s.sellable,
            "on_hand": s.on_hand,
            "held": s.held,
            "committed": s.committed,
            "safety_stock": s.safety_stock,
            "quota_free": s.quota_free,
            "warehouses": {
                w.warehouse: {
                    "on_hand": w.on_hand,
                    "committed": w.committed,
                    "available": w.available,
                    "stale": w.stale,
                    "freshness": inventory_pb2.Freshness.Name(w.freshness)
                    .removeprefix("FRESHNESS_")
                    .lower(),
                    "last_seen_unix_ms": w.last_seen_unix_ms,
                }
                for w in s.warehouses
            },
        }
        for s in reply.skus
    ]
    if as_json:
        click.echo(json.dumps(items[0] if len(items) == 1 else items))
        return
    click.echo(f"{'SKU':<24}{'SELLABLE':>9}{'ON_HAND':>9}{'HELD':>7}{'COMMIT':>8}  WAREHOUSES")
    for item in items:
        per = "  ".join(
            f"{w}={v['on_hand']}/{v['available']}{'*' if v['stale'] else ''}"
            for w, v in item["warehouses"].items()
        )
        click.echo(
            f"{item['sku']:<24}{item['sellable']:>9}{item['on_hand']:>9}{item['held']:>7}"
            f"{item['committed']:>8}  {per}"
        )
    if any(v["stale"] for item in items for v in item["warehouses"].values()):
        click.echo("(per warehouse: on_hand/available; * = stale or offline)")


@main.command()
@click.option(
    "--db",
    type=click.Path(dir_okay=False),
    default="stocksync-hub.db",
    show_default=True,
    help="The hub's store.",
)
@json_option
def check(db: str, as_json: bool) -> None:
    """Recompute every quantity from the stored history and verify the invariants.

    Safe to run while the hub serves (it reads one consistent snapshot).
    Exits 1 naming each violation, 0 when the store is sound.

    Example:

        stocksync-hub check --db /var/lib/stocksync/hub.db
    """
    path = Path(db)
    if not path.exists():
        raise click.ClickException(f"no hub store at {db}")
    try:
        report = check_store(path)
    except sqlite3.Error as e:
        raise click.ClickException(f"cannot read {db}: {e}") from None
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "violations": report.violations,
                    "warehouses": report.warehouses,
                    "events": report.events,
                    "reservations": report.reservations,
                }
            )
        )
    else:
        for violation in report.violations:
            click.echo(f"VIOLATION: {violation}", err=True)
        click.echo(
            f"{'ok' if report.ok else f'{len(report.violations)} violation(s)'}: "
            f"{report.warehouses} warehouses, {report.events} events, "
            f"{report.reservations} reservations checked"
        )
    if not report.ok:
        raise SystemExit(1)


@main.command()
@client_options
@json_option
def warehouses(target: str, as_json: bool, **conn: Any) -> None:
    """Show every warehouse: connected, freshness, epoch, watermark, last seen, lag, alerts.

    Example:

        stocksync-hub warehouses --json --insecure
    """
    reply = query(target, "ListWarehouses", inventory_pb2.ListWarehousesRequest(), **conn)
    now_ms = wall_ms()
    items = [
        {
            "warehouse": w.warehouse,
            "connected": w.connected,
            "epoch": w.epoch,
            "watermark": w.watermark,
            "last_seen_unix_ms": w.last_seen_unix_ms,
            "last_seen_ago_s": round((now_ms - w.last_seen_unix_ms) / 1000, 3)
            if w.last_seen_unix_ms
            else None,
            "lag_events": w.lag_events,
            "lag_seconds": w.lag_seconds,
            "freshness": inventory_pb2.Freshness.Name(w.freshness)
            .removeprefix("FRESHNESS_")
            .lower(),
            "alerts": list(w.alerts),
        }
        for w in reply.warehouses
    ]
    if as_json:
        click.echo(json.dumps(items))
        return
    click.echo(
        f"{'WAREHOUSE':<12}{'CONN':<6}{'STATE':<8}{'WATERMARK':>10}{'SEEN':>10}{'LAG':>9}"
        f"{'LAG_S':>8}  EPOCH"
    )
    for i in items:
        seen = "-" if i["last_seen_ago_s"] is None else f"{i['last_seen_ago_s']:.0f}s ago"
        click.echo(
            f"{i['warehouse']:<12}{'yes' if i['connected'] else 'no':<6}{i['freshness']:<8}"
            f"{i['watermark']:>10}{seen:>10}{i['lag_events']:>9}{i['lag_seconds']:>8.1f}"
            f"  {i['epoch']}"
        )
        for alert in i["alerts"]:
            click.echo(f"  ALERT {alert}")


for _command in COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
