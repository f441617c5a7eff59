"""Tests for worker.events: contract v1, its JSON Schema and the shipped examples."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from worker.errors import InvalidEvent, MalformedEvent, UnsupportedSchemaVersion
from worker.events import OrderEvent, parse_event

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO_ROOT / "config" / "event-contract.v1.schema.json").read_text("utf-8"))
EXAMPLES = sorted((REPO_ROOT / "config" / "examples").glob("*.json"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REPO_ROOT / "config" / "examples" / name).read_text("utf-8"))
    return data


def _paid() -> dict[str, Any]:
    return _example("order.paid.business-b2b.json")


def _raw(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def _invalid(data: dict[str, Any]) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse_event(_raw(data))
    return info.value


def _with_price(text: str, *, currency: str = "SAR") -> bytes:
    """A one-line order in ``currency`` whose unit price is the raw JSON text ``text``."""
    data = _paid()
    order = data["order"]
    order.update(currency=currency, shipping=[], order_discounts=[], totals={"total": "0"})
    order["lines"] = [{**order["lines"][1], "unit_price": "__PRICE__"}]
    return _raw(data).replace(b'"__PRICE__"', text.encode())


class TestExamples:
    def test_schema_is_valid_draft_2020_12(self) -> None:
        """The shipped JSON Schema is itself a valid 2020-12 schema."""
        jsonschema.Draft202012Validator.check_schema(SCHEMA)

    def test_all_five_examples_exist(self) -> None:
        """B2B, Arabic individual, cancellation, refund and zero-rated export examples ship."""
        names = {p.name for p in EXAMPLES}
        assert names == {
            "order.paid.business-b2b.json",
            "order.paid.individual-arabic.json",
            "order.paid.zero-rated-export.json",
            "order.cancelled.json",
            "order.refunded.json",
        }

    @pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
    def test_example_validates_against_json_schema(self, path: Path) -> None:
        """Every example passes the JSON Schema."""
        errors = list(VALIDATOR.iter_errors(json.loads(path.read_text("utf-8"))))
        assert errors == []

    @pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
    def test_example_parses(self, path: Path) -> None:
        """Every example passes parse_event with its order id as the key."""
        raw = path.read_bytes()
        event = parse_event(raw, key=json.loads(raw)["order_id"].encode())
        assert event.schema_version == "1"

    def test_arabic_names_survive(self) -> None:
        """UTF-8 Arabic names come through unchanged."""
        event = parse_event(
            (REPO_ROOT / "config/examples/order.paid.individual-arabic.json").read_bytes()
        )
        assert event.order is not None
        assert event.order.customer.name == "محمد عبدالله العتيبي"

    def test_parsed_values(self) -> None:
        """Money is Decimal at minor-unit precision and occurred_at is aware."""
        event = parse_event(_raw(_paid()))
        assert event.order is not None
        line = event.order.lines[1]
        assert (line.quantity, line.unit_price) == (Decimal("3.5"), Decimal("4.55"))
        assert event.order.totals.total == Decimal("941.79")
        assert event.occurred_at.utcoffset() is not None
        assert event.source.store_id == "store-1001"


class TestMalformed:
    def test_not_utf8(self) -> None:
        """Bytes that are not UTF-8 are malformed."""
        with pytest.raises(MalformedEvent, match="not UTF-8"):
            parse_event(b'\xff\xfe{"event_id": "x"}')

    def test_not_json(self) -> None:
        """Truncated JSON is malformed."""
        with pytest.raises(MalformedEvent, match="not valid JSON"):
            parse_event(_raw(_paid())[:-5])

    def test_duplicate_keys(self) -> None:
        """An object with a key twice is malformed rather than last-one-wins."""
        with pytest.raises(MalformedEvent, match="duplicate key"):
            parse_event(b'{"event_id": "a", "event_id": "b"}')

    def test_duplicate_key_is_named(self) -> None:
        """The message names the first key seen twice, also inside a nested object."""
        with pytest.raises(MalformedEvent, match="duplicate key 'y'"):
            parse_event(b'{"a": {"x": 1, "y": 2, "y": 3, "x": 4}}')

    def test_byte_order_mark(self) -> None:
        """A UTF-8 byte order mark is malformed, as json.loads has it."""
        with pytest.raises(MalformedEvent, match="Unexpected UTF-8 BOM"):
            parse_event(b"\xef\xbb\xbf" + _raw(_paid()))

    def test_too_large(self) -> None:
        """Records above max_bytes are refused before decoding."""
        with pytest.raises(MalformedEvent, match="limit 10"):
            parse_event(b"{}" * 10, max_bytes=10)

    def test_top_level_not_object(self) -> None:
        """A JSON array is valid JSON but not an event."""
        with pytest.raises(InvalidEvent, match="must be a JSON object"):
            parse_event(b"[1, 2]")


class TestSchemaVersion:
    def test_unknown_version(self) -> None:
        """schema_version "2" is unsupported, not invalid."""
        data = _paid()
        data["schema_version"] = "2"
        with pytest.raises(UnsupportedSchemaVersion) as info:
            parse_event(_raw(data))
        assert info.value.details["schema_version"] == "2"

    def test_unknown_version_with_other_shape(self) -> None:
        """A v2 event is unsupported even when its body would be invalid in v1."""
        with pytest.raises(UnsupportedSchemaVersion):
            parse_event(b'{"schema_version": "2", "whatever": true}')

    def test_integer_version_is_invalid(self) -> None:
        """The contract says the string "1": the number 1 is a contract violation."""
        data = _paid()
        data["schema_version"] = 1
        assert "schema_version" in _invalid(data).message

    def test_missing_version(self) -> None:
        """A missing schema_version is invalid."""
        data = _paid()
        del data["schema_version"]
        assert _invalid(data).message == "schema_version: Field required"


class TestInvalid:
    @pytest.mark.parametrize(
        ("mutate", "path"),
        [
            (lambda d: d["order"]["lines"][0].update(quantity="-1"), "order.lines[0].quantity"),
            (
                lambda d: d["order"]["lines"][1].update(unit_price="-4.55"),
                "order.lines[1].unit_price",
            ),
            (lambda d: d["order"]["lines"][0].update(quantity="0"), "order.lines[0].quantity"),
            (
                lambda d: d["order"]["shipping"][0].update(amount="-1.00"),
                "order.shipping[0].amount",
            ),
            (lambda d: d["order"].pop("customer"), "order.customer"),
            (lambda d: d["order"]["customer"].update(type="company"), "order.customer.type"),
            (
                lambda d: d["order"]["lines"][0]["tax"].update(category="X"),
                "order.lines[0].tax.category",
            ),
            (lambda d: d["order"]["lines"][0]["tax"].update(rate="0"), "order.lines[0].tax"),
            (lambda d: d["order"]["lines"][0].update(discount_amount="9999.00"), "order.lines[0]"),
            (lambda d: d["order"].update(currency="XXX"), "order"),
            (lambda d: d["order"].update(prices_include_tax="false"), "order.prices_include_tax"),
            (lambda d: d.update(occurred_at="2025-03-01T21:15:00"), "occurred_at"),
            # Valid RFC 3339, but Asia/Riyadh (+03:00) is past datetime's last day.
            (lambda d: d.update(occurred_at="9999-12-31T23:59:59Z"), "occurred_at"),
            (lambda d: d.update(occurred_at="0001-01-01T00:00:00+05:00"), "occurred_at"),
            (lambda d: d["source"].pop("store_id"), "source.store_id"),
            (lambda d: d.pop("order"), "event"),
            (lambda d: d["order"]["totals"].pop("total"), "order.totals.total"),
            (lambda d: d["order"].update(lines=[]), "order"),
        ],
    )
    def test_message_names_the_field(self, mutate: Any, path: str) -> None:
        """A contract violation is InvalidEvent whose message starts with the field path."""
        data = _paid()
        mutate(data)
        error = _invalid(data)
        assert error.message.startswith(f"{path}:"), error.message
        assert error.details["event_id"] == "evt-0001"

    @pytest.mark.parametrize("currency", [["SAR"], {"code": "SAR"}, 682, None])
    def test_currency_of_the_wrong_type_is_invalid_not_a_crash(self, currency: Any) -> None:
        """A list or object where the currency code belongs is a contract violation (it once
        raised a bare TypeError, which the pipeline would retry as an internal error)."""
        data = _paid()
        data["order"]["currency"] = currency
        assert _invalid(data).message.startswith("order.currency:")

    def test_message_never_contains_the_payload(self) -> None:
        """Names, emails and VAT numbers stay out of the message and details."""
        data = _paid()
        data["order"]["customer"]["email"] = "not an email"
        error = _invalid(data)
        text = error.message + repr(error.details)
        for secret in ("not an email", "Example Trading", "310122393500003", "buyer1@"):
            assert secret not in text

    def test_refunded_needs_refund(self) -> None:
        """order.refunded without refund is invalid."""
        data = _example("order.refunded.json")
        del data["refund"]
        assert "refund is required" in _invalid(data).message

    def test_refund_id_cancel_is_reserved(self) -> None:
        """A refund "cancel" would take the cancellation's credit note (<order>-CN-cancel)."""
        data = _example("order.refunded.json")
        for reserved in ("cancel", "Cancel", "CANCEL"):
            data["refund"]["refund_id"] = reserved
            assert _invalid(data).message.startswith("refund.refund_id:")
            assert not VALIDATOR.is_valid(data)
        data["refund"]["refund_id"] = "cancel-2"
        assert parse_event(_raw(data)).refund is not None
        assert VALIDATOR.is_valid(data)

    def test_refund_quantity_must_be_positive(self) -> None:
        """Refund quantities are positive numbers of units."""
        data = _example("order.refunded.json")
        data["refund"]["lines"][0]["quantity"] = "-1"
        assert _invalid(data).message.startswith("refund.lines[0].quantity:")

    def test_duplicate_line_ids(self) -> None:
        """Two lines with one line_id make refunds ambiguous and are invalid."""
        data = _paid()
        data["order"]["lines"][1]["line_id"] = "1"
        assert "appears twice" in _invalid(data).message

    def test_key_must_match_order_id(self) -> None:
        """The record key is the order id; a different key is invalid."""
        with pytest.raises(InvalidEvent, match="record key"):
            parse_event(_raw(_paid()), key=b"ORD-9999")

    def test_customer_needs_an_identifier(self) -> None:
        """A customer without VAT number, email and phone cannot be looked up."""
        data = _example("order.paid.individual-arabic.json")
        del data["order"]["customer"]["email"], data["order"]["customer"]["phone"]
        assert _invalid(data).message.startswith("order.customer:")


