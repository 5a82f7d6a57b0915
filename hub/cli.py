"""``stocksync-hub``: serve agents, and ask a running hub what it holds."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import click
import grpc

from stocksync.cli_common import (
    LazyGroup,
    config_option,
    load_config,
    run_until_signal,
    setup_logging,
    tune_gc,
)
from stocksync.config import HubConfig
from stocksync.errors import StocksyncError
from stocksync.hub.server import Hub, write_ready_file
from stocksync.v1 import inventory_pb2, inventory_pb2_grpc

__all__ = ["main"]

hub_option = click.option(
    "--hub",
    "target",
    envvar="STOCKSYNC_HUB_ADDRESS",
    default="127.0.0.1:50051",
    show_default=True,
    help="The running hub's HOST:PORT (env STOCKSYNC_HUB_ADDRESS).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print as JSON.")


def client_options(command: Any) -> Any:
    """--hub plus how to reach it: mutual TLS files, or --insecure."""
    for option in reversed(
        [
            hub_option,
            click.option(
                "--insecure",
                is_flag=True,
                envvar="STOCKSYNC_CLIENT_INSECURE",
                help="Plaintext (env STOCKSYNC_CLIENT_INSECURE).",
            ),
            click.option(
                "--tls-cert", envvar="STOCKSYNC_CLIENT_TLS_CERT", help="Client cert (PEM)."
            ),
            click.option("--tls-key", envvar="STOCKSYNC_CLIENT_TLS_KEY", help="Its key (PEM)."),
            click.option("--tls-ca", envvar="STOCKSYNC_CLIENT_TLS_CA", help="CA of the hub (PEM)."),
        ]
    ):
        command = option(command)
    return command


def _channel(target: str, insecure: bool, tls: dict[str, str | None]) -> grpc.Channel:
    if insecure:
        return grpc.insecure_channel(target)
    missing = [f"--{k.replace('_', '-')}" for k, v in tls.items() if not v]
    if missing:
        raise click.UsageError(
            f"{', '.join(missing)} required for mutual TLS (or --insecure for plaintext)"
        )
    try:
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(str(tls["tls_ca"])).read_bytes(),
            private_key=Path(str(tls["tls_key"])).read_bytes(),
            certificate_chain=Path(str(tls["tls_cert"])).read_bytes(),
        )
    except OSError as e:
        raise click.UsageError(f"cannot read {e.filename}: {e.strerror}") from None
    return grpc.secure_channel(target, creds)


@click.group(
    cls=LazyGroup,
    lazy_subcommands={
        # Tools that run stocksync, never loaded by `serve`.
        "demo": "stocksync.tools.demo:demo",
        "bench": "stocksync.tools.bench:bench",
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
@click.option("--insecure", is_flag=True, default=None, help="Serve plaintext.")
@click.option("--tls-cert", default=None, help="Server certificate (PEM).")
@click.option("--tls-key", default=None, help="Its private key (PEM).")
@click.option("--tls-ca", default=None, help="CA (PEM) that signs agents' client certificates.")
@config_option
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Once serving, write {pid, port} as JSON here (for supervisors and tests).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def serve(config_file: str | None, ready_file: str | None, verbose: bool, **flags: Any) -> None:
    """Serve agent streams and queries until SIGTERM or Ctrl-C.

    Mutual TLS by default (--tls-cert, --tls-key, --tls-ca: every agent
    presents a certificate naming its warehouse); plaintext only with
    --insecure. Settings: flags > STOCKSYNC_HUB_* environment > --config TOML
    > defaults.

    Example:

        stocksync-hub serve --db hub.db --listen 0.0.0.0:50051 --insecure
    """
    config = load_config(HubConfig, config_file, flags)
    setup_logging(verbose)
    try:
        hub = Hub(config)
    except StocksyncError as e:  # an unreadable or foreign database file
        raise click.ClickException(f"cannot open hub store {config.db}: {e}") from None

    async def main_(stop: asyncio.Event) -> None:
        try:
            await hub.start()
        except RuntimeError as e:
            await hub.stop()
            raise click.ClickException(str(e)) from None
        click.echo(f"stocksync hub serving on port {hub.port}", err=True)
        if ready_file:
            write_ready_file(ready_file, port=hub.port, listen=config.listen)
        await stop.wait()
        await hub.stop()

    tune_gc()
    run_until_signal(main_)


def _query(target: str, call: str, request: Any, insecure: bool, **tls: str | None) -> Any:
    with _channel(target, insecure, tls) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        try:
            return getattr(stub, call)(request, timeout=10)
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise click.ClickException(f"no hub answering at {target}") from None
            raise click.ClickException(f"{code.name}: {e.details()}") from None


@main.command()
@click.argument("skus", metavar="SKU...", nargs=-1, required=True)
@client_options
@json_option
def stock(skus: tuple[str, ...], target: str, as_json: bool, **conn: Any) -> None:
    """Show on_hand of SKUs, in total and per warehouse.

    Example:

        stocksync-hub stock SKU-1 SKU-2 --json --insecure
    """
    reply = _query(target, "GetStock", inventory_pb2.GetStockRequest(skus=list(skus)), **conn)
    items = [
        {
            "sku": s.sku,
            "on_hand": s.on_hand,
            "warehouses": {w.warehouse: {"on_hand": w.on_hand} for w in s.warehouses},
        }
        for s in reply.skus
    ]
    if as_json:
        click.echo(json.dumps(items[0] if len(items) == 1 else items))
        return
    for item in items:
        per = "  ".join(f"{w}={v['on_hand']}" for w, v in item["warehouses"].items())
        click.echo(f"{item['sku']:<24}{item['on_hand']:>10}  {per}")


@main.command()
@client_options
@json_option
def warehouses(target: str, as_json: bool, **conn: Any) -> None:
    """Show every warehouse: connected, epoch, watermark, last seen, lag.

    Example:

        stocksync-hub warehouses --json --insecure
    """
    reply = _query(target, "ListWarehouses", inventory_pb2.ListWarehousesRequest(), **conn)
    now_ms = time.time_ns() // 1_000_000
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
        }
        for w in reply.warehouses
    ]
    if as_json:
        click.echo(json.dumps(items))
        return
    click.echo(
        f"{'WAREHOUSE':<12}{'CONN':<6}{'WATERMARK':>10}{'SEEN':>10}{'LAG':>9}{'LAG_S':>8}  EPOCH"
    )
    for i in items:
        seen = "-" if i["last_seen_ago_s"] is None else f"{i['last_seen_ago_s']:.0f}s ago"
        click.echo(
            f"{i['warehouse']:<12}{'yes' if i['connected'] else 'no':<6}{i['watermark']:>10}"
            f"{seen:>10}{i['lag_events']:>9}{i['lag_seconds']:>8.1f}  {i['epoch']}"
        )


if __name__ == "__main__":  # pragma: no cover
    main()
