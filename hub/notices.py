"""What a shop is told: webhook events read off the ledger's changes, in plain code.

Every decision of the :class:`~stocksync.hub.ledger.Ledger` returns its
:class:`~stocksync.hub.ledger.Changes` (the reservations as they now stand,
new conflicts, warehouses whose freshness moved). :class:`Notices` compares
each changed reservation with how it last stood and names what happened:

=========================  ====================================================
event                      when
=========================  ====================================================
reservation.committed      HELD → COMMITTED (allocated to warehouses)
reservation.shipped        units of a committed line shipped (a SHIP naming it)
reservation.reallocated    a committed line moved to other warehouses
reservation.at_risk        stock no longer covers it (it was not at risk before)
reservation.expired        HELD → RELEASED by its TTL
conflict.recorded          a new conflict (any kind)
warehouse.stale            the warehouse went stale
warehouse.offline          the warehouse went offline
=========================  ====================================================

The events come out in the order the ledger decided, and the hub writes them
to its outbox in the same transaction as the changes (see
:meth:`stocksync.hub.inventory.Inventory._write`), so an event exists if and
only if what it reports is durable. Nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from stocksync.hub.ledger import Changes, Reservation, State
from stocksync.hub.shop_json import conflict_json, reservation_json
from stocksync.hub.stock import Freshness
from stocksync.webhooks import WebhookSubscription

__all__ = ["Notices", "OutboxEvent", "event_body"]


@dataclass(frozen=True)
class OutboxEvent:
    """One webhook event, as stored in the outbox and sent to each subscription."""

    event_id: str
    """``evt_`` and a UUIDv7: what a receiver deduplicates on."""
    type: str
    reservation_id: str
    """The reservation it concerns, or ""."""
    body: str
    """The JSON sent, byte for byte the same on every attempt."""
    created_unix_ms: int
    subscriptions: tuple[str, ...]
    """Labels of the subscriptions that get it."""


def event_body(event_id: str, type_: str, unix_ms: int, data: dict[str, Any]) -> str:
    """The JSON document a receiver gets: ``{"id", "type", "created_unix_ms", "data"}``."""
    return json.dumps(
        {"id": event_id, "type": type_, "created_unix_ms": unix_ms, "data": data},
        separators=(",", ":"),
    )


@dataclass
class _Seen:
    """How a reservation stood when its last events were derived."""

    state: State
    at_risk: bool = False
    allocations: dict[str, dict[str, int]] = field(default_factory=dict)
    shipped: dict[str, dict[str, int]] = field(default_factory=dict)


def _seen(r: Reservation) -> _Seen:
    return _Seen(
        r.state,
        r.at_risk,
        {ln.sku: {w: q for w, q in ln.allocations.items() if q} for ln in r.lines},
        {ln.sku: {w: q for w, q in ln.shipped.items() if q} for ln in r.lines},
    )


class Notices:
    """Derives webhook events from the ledger's changes, for the subscriptions.

    Args:
        subscriptions: who wants which events.
        new_id: makes event ids (``evt_`` is prefixed).
    """

    def __init__(self, subscriptions: Sequence[WebhookSubscription], new_id: Iterator[str]) -> None:
        self.subscriptions = list(subscriptions)
        self._ids = new_id
        self._wanted: dict[str, tuple[str, ...]] = {}
        for s in self.subscriptions:
            for event in s.events:
                self._wanted[event] = (*self._wanted.get(event, ()), s.label)
        self._reservations: dict[str, _Seen] = {}
        """Active reservations as they last stood (terminal ones are dropped)."""
        self._last_conflict = 0
        self.listeners: list[Callable[[Sequence[OutboxEvent]], None]] = []
        """Called with events once they are durable (the delivery tasks wake)."""

    def restore(self, reservations: Iterable[Reservation], last_conflict_id: int) -> None:
        """Start from the durable state (at start-up, and after a failed write)."""
        self._reservations = {r.id: _seen(r) for r in reservations if r.active}
        self._last_conflict = last_conflict_id

    def durable(self, events: Sequence[OutboxEvent]) -> None:
        """``events`` are committed: tell the listeners."""
        for listener in list(self.listeners):
            listener(events)

    def event(
        self, type_: str, data: dict[str, Any], unix_ms: int, reservation_id: str = ""
    ) -> OutboxEvent | None:
        """An event of ``type_`` for every subscription that wants it (None if none does)."""
        subscriptions = self._wanted.get(type_, ())
        if not subscriptions:
            return None
        return self.event_for(type_, data, unix_ms, subscriptions, reservation_id)

    def event_for(
        self,
        type_: str,
        data: dict[str, Any],
        unix_ms: int,
        subscriptions: Sequence[str],
        reservation_id: str = "",
    ) -> OutboxEvent:
        """An event of ``type_`` for the named subscriptions (the test event)."""
        event_id = f"evt_{next(self._ids)}"
        return OutboxEvent(
            event_id,
            type_,
            reservation_id,
            event_body(event_id, type_, unix_ms, data),
            unix_ms,
            tuple(subscriptions),
        )

    def derive(self, changes: Changes, hub_now_ms: int, unix_ms: int) -> list[OutboxEvent]:
        """The events ``changes`` make, in order; updates what was seen."""
        out: list[OutboxEvent | None] = []
        for r in sorted(changes.reservations.values(), key=lambda r: r.seq):
            out += self._reservation(r, hub_now_ms, unix_ms)
        for cid in sorted(changes.conflicts):
            if cid > self._last_conflict:
                self._last_conflict = cid
                data = {"conflict": conflict_json(changes.conflicts[cid])}
                rid = changes.conflicts[cid].reservation_id
                out.append(self.event("conflict.recorded", data, unix_ms, rid))
        for warehouse, freshness in sorted(changes.freshness.items()):
            if freshness is not Freshness.FRESH:
                about: dict[str, Any] = {"warehouse": warehouse, "freshness": freshness.value}
                out.append(self.event(f"warehouse.{freshness.value}", about, unix_ms))
        return [e for e in out if e is not None]

    def _reservation(
        self, r: Reservation, hub_now_ms: int, unix_ms: int
    ) -> list[OutboxEvent | None]:
        before = self._reservations.get(r.id) or _Seen(State.HELD)
        now = _seen(r)
        if r.active:
            self._reservations[r.id] = now
        else:
            self._reservations.pop(r.id, None)
        types: list[tuple[str, dict[str, Any]]] = []
        if before.state is State.HELD and r.state is State.COMMITTED:
            warehouses = sorted({w for a in now.allocations.values() for w in a})
            types.append(("reservation.committed", {"warehouses": warehouses}))
        elif before.state is State.COMMITTED:
            shipped = [
                {"sku": sku, "warehouse": w, "qty": q - before.shipped.get(sku, {}).get(w, 0)}
                for sku, per in now.shipped.items()
                for w, q in sorted(per.items())
                if q > before.shipped.get(sku, {}).get(w, 0)
            ]
            if shipped:
                types.append(("reservation.shipped", {"shipped": shipped}))
            elif now.allocations != before.allocations:
                previous = {
                    sku: before.allocations.get(sku, {})
                    for sku in now.allocations
                    if now.allocations[sku] != before.allocations.get(sku, {})
                }
                types.append(("reservation.reallocated", {"previous_allocations": previous}))
        if r.at_risk and not before.at_risk:
            types.append(("reservation.at_risk", {}))
        if r.state is State.RELEASED and r.reason == "expired" and before.state is State.HELD:
            types.append(("reservation.expired", {}))
        if not types:
            return []
        shown = reservation_json(r, hub_now_ms)
        return [
            self.event(type_, {"reservation": shown, **extra}, unix_ms, r.id)
            for type_, extra in types
        ]
