"""Fault points for crash campaigns: a process that kills itself at a chosen moment.

``STOCKSYNC_TEST_FAULT=NAME[:PROBABILITY]`` arms the fault point ``NAME``:
each time the code passes it, the process sends itself SIGKILL with that
probability (default 1). Nothing is flushed, nothing is said: exactly what a
``kill -9`` or a power cut at that instant does. Unset (always, outside
tests), a fault point costs one comparison.

Fault points:

- ``hub-after-commit``: the hub committed a batch and has not acknowledged it
  yet: the agent must resend it, and the hub must not apply it twice.
"""

from __future__ import annotations

import os
import random
import signal

__all__ = ["FAULT_ENV", "fault_point"]

FAULT_ENV = "STOCKSYNC_TEST_FAULT"


def _armed() -> tuple[str, float]:
    raw = os.environ.get(FAULT_ENV, "").strip()
    if not raw:
        return "", 0.0
    name, _, p = raw.partition(":")
    try:
        probability = float(p) if p else 1.0
    except ValueError:
        raise SystemExit(f"{FAULT_ENV}={raw!r}: expected NAME[:PROBABILITY]") from None
    return name, probability


_NAME, _PROBABILITY = _armed()


def fault_point(name: str) -> None:
    """Die here by SIGKILL if the fault point ``name`` is armed (and the dice say so)."""
    if name == _NAME and random.random() < _PROBABILITY:
        os.kill(os.getpid(), signal.SIGKILL)
