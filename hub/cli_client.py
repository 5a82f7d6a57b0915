"""How the hub's client commands reach a running hub: the shared options,
the channel, and one call with errors turned into one-line messages."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import grpc

from stocksync.tls import TlsError, TlsFiles, tls_dir_option
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
    """--hub plus how to reach it: a client certificate (--tls DIR or the three
    --tls-* files), a bearer token with the hub's CA, or --insecure."""
    for option in reversed(
        [
            hub_option,
            click.option(
                "--insecure",
                is_flag=True,
                envvar="STOCKSYNC_CLIENT_INSECURE",
                help="Plaintext (env STOCKSYNC_CLIENT_INSECURE).",
            ),
            tls_dir_option(envvar="STOCKSYNC_CLIENT_TLS"),
            click.option(
                "--tls-cert", envvar="STOCKSYNC_CLIENT_TLS_CERT", help="Client cert (PEM)."
            ),
            click.option("--tls-key", envvar="STOCKSYNC_CLIENT_TLS_KEY", help="Its key (PEM)."),
            click.option("--tls-ca", envvar="STOCKSYNC_CLIENT_TLS_CA", help="CA of the hub (PEM)."),
            click.option(
                "--token",
                envvar="STOCKSYNC_CLIENT_TOKEN",
                metavar="TOKEN",
                help="Bearer token, with --tls-ca, for the hub's token port "
                "(env STOCKSYNC_CLIENT_TOKEN; prefer it: a flag shows in `ps`).",
            ),
        ]
    ):
        command = option(command)
    return command


def channel(target: str, insecure: bool, tls: Mapping[str, Any]) -> grpc.Channel:
    """A channel to the hub: plaintext with ``insecure``; else TLS with a client
    certificate (``tls``: a :class:`TlsFiles`, or ``tls_cert``/``tls_key``/``tls_ca``),
    or a bearer ``token`` (with ``tls_ca``)."""
    token, folder = tls.get("token"), tls.get("tls")
    files = {k: tls.get(k) for k in ("tls_cert", "tls_key", "tls_ca")}
    if insecure:
        if token or folder or any(files.values()):
            raise click.UsageError("--insecure is plaintext: give it no certificate or token")
        return grpc.insecure_channel(target)
    if token and (folder is not None or files["tls_cert"] or files["tls_key"]):
        raise click.UsageError("give a client certificate or a --token, not both")
    if folder is not None and any(files.values()):
        raise click.UsageError("give --tls DIR or the --tls-* files, not both")
    try:
        if isinstance(folder, TlsFiles):
            creds = folder.channel_credentials()
        elif token:
            if not files["tls_ca"]:
                raise click.UsageError("--token needs --tls-ca (the CA of the hub's certificate)")
            creds = grpc.composite_channel_credentials(
                grpc.ssl_channel_credentials(Path(str(files["tls_ca"])).read_bytes()),
                grpc.access_token_call_credentials(str(token)),
            )
        else:
            missing = [f"--{k.replace('_', '-')}" for k, v in files.items() if not v]
            if missing:
                raise click.UsageError(
                    f"{', '.join(missing)} required for mutual TLS (or --tls DIR, --token, "
                    "or --insecure for plaintext)"
                )
            creds = TlsFiles(
                Path(str(files["tls_cert"])),
                Path(str(files["tls_key"])),
                Path(str(files["tls_ca"])),
            ).channel_credentials()
    except OSError as e:
        raise click.UsageError(f"cannot read {e.filename}: {e.strerror}") from None
    except TlsError as e:
        raise click.UsageError(str(e)) from None
    return grpc.secure_channel(target, creds)


_UNREACHABLE = ("failed to connect", "Connection refused", "DNS resolution failed", "Socket closed")
"""How gRPC words an UNAVAILABLE that comes from the connection, not the hub."""


def query(
    target: str, call: str, request: Any, insecure: bool, stub: Any = None, **tls: Any
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
