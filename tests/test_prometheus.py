"""A real Prometheus scrapes a running hub and two agents; PromQL answers.

Debian's ``prometheus`` (installed by ``.ci/run``) is started on loopback
with a temporary config scraping every second: the hub's ``/metrics`` on its
HTTP listener, and each agent's ``--metrics``. One agent streams to the hub;
the other's hub is unreachable, so it holds its events. Queries through the
HTTP API (``/api/v1/query``) must give each agent's real pending count (what
``stocksync-agent status`` says) and one connected agent at the hub. The
test prints each query and its JSON result (run it with ``-s``).

On CI (``CI=true``) a missing ``prometheus`` fails; elsewhere it skips,
saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from stocksync.tools.procs import AgentChild, Child, HubChild, command, wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(base: str, promql: str) -> dict[str, Any]:
    """Run ``promql`` through Prometheus' HTTP API; returns the JSON answer."""
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer


def by_warehouse(answer: dict[str, Any]) -> dict[str, float]:
    return {r["metric"]["warehouse"]: float(r["value"][1]) for r in answer["data"]["result"]}


@pytest.fixture
def prometheus_binary() -> str:
    if not os.path.exists(PROMETHEUS):
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is not installed (.ci/run installs Debian's package)")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    return PROMETHEUS


def test_a_real_prometheus_scrapes_the_hub_and_agents_and_promql_answers(
    tmp_path: Path, prometheus_binary: str
) -> None:
    children: list[Child] = []
    try:
        hub = HubChild(tmp_path / "hub.db", tmp_path / "hub.log", extra=("--http", "127.0.0.1:0"))
        children.append(hub)
        hub.wait_ready(30)
        lax = AgentChild(
            "WH-LAX",
            tmp_path / "lax.db",
            hub.target,
            tmp_path / "lax.log",
            extra=("--metrics", "127.0.0.1:0"),
        )
        children.append(lax)
        lax.wait_connected(30)
        sfo_db = tmp_path / "sfo.db"
        for sku in ("SKU-1", "SKU-2", "SKU-3"):
            run_cli(*command("stocksync-agent"), "record", "receive", sku, "2", "--db", str(sfo_db))
        sfo = AgentChild(
            "WH-SFO",
            sfo_db,
            "127.0.0.1:9",  # its hub is unreachable: the events wait
            tmp_path / "sfo.log",
            extra=("--metrics", "127.0.0.1:0"),
        )
        children.append(sfo)
        targets = [
            wait_for(lambda a=a: a.status().get("metrics"), 30, "agent metrics") for a in (lax, sfo)
        ]
        port = _free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: stocksync-hub\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{hub.http_port}']}}]\n"
            "  - job_name: stocksync-agent\n"
            f"    static_configs: [{{targets: {json.dumps(targets)}}}]\n"
        )
        prom = Child(
            "prometheus",
            [
                prometheus_binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            tmp_path / "prometheus.log",
        )
        children.append(prom)
        base = f"http://127.0.0.1:{port}"

        def scraped() -> bool:
            prom.check_alive()
            try:
                up = query(base, "up == 1")["data"]["result"]
                pending = query(base, "stocksync_agent_pending_events")["data"]["result"]
            except OSError:
                return False  # not listening yet
            return len(up) == 3 and len(pending) == 2

        wait_for(scraped, 60, "Prometheus to scrape the hub and both agents", poll=0.2)

        real = {a.warehouse: int(a.status()["pending"]) for a in (lax, sfo)}
        assert real == {"WH-LAX": 0, "WH-SFO": 3}
        for promql in ("stocksync_agent_pending_events", "stocksync_hub_connected_agents"):
            answer = query(base, promql)
            print(f"\nGET {base}/api/v1/query?query={promql}")
            print(json.dumps(answer, indent=2))
        assert by_warehouse(query(base, "stocksync_agent_pending_events")) == real
        connected = query(base, "stocksync_hub_connected_agents")["data"]["result"]
        assert [float(r["value"][1]) for r in connected] == [1.0]
        assert connected[0]["metric"]["job"] == "stocksync-hub"
        assert by_warehouse(query(base, "stocksync_agent_connected")) == {
            "WH-LAX": 1.0,
            "WH-SFO": 0.0,
        }
    finally:
        for child in reversed(children):
            child.stop()
