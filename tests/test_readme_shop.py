"""README "Integrating a shop" does what it says: its curl examples run, with
the real curl binary, against a real hub; its signature check in Python
accepts what the hub signs and nothing else."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from shop_http import ROOT, base, http, start_hub
from test_reservations_grpc import stock_warehouse

from stocksync.webhooks import sign

README = (ROOT / "README.md").read_text()
SECTION = README.split("\n## Integrating a shop\n", 1)[1].split("\n## ", 1)[0]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", SECTION, flags=re.S)


def test_the_readme_curl_examples_run_against_a_real_hub(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("no curl binary on this machine")
    [script] = [b for b in blocks("sh") if "curl" in b]
    assert "HUB=http://127.0.0.1:8080\n" in script
    h = start_hub(tmp_path)
    try:
        stock_warehouse(h.target, "WH-LAX", {"LIP-RED-01": 3})
        script = script.replace("HUB=http://127.0.0.1:8080", f"HUB={base(h)}")
        # Each command's output on a line of its own, to read them back.
        script = script.replace("\ncurl ", "\necho; curl ")
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        answers: list[Any] = [json.loads(line) for line in result.stdout.splitlines() if line]
        stock, committed, shown, released, refused, conflicts = answers
        assert stock["skus"][0]["sellable"] == 3
        assert committed["status"] == "COMMITTED" and committed["key"] == "order-1001"
        assert committed["lines"][0]["allocations"] == {"WH-LAX": {"qty": 2, "shipped": 0}}
        assert shown == committed
        assert (released["id"], released["status"]) == (committed["id"], "RELEASED")
        assert (refused["status"], refused["code"]) == (429, "RESOURCE_EXHAUSTED")
        assert refused["detail"] == "LIP-RED-01: 500 requested, 3 sellable"
        assert conflicts == {"conflicts": []}
        _, _, now = http("GET", f"{base(h)}/v1/stock?sku=LIP-RED-01")
        assert now["skus"][0]["sellable"] == 3  # released: everything is back on sale
    finally:
        h.kill()


def test_the_readme_signature_check_accepts_only_what_the_hub_signs() -> None:
    [snippet] = blocks("python")
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)
    verify = namespace["verify"]
    secret, body = "whsec_3b1f0c9e27d54a6b", b'{"id":"evt_1","type":"webhook.test"}'
    header = sign(secret, int(time.time()), body)
    assert verify(secret, header, body)
    assert not verify(secret, header, body.replace(b"1", b"2"))
    assert not verify("whsec_another_one_entirely", header, body)
    assert not verify(secret, sign(secret, int(time.time()) - 3600, body), body)
    assert not verify(secret, "v1=" + header.split("v1=")[1], body)


def test_every_webhook_event_and_knob_is_in_the_readme() -> None:
    from stocksync.webhooks import EVENT_TYPES, TEST_EVENT

    for event in (*EVENT_TYPES, TEST_EVENT):
        assert f"`{event}`" in SECTION, event
    for path in json.loads((ROOT / "hub" / "static" / "openapi.json").read_text())["paths"]:
        if path != "/v1/openapi.json":
            assert path.split("{")[0] in SECTION, path
