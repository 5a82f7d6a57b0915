"""One entry point for every campaign: ``run(name, workdir, count)``."""

from __future__ import annotations

from pathlib import Path

from .buffer import full_buffer
from .common import Campaign
from .kills import agent_kills, hub_kills
from .partitions import partitions
from .powerloss import power_loss
from .skew import clock_skew
from .soak import soak

DEFAULT_COUNTS = {
    "agent-kills": 1000,
    "hub-kills": 100,
    "partitions": 100,
    "clock-skew": 10,
    "full-buffer": 1_000_000,
    "power-loss": 20,
    "soak": 0,
}


def run(
    name: str,
    workdir: Path,
    count: int | None = None,
    seed: int = 20261127,
    minutes: float = 30.0,
    skus: int = 5000,
    cap: int = 100_000,
) -> Campaign:
    """Run campaign ``name`` in ``workdir`` (which must exist)."""
    n = DEFAULT_COUNTS[name] if count is None else count
    if name == "agent-kills":
        return agent_kills(workdir, n, seed)
    if name == "hub-kills":
        return hub_kills(workdir, n, seed)
    if name == "partitions":
        return partitions(workdir, n, seed)
    if name == "clock-skew":
        return clock_skew(workdir, n, seed)
    if name == "full-buffer":
        return full_buffer(workdir, n, skus, cap, seed)
    if name == "power-loss":
        return power_loss(workdir, n, seed)
    if name == "soak":
        return soak(workdir, minutes, seed)
    raise ValueError(f"unknown campaign {name!r}")
