"""Configuration: flags > environment > TOML > defaults, and named errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stocksync.config import AgentConfig, ConfigError, HubConfig, load


def test_defaults_need_only_the_warehouse() -> None:
    config = load(AgentConfig, env={}, flags={"warehouse": "WH-LAX", "insecure": True})
    assert config == AgentConfig(warehouse="WH-LAX", insecure=True)


def test_tls_files_are_required_unless_insecure(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^tls_cert: required"):
        load(AgentConfig, env={}, flags={"warehouse": "WH-LAX"})
    with pytest.raises(ConfigError, match=r"^tls_cert: cannot read"):
        load(
            HubConfig, env={}, flags={"tls_cert": "/nonexistent.pem", "tls_key": "k", "tls_ca": "c"}
        )
    with pytest.raises(ConfigError, match=r"^tls_ca: set together with insecure"):
        load(HubConfig, env={}, flags={"insecure": True, "tls_ca": "ca.pem"})
    pem = tmp_path / "x.pem"
    pem.write_text("garbage")
    files = {"tls_cert": str(pem), "tls_key": str(pem), "tls_ca": str(pem)}
    with pytest.raises(ConfigError, match=r"^tls_cert: .* is not a PEM file"):
        load(HubConfig, env={}, flags=files)
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    assert load(HubConfig, env={}, flags=files).tls_ca == str(pem)


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('warehouse = "WH-FILE"\nhub = "file:1"\nmax_batch_events = 200\n')
    env = {
        "STOCKSYNC_AGENT_HUB": "env:2",
        "STOCKSYNC_AGENT_WAREHOUSE": "WH-ENV",
        "STOCKSYNC_AGENT_INSECURE": "true",
    }
    config = load(AgentConfig, config_file=toml, env=env, flags={"warehouse": "WH-FLAG"})
    assert config.warehouse == "WH-FLAG"  # flag beats env and file
    assert config.hub == "env:2"  # env beats file
    assert config.max_batch_events == 200  # file beats default
    assert config.window_events == AgentConfig.window_events  # default


def test_flags_left_as_none_do_not_override(tmp_path: Path) -> None:
    env = {"STOCKSYNC_HUB_DB": "env.db", "STOCKSYNC_HUB_INSECURE": "1"}
    config = load(HubConfig, env=env, flags={"db": None})
    assert config.db == "env.db"


def test_env_booleans_and_numbers_are_parsed() -> None:
    env = {"STOCKSYNC_HUB_INSECURE": "yes", "STOCKSYNC_HUB_GRACE_S": "1.5"}
    config = load(HubConfig, env=env)
    assert config.insecure is True
    assert config.grace_s == 1.5


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"STOCKSYNC_AGENT_MAX_BATCH_EVENTS": "0"}, "max_batch_events"),
        ({"STOCKSYNC_AGENT_MAX_BATCH_EVENTS": "many"}, "max_batch_events"),
        ({"STOCKSYNC_AGENT_WINDOW_EVENTS": "10"}, "window_events"),
        ({"STOCKSYNC_AGENT_HUB": "nohostport"}, "hub"),
        ({"STOCKSYNC_AGENT_WAREHOUSE": "WH LAX"}, "warehouse"),
        ({"STOCKSYNC_AGENT_WAREHOUSE": ""}, "warehouse"),
        ({"STOCKSYNC_AGENT_INSECURE": "maybe"}, "insecure"),
        ({"STOCKSYNC_AGENT_SYNCHRONOUS": "OFF"}, "synchronous"),
    ],
)
def test_bad_values_name_the_field(env: dict[str, str], field: str) -> None:
    env = {"STOCKSYNC_AGENT_WAREHOUSE": "WH-LAX", "STOCKSYNC_AGENT_INSECURE": "1", **env}
    with pytest.raises(ConfigError) as err:
        load(AgentConfig, env=env)
    assert str(err.value).startswith(f"{field}:")


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    toml = tmp_path / "hub.toml"
    toml.write_text("listen = '127.0.0.1:1'\nlisten_port = 5\n")
    with pytest.raises(ConfigError, match="listen_port: unknown setting"):
        load(HubConfig, config_file=toml, env={})


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(HubConfig, config_file=tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("listen = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(HubConfig, config_file=bad, env={})


def test_toml_value_of_wrong_type_is_named(tmp_path: Path) -> None:
    toml = tmp_path / "hub.toml"
    toml.write_text("max_batch_events = 1.5\n")
    with pytest.raises(ConfigError, match="max_batch_events"):
        load(HubConfig, config_file=toml, env={})


@pytest.mark.parametrize(("name", "cls"), [("agent.toml", AgentConfig), ("hub.toml", HubConfig)])
def test_shipped_example_configs_load(name: str, cls: type, tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "deploy" / "config" / name
    pem = tmp_path / "x.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    # The example points at /etc/stocksync; only the files' existence differs here.
    flags = {"tls_cert": str(pem), "tls_key": str(pem), "tls_ca": str(pem)}
    config = load(cls, config_file=example, env={}, flags=flags)
    assert config.db.startswith("/var/lib/stocksync/")


def _tls_dir(tmp_path: Path) -> Path:
    from stocksync.certs import init_ca, issue_hub

    init_ca(tmp_path / "ca")
    issue_hub(tmp_path / "ca", tmp_path / "hub-tls", ["localhost"])
    return tmp_path / "hub-tls"


def test_a_tls_directory_stands_for_the_three_files(tmp_path: Path) -> None:
    folder = _tls_dir(tmp_path)
    config = load(HubConfig, env={}, flags={"tls": str(folder)})
    assert (config.tls_cert, config.tls_key, config.tls_ca) == (
        str(folder / "cert.pem"),
        str(folder / "key.pem"),
        str(folder / "ca.pem"),
    )
    assert config.validate() is config  # validating again is no conflict
    env = {"STOCKSYNC_HUB_TLS": str(folder)}
    assert load(HubConfig, env=env).tls_key == str(folder / "key.pem")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"tls_cert": "x.pem"}, "tls: set together with tls_cert; choose one"),
        ({"insecure": True}, "tls: set together with insecure; choose one"),
    ],
)
def test_a_tls_directory_is_not_mixed_with_other_tls_settings(
    tmp_path: Path, flags: dict[str, object], message: str
) -> None:
    folder = _tls_dir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load(HubConfig, env={}, flags={"tls": str(folder), **flags})
    with pytest.raises(ConfigError, match="is not a directory"):
        load(AgentConfig, env={}, flags={"warehouse": "WH-LAX", "tls": str(tmp_path / "none")})
    (folder / "key.pem").unlink()
    with pytest.raises(ConfigError, match=r"tls_key: cannot read .*key\.pem"):
        load(HubConfig, env={}, flags={"tls": str(folder)})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"insecure": True, "token_listen": "0.0.0.0:50052"}, "token_listen: needs TLS"),
        ({"insecure": True, "tokens_file": "t.toml"}, "tokens_file: set together with insecure"),
        ({"max_batch_events": 10_000}, "max_message_bytes: 8388608 cannot hold a batch"),
        ({"max_streams_per_identity": 0}, "max_streams_per_identity: must be between 1"),
        ({"max_requests_per_s": 0}, "max_requests_per_s: must be between 0.001"),
    ],
)
def test_caller_settings_are_checked(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(HubConfig, env={}, flags={"insecure": True, **flags})
