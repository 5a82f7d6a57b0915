"""Print the README's metrics table from the metrics both ends define.

    python scripts/metrics_table.py

tests/test_metrics.py fails when README.md does not contain this exact table.
"""

from __future__ import annotations

from stocksync.agent.metrics import SPECS as AGENT
from stocksync.hub.metrics import SPECS as HUB


def table() -> str:
    """The markdown table, one row per metric (build info once, for both ends)."""
    lines = [
        "| metric | served by | type | labels | meaning |",
        "|---|---|---|---|---|",
    ]
    done: set[str] = set()
    for where, specs in (("agent", AGENT), ("hub", HUB)):
        for spec in specs:
            if spec.name in done:
                continue
            done.add(spec.name)
            served = (
                "both" if spec.name in {s.name for s in AGENT} & {s.name for s in HUB} else where
            )
            labels = ", ".join(f"`{label}`" for label in spec.labels) or "-"
            lines.append(f"| `{spec.name}` | {served} | {spec.kind} | {labels} | {spec.help} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
