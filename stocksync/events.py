"""Stock events and the rules a well-formed one obeys (DESIGN §4).

Both ends validate with these functions: the agent before it records, the hub
before it applies. Nothing here touches a database or the network.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import NamedTuple

from stocksync.errors import InvalidArgument

__all__ = [
    "MAX_EVENT_ID_LEN",
    "MAX_QUANTITY",
    "MAX_REASON_LEN",
    "SKU_PATTERN",
    "WELL_FORMED_SKUS",
    "EventRow",
    "InvalidEvent",
    "Kind",
    "NewEvent",
    "check_fields",
    "plain_delta",
    "sku_ok",
    "validate_new_event",
    "validate_sku",
    "validate_warehouse",
]

SKU_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,64}")
"""An opaque SKU: 1-64 characters of ``[A-Za-z0-9._:/-]``."""

WAREHOUSE_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,32}")
"""A warehouse id such as ``WH-LAX``."""

MAX_QUANTITY = 1_000_000_000
"""No single event moves more units than this; larger numbers are typos."""

MAX_REASON_LEN = 200
"""Longest ``reason`` text, in characters."""
MAX_RESERVATION_ID_LEN = 128
"""Longest reservation id a SHIP may settle, in characters."""
MAX_EVENT_ID_LEN = 64
"""Longest event id, in characters (agents send a 36-character UUIDv7)."""


class InvalidEvent(InvalidArgument, ValueError):
    """A malformed event or SKU, refused before anything is recorded or applied."""


class Kind(enum.IntEnum):
    """What physically happened. Values match ``stocksync.v1.EventKind``."""

    RECEIVE = 1
    SHIP = 2
    ADJUST = 3
    COUNT = 4

    @classmethod
    def parse(cls, text: str) -> Kind:
        """Parse a kind name such as ``receive`` (any case).

        Raises:
            InvalidEvent: for an unknown kind.
        """
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(k.name.lower() for k in cls)
            raise InvalidEvent(f"unknown kind {text!r}: expected one of {names}") from None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event as a producer (WMS, CLI, CSV import) asks to record it.

    The agent gives it a seq, an id, a time and — for a COUNT — its delta.
    """

    sku: str
    kind: Kind
    quantity: int
    reason: str = ""
    reservation_id: str = ""
    as_of_seq: int | None = None
    """COUNT only: the seq the count was taken at; ``None`` means now."""


class EventRow(NamedTuple):
    """One recorded event, in wire order: the agent's outbox row, the fields of
    a ``stocksync.v1.Event`` and, after the source id, the hub's log row.

    A NamedTuple is still a tuple, so rows go to ``executemany`` as they are.
    """

    seq: int
    event_id: str
    sku: str
    kind: int
    quantity: int
    delta: int
    """The change to on_hand (for a COUNT, rebased by the agent when recorded)."""
    reason: str
    reservation_id: str
    as_of_seq: int
    """COUNT only: the seq the count was taken at; 0 otherwise."""
    recorded_at_ms: int
    """The agent's wall clock, informational only."""
    folded_from_seq: int = 0
    """0 as recorded; for an event the agent compacted (DESIGN §6), the first
    seq it stands for: it covers ``folded_from_seq..seq``."""

    @property
    def first_seq(self) -> int:
        """The first seq this row stands for (its own seq unless folded)."""
        return self.folded_from_seq or self.seq


def validate_sku(sku: str) -> str:
    """Return ``sku`` if it is well-formed.

    Raises:
        InvalidEvent: naming what is wrong with it.
    """
    if not isinstance(sku, str) or not sku:
        raise InvalidEvent("sku is empty")
    if len(sku) > 64:
        raise InvalidEvent(f"sku is {len(sku)} characters long; at most 64 are allowed")
    if not SKU_PATTERN.fullmatch(sku):
        raise InvalidEvent(f"sku {sku!r} may only contain letters, digits and . _ : / -")
    return sku


