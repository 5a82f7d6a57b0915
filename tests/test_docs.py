"""The README documents every command and every setting (sqlite-utils' habit)."""

from __future__ import annotations

import dataclasses
import re
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


def _subcommands(group: click.Group) -> dict[str, click.Command]:
    """Every subcommand, lazy ones included (imported here, as `--help` would)."""
    ctx = click.Context(group)
    found = {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}
    return {name: command for name, command in found.items() if command is not None}


def _commands(group: click.Group, prefix: str) -> list[str]:
    names = []
    for name, command in _subcommands(group).items():
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
    for command in _subcommands(group).values():
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


# -- docs/protocol.md: a protocol a third party can implement ------------------

PROTOCOL_DOC = (ROOT / "docs" / "protocol.md").read_text()


def _table_row(doc: str, first_cell: str) -> str:
    for line in doc.splitlines():
        if line.startswith(f"| {first_cell} |"):
            return line
    raise AssertionError(f"docs/protocol.md has no table row for {first_cell!r}")


@pytest.mark.parametrize(
    ("state", "label"),
    [
        ("AWAITING_HELLO", "awaiting Hello"),
        ("AWAITING_SNAPSHOT", "awaiting snapshot"),
        ("STREAMING", "streaming"),
    ],
)
def test_protocol_doc_lists_what_each_hub_state_accepts(state: str, label: str) -> None:
    from stocksync.protocol import HUB_ACCEPTS, HubState

    accepts = _table_row(PROTOCOL_DOC, label).split("|")[2]
    assert set(re.findall(r"`(\w+)`", accepts)) == set(HUB_ACCEPTS[HubState[state]])


@pytest.mark.parametrize(
    ("state", "label"),
    [
        ("CONNECTING", "connecting (Hello sent)"),
        ("SNAPSHOT", "snapshot (asked for one)"),
        ("STREAMING", "streaming"),
    ],
)
def test_protocol_doc_lists_what_each_agent_state_accepts(state: str, label: str) -> None:
    from stocksync.protocol import AGENT_ACCEPTS, AgentState

    rows = [line for line in PROTOCOL_DOC.splitlines() if line.startswith(f"| {label} |")]
    accepts = rows[-1].split("|")[2]  # the agent's table comes after the hub's
    assert set(re.findall(r"`(\w+)`", accepts)) == set(AGENT_ACCEPTS[AgentState[state]])


def test_protocol_doc_states_every_limit() -> None:
    from stocksync import events, protocol, wire
    from stocksync.config import AgentConfig, HubConfig

    limits = {
        "message bytes": f"{wire.MAX_MESSAGE_BYTES:,}",
        "quantity": f"{events.MAX_QUANTITY:,}",
        "reason": str(events.MAX_REASON_LEN),
        "reservation id": str(events.MAX_RESERVATION_ID_LEN),
        "event id": str(events.MAX_EVENT_ID_LEN),
        "snapshot SKUs": f"{protocol.MAX_SNAPSHOT_SKUS:,}",
        "hub batch default": f"{HubConfig().max_batch_events:,}",
        "agent batch default": f"{AgentConfig().max_batch_events:,}",
        "hello timeout": f"{HubConfig().hello_timeout_s:g} s",
        "protocol version": f"protocol_version` | must be {protocol.PROTOCOL_VERSION}",
    }
    for what, text in limits.items():
        assert text in PROTOCOL_DOC, f"docs/protocol.md does not state the {what} ({text})"
    for pattern in (events.SKU_PATTERN, events.WAREHOUSE_PATTERN, protocol.EPOCH_PATTERN):
        assert pattern.pattern.split("{")[0] in PROTOCOL_DOC, pattern.pattern


def test_protocol_doc_explains_every_status_a_stream_can_end_with() -> None:
    from stocksync.errors import StocksyncError
    from stocksync.hub import storage
    from stocksync.protocol import ProtocolError

    def leaves(cls: type[StocksyncError]) -> set[type[StocksyncError]]:
        found = {cls}
        for sub in cls.__subclasses__():
            found |= leaves(sub)
        return found

    statuses = {c.status.name for c in leaves(ProtocolError) | leaves(storage.StoreError)}
    table = PROTOCOL_DOC.split("## 9.", 1)[1].split("\n## ", 1)[0]
    for name in statuses:
        assert f"| `{name}`" in table, f"docs/protocol.md §9 does not explain {name}"
    assert "resume-from-seq" in table


def test_protos_speak_only_of_this_repository() -> None:
    for proto in sorted((ROOT / "protos" / "stocksync" / "v1").glob("*.proto")):
        text = proto.read_text()
        assert "DESIGN" not in text and "§" not in text, proto.name
    assert "docs/protocol.md" in (ROOT / "protos" / "stocksync" / "v1" / "sync.proto").read_text()
    assert "docs/protocol.md" in README


LIMIT_SETTINGS = [
    "max_message_bytes",
    "max_batch_events",
    "max_reservation_lines",
    "max_featured_skus",
    "max_query_skus",
    "max_streams_per_identity",
    "max_watchers_per_identity",
    "max_requests_per_s",
    "request_burst",
]


@pytest.mark.parametrize("name", LIMIT_SETTINGS)
def test_the_security_section_states_each_limit_and_its_default(name: str) -> None:
    section = README.split("## Security", 1)[1].split("### Limits", 1)[1].split("\n### ", 1)[0]
    row = next((line for line in section.splitlines() if f"`{name}`" in line), None)
    assert row is not None, f"README Security/Limits has no row for {name}"
    value = getattr(HubConfig(), name)
    assert (f"{value:,}" if isinstance(value, int) else f"{value:,g}") in row, row
