"""Tests for worker.demo_data: the demo stream is large, varied, ordered and labelled right."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from worker import errors
from worker.demo_data import DemoRecord, generate_demo_events
from worker.events import parse_event
from worker.mapping import plan_document

RECORDS = generate_demo_events()
ERROR_BY_REASON: dict[str, type[errors.InvoiceSyncError]] = {
    cls.reason: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.PermanentEventError)
}
VALID = [r for r in RECORDS if not r.expected.startswith("dlq:")]
BROKEN = [r for r in RECORDS if r.expected.startswith("dlq:")]


def _outcome(record: DemoRecord) -> str:
    plan = plan_document(parse_event(record.value, key=record.key))
    return "skip" if plan is None else plan.kind


def _json(record: DemoRecord) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(record.value)
    return data


class TestDemoStream:
    def test_at_least_500_events(self) -> None:
        """The default stream has at least 500 records."""
        assert len(RECORDS) >= 500

    def test_deterministic(self) -> None:
        """The same seed gives the same bytes; another seed gives another stream."""
        assert generate_demo_events() == RECORDS
        assert generate_demo_events(seed=8) != RECORDS

    def test_every_outcome_present(self) -> None:
        """Invoices, credit notes, skips and each DLQ reason all occur."""
        counts = Counter(r.expected for r in RECORDS)
        assert {"invoice", "credit_note", "skip"} <= set(counts)
        assert {
            "dlq:malformed_event",
            "dlq:invalid_event",
            "dlq:unsupported_schema_version",
            "dlq:total_mismatch",
            "dlq:invalid_buyer_vat",
            "dlq:missing_buyer_id",
            "dlq:missing_exemption_reason",
        } <= set(counts)

    def test_valid_records_reach_their_outcome(self) -> None:
        """Every valid record parses and maps to exactly its expected outcome."""
        mismatches = [(r.key, r.expected, _outcome(r)) for r in VALID if _outcome(r) != r.expected]
        assert mismatches == []

    @pytest.mark.parametrize("record", BROKEN, ids=[r.key.decode() for r in BROKEN])
    def test_broken_record_raises_its_error(self, record: DemoRecord) -> None:
        """Every broken record raises the error class whose reason it names."""
        expected = ERROR_BY_REASON[record.expected.removeprefix("dlq:")]
        with pytest.raises(expected) as info:
            _outcome(record)
        assert type(info.value) is expected

    def test_keys_and_order(self) -> None:
        """Each order's events share its key, arrive in time order, paid before credit notes."""
        seen: dict[bytes, list[dict[str, Any]]] = {}
        for record in VALID:
            data = _json(record)
            assert record.key == data["order_id"].encode()
            seen.setdefault(record.key, []).append(data)
        for events in seen.values():
            times = [e["occurred_at"] for e in events]
            assert times == sorted(times)
            types = [e["event_type"] for e in events]
            for credit in ("order.cancelled", "order.refunded"):
                if credit in types:
                    assert types.index("order.paid") < types.index(credit)

    def test_headers(self) -> None:
        """Every record has a JSON content type and its event type in the headers."""
        for record in VALID:
            headers = dict(record.headers)
            assert headers["content-type"] == b"application/json"
            assert headers["event-type"] == _json(record)["event_type"].encode()

    def test_variety(self) -> None:
        """The stream covers Arabic names, businesses, exports, discounts and partial refunds."""
        orders = [_json(r)["order"] for r in VALID if _json(r)["event_type"] == "order.paid"]
        customers = [o["customer"] for o in orders]
        assert any(any("\u0600" <= ch <= "\u06ff" for ch in c["name"]) for c in customers)
        assert any(c["type"] == "individual" for c in customers)
        assert any(c.get("vat_number", "").startswith("3") for c in customers)
        assert any(
            line["tax"].get("exemption_code") == "VATEX-SA-32"
            and o["customer"]["address"]["country_code"] != "SA"
            for o in orders
            for line in o["lines"]
        )
        assert any(o["order_discounts"] for o in orders)
        assert any(line["discount_amount"] != "0.00" for o in orders for line in o["lines"])
        assert any(s["discount_amount"] != "0.00" for o in orders for s in o["shipping"])
        assert any(o["prices_include_tax"] for o in orders)
        refunds = [_json(r) for r in VALID if _json(r)["event_type"] == "order.refunded"]
        assert refunds
        assert any(r["refund"].get("shipping_amount") for r in refunds)