class TestNumbers:
    @pytest.mark.parametrize(
        ("text", "currency", "expected"),
        [
            ("4.55", "SAR", "4.55"),
            ("12.5", "SAR", "12.50"),
            ("100", "SAR", "100.00"),
            ("1e2", "SAR", "100.00"),
            ('"899.10000000000000"', "SAR", "899.10"),
            ("1.234", "KWD", "1.234"),
            ("1500", "JPY", "1500"),
        ],
    )
    def test_exact_numbers_accepted(self, text: str, currency: str, expected: str) -> None:
        """JSON numbers within the currency's minor units parse exactly, via Decimal text."""
        event = parse_event(_with_price(text, currency=currency))
        assert event.order is not None
        assert str(event.order.lines[0].unit_price) == expected

    @pytest.mark.parametrize(
        ("text", "currency", "problem"),
        [
            ("4.555", "SAR", "at most 2 decimals for SAR"),
            ("0.1234", "KWD", "at most 3 decimals for KWD"),
            ("100.5", "JPY", "at most 0 decimals for JPY"),
            ("NaN", "SAR", "finite"),
            ("Infinity", "SAR", "finite"),
            ("-Infinity", "SAR", "finite"),
            ("1e400", "SAR", "too large"),
            ("1e-400", "SAR", "at most 2 decimals"),
            ("true", "SAR", "not a boolean"),
            ('"1e2"', "SAR", "plain decimal string"),
            ('" 4.55"', "SAR", "plain decimal string"),
            ('"4,55"', "SAR", "plain decimal string"),
            ("null", "SAR", "decimal string or number"),
        ],
    )
    def test_inexact_numbers_rejected(self, text: str, currency: str, problem: str) -> None:
        """Extra precision, NaN, infinities, overflowing exponents and non-numbers are refused."""
        with pytest.raises(InvalidEvent) as info:
            parse_event(_with_price(text, currency=currency))
        message = info.value.message
        assert message.startswith("order.lines[0].unit_price:"), message
        assert problem in message
        assert "more)" not in message  # the one problem is the price

    def test_repeated_number_text_keeps_currency_and_digits(self) -> None:
        """Parsed number strings are memoised: the same text still follows its currency."""
        for currency, expected in [("SAR", "1.50"), ("KWD", "1.500"), ("SAR", "1.50")]:
            event = parse_event(_with_price('"1.5"', currency=currency))
            assert event.order is not None
            assert str(event.order.lines[0].unit_price) == expected
        for _ in range(2):
            with pytest.raises(InvalidEvent, match="at most 0 decimals for JPY"):
                parse_event(_with_price('"1.5"', currency="JPY"))

    def test_repeated_quantity_text_is_kept_as_written(self) -> None:
        """Equal quantities written differently keep their own digits."""
        data = _paid()
        for text in ("2.5", "2.500", "2.5"):
            data["order"]["lines"][1]["quantity"] = text
            event = parse_event(_raw(data))
            assert event.order is not None
            assert str(event.order.lines[1].quantity) == text

    def test_quantity_allows_six_decimals(self) -> None:
        """Quantities take up to 6 decimals; a 7th is refused."""
        data = _paid()
        data["order"]["lines"][1]["quantity"] = "0.000001"
        data["order"]["lines"][1]["unit_price"] = "0.00"
        assert parse_event(_raw(data)).order is not None
        data["order"]["lines"][1]["quantity"] = "0.0000001"
        assert "at most 6 decimals" in _invalid(data).message


