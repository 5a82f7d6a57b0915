"""``stocksync-hub bench``: catch-up throughput against raw SQLite."""

from __future__ import annotations

import click

__all__ = ["bench"]


@click.command()
def bench() -> None:
    """Measure catch-up throughput against the raw SQLite limit.

    Example:

        stocksync-hub bench
    """
    raise click.ClickException("not built yet")
