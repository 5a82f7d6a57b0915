"""python -m tests.campaigns NAME [--count N]: run one campaign and print its figures."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import click

from .runner import DEFAULT_COUNTS, run


@click.command()
@click.argument("name", type=click.Choice(sorted(DEFAULT_COUNTS)))
@click.option("--count", type=int, help="Kills, faults, rounds or events (see each campaign).")
@click.option("--seed", type=int, default=20261127, show_default=True)
@click.option("--minutes", type=float, default=30.0, show_default=True, help="soak only.")
@click.option("--skus", type=int, default=5000, show_default=True, help="full-buffer only.")
@click.option("--cap", type=int, default=100_000, show_default=True, help="full-buffer only.")
@click.option("--dir", "workdir", type=click.Path(file_okay=False), help="Keep files here.")
def main(
    name: str,
    count: int | None,
    seed: int,
    minutes: float,
    skus: int,
    cap: int,
    workdir: str | None,
) -> None:
    """Run one campaign with real processes; print a table and a JSON line.

    Example:

        python -m tests.campaigns agent-kills --count 1000
    """
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"campaign-{name}-"))
    base.mkdir(parents=True, exist_ok=True)
    result = run(name, base, count, seed, minutes, skus, cap)
    result.command = result.command if name != "soak" else f"{result.command}"
    click.echo(result.table())
    click.echo("JSON " + result.to_json())
    if result.ok and not workdir:
        shutil.rmtree(base, ignore_errors=True)
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
