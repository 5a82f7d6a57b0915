"""How both daemons log: one line per record on stderr, as text or JSON.

Text (the default) is for people::

    2026-11-27 01:02:03,456 WARNING stocksync.agent [WH-LAX]: link lost: ...

``--log-format json`` (``log_format = "json"``) is for shipping to a log
store: one JSON object per line with ``ts`` (UTC, ISO 8601), ``level``,
``logger``, ``message`` and, when the line is about a warehouse,
``warehouse`` (plus ``exception`` with the traceback when there is one).

A line is about a warehouse when it was logged with
``extra={"warehouse": ...}`` (:func:`about`), or, in an agent, always: the
agent speaks for one warehouse, named once at start by
:func:`setup_logging`'s ``warehouse``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["FORMATS", "JsonFormatter", "TextFormatter", "about", "setup_logging"]

FORMATS = ("text", "json")


def about(warehouse: str) -> dict[str, Any]:
    """``extra=`` for a log call about ``warehouse``: ``log.info(..., extra=about(w))``."""
    return {"warehouse": warehouse}


class _Warehouse(logging.Filter):
    """Names the agent's warehouse on every record that names none."""

    def __init__(self, warehouse: str) -> None:
        super().__init__()
        self.warehouse = warehouse

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "warehouse", ""):
            record.warehouse = self.warehouse
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [warehouse]: message`` (the brackets only when known
    and the message does not begin with the warehouse already)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(where)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        warehouse = getattr(record, "warehouse", "")
        # Named once: not again when the message already starts with it.
        named = not warehouse or record.getMessage().startswith(warehouse)
        record.where = "" if named else f" [{warehouse}]"
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message[, warehouse][, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        warehouse = getattr(record, "warehouse", "")
        if warehouse:
            line["warehouse"] = warehouse
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup_logging(verbose: bool = False, fmt: str = "text", warehouse: str = "") -> None:
    """Send every log record to stderr, one line each.

    Args:
        verbose: debug records too.
        fmt: ``text`` or ``json``.
        warehouse: the warehouse every line is about (an agent's), if any.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if warehouse:
        handler.addFilter(_Warehouse(warehouse))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
