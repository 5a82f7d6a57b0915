"""Lossless compaction of the offline buffer (DESIGN §6), decided in plain code.

When the hub is out of reach for long, the outbox grows by one row per event.
Past ``max_pending_events`` the agent folds the events it has never sent:
each SKU's run of events becomes one net ADJUST (the sum of their deltas), and
the folded rows together still cover every seq of the run, so the hub applies
them exactly as it would the originals and its watermark lands where it would
have (no gap). Nothing is dropped:

- every on_hand change survives in a net delta; a COUNT's delta was rebased
  over the moves after its ``as_of_seq`` when it was recorded (DESIGN §4), so
  a count inside a run folds like any other move and the net is exact;
- a SHIP that settles a reservation is kept whole (kind, quantity,
  reservation id), so the hub settles exactly what it would have;
- a SKU whose run is a single event keeps that event as it was recorded;
- a net too large for one event keeps its run unfolded.

Rows are keyed by the last seq they stand for: each output row covers the
seqs from one past the row before it up to its own seq, so rows of different
SKUs tile the run, in the order of each SKU's last event. A row's own
``folded_from_seq`` is the first seq of its range (0 for a row that stands
for just itself, as recorded).

Only never-sent rows are given here: the caller (``AgentStore.compact``)
keeps every row the hub may hold or have in flight out of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stocksync.events import MAX_QUANTITY, MAX_REASON_LEN, EventRow, Kind

__all__ = ["Fold", "fold"]


@dataclass
class _Group:
    sku: str
    rows: list[EventRow] = field(default_factory=list)
    net: int = 0


@dataclass(frozen=True, slots=True)
class Fold:
    """What :func:`fold` made of a run."""

    rows: list[EventRow]
    """The rows that replace the run, in seq order, tiling its seqs."""
    first_seq: int
    last_seq: int
    events_in: int
    """Rows given (each standing for one event, or for a fold before)."""


def fold(run: Sequence[EventRow], new_id: Callable[[], str]) -> Fold:
    """Fold ``run``, contiguous never-sent rows in seq order, per SKU.

    Args:
        run: the rows; each starts one past where the row before it ends.
        new_id: makes an event id for a folded row (which keeps its oldest
            event's time, so the backlog's age stays true).

    Raises:
        ValueError: if the rows are not one contiguous run.
    """
    if not run:
        raise ValueError("nothing to fold")
    first, last = run[0].first_seq, run[-1].seq
    expected = first
    for row in run:
        if row.first_seq != expected:
            raise ValueError(f"rows are not contiguous at seq {row.first_seq}")
        expected = row.seq + 1
    # (anchor seq, row) for everything that survives; the anchor is the last
    # seq of the events the row stands for, which orders the tiling.
    kept: list[tuple[int, EventRow]] = []
    groups: dict[str, _Group] = {}
    for row in run:
        if row.kind == Kind.SHIP and row.reservation_id:
            kept.append((row.seq, row))
            continue
        group = groups.get(row.sku)
        if group is None:
            group = groups[row.sku] = _Group(row.sku)
        group.rows.append(row)
        group.net += row.delta
    for group in groups.values():
        rows = group.rows
        if len(rows) == 1:
            kept.append((rows[0].seq, rows[0]))
        elif abs(group.net) > MAX_QUANTITY:
            kept.extend((r.seq, r) for r in rows)  # too big for one event: as it was
        elif group.net != 0:
            kept.append((rows[-1].seq, _net_row(group, new_id)))
        # A net of 0 needs no row: its seqs are covered by the rows around it.
    kept.sort(key=lambda pair: pair[0])
    if not kept:  # every move cancelled out: one zero row still covers the run
        zero = _Group(run[0].sku, list(run), 0)
        kept.append((last, _net_row(zero, new_id)))
    out: list[EventRow] = []
    start = first
    for i, (anchor, row) in enumerate(kept):
        end = last if i == len(kept) - 1 else anchor
        plain = start == end == row.seq and not row.folded_from_seq
        out.append(row._replace(seq=end, folded_from_seq=0 if plain else start))
        start = end + 1
    return Fold(out, first, last, len(run))


def _net_row(group: _Group, new_id: Callable[[], str]) -> EventRow:
    rows = group.rows
    events = sum(r.seq - r.first_seq + 1 if r.folded_from_seq else 1 for r in rows)
    reason = (
        f"compacted offline: net of {len(rows)} rows ({events} seqs) of {group.sku}, "
        f"seqs {rows[0].first_seq}..{rows[-1].seq}"
    )[:MAX_REASON_LEN]
    return EventRow(
        seq=rows[-1].seq,
        event_id=new_id(),
        sku=group.sku,
        kind=int(Kind.ADJUST),
        quantity=group.net,
        delta=group.net,
        reason=reason,
        reservation_id="",
        as_of_seq=0,
        recorded_at_ms=min(r.recorded_at_ms for r in rows),
        folded_from_seq=rows[0].first_seq,
    )
