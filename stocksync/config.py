"""Typed configuration for the agent and the hub.

Every knob is a dataclass field with its meaning in ``metadata["help"]``.
Precedence: command-line flag > environment (``STOCKSYNC_AGENT_…`` /
``STOCKSYNC_HUB_…``) > TOML file (``--config``, keys as the field names) >
default. :func:`load` merges them; ``validate()`` names the bad field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from stocksync.events import InvalidEvent, validate_warehouse
from stocksync.sqlite import check_synchronous
from stocksync.webhooks import WebhookSubscription, parse_subscriptions

__all__ = [
    "AgentConfig",
    "ConfigError",
    "HubConfig",
    "check_listen",
    "check_local_address",
    "env_name",
    "load",
]


class ConfigError(ValueError):
    """A configuration value is missing or out of range; the message names it."""


def _knob(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be between {low:g} and {high:g}, got {value:g}")


def check_listen(name: str, value: str) -> None:
    """Accept ``HOST:PORT``.

    Raises:
        ConfigError: naming ``name``.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")


def check_local_address(address: str) -> str:
    """Accept ``unix:PATH`` or a loopback ``HOST:PORT``; returns it unchanged.

    Raises:
        ValueError: for anything a network could reach, or a malformed address.
    """
    if address.startswith("unix:"):
        if not address.removeprefix("unix:").removeprefix("//"):
            raise ValueError("unix: needs a path, e.g. unix:/run/stocksync-agent/api.sock")
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected unix:PATH or HOST:PORT, got {address!r}")
    name = host.strip("[]")
    if name == "localhost":
        return address
    try:
        loopback = ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"{address!r} is not a loopback address: the local API listens only on a Unix "
            "socket or 127.0.0.1 / [::1] (it has no authentication of its own)"
        )
    return address


LOG_FORMATS = ("text", "json")


def _check_log_format(value: str) -> None:
    if value not in LOG_FORMATS:
        raise ConfigError(f"log_format: must be text or json, got {value!r}")


def _check_synchronous(value: str) -> None:
    try:
        check_synchronous(value)
    except ValueError as e:
        raise ConfigError(f"synchronous: {e}") from None


MAX_EVENT_BYTES = 1200
"""The largest one event can be on the wire: every string at its longest
(the 200-character reason in 4-byte UTF-8), every number at its widest."""

TLS_DIR_FILES = {"tls_cert": "cert.pem", "tls_key": "key.pem", "tls_ca": "ca.pem"}
"""What a ``tls`` directory holds (the layout ``stocksync-hub certs issue-*`` writes)."""


def _check_tls_dir(config: AgentConfig | HubConfig) -> None:
    """Turn ``tls`` (a directory) into the three file settings it stands for."""
    derived = {name: os.path.join(config.tls, file) for name, file in TLS_DIR_FILES.items()}
    # What an earlier validate() filled in is not a conflict.
    given = [name for name, path in derived.items() if getattr(config, name) not in ("", path)]
    if given:
        raise ConfigError(f"tls: set together with {given[0]}; choose one")
    if not os.path.isdir(config.tls):
        raise ConfigError(f"tls: {config.tls} is not a directory")
    for name, path in derived.items():
        setattr(config, name, path)


def _check_tls(config: AgentConfig | HubConfig) -> None:
    """Either plaintext explicitly, or all three PEM files, readable."""
    if config.insecure and config.tls:
        raise ConfigError("tls: set together with insecure; choose one")
    if config.tls:
        _check_tls_dir(config)
    files = {"tls_cert": config.tls_cert, "tls_key": config.tls_key, "tls_ca": config.tls_ca}
    if config.insecure:
        given = [name for name, path in files.items() if path]
        if given:
            raise ConfigError(f"{given[0]}: set together with insecure; choose one")
        return
    for name, path in files.items():
        if not path:
            raise ConfigError(f"{name}: required for mutual TLS (or set insecure to use plaintext)")
        try:
            with open(path, "rb") as f:
                pem = f.read(1 << 20)
        except OSError as e:
            raise ConfigError(f"{name}: cannot read {path}: {e.strerror}") from None
        if b"-----BEGIN " not in pem:
            raise ConfigError(f"{name}: {path} is not a PEM file")


