"""The README documents every command and every setting (sqlite-utils' habit)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import click
import pytest

from stocksync.agent.cli import main as agent_main
from stocksync.config import AgentConfig, HubConfig, env_name
from stocksync.hub.cli import main as hub_main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _commands(group: click.Group, prefix: str) -> list[str]:
    names = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            names += _commands(command, f"{prefix} {name}")
        else:
            names.append(f"{prefix} {name}")
    return names


@pytest.mark.parametrize(
    "command", _commands(agent_main, "stocksync-agent") + _commands(hub_main, "stocksync-hub")
)
def test_every_command_is_in_the_readme_with_an_example(command: str) -> None:
    assert command in README, f"README.md does not show `{command}`"


def _all_commands(group: click.Group) -> list[click.Command]:
    out: list[click.Command] = []
    for command in group.commands.values():
        out += _all_commands(command) if isinstance(command, click.Group) else [command]
    return out


@pytest.mark.parametrize("command", _all_commands(agent_main) + _all_commands(hub_main))
def test_every_command_help_has_an_example(command: click.Command) -> None:
    assert "Example:" in (command.help or ""), f"{command.name} --help has no Example"


@pytest.mark.parametrize(
    ("cls", "name"),
    [(c, f.name) for c in (AgentConfig, HubConfig) for f in dataclasses.fields(c)],
)
def test_every_setting_is_in_the_configuration_table(cls: type, name: str) -> None:
    assert f"`{env_name(cls, name)}`" in README
    assert f"`{name}`" in README


def test_configuration_table_is_current() -> None:
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_table.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert table in README, "run `python scripts/config_table.py` and paste it into README.md"


def test_quickstart_has_the_two_commands_ci_runs() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "./scripts/demo" in quickstart
    assert "./scripts/test" in quickstart
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()