class TestEventTypes:
    def test_other_type_skips_body(self) -> None:
        """order.shipped passes with its envelope only; a broken body is not inspected."""
        data = _paid()
        data["event_type"] = "order.shipped"
        data["order"] = {"garbage": True}
        event = parse_event(_raw(data))
        assert event.order is None
        assert not event.is_document_event

    def test_other_type_still_needs_envelope(self) -> None:
        """Skipped types still need a valid envelope."""
        data = {"event_type": "order.shipped", "schema_version": "1"}
        assert "Field required" in _invalid(data).message

    def test_cancelled_envelope_only(self) -> None:
        """order.cancelled needs no order; the reason is optional."""
        event = parse_event((REPO_ROOT / "config/examples/order.cancelled.json").read_bytes())
        assert event.order is None
        assert event.reason == "Customer changed their mind"

    def test_cancelled_order_is_validated_when_present(self) -> None:
        """An order carried by a cancellation must itself be valid."""
        data = _paid()
        data["event_type"] = "order.cancelled"
        data["order"]["lines"][0]["quantity"] = "-2"
        assert _invalid(data).message.startswith("order.lines[0].quantity:")

    def test_events_are_immutable(self) -> None:
        """Parsed events are frozen."""
        event = parse_event(_raw(_paid()))
        with pytest.raises(ValidationError):
            event.order_id = "other"  # type: ignore[misc]
        assert isinstance(event, OrderEvent)

    def test_unknown_fields_are_ignored(self) -> None:
        """Producers may add fields within v1."""
        data = _paid()
        data["new_field"] = {"x": 1}
        data["order"]["lines"][0]["weight"] = "1.2"
        assert parse_event(_raw(data)).order_id == "ORD-1001"


class TestSchemaAgreement:
    @pytest.mark.parametrize(
        "mutate",
        [
            lambda d: d["order"]["lines"][0].update(quantity="-1"),
            lambda d: d["order"]["lines"][0].update(unit_price=-1),
            lambda d: d.pop("order"),
            lambda d: d["order"]["lines"][0]["tax"].update(category="X"),
            lambda d: d["order"]["customer"].update(type="company"),
            lambda d: d.update(occurred_at="yesterday"),
            lambda d: d["order"].update(lines=[]),
        ],
    )
    def test_schema_and_parser_both_reject(self, mutate: Any) -> None:
        """The JSON Schema and parse_event agree on shape violations."""
        data = copy.deepcopy(_paid())
        mutate(data)
        assert list(VALIDATOR.iter_errors(json.loads(_raw(data))))
        with pytest.raises(InvalidEvent):
            parse_event(_raw(data))

    def test_schema_accepts_other_types_with_any_body(self) -> None:
        """Like the parser, the schema leaves bodies of skipped types alone."""
        data = _paid()
        data["event_type"] = "order.shipped"
        data["order"] = {"garbage": True}
        assert list(VALIDATOR.iter_errors(data)) == []
