"""What both command-line tools share: config loading, logging, signals."""

from __future__ import annotations

import gc
import importlib
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click

from stocksync import logs
from stocksync.config import AgentConfig, ConfigError, HubConfig, load

if TYPE_CHECKING:
    # Loaded by the daemons only: the short commands (record, import) skip ~60 ms.
    import asyncio

__all__ = [
    "LazyGroup",
    "config_option",
    "load_config",
    "run_until_signal",
    "setup_logging",
    "tune_gc",
]

C = TypeVar("C", AgentConfig, HubConfig)

config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML file of settings (keys as in the README's configuration table).",
)


def load_config(cls: type[C], config_file: str | None, flags: Mapping[str, Any]) -> C:
    """Load configuration, turning a bad value into a clean CLI error."""
    try:
        return load(cls, config_file=config_file, flags=flags)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


def setup_logging(verbose: bool, fmt: str = "text", warehouse: str = "") -> None:
    """Log to stderr, one line per record (:mod:`stocksync.logs`)."""
    logs.setup_logging(verbose, fmt, warehouse)


GC_GEN0_THRESHOLD = 50_000
"""Allocations between young-generation collections in the daemons (Python's
default is 700). A batch allocates a tuple or two per event, all short-lived:
collecting every 700 allocations scanned each batch several times over."""


def tune_gc() -> None:
    """Set a daemon's garbage collector for its steady state: what was loaded
    at start-up is frozen (never scanned again), young collections are rarer."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` and set ``stop`` on SIGTERM or SIGINT (Ctrl-C)."""
    import asyncio

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


class LazyGroup(click.Group):
    """A command group whose listed subcommands are imported only when run.

    ``lazy_subcommands`` maps a command name to ``"module:attribute"``; the
    serving path never imports the modules behind them (click's documented
    lazy-loading pattern).
    """

    def __init__(
        self, *args: Any, lazy_subcommands: Mapping[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = dict(lazy_subcommands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command, loaded or not, by name."""
        return sorted([*super().list_commands(ctx), *self.lazy_subcommands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command, importing it first if it is lazy."""
        if cmd_name not in self.lazy_subcommands:
            return super().get_command(ctx, cmd_name)
        module_name, _, attribute = self.lazy_subcommands[cmd_name].partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy_subcommands[cmd_name]} is not a click command")
        return command