@dataclass
class AgentConfig:
    """How the warehouse agent runs (``stocksync-agent run``)."""

    warehouse: str = _knob("", "Warehouse id this agent speaks for, e.g. WH-LAX. Required.")
    hub: str = _knob("127.0.0.1:50051", "The hub's HOST:PORT.")
    db: str = _knob("stocksync-agent.db", "Path of the agent's SQLite store.")
    insecure: bool = _knob(False, "Talk to the hub in plaintext. Only when explicitly asked for.")
    tls: str = _knob(
        "",
        "Directory with cert.pem, key.pem and ca.pem (from `stocksync-hub certs issue-agent`), "
        "instead of the three tls_* files.",
    )
    tls_cert: str = _knob(
        "", "This warehouse's client certificate (PEM); it names the warehouse id."
    )
    tls_key: str = _knob("", "The client certificate's private key (PEM).")
    tls_ca: str = _knob("", "CA certificate(s) (PEM) that signed the hub's certificate.")
    synchronous: str = _knob(
        "FULL", "SQLite synchronous pragma of the store; FULL survives power loss."
    )
    max_batch_events: int = _knob(
        1000,
        "A batch goes out at this many events (N), or the hub's limit if lower...",
    )
    batch_linger_ms: int = _knob(
        5,
        "...or, while another batch awaits its ack, this long after its first event, whichever "
        "first (T). With nothing in flight a batch goes at once.",
    )
    window_events: int = _knob(
        50_000,
        "Most events sent but not yet acknowledged by the hub. It must cover the "
        "bandwidth-delay product: 150,000 events/s over a 250 ms round trip is 37,500.",
    )
    poll_interval_ms: int = _knob(
        250,
        "How often the daemon looks for new events by itself. Recording wakes it at once "
        "(on Linux); this is the fallback.",
    )
    ping_interval_s: float = _knob(5.0, "How often the agent reports its backlog to the hub.")
    backoff_initial_s: float = _knob(0.5, "First reconnect delay bound (full jitter).")
    backoff_max_s: float = _knob(30.0, "Reconnect delays grow exponentially up to this cap.")
    connect_timeout_s: float = _knob(10.0, "How long to wait for the hub's Welcome.")
    keepalive_s: float = _knob(20.0, "HTTP/2 keepalive ping interval; detects dead links.")
    retention_hours: float = _knob(
        168.0,
        "Acknowledged events older than this are pruned from the store (never unacknowledged "
        "ones); a count can be taken as of a pruned seq no longer. 0: prune once acknowledged.",
    )
    max_pending_events: int = _knob(
        0,
        "Cap on pending (unacknowledged) events in the store: past it, never-sent events are "
        "compacted losslessly, one net event per SKU covering their seqs (DESIGN §6). "
        "0: never compact.",
    )
    local_api: str = _knob(
        "",
        "Where the daemon serves its local API for producers: unix:PATH or a loopback "
        "HOST:PORT, never a network address. Empty: no local API.",
    )
    metrics: str = _knob(
        "",
        "HOST:PORT where the daemon serves Prometheus /metrics (no authentication: bind it "
        "where only Prometheus reaches). Empty: no metrics listener, and nothing is counted.",
    )
    stall_after_s: float = _knob(
        60.0,
        "Events pending and no ack from the hub for this long: the stream is stalled; it is "
        "logged, counted and made again.",
    )
    log_format: str = _knob("text", "Log lines as text (for people) or json (one object a line).")

    def validate(self) -> AgentConfig:
        """Check every field; returns self.

        Raises:
            ConfigError: naming the first bad field.
        """
        if not self.warehouse:
            raise ConfigError("warehouse: required (--warehouse, STOCKSYNC_AGENT_WAREHOUSE)")
        try:
            validate_warehouse(self.warehouse)
        except InvalidEvent as e:
            raise ConfigError(f"warehouse: {e}") from None
        check_listen("hub", self.hub)
        _check_synchronous(self.synchronous)
        # 5,000 events of the largest form stay well under MAX_MESSAGE_BYTES.
        _check_range("max_batch_events", self.max_batch_events, 1, 5000)
        _check_range("batch_linger_ms", self.batch_linger_ms, 0, 10_000)
        _check_range("window_events", self.window_events, self.max_batch_events, 1_000_000)
        _check_range("poll_interval_ms", self.poll_interval_ms, 1, 10_000)
        _check_range("ping_interval_s", self.ping_interval_s, 0.1, 3600)
        _check_range("backoff_initial_s", self.backoff_initial_s, 0.01, 3600)
        _check_range("backoff_max_s", self.backoff_max_s, self.backoff_initial_s, 86_400)
        _check_range("connect_timeout_s", self.connect_timeout_s, 0.1, 3600)
        _check_range("keepalive_s", self.keepalive_s, 1, 3600)
        _check_range("retention_hours", self.retention_hours, 0, 87_600)
        if self.max_pending_events:
            _check_range("max_pending_events", self.max_pending_events, 1000, 1_000_000_000)
        if self.local_api:
            try:
                check_local_address(self.local_api)
            except ValueError as e:
                raise ConfigError(f"local_api: {e}") from None
        if self.metrics:
            check_listen("metrics", self.metrics)
        _check_range("stall_after_s", self.stall_after_s, 1, 86_400)
        _check_log_format(self.log_format)
        _check_tls(self)
        return self


