"""``stocksync-hub demo``: a hub, three simulated warehouses, live totals."""

from __future__ import annotations

import click

__all__ = ["demo"]


@click.command()
def demo() -> None:
    """Run a hub and three simulated warehouses with live traffic.

    Example:

        stocksync-hub demo
    """
    raise click.ClickException("not built yet")
