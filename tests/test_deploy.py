"""deploy/ checked by the real tools: promtool on the Prometheus config, rules
and their unit tests; systemd-analyze on the units; docker compose on the
compose file (where each exists); and the files they point at, built or run.

On CI (``CI=true``) a missing tool fails the test: ``.ci/run`` installs
Debian's prometheus package. Elsewhere it is skipped, saying which tool.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from stocksync.tools.procs import HubChild, agent_status, wait_for

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

DASHBOARD_GROUPS = (
    "Warehouses",
    "Lag",
    "Outbox",
    "Conflicts",
    "Reservations",
    "Rooms",
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
)
"""The metrics of issue 8's catalogue (README "Metrics"): the dashboard shows each."""


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
    assert set(jobs) == {"stocksync-hub", "stocksync-agent"}
    for job in jobs.values():
        for sd in job["file_sd_configs"]:
            for name in sd["files"]:
                for targets in (PROM / name, DEPLOY / "compose" / name):
                    groups = load_yaml(targets)
                    assert groups and all(g["targets"] for g in groups), targets
    # Every agent target names its warehouse (AgentDown says which one).
    for targets in (PROM / "targets/agents.yml", DEPLOY / "compose/targets/agents.yml"):
        assert all(re.fullmatch(r"WH-\w+", g["labels"]["warehouse"]) for g in load_yaml(targets))


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
    # HubDown lists every warehouse's outbox; WebhookFailing names its subscription.
    assert "Labels.warehouse" in rules["HubDown"]["annotations"]["description"]
    assert "{{ $labels.subscription }}" in rules["WebhookFailing"]["annotations"]["summary"]


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


@pytest.mark.parametrize("unit", ["stocksync-agent.service", "stocksync-hub.service"])
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


def test_warehouse_sim_records_moves_that_reach_the_hub(tmp_path: Path) -> None:
    """The compose agents' entrypoint, run here: the agent streams what the
    simulated WMS records, and SIGTERM stops both."""
    hub = HubChild(tmp_path / "hub.db", tmp_path / "hub.log")
    sim = None
    try:
        hub.wait_ready()
        db = tmp_path / "lax.db"
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "STOCKSYNC_AGENT_WAREHOUSE": "WH-LAX",
            "STOCKSYNC_AGENT_HUB": hub.target,
            "STOCKSYNC_AGENT_DB": str(db),
            "STOCKSYNC_AGENT_INSECURE": "true",
            "SIM_INTERVAL_S": "0.1",
            "SIM_SKUS": "3",
        }
        with (tmp_path / "sim.log").open("w") as log:
            sim = subprocess.Popen(
                ["bash", str(DEPLOY / "compose" / "warehouse-sim.sh")],
                env=env,
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
        sim.terminate()
        assert sim.wait(30) == 0, (tmp_path / "sim.log").read_text()
        status = agent_status(db)
        assert status["daemon_pid"] is None  # the agent stopped with it
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
        hub.stop()
