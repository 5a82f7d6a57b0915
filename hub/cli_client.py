"""How the hub's client commands reach a running hub: the shared options,
the channel, and one call with errors turned into one-line messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import grpc

from stocksync.v1 import inventory_pb2_grpc

__all__ = ["channel", "client_options", "hub_option", "json_option", "query"]

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


def channel(target: str, insecure: bool, tls: dict[str, str | None]) -> grpc.Channel:
    """A channel to the hub: plaintext with ``insecure``, else mutual TLS."""
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


_UNREACHABLE = ("failed to connect", "Connection refused", "DNS resolution failed", "Socket closed")
"""How gRPC words an UNAVAILABLE that comes from the connection, not the hub."""


def query(
    target: str, call: str, request: Any, insecure: bool, stub: Any = None, **tls: str | None
) -> Any:
    """Call ``call`` on the hub at ``target`` (InventoryService unless ``stub``
    names another stub class); a failure is one line and a non-zero exit."""
    with channel(target, insecure, tls) as ch:
        service = (stub or inventory_pb2_grpc.InventoryServiceStub)(ch)
        try:
            return getattr(service, call)(request, timeout=10)
        except grpc.RpcError as e:
            code = e.code()
            details = e.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE and details.startswith(_UNREACHABLE):
                raise click.ClickException(f"no hub answering at {target}") from None
            raise click.ClickException(f"{code.name}: {e.details()}") from None