WELL_FORMED_SKUS: set[str] = set()
"""SKUs already seen well-formed, so the hot paths (the hub reading a batch,
the agent recording a file) test a repeat with a set lookup, not the regex.
Hot loops test ``sku in WELL_FORMED_SKUS or sku_ok(sku)``."""
_WELL_FORMED_SKUS_MAX = 1 << 17


def sku_ok(sku: str) -> bool:
    """Whether ``sku`` is well-formed (remembered in :data:`WELL_FORMED_SKUS`)."""
    if SKU_PATTERN.fullmatch(sku) is None:
        return False
    if len(WELL_FORMED_SKUS) < _WELL_FORMED_SKUS_MAX:
        WELL_FORMED_SKUS.add(sku)
    return True


def validate_warehouse(warehouse: str) -> str:
    """Return ``warehouse`` if it is a well-formed id such as ``WH-LAX``.

    Raises:
        InvalidEvent: naming what is wrong with it.
    """
    if not WAREHOUSE_PATTERN.fullmatch(warehouse or ""):
        raise InvalidEvent(
            f"warehouse id {warehouse!r} must be 1-32 letters, digits, '.', '_' or '-'"
        )
    return warehouse


def validate_new_event(event: NewEvent) -> NewEvent:
    """Check a producer's event against the rules of DESIGN §4.

    Raises:
        InvalidEvent: naming the bad field.
    """
    if event.as_of_seq is not None and event.as_of_seq < 0:
        raise InvalidEvent(f"as_of_seq must be 0 or more, got {event.as_of_seq}")
    check_fields(
        event.sku,
        event.kind,
        event.quantity,
        event.reason,
        event.reservation_id,
        has_as_of=event.as_of_seq is not None,
    )
    return event


def check_fields(
    sku: str,
    kind: int,
    quantity: int,
    reason: str,
    reservation_id: str,
    has_as_of: bool,
) -> None:
    """The one set of field rules, used by the agent and again by the hub.

    RECEIVE and SHIP take n > 0, ADJUST n != 0, COUNT counted >= 0; only a
    SHIP settles a reservation; only a COUNT has an as-of seq.

    Raises:
        InvalidEvent: naming the bad field.
    """
    if not (isinstance(sku, str) and SKU_PATTERN.fullmatch(sku)):
        validate_sku(sku)  # raises with the precise reason
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise InvalidEvent(f"quantity {quantity!r} is not a whole number")
    if not -MAX_QUANTITY <= quantity <= MAX_QUANTITY:
        raise InvalidEvent(f"quantity {quantity} is out of range (at most {MAX_QUANTITY:,} units)")
    if kind == Kind.RECEIVE or kind == Kind.SHIP:
        if quantity <= 0:
            name = Kind(kind).name.lower()
            raise InvalidEvent(f"{name} quantity must be greater than 0, got {quantity}")
    elif kind == Kind.ADJUST:
        if quantity == 0:
            raise InvalidEvent("adjust quantity must not be 0")
    elif kind == Kind.COUNT:
        if quantity < 0:
            raise InvalidEvent(f"count must be 0 or more, got {quantity}")
    else:
        raise InvalidEvent(f"unknown event kind {kind!r}")
    if has_as_of and kind != Kind.COUNT:
        raise InvalidEvent("as_of_seq is only meaningful for a count")
    if reservation_id and kind != Kind.SHIP:
        raise InvalidEvent("a reservation id can only be settled by a ship")
    if len(reason) > MAX_REASON_LEN:
        raise InvalidEvent(f"reason is longer than {MAX_REASON_LEN} characters")
    if len(reservation_id) > MAX_RESERVATION_ID_LEN:
        raise InvalidEvent(f"reservation id is longer than {MAX_RESERVATION_ID_LEN} characters")


def plain_delta(kind: int, quantity: int) -> int:
    """The on_hand change of a RECEIVE, SHIP or ADJUST (a COUNT needs history)."""
    if kind == Kind.RECEIVE or kind == Kind.ADJUST:
        return quantity
    if kind == Kind.SHIP:
        return -quantity
    raise ValueError("a count's delta depends on the stock as of its as_of_seq")
