"""The README's security walk-through, command by command, as real processes.

A CA, the hub's, a warehouse's and the shop's certificates and an overlay
token, all made with ``stocksync-hub certs`` / ``tokens``; the hub serving
mutual TLS and a token port from them; an agent streaming with ``--tls``;
the shop reserving with ``--tls``; the overlay's token watching its room on
the token port; and what each may not do refused in one line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from conftest import AGENT, HUB, run_cli, wait_until

from stocksync.tools.procs import Child, agent_status


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    out = run_cli(*args, env=env)
    assert out.returncode == 0, f"{' '.join(args)}: {out.stderr}"
    assert "Traceback" not in out.stderr
    return out.stdout


def refused(*args: str, env: dict[str, str] | None = None) -> str:
    """The one line of a refusal (after click's usage lines, for a usage error)."""
    out = run_cli(*args, env=env)
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr
    return out.stderr.strip().splitlines()[-1]


def test_certificates_tokens_and_scopes_from_the_command_line(tmp_path: Path) -> None:
    os.chdir(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    ok(HUB, "certs", "init", "--ca-dir", "ca")
    ok(HUB, "certs", "issue-hub", "localhost", "127.0.0.1", "--ca-dir", "ca", "--out", "hub-tls")
    ok(HUB, "certs", "issue-agent", "WH-LAX", "--ca-dir", "ca", "--out", "lax-tls")
    ok(
        HUB, "certs", "issue-client", "shop", "--scope", "inventory:reserve",
        "--scope", "inventory:read", "--ca-dir", "ca", "--out", "shop-tls",
    )  # fmt: skip
    ok(
        HUB,
        "certs",
        "issue-client",
        "ops",
        "--scope",
        "admin",
        "--ca-dir",
        "ca",
        "--out",
        "ops-tls",
    )
    assert oct((tmp_path / "shop-tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
    printed = ok(HUB, "tokens", "new", "overlay-a", "--scope", "rooms:watch:live-a")
    token = re.search(r"token: (sst_\S+)", printed)
    assert token is not None
    Path("tokens.toml").write_text(printed.split("# add to the hub's tokens file:\n", 1)[1])
    assert token[1] not in Path("tokens.toml").read_text()  # only its hash is kept

    ready = tmp_path / "ready.json"
    hub = Child(
        "hub",
        [
            HUB, "serve", "--db", "hub.db", "--listen", "127.0.0.1:0",
            "--token-listen", "127.0.0.1:0", "--tls", "hub-tls", "--tokens-file", "tokens.toml",
            "--ready-file", str(ready),
        ],
        tmp_path / "hub.log",
        env=env,
    )  # fmt: skip
    agent: Child | None = None
    try:
        info = wait_until(
            lambda: hub.check_alive() or (ready.exists() and json.loads(ready.read_text())), 60
        )
        mtls, tokens = f"127.0.0.1:{info['port']}", f"127.0.0.1:{info['token_port']}"
        ok(AGENT, "record", "receive", "LIP-RED", "5", "--db", "lax.db")
        agent = Child(
            "agent",
            [
                AGENT,
                "run",
                "--warehouse",
                "WH-LAX",
                "--hub",
                mtls,
                "--db",
                "lax.db",
                "--tls",
                "lax-tls",
            ],
            tmp_path / "agent.log",
            env=env,
        )
        wait_until(lambda: agent_status(tmp_path / "lax.db").get("hub_watermark") == 1, 60)

        shop = ("--hub", mtls, "--tls", "shop-tls")
        stock = json.loads(ok(HUB, "stock", "LIP-RED", "--json", *shop))
        assert stock["sellable"] == 5
        held = json.loads(ok(HUB, "reserve", "LIP-RED", "2", "--key", "order-1", "--json", *shop))
        assert held["status"] == "HELD"
        ok(HUB, "rooms", "feature", "live-a", "LIP-RED", "--hub", mtls, "--tls", "ops-tls")

        assert refused(HUB, "rooms", "feature", "live-a", "X", *shop) == (
            "Error: PERMISSION_DENIED: client shop lacks scope rooms:host for room live-a"
        )
        assert refused(HUB, "stock", "LIP-RED", "--hub", mtls, "--tls", "lax-tls") == (
            "Error: PERMISSION_DENIED: agent WH-LAX holds no client scope; "
            "this call needs inventory:read"
        )
        with_token = {**env, "STOCKSYNC_CLIENT_TOKEN": token[1]}
        by_token = ("--hub", tokens, "--tls-ca", "ca/ca.pem")
        assert "PERMISSION_DENIED" in refused(HUB, "stock", "LIP-RED", *by_token, env=with_token)
        assert refused(HUB, "stock", "LIP-RED", *by_token, "--token", "sst_" + "x" * 43) == (
            "Error: UNAUTHENTICATED: unknown bearer token"
        )
        assert "give a client certificate or a --token, not both" in refused(
            HUB, "stock", "LIP-RED", *by_token, "--tls", "shop-tls", env=with_token
        )
        watch = subprocess.Popen(
            [HUB, "rooms", "watch", "live-a", "--json", *by_token],
            env=with_token,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert watch.stdout is not None
            first = json.loads(watch.stdout.readline())
            assert first["type"] == "snapshot"
            assert first["skus"][0]["sku"] == "LIP-RED"
        finally:
            watch.kill()
            watch.wait()
        assert "PERMISSION_DENIED" in refused(
            HUB, "rooms", "watch", "live-b", *by_token, env=with_token
        )
    finally:
        if agent is not None:
            assert agent.stop() == 0
        assert hub.stop() == 0


def test_unusable_tls_or_tokens_files_stop_the_hub_before_it_creates_its_store(
    tmp_path: Path,
) -> None:
    os.chdir(tmp_path)
    ok(HUB, "certs", "init", "--ca-dir", "ca")
    ok(HUB, "certs", "issue-hub", "localhost", "--ca-dir", "ca", "--out", "hub-tls")
    ok(HUB, "certs", "issue-agent", "WH-LAX", "--ca-dir", "ca", "--out", "lax-tls")
    Path("tokens.toml").write_text("[[token]]\nname = 'half")
    serve = (HUB, "serve", "--db", "hub.db", "--listen", "127.0.0.1:0", "--tls", "hub-tls")
    assert refused(*serve, "--tokens-file", "tokens.toml").startswith(
        "Error: tokens file tokens.toml: not valid TOML"
    )
    Path("hub-tls/key.pem").write_bytes(Path("lax-tls/key.pem").read_bytes())
    assert refused(*serve) == "Error: hub-tls/key.pem is not the key of hub-tls/cert.pem"
    assert not Path("hub.db").exists()


def test_a_tls_hub_warns_when_its_plaintext_http_faces_the_network(tmp_path: Path) -> None:
    os.chdir(tmp_path)
    ok(HUB, "certs", "init", "--ca-dir", "ca")
    ok(HUB, "certs", "issue-hub", "localhost", "--ca-dir", "ca", "--out", "hub-tls")
    for attempt, http in enumerate(["0.0.0.0:0", "127.0.0.1:0"]):
        ready = tmp_path / f"ready-{attempt}.json"
        hub = Child(
            "hub",
            [
                HUB, "serve", "--db", "hub.db", "--listen", "127.0.0.1:0", "--tls", "hub-tls",
                "--http", http, "--ready-file", str(ready),
            ],
            tmp_path / f"hub-{attempt}.log",
        )  # fmt: skip
        try:
            wait_until(lambda h=hub, r=ready: h.check_alive() or r.exists(), 60, "the hub")
        finally:
            assert hub.stop() == 0
        warned = "is plaintext beyond this machine" in hub.text()
        assert warned == (http == "0.0.0.0:0"), hub.text()
