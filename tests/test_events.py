"""The rules a well-formed stock event obeys (DESIGN §4, stocksync/events.py)."""

from __future__ import annotations

import pytest

from stocksync.events import (
    MAX_QUANTITY,
    InvalidEvent,
    Kind,
    NewEvent,
    check_fields,
    plain_delta,
    validate_new_event,
    validate_sku,
    validate_warehouse,
)


def event(kind: Kind, quantity: int, **fields: object) -> NewEvent:
    """A NewEvent for SKU-1 with the given kind, quantity and extra fields."""
    return NewEvent(sku="SKU-1", kind=kind, quantity=quantity, **fields)  # type: ignore[arg-type]


# -- quantities per kind -----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "quantity"),
    [
        (Kind.RECEIVE, 1),
        (Kind.RECEIVE, MAX_QUANTITY),
        (Kind.SHIP, 1),
        (Kind.ADJUST, 1),
        (Kind.ADJUST, -1),
        (Kind.ADJUST, -MAX_QUANTITY),
        (Kind.COUNT, 0),
        (Kind.COUNT, 17),
    ],
)
def test_well_formed_quantities_are_accepted(kind: Kind, quantity: int) -> None:
    e = event(kind, quantity)
    assert validate_new_event(e) is e


@pytest.mark.parametrize(
    ("kind", "quantity", "message"),
    [
        (Kind.RECEIVE, 0, "receive quantity must be greater than 0, got 0"),
        (Kind.RECEIVE, -3, "receive quantity must be greater than 0, got -3"),
        (Kind.SHIP, 0, "ship quantity must be greater than 0, got 0"),
        (Kind.SHIP, -1, "ship quantity must be greater than 0, got -1"),
        (Kind.ADJUST, 0, "adjust quantity must not be 0"),
        (Kind.COUNT, -1, "count must be 0 or more, got -1"),
    ],
)
def test_bad_quantities_are_refused(kind: Kind, quantity: int, message: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_new_event(event(kind, quantity))
    assert str(info.value) == message


@pytest.mark.parametrize("quantity", [MAX_QUANTITY + 1, -MAX_QUANTITY - 1])
def test_quantity_beyond_the_limit_is_refused(quantity: int) -> None:
    with pytest.raises(InvalidEvent, match="out of range"):
        validate_new_event(event(Kind.ADJUST, quantity))


@pytest.mark.parametrize("quantity", [True, 1.0, "3"])
def test_quantity_must_be_a_whole_number(quantity: object) -> None:
    with pytest.raises(InvalidEvent, match="not a whole number"):
        validate_new_event(event(Kind.RECEIVE, quantity))  # type: ignore[arg-type]


def test_invalid_event_is_a_value_error() -> None:
    # Callers that only know ValueError still catch a malformed event.
    assert issubclass(InvalidEvent, ValueError)


# -- SKUs and warehouse ids ---------------------------------------------------


@pytest.mark.parametrize("sku", ["A", "SKU-1", "a.b_c:d/e-f", "9" * 64])
def test_well_formed_skus_are_accepted(sku: str) -> None:
    assert validate_sku(sku) == sku
    check_fields(sku, Kind.RECEIVE, 1, "", "", has_as_of=False)


def test_empty_sku_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="sku is empty"):
        validate_new_event(NewEvent(sku="", kind=Kind.RECEIVE, quantity=1))


def test_sku_of_65_characters_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="65 characters long; at most 64"):
        validate_new_event(NewEvent(sku="S" * 65, kind=Kind.RECEIVE, quantity=1))


@pytest.mark.parametrize(
    "sku", ["SKU 1", "SKU,1", "SKU\n", "\tSKU", "sku#1", "SKÜ-1", "SKU-١", "a;drop"]
)
def test_sku_with_bad_characters_is_refused(sku: str) -> None:
    with pytest.raises(InvalidEvent, match="may only contain"):
        validate_new_event(NewEvent(sku=sku, kind=Kind.RECEIVE, quantity=1))


@pytest.mark.parametrize("warehouse", ["WH-LAX", "wh_fra.2", "W" * 32])
def test_well_formed_warehouse_ids_are_accepted(warehouse: str) -> None:
    assert validate_warehouse(warehouse) == warehouse


