"""Tests for worker.demo_data: the demo stream is large, varied, ordered and labelled right."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from pydantic import SecretStr

from worker import errors
from worker.demo_data import DEMO_WEBHOOK_SECRETS, DemoRecord, generate_demo_events
from worker.events import parse_event
from worker.mapping import plan_document
from worker.platforms import PlatformConfig, decode_record
from worker.settings import PlatformSettings, Settings

ALL_RECORDS = generate_demo_events()
# Platform webhooks (Salla, Zid, Shopify) name their format in a header; the rest are v1.
PLATFORM = [r for r in ALL_RECORDS if "x-event-source" in dict(r.headers)]
RECORDS = [r for r in ALL_RECORDS if "x-event-source" not in dict(r.headers)]
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
        assert generate_demo_events() == ALL_RECORDS
        assert generate_demo_events(seed=8) != ALL_RECORDS

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


def _signed_config() -> PlatformConfig:
    secrets = {
        f"{name}_webhook_secret": SecretStr(v.decode()) for name, v in DEMO_WEBHOOK_SECRETS.items()
    }
    return PlatformConfig.from_settings(Settings(platforms=PlatformSettings(**secrets)))


class TestDemoPlatformRecords:
    def test_every_platform_and_outcome_present(self) -> None:
        """Salla, Zid and Shopify records are mixed in, with invoices, credit notes and skips."""
        sources = Counter(dict(r.headers)["x-event-source"] for r in PLATFORM)
        assert set(sources) == {b"salla", b"zid", b"shopify"}
        assert {"invoice", "credit_note", "skip"} <= {r.expected for r in PLATFORM}
        assert len(ALL_RECORDS) == len(RECORDS) + len(PLATFORM)

    def test_platform_records_reach_their_outcome(self) -> None:
        """Each record, decoded with signatures on and repeats skipped, maps to its outcome."""
        config = _signed_config()
        seen: set[str | None] = set()
        got = []
        for record in PLATFORM:
            decoded = decode_record(record.value, headers=record.headers, config=config)
            if decoded.delivery_id in seen:
                got.append("skip")
                continue
            seen.add(decoded.delivery_id)
            kinds = {plan.kind for e in decoded.events if (plan := plan_document(e)) is not None}
            assert len(kinds) <= 1
            got.append(kinds.pop() if kinds else "skip")
        assert got == [r.expected for r in PLATFORM]

    def test_one_shopify_delivery_is_repeated(self) -> None:
        """Exactly one Shopify webhook is delivered twice (same body, same event id)."""
        shopify = [r for r in PLATFORM if dict(r.headers)["x-event-source"] == b"shopify"]
        counts = Counter((r.value, dict(r.headers)["X-Shopify-Event-Id"]) for r in shopify)
        assert sorted(counts.values())[-2:] == [1, 2]

    def test_platform_keys_keep_order(self) -> None:
        """One order's webhooks share its key and never interleave with v1 ids."""
        v1_keys = {r.key for r in RECORDS}
        assert not v1_keys & {r.key for r in PLATFORM}
        positions: dict[bytes, list[int]] = {}
        for i, record in enumerate(ALL_RECORDS):
            positions.setdefault(record.key, []).append(i)
        for record in PLATFORM:
            assert positions[record.key] == sorted(positions[record.key])