@dataclass
class HubConfig:
    """How the hub runs (``stocksync-hub serve``)."""

    listen: str = _knob("127.0.0.1:50051", "HOST:PORT the gRPC server listens on.")
    http: str = _knob(
        "",
        "HOST:PORT of the HTTP listener: the shops' JSON API (/v1), rooms' Server-Sent "
        "Events and overlay pages (and /metrics). Empty: no HTTP.",
    )
    db: str = _knob("stocksync-hub.db", "Path of the hub's SQLite store.")
    insecure: bool = _knob(False, "Serve plaintext. Only when explicitly asked for.")
    tls: str = _knob(
        "",
        "Directory with cert.pem, key.pem and ca.pem (from `stocksync-hub certs issue-hub`), "
        "instead of the three tls_* files. Renewed files are served without a restart.",
    )
    tls_cert: str = _knob("", "The hub's server certificate (PEM).")
    tls_key: str = _knob("", "The server certificate's private key (PEM).")
    tls_ca: str = _knob("", "CA certificate(s) (PEM) that sign client certificates; required.")
    synchronous: str = _knob("FULL", "SQLite synchronous pragma; FULL: an ack survives power loss.")
    max_batch_events: int = _knob(
        5000, "Largest batch accepted from an agent, in events; agents send no larger ones."
    )
    hello_timeout_s: float = _knob(10.0, "A stream that sends no Hello within this is closed.")
    snapshot_timeout_s: float = _knob(
        60.0,
        "A stream asked for a snapshot that sends none (or no next chunk) within this is closed.",
    )
    ping_interval_s: float = _knob(15.0, "How often the hub pings each agent.")
    grace_s: float = _knob(5.0, "On SIGTERM, how long in-flight batches get to finish.")
    reservation_ttl_s: float = _knob(
        900.0, "A held (unpaid) reservation expires after this, unless Reserve gives a ttl."
    )
    stale_after_s: float = _knob(
        60.0, "A warehouse silent this long is stale: its stock counts less (stale_buffer)."
    )
    stale_buffer: float = _knob(
        0.2, "Share of a stale warehouse's on_hand held back from sale (0-1)."
    )
    offline_after_s: float = _knob(
        300.0, "A warehouse silent this long is offline: it adds nothing new to what is sellable."
    )
    # -- who may call, and how much (README, Security) --------------------------------
    token_listen: str = _knob(
        "",
        "HOST:PORT of a second gRPC listener for bearer-token callers: TLS with the hub's "
        "certificate, no client certificate asked. Empty: none.",
    )
    tokens_file: str = _knob(
        "",
        "TOML file of accepted bearer tokens (hashes only, from `stocksync-hub tokens new`); "
        "re-read when it changes. Empty: no tokens.",
    )
    max_message_bytes: int = _knob(
        8 * 1024 * 1024,
        "Largest gRPC message the hub accepts, in bytes; must hold a batch "
        "(max_batch_events x 1,200 + 1,024).",
    )
    max_reservation_lines: int = _knob(50, "Most lines (SKUs) in one reservation.")
    max_featured_skus: int = _knob(200, "Most SKUs a room features at once.")
    room_update_interval_ms: float = _knob(
        30.0,
        "A room publishes at most one update this often: the first change after a quiet "
        "spell goes out at once, later ones within the interval merge into one. 0: every "
        "applied batch that changes what a room shows is an update of its own.",
    )
    room_max_writes_per_s: float = _knob(
        5000.0,
        "Most messages a second one room asks the hub to write to its own watchers: a room "
        "watched by more than this x room_update_interval_ms updates less often (500 "
        "watchers: every 100 ms), so viewers never starve warehouses and shops of the hub's "
        "CPU; viewers on a room edge count as one. 0: no bound.",
    )
    max_query_skus: int = _knob(1000, "Most SKUs one stock query may name.")
    max_streams_per_identity: int = _knob(
        4,
        "Sync streams one agent certificate may hold open at once (a reconnect supersedes "
        "the old stream; the margin covers the moment both are open).",
    )
    max_watchers_per_identity: int = _knob(
        1000,
        "Room watches (gRPC Watch and SSE) one certificate or token may hold open at once; "
        "a token shared by viewers' browsers counts each browser.",
    )
    max_requests_per_s: float = _knob(
        1000.0, "Calls and HTTP requests per second one certificate or token may make, sustained."
    )
    request_burst: int = _knob(
        2000, "Calls one certificate or token may make at once before max_requests_per_s applies."
    )
    webhooks: list[WebhookSubscription] = field(
        default_factory=list,
        metadata={
            "help": "Webhook subscriptions: TOML [[webhooks]] tables of url, events, secret "
            "(and name); the environment takes the same as a JSON list."
        },
    )
    webhook_timeout_s: float = _knob(10.0, "A webhook delivery not answered within this failed.")
    webhook_backoff_initial_s: float = _knob(
        1.0, "First retry delay bound of a failed webhook delivery (full jitter)."
    )
    webhook_backoff_max_s: float = _knob(
        300.0,
        "Retry delays of a failing webhook grow exponentially up to this cap: a receiver "
        "that comes back gets everything within it.",
    )
    webhook_retention_hours: float = _knob(
        168.0, "Delivered webhook events older than this are pruned (never undelivered ones)."
    )
    stall_after_s: float = _knob(
        60.0,
        "An agent reporting events pending while the watermark has not moved for this long: "
        "its stream is stalled; it is logged, counted and ended (the agent reconnects).",
    )
    log_format: str = _knob("text", "Log lines as text (for people) or json (one object a line).")

    def validate(self) -> HubConfig:
        """Check every field; returns self.

        Raises:
            ConfigError: naming the first bad field.
        """
        check_listen("listen", self.listen)
        if self.http:
            check_listen("http", self.http)
        _check_synchronous(self.synchronous)
        _check_range("max_batch_events", self.max_batch_events, 1, 50_000)
        _check_range("hello_timeout_s", self.hello_timeout_s, 0.1, 3600)
        _check_range("snapshot_timeout_s", self.snapshot_timeout_s, 0.1, 3600)
        _check_range("ping_interval_s", self.ping_interval_s, 0.1, 3600)
        _check_range("grace_s", self.grace_s, 0, 3600)
        _check_range("reservation_ttl_s", self.reservation_ttl_s, 1, 86_400)
        _check_range("stale_after_s", self.stale_after_s, 1, 86_400)
        _check_range("stale_buffer", self.stale_buffer, 0, 1)
        _check_range("offline_after_s", self.offline_after_s, self.stale_after_s, 7 * 86_400)
        _check_range("max_message_bytes", self.max_message_bytes, 64 * 1024, 64 * 1024 * 1024)
        _check_range("max_reservation_lines", self.max_reservation_lines, 1, 1000)
        _check_range("max_featured_skus", self.max_featured_skus, 1, 10_000)
        _check_range("room_update_interval_ms", self.room_update_interval_ms, 0, 10_000)
        _check_range("room_max_writes_per_s", self.room_max_writes_per_s, 0, 10_000_000)
        _check_range("max_query_skus", self.max_query_skus, 1, 100_000)
        _check_range("max_streams_per_identity", self.max_streams_per_identity, 1, 1000)
        _check_range("max_watchers_per_identity", self.max_watchers_per_identity, 1, 1_000_000)
        _check_range("max_requests_per_s", self.max_requests_per_s, 0.001, 1_000_000)
        _check_range("request_burst", self.request_burst, 1, 10_000_000)
        needed = self.max_batch_events * MAX_EVENT_BYTES + 1024
        if self.max_message_bytes < needed:
            raise ConfigError(
                f"max_message_bytes: {self.max_message_bytes} cannot hold a batch of "
                f"max_batch_events={self.max_batch_events} events of up to {MAX_EVENT_BYTES:,} "
                f"bytes; raise it to {needed} or lower max_batch_events"
            )
        _check_range("webhook_timeout_s", self.webhook_timeout_s, 0.1, 600)
        _check_range("webhook_backoff_initial_s", self.webhook_backoff_initial_s, 0.01, 3600)
        backoff_max = self.webhook_backoff_max_s
        _check_range("webhook_backoff_max_s", backoff_max, self.webhook_backoff_initial_s, 3600)
        _check_range("webhook_retention_hours", self.webhook_retention_hours, 0, 87_600)
        _check_range("stall_after_s", self.stall_after_s, 1, 86_400)
        _check_log_format(self.log_format)
        _check_tls(self)
        self._check_callers()
        return self

    def _check_callers(self) -> None:
        if self.token_listen:
            check_listen("token_listen", self.token_listen)
            if self.insecure:
                raise ConfigError(
                    "token_listen: needs TLS (bearer tokens are never sent in the clear)"
                )
            if self.token_listen == self.listen and not self.listen.endswith(":0"):
                raise ConfigError("token_listen: must differ from listen")
        if self.tokens_file:
            if self.insecure:
                raise ConfigError(
                    "tokens_file: set together with insecure (plaintext lets every caller in)"
                )
            try:
                with open(self.tokens_file, "rb"):
                    pass
            except OSError as e:
                raise ConfigError(
                    f"tokens_file: cannot read {self.tokens_file}: {e.strerror}"
                ) from None