@pytest.mark.parametrize("warehouse", ["", "W" * 33, "WH LAX", "WH/LAX", "WH:LAX"])
def test_bad_warehouse_ids_are_refused(warehouse: str) -> None:
    with pytest.raises(InvalidEvent, match="warehouse id"):
        validate_warehouse(warehouse)


# -- kinds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("receive", Kind.RECEIVE),
        ("SHIP", Kind.SHIP),
        (" Adjust ", Kind.ADJUST),
        ("count", Kind.COUNT),
    ],
)
def test_kind_parse_takes_any_case(text: str, kind: Kind) -> None:
    assert Kind.parse(text) is kind


@pytest.mark.parametrize("text", ["", "sell", "receives", "1", "__class__"])
def test_kind_parse_refuses_unknown_kinds_and_lists_the_known_ones(text: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        Kind.parse(text)
    assert f"unknown kind {text!r}" in str(info.value)
    assert "receive, ship, adjust, count" in str(info.value)


def test_kind_values_match_the_wire_enum() -> None:
    # Values are the stocksync.v1.EventKind numbers; renumbering breaks the wire.
    assert [(k.name, k.value) for k in Kind] == [
        ("RECEIVE", 1),
        ("SHIP", 2),
        ("ADJUST", 3),
        ("COUNT", 4),
    ]


@pytest.mark.parametrize("kind", [0, 5, -1])
def test_unknown_numeric_kind_is_refused(kind: int) -> None:
    with pytest.raises(InvalidEvent, match="unknown event kind"):
        check_fields("SKU-1", kind, 1, "", "", has_as_of=False)


# -- fields that belong to one kind only ---------------------------------------


def test_reservation_id_is_accepted_on_a_ship() -> None:
    validate_new_event(event(Kind.SHIP, 2, reservation_id="r-123"))


@pytest.mark.parametrize(
    ("kind", "quantity"), [(Kind.RECEIVE, 1), (Kind.ADJUST, -1), (Kind.COUNT, 3)]
)
def test_reservation_id_is_refused_off_a_ship(kind: Kind, quantity: int) -> None:
    with pytest.raises(InvalidEvent, match="reservation id can only be settled by a ship"):
        validate_new_event(event(kind, quantity, reservation_id="r-123"))


@pytest.mark.parametrize("as_of_seq", [0, 41])
def test_as_of_seq_is_accepted_on_a_count(as_of_seq: int) -> None:
    validate_new_event(event(Kind.COUNT, 5, as_of_seq=as_of_seq))


@pytest.mark.parametrize(
    ("kind", "quantity"), [(Kind.RECEIVE, 1), (Kind.SHIP, 1), (Kind.ADJUST, 2)]
)
def test_as_of_seq_is_refused_off_a_count(kind: Kind, quantity: int) -> None:
    with pytest.raises(InvalidEvent, match="as_of_seq is only meaningful for a count"):
        validate_new_event(event(kind, quantity, as_of_seq=3))


def test_negative_as_of_seq_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="as_of_seq must be 0 or more, got -1"):
        validate_new_event(event(Kind.COUNT, 5, as_of_seq=-1))


def test_long_reason_and_reservation_id_are_refused() -> None:
    validate_new_event(event(Kind.ADJUST, -1, reason="r" * 200))
    with pytest.raises(InvalidEvent, match="reason is longer than 200"):
        validate_new_event(event(Kind.ADJUST, -1, reason="r" * 201))
    validate_new_event(event(Kind.SHIP, 1, reservation_id="r" * 128))
    with pytest.raises(InvalidEvent, match="reservation id is longer than 128"):
        validate_new_event(event(Kind.SHIP, 1, reservation_id="r" * 129))


# -- deltas ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "quantity", "delta"),
    [
        (Kind.RECEIVE, 5, 5),
        (Kind.SHIP, 5, -5),
        (Kind.ADJUST, 3, 3),
        (Kind.ADJUST, -3, -3),
        (int(Kind.SHIP), 2, -2),  # the hub passes wire ints, not Kind members
    ],
)
def test_plain_delta(kind: int, quantity: int, delta: int) -> None:
    assert plain_delta(kind, quantity) == delta


def test_plain_delta_of_a_count_is_refused() -> None:
    # A count's delta depends on the books as of its as_of_seq.
    with pytest.raises(ValueError, match="count"):
        plain_delta(Kind.COUNT, 5)
