"""Webhook subscriptions as configured, the events a shop can subscribe to,
and the signature every delivery carries.

A subscription (``[[webhooks]]`` in the hub's TOML) names a URL, the events
it wants and a shared secret. Each delivery is a POST of one JSON event with
the header ``Stocksync-Signature: t=<unix seconds>,v1=<hex>``, where the hex
is HMAC-SHA256 with the secret over ``"<t>.<body>"`` — Stripe's scheme: the
receiver recomputes it over the raw body, compares in constant time, and
refuses a ``t`` too far from its own clock (a replayed old request).

Plain code, no I/O: the hub signs with :func:`sign`; a Python receiver may
use :func:`verify` (README "Integrating a shop" shows the same check in a
dozen lines without stocksync installed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "EVENT_TYPES",
    "SIGNATURE_HEADER",
    "TEST_EVENT",
    "WebhookSubscription",
    "parse_subscriptions",
    "sign",
    "verify",
]

EVENT_TYPES = (
    "reservation.committed",
    "reservation.shipped",
    "reservation.at_risk",
    "reservation.reallocated",
    "reservation.expired",
    "conflict.recorded",
    "warehouse.stale",
    "warehouse.offline",
)
"""What a subscription may ask for (README "Integrating a shop" describes each)."""

TEST_EVENT = "webhook.test"
"""Sent by ``stocksync-hub webhooks test`` to whichever subscriptions it names."""

SIGNATURE_HEADER = "Stocksync-Signature"

MIN_SECRET_LEN = 16
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class WebhookSubscription:
    """Where to POST which events, and the secret that signs them."""

    url: str
    """http:// or https:// URL of the shop's receiver."""
    events: tuple[str, ...]
    """Event types (of :data:`EVENT_TYPES`) to send there."""
    secret: str
    """Shared HMAC key, at least 16 characters."""
    name: str = ""
    """What logs, metrics and ``webhooks list`` call it (default: its URL)."""

    @property
    def label(self) -> str:
        """The subscription's name, or its URL when it has none."""
        return self.name or self.url

    def validate(self, where: str) -> WebhookSubscription:
        """Check every field; returns self.

        Raises:
            ValueError: naming ``where`` and the bad field.
        """
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{where}.url: expected an http:// or https:// URL, got {self.url!r}")
        if not self.events:
            raise ValueError(f"{where}.events: name at least one of {', '.join(EVENT_TYPES)}")
        for event in self.events:
            if event not in EVENT_TYPES:
                raise ValueError(
                    f"{where}.events: unknown event {event!r}; use {', '.join(EVENT_TYPES)}"
                )
        if len(self.secret) < MIN_SECRET_LEN:
            raise ValueError(f"{where}.secret: must be at least {MIN_SECRET_LEN} characters")
        if self.name and not _NAME.fullmatch(self.name):
            raise ValueError(f"{where}.name: 1-64 letters, digits, '.', '_' or '-'")
        return self


def _subscription(item: Any, where: str) -> WebhookSubscription:
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: expected a table with url, events and secret")
    unknown = sorted(set(item) - {"url", "events", "secret", "name"})
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; use url, events, secret, name")
    for key in ("url", "secret", "name"):
        if not isinstance(item.get(key, ""), str):
            raise ValueError(f"{where}.{key}: expected a string")
    events = item.get("events", [])
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise ValueError(f"{where}.events: expected a list of event names")
    return WebhookSubscription(
        url=item.get("url", ""),
        events=tuple(dict.fromkeys(events)),
        secret=item.get("secret", ""),
        name=item.get("name", ""),
    ).validate(where)


def parse_subscriptions(value: Any) -> list[WebhookSubscription]:
    """Subscriptions from TOML's array of tables (or the same as a JSON string,
    as the environment gives it).

    Raises:
        ValueError: naming the entry and field that is wrong.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as e:
            raise ValueError(f"not a JSON list of subscriptions: {e}") from None
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError("expected a list of subscriptions ([[webhooks]] tables)")
    subscriptions = [_subscription(item, f"webhooks[{i}]") for i, item in enumerate(value)]
    labels = [s.label for s in subscriptions]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise ValueError(f"webhooks[{i}]: a second subscription called {label!r}; name it")
    return subscriptions


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The :data:`SIGNATURE_HEADER` value for ``body`` sent at ``timestamp``
    (unix seconds): ``t=<timestamp>,v1=<hex HMAC-SHA256 of "t.body">``."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, now: int, tolerance_s: int = 300) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` of ``now``.

    Any ``v1`` entry may match (the header may carry several while a secret
    is being rotated); comparison is in constant time.
    """
    fields = [part.partition("=") for part in header.split(",")]
    stamps = [value for key, _, value in fields if key.strip() == "t"]
    macs = [value.strip() for key, _, value in fields if key.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].strip().isdigit() or not macs:
        return False
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, mac) for mac in macs)
