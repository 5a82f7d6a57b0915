"""What the JSON API and webhook tests share: a real hub with ``--http``, a
plain HTTP client (urllib), and the OpenAPI document to check answers against."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
from conftest import HubProcess

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = json.loads((ROOT / "hub" / "static" / "openapi.json").read_text())


def start_hub(tmp_path: Path, toml: str = "", name: str = "hub") -> HubProcess:
    """A real hub subprocess serving gRPC and HTTP on free ports, with ``toml`` settings."""
    config = tmp_path / f"{name}.toml"
    config.write_text(toml)
    return HubProcess(
        tmp_path / f"{name}.db",
        tmp_path / f"{name}.log",
        0,
        "--http",
        "127.0.0.1:0",
        "--config",
        str(config),
    ).start()


def base(hub: HubProcess) -> str:
    return f"http://127.0.0.1:{hub.http_port}"


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request; returns (status, headers, the JSON body)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in (headers or {}):
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def conforms(instance: Any, schema: str) -> Any:
    """``instance`` if it matches the OpenAPI document's component ``schema``."""
    root = {"$ref": f"#/components/schemas/{schema}", "components": OPENAPI["components"]}
    jsonschema.Draft202012Validator(root).validate(instance)
    return instance


def problem(status: int, headers: dict[str, str], body: Any) -> dict[str, Any]:
    """``body`` if it is an RFC 9457 problem document of ``status``."""
    assert headers["Content-Type"].startswith("application/problem+json"), headers
    conforms(body, "Problem")
    assert body["status"] == status
    return body  # type: ignore[no-any-return]
