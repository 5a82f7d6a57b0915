"""Print the README's metrics table from the metrics both ends define.

    python scripts/metrics_table.py

tests/test_metrics.py fails when README.md does not contain this exact table.
"""

from __future__ import annotations

from stocksync.agent.metrics import SPECS as AGENT
from stocksync.hub.edge_metrics import SPECS as EDGE
from stocksync.hub.metrics import SPECS as HUB
from stocksync.metrics import BUILD_INFO


def table() -> str:
    """The markdown table, one row per metric (build info once, for every process)."""
    lines = [
        "| metric | served by | type | labels | meaning |",
        "|---|---|---|---|---|",
    ]
    done: set[str] = set()
    for where, specs in (("agent", AGENT), ("hub", HUB), ("edge", EDGE)):
        for spec in specs:
            if spec.name in done:
                continue
            done.add(spec.name)
            served = "all" if spec.name == BUILD_INFO.name else where
            labels = ", ".join(f"`{label}`" for label in spec.labels) or "-"
            lines.append(f"| `{spec.name}` | {served} | {spec.kind} | {labels} | {spec.help} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