C = TypeVar("C", AgentConfig, HubConfig)

_PREFIX = {AgentConfig: "STOCKSYNC_AGENT_", HubConfig: "STOCKSYNC_HUB_"}


def env_name(cls: type[AgentConfig] | type[HubConfig], name: str) -> str:
    """The environment variable of a field, e.g. ``STOCKSYNC_AGENT_HUB``."""
    return _PREFIX[cls] + name.upper()


def _coerce(name: str, kind: type, value: Any, source: str) -> Any:
    if kind is list:  # the only list setting: webhook subscriptions
        try:
            return parse_subscriptions(value)
        except ValueError as e:
            raise ConfigError(f"{name}: {e} (from {source})") from None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is int and isinstance(value, float | bool):
            raise ValueError(value)
        if kind is str and not isinstance(value, str):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name}: {value!r} from {source} is not a valid {kind.__name__}"
        ) from None


def load(
    cls: type[C],
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> C:
    """Merge defaults < TOML file < environment < flags, then validate.

    Args:
        cls: AgentConfig or HubConfig.
        config_file: a TOML file whose top-level keys are field names.
        env: the environment (default ``os.environ``).
        flags: values given on the command line; None means "not given".

    Raises:
        ConfigError: for an unreadable file, an unknown key or a bad value.
    """
    env = os.environ if env is None else env
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    kinds = {
        n: {"str": str, "int": int, "float": float, "bool": bool}.get(str(t), list)
        for n, t in types.items()
    }
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            with open(config_file, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"config: cannot read {config_file}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config: {config_file} is not valid TOML: {e}") from None
        for key, value in data.items():
            if key not in kinds:
                raise ConfigError(f"{key}: unknown setting in {config_file}")
            values[key] = _coerce(key, kinds[key], value, str(config_file))
    for name, kind in kinds.items():
        var = env_name(cls, name)
        if var in env:
            values[name] = _coerce(name, kind, env[var], var)
    for name, value in (flags or {}).items():
        if value is not None and name in kinds:
            values[name] = _coerce(name, kinds[name], value, "the command line")
    return cls(**values).validate()
