"""Print the README's configuration table from the typed config dataclasses.

    python scripts/config_table.py

tests/test_docs.py fails when README.md does not contain this exact table.
"""

from __future__ import annotations

import dataclasses

import click

from stocksync.config import AgentConfig, HubConfig, env_name


def _flags(command: click.Command) -> set[str]:
    """The settings a command also takes as a flag (``--tls-cert`` sets ``tls_cert``)."""
    return {p.name for p in command.params if isinstance(p, click.Option) and p.name}


def _flag(name: str, cls: type[AgentConfig] | type[HubConfig]) -> str:
    from stocksync.agent.cli import run
    from stocksync.hub.cli import serve

    flags = _flags(run if cls is AgentConfig else serve)
    return f"`--{name.replace('_', '-')}`" if name in flags else "-"


def table() -> str:
    """The markdown table, one row per setting of each program."""
    lines = [
        "| program | flag | environment | TOML key | default | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for program, cls in (("agent", AgentConfig), ("hub", HubConfig)):
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else ""
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            shown = f"`{shown}`" if shown else "(none)"
            lines.append(
                f"| {program} | {_flag(f.name, cls)} | `{env_name(cls, f.name)}` | `{f.name}` "
                f"| {shown} | {f.metadata['help']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
