"""``stocksync-hub certs`` and ``stocksync-hub tokens``: make the hub's credentials.

``certs`` runs a small private CA (DESIGN §9): one certificate for the hub,
one per warehouse agent, one per scoped client. ``tokens`` makes bearer
tokens for callers that cannot hold a certificate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509

from stocksync.auth import InvalidName, InvalidScope, new_token, validate_name, validate_scope
from stocksync.certs import CA_DAYS, DEFAULT_DAYS, CertError, init_ca, issue_agent
from stocksync.certs import issue_client as issue_client_cert
from stocksync.certs import issue_hub as issue_hub_cert

__all__ = ["certs", "tokens"]

F = TypeVar("F", bound=Callable[..., Any])

ca_dir_option = click.option(
    "--ca-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory of the CA (ca.pem, ca-key.pem).",
)
out_option = click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory to write cert.pem, key.pem (mode 0600) and ca.pem into.",
)
force_option = click.option("--force", is_flag=True, help="Replace files that already exist.")
scope_option = click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    metavar="SCOPE",
    help="inventory:read, inventory:reserve, rooms:watch[:ROOM], rooms:host[:ROOM] or admin; "
    "repeat for several.",
)


def _days_option(default: int) -> Callable[[F], F]:
    return click.option(
        "--days",
        type=int,
        default=default,
        show_default=True,
        help="How many days the certificate is valid.",
    )


def leaf_options(command: F) -> F:
    """--ca-dir, --out, --days, --force: what every issue-* command takes."""
    for option in reversed([ca_dir_option, out_option, _days_option(DEFAULT_DAYS), force_option]):
        command = option(command)
    return command


def _report(what: str, folder: str, cert: x509.Certificate) -> None:
    click.echo(
        f"{what}: wrote {Path(folder) / 'cert.pem'}, key.pem, ca.pem "
        f"(serial {cert.serial_number:x}, valid until {cert.not_valid_after_utc:%Y-%m-%d})"
    )


@click.group()
def certs() -> None:
    """Make the CA and the certificates of the hub, agents and clients.

    Each issue-* command writes cert.pem, key.pem and ca.pem into --out: the
    directory a --tls option takes.

    Example:

    \b
        stocksync-hub certs init --ca-dir ca
        stocksync-hub certs issue-hub hub.example.com --ca-dir ca --out hub-tls
        stocksync-hub certs issue-agent WH-LAX --ca-dir ca --out lax-tls
    """


@certs.command()
@ca_dir_option
@_days_option(CA_DAYS)
@force_option
def init(ca_dir: str, days: int, force: bool) -> None:
    """Make a new CA: ca.pem (give it to every end) and ca-key.pem (keep it secret).

    Example:

        stocksync-hub certs init --ca-dir ca
    """
    try:
        cert = init_ca(ca_dir, force=force, days=days)
    except CertError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        f"CA: wrote {Path(ca_dir) / 'ca.pem'} and ca-key.pem "
        f"(valid until {cert.not_valid_after_utc:%Y-%m-%d})"
    )


@certs.command("issue-hub")
@click.argument("hostnames", metavar="HOSTNAME...", nargs=-1, required=True)
@leaf_options
def issue_hub(
    hostnames: tuple[str, ...], ca_dir: str, out_dir: str, days: int, force: bool
) -> None:
    """Issue the hub's server certificate for its DNS names and IP addresses.

    Agents and clients must reach the hub by one of these names.

    Example:

    \b
        stocksync-hub certs issue-hub hub.example.com 10.0.0.5 \\
            --ca-dir ca --out hub-tls
    """
    try:
        cert = issue_hub_cert(ca_dir, out_dir, hostnames, days=days, force=force)
    except CertError as e:
        raise click.ClickException(str(e)) from None
    _report(f"hub {', '.join(hostnames)}", out_dir, cert)


@certs.command("issue-agent")
@click.argument("warehouse", metavar="WH-ID")
@leaf_options
def issue_agent_(warehouse: str, ca_dir: str, out_dir: str, days: int, force: bool) -> None:
    """Issue a warehouse agent's certificate; it speaks for WH-ID only.

    Example:

        stocksync-hub certs issue-agent WH-LAX --ca-dir ca --out lax-tls
    """
    try:
        cert = issue_agent(ca_dir, out_dir, warehouse, days=days, force=force)
    except CertError as e:
        raise click.ClickException(str(e)) from None
    _report(f"agent {warehouse}", out_dir, cert)


@certs.command("issue-client")
@click.argument("name", metavar="NAME")
@scope_option
@leaf_options
def issue_client(
    name: str, scopes: tuple[str, ...], ca_dir: str, out_dir: str, days: int, force: bool
) -> None:
    """Issue a client certificate for caller NAME holding the given scopes.

    Example:

    \b
        stocksync-hub certs issue-client room-server --scope rooms:host:R-1 \\
            --ca-dir ca --out room-server-tls
    """
    try:
        cert = issue_client_cert(ca_dir, out_dir, name, scopes, days=days, force=force)
    except CertError as e:
        raise click.ClickException(str(e)) from None
    _report(f"client {name} [{' '.join(scopes)}]", out_dir, cert)


@click.group()
def tokens() -> None:
    """Make bearer tokens for callers without a client certificate.

    Example:

        stocksync-hub tokens new overlay --scope rooms:watch:R-1
    """


@tokens.command()
@click.argument("name", metavar="NAME")
@scope_option
def new(name: str, scopes: tuple[str, ...]) -> None:
    """Make a token for caller NAME; print it once, and its entry for the tokens file.

    The hub keeps only the token's SHA-256: the token itself is shown now and
    never again. Give it to the caller as a secret; it sends it as
    `authorization: Bearer <token>`.

    Example:

    \b
        stocksync-hub tokens new overlay \\
            --scope rooms:watch:R-1 --scope inventory:read
    """
    try:
        validate_name(name)
        checked = list(dict.fromkeys(validate_scope(s) for s in scopes))
    except (InvalidName, InvalidScope) as e:
        raise click.ClickException(str(e)) from None
    token, digest = new_token()
    # json.dumps writes valid TOML basic strings for these (validated) values.
    click.echo(
        f"token: {token}\n"
        "(shown only now; the hub keeps only its SHA-256)\n"
        "\n"
        "# add to the hub's tokens file:\n"
        "[[token]]\n"
        f"name = {json.dumps(name)}\n"
        f'sha256 = "{digest}"\n'
        f"scopes = [{', '.join(json.dumps(s) for s in checked)}]"
    )
