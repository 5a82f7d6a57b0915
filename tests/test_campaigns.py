"""Short CI versions of the reliability campaigns (tests/campaigns, issue 10).

Each runs the same code as ``python -m tests.campaigns NAME --count N`` with
small counts and fails with the campaign's own list of broken promises; the
long runs and their figures are in docs/reliability.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from campaigns.runner import run

pytestmark = pytest.mark.slow

CI_RUNS = {
    "agent-kills": {"count": 50},
    "hub-kills": {"count": 2},
    "partitions": {"count": 8},
    "clock-skew": {"count": 1},
    "full-buffer": {"count": 5000, "skus": 50, "cap": 1000},
    "power-loss": {"count": 1},
    "soak": {"minutes": 0.1},
}


@pytest.mark.parametrize("name", sorted(CI_RUNS))
def test_campaign(name: str, tmp_path: Path) -> None:
    if name == "power-loss" and shutil.which("cc") is None:
        pytest.skip("the power-loss campaign builds its LD_PRELOAD library with cc")
    result = run(name, tmp_path, **CI_RUNS[name])  # type: ignore[arg-type]
    print(result.table())
    assert result.ok, "; ".join(result.failures)
