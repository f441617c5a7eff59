"""Tests for worker.platforms: Salla, Zid and Shopify webhooks as v1 events (pure, no I/O)."""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from tests.corpus import corpus_file
from worker.errors import (
    BadSignature,
    InvalidEvent,
    MalformedEvent,
    SettingsError,
    TotalMismatch,
    UnmappableOrder,
)
from worker.events import OrderEvent
from worker.mapping import MappingOptions, plan_document
from worker.platforms import PlatformConfig, decode_record, detect_format, header_map
from worker.platforms._common import lookup, timestamp
from worker.platforms.signatures import sign, verify_signature
from worker.settings import KafkaSettings, PlatformSettings, Settings

ROOT = Path(__file__).resolve().parents[1]


def _corpus_path(*parts: str) -> Path:
    return corpus_file("platforms", *parts)


EXAMPLES = ROOT / "config" / "examples" / "platforms"
CONFIG = PlatformConfig.from_settings(Settings())
CREATED_TRIGGER = MappingOptions(invoice_trigger="order.created")


def _decode(
    body: bytes | dict[str, Any], *headers: tuple[str, str], config: PlatformConfig = CONFIG
) -> tuple[OrderEvent, ...]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return decode_record(raw, headers=[(k, v.encode()) for k, v in headers], config=config).events


def _corpus(name: str) -> bytes:
    return _corpus_path(name).read_bytes()


def _total(event: OrderEvent) -> Decimal:
    options = CREATED_TRIGGER if event.event_type == "order.created" else None
    plan = plan_document(event, options=options)
    assert plan is not None
    assert plan.expected is not None
    return plan.expected.total_with_vat


def _salla(event: str, status: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(_corpus("salla/order.created.json"))
    body["event"] = event
    body["data"]["status"]["slug"] = status
    body["data"].update(data or {})
    return body


class TestSallaCorpus:
    def test_order_created_reconciles_196(self) -> None:
        """The Salla sample maps to 186 - 5 discount + 15 shipping = 196, its own total."""
        (event,) = _decode(_corpus("salla/order.created.json"), ("x-event-source", "salla"))
        assert event.event_type == "order.created"  # status under_review: not paid yet
        order = event.order
        assert order is not None
        assert (order.lines[0].unit_price, order.lines[0].discount_amount) == (186, 5)
        assert order.shipping[0].amount == 15
        assert not order.order_discounts
        assert _total(event) == Decimal("196.00") == order.totals.total

    def test_sample_envelope_fields(self) -> None:
        """Merchant, order id, JS-style created_at and the +966 mobile are read as such."""
        (event,) = _decode(_corpus("salla/order.created.json"), ("x-event-source", "salla"))
        assert (event.source.platform, event.source.store_id) == ("salla", "1305146709")
        assert event.order_id == "2116149737"
        assert event.occurred_at == datetime(2022, 6, 26, 9, 21, 48, tzinfo=UTC)
        assert event.order is not None
        customer = event.order.customer
        assert (customer.type, customer.phone) == ("individual", "+966500000001")
        assert customer.address.country_code == "SA"

    def test_untaxed_lines_use_the_configured_category(self) -> None:
        """The sample's 0 % tax becomes category O with VATEX-SA-OOS (the default)."""
        (event,) = _decode(_corpus("salla/order.created.json"), ("x-event-source", "salla"))
        assert event.order is not None
        tax = event.order.lines[0].tax
        assert (tax.category, tax.rate, tax.exemption_code) == ("O", 0, "VATEX-SA-OOS")

    def test_paid_status_gives_order_paid(self) -> None:
        """A status in salla_paid_statuses makes order.created also yield order.paid."""
        events = _decode(_salla("order.created", "completed"), ("x-event-source", "salla"))
        assert [e.event_type for e in events] == ["order.created", "order.paid"]
        assert _total(events[1]) == Decimal("196.00")

    def test_invoice_sample_figures_reconcile_with_vat(self) -> None:
        """The invoice.created figures as an order: 4 x 208.69 - 41.74 + 15 % = 911.97."""
        invoice = json.loads(_corpus("salla/invoice.created.json"))
        item = invoice["items"][0]
        body = _salla("order.status.updated", "in_progress")
        body["data"]["items"][0]["quantity"] = item["quantity"]
        body["data"]["items"][0]["amounts"].update(
            price_without_tax=item["price"],
            total_discount=item["discount"],
            tax={"percent": "15.00", "amount": item["tax"]["amount"]},
        )
        body["data"]["amounts"].update(
            shipping_cost=invoice["shipping_cost"],
            tax={"percent": "15.00", "amount": invoice["tax"]["amount"]},
            discounts=[{"discount": "41.74", "discounted_shipping": 0, "code": "X"}],
            total=invoice["total"],
        )
        (event,) = _decode(body, ("x-event-source", "salla"))
        assert event.event_type == "order.paid"
        assert _total(event) == Decimal("911.97")

    def test_invoice_events_yield_nothing(self) -> None:
        """invoice.created (Salla's own invoice) is not an order event: no v1 event."""
        body = {"event": "invoice.created", "merchant": 1, "created_at": "x", "data": {}}
        assert _decode(body, ("x-event-source", "salla")) == ()

    def test_unwrapped_invoice_sample_is_invalid(self) -> None:
        """The invoice sample as published (no envelope) is refused naming the event field."""
        with pytest.raises(InvalidEvent, match=r"^event:"):
            _decode(_corpus("salla/invoice.created.json"), ("x-event-source", "salla"))

    @pytest.mark.parametrize(
        ("event", "status", "reason"),
        [
            ("order.cancelled", "canceled", "Order cancelled"),
            ("order.status.updated", "canceled", "Order cancelled"),
            ("order.refunded", "restored", "Order refunded"),
            ("order.status.updated", "restored", "Order refunded"),
        ],
    )
    def test_cancel_and_refund_credit_the_whole_invoice(
        self, event: str, status: str, reason: str
    ) -> None:
        """Cancellations and refunds become order.cancelled without order: one mirrored note."""
        (v1,) = _decode(_salla(event, status), ("x-event-source", "salla"))
        assert (v1.event_type, v1.order, v1.reason) == ("order.cancelled", None, reason)

    def test_unpaid_update_yields_nothing(self) -> None:
        """An order.updated whose status is not paid produces no event."""
        assert _decode(_salla("order.updated", "under_review"), ("x-event-source", "salla")) == ()

    def test_vat_number_from_configured_field(self) -> None:
        """A VAT number at a configured path makes the buyer a business (standard invoice)."""
        body = _salla("order.created", "completed")
        body["data"]["customer"]["vat_number"] = "300000000000003"
        events = _decode(body, ("x-event-source", "salla"))
        assert events[0].order is not None
        customer = events[0].order.customer
        assert (customer.type, customer.vat_number) == ("business", "300000000000003")


class TestZidCorpus:
    def test_order_create_reconciles_899_10(self) -> None:
        """999 - 99.90 with 3625 shipping fully discounted = 899.10, Zid's order_total."""
        events = _decode(
            _corpus("zid/order.create.json"),
            ("x-event-source", "zid"),
            ("x-zid-event", "order.create"),
        )
        assert [e.event_type for e in events] == ["order.created", "order.paid"]
        order = events[1].order
        assert order is not None
        assert order.order_discounts[0].amount == Decimal("99.90")
        assert (order.shipping[0].amount, order.shipping[0].discount_amount) == (3625, 3625)
        assert _total(events[1]) == Decimal("899.10") == order.totals.total

    def test_naive_timestamps_are_utc(self) -> None:
        """updated_at 2023-09-25 12:50:09 is read as UTC (Zid's issue_date is Riyadh time)."""
        (event, _) = _decode(
            _corpus("zid/order.create.json"),
            ("x-event-source", "zid"),
            ("x-zid-event", "order.create"),
        )
        assert event.occurred_at.isoformat() == "2023-09-25T12:50:09+00:00"

    def test_status_update_without_event_name_is_status_driven(self) -> None:
        """Without an event name a paid order yields order.paid only."""
        events = _decode(_corpus("zid/order.create.json"), ("x-event-source", "zid"))
        assert [e.event_type for e in events] == ["order.paid"]

    @pytest.mark.parametrize(
        ("code", "reason"), [("cancelled", "Order cancelled"), ("refunded", "Order refunded")]
    )
    def test_cancel_and_refund(self, code: str, reason: str) -> None:
        """Status cancelled/refunded become one order.cancelled without order."""
        body = json.loads(_corpus("zid/order.create.json"))
        body["order_status"]["code"] = code
        (event,) = _decode(body, ("x-event-source", "zid"))
        assert (event.event_type, event.order, event.reason) == ("order.cancelled", None, reason)

    def test_unpaid_is_not_invoiced(self) -> None:
        """payment_status pending and status new: nothing to invoice."""
        body = json.loads(_corpus("zid/order.create.json"))
        body["payment_status"] = "pending"
        body["order_status"]["code"] = "new"
        assert _decode(body, ("x-event-source", "zid")) == ()

    def test_paid_statuses_are_configurable(self) -> None:
        """With zid_paid_statuses [preparing], a delivered-and-paid order is not paid."""
        settings = Settings(platforms=PlatformSettings(zid_paid_statuses=["preparing"]))
        config = PlatformConfig.from_settings(settings)
        events = _decode(_corpus("zid/order.create.json"), ("x-event-source", "zid"), config=config)
        assert events == ()


#: Shopify's fixtures are priced in USD; the default ledger (SAR) refuses them by currency.
_USD_SHOP = MappingOptions(currency="USD")


class TestShopifyCorpus:
    def test_orders_paid_tax_quirk_is_a_total_mismatch(self) -> None:
        """The fixture's 11.94 tax is 6 % of the undiscounted lines: mismatch, both values kept."""
        (event,) = _decode(_corpus("shopify/orders-paid.json"), ("X-Shopify-Topic", "orders/paid"))
        assert event.event_type == "order.paid"  # the topic means paid (status partially_refunded)
        order = event.order
        assert order is not None
        assert [line.discount_amount for line in order.lines] == [
            Decimal("3.34"),
            Decimal("3.33"),
            Decimal("3.33"),
        ]
        assert {line.tax.rate for line in order.lines} == {Decimal(6)}
        assert order.shipping == ()  # "Free Shipping" at 0.00
        with pytest.raises(TotalMismatch) as info:
            plan_document(event, options=_USD_SHOP)
        assert info.value.details["computed"] == "622.22"  # 587.00 + 6 % of 587.00
        assert info.value.details["declared"] == "598.94"

    def test_orders_paid_reconciles_with_the_published_tax(self) -> None:
        """Everything but the tax agrees: 587.00 net + the fixture's 11.94 = 598.94."""
        (event,) = _decode(_corpus("shopify/orders-paid.json"), ("X-Shopify-Topic", "orders/paid"))
        with pytest.raises(TotalMismatch) as info:
            plan_document(event, options=_USD_SHOP)
        net = sum((line.amount("USD") for line in event.order.lines), Decimal(0))  # type: ignore[union-attr]
        assert net == Decimal("587.00")
        assert net + Decimal("11.94") == Decimal(str(info.value.details["declared"]))

    def test_refund_needs_its_order(self) -> None:
        """The bare refunds/create body has no customer: unmappable_order, naming the fix."""
        with pytest.raises(UnmappableOrder, match="embed the order"):
            _decode(_corpus("shopify/refunds-create.json"), ("X-Shopify-Topic", "refunds/create"))

    def test_refund_with_embedded_order(self) -> None:
        """Refund 509562969 maps to its two lines; the order's tax quirk still dead-letters."""
        refund = json.loads(_corpus("shopify/refunds-create.json"))
        refund["order"] = json.loads(_corpus("shopify/orders-paid.json"))
        (event,) = _decode(refund, ("X-Shopify-Topic", "refunds/create"))
        assert event.event_type == "order.refunded"
        assert event.refund is not None
        assert [(r.line_id, r.quantity) for r in event.refund.lines] == [
            ("703073504", 1),
            ("466157049", 1),
        ]
        assert event.refund.reason == "it broke during shipping"
        with pytest.raises(TotalMismatch):
            plan_document(event, options=_USD_SHOP)

    def test_refund_credits_the_refund_subtotals(self) -> None:
        """With the order's total made consistent, the credit is 391.33 net, as Shopify's."""
        refund = json.loads(_corpus("shopify/refunds-create.json"))
        order = json.loads(_corpus("shopify/orders-paid.json"))
        order["total_price"] = "622.22"
        refund["order"] = order
        (event,) = _decode(refund, ("X-Shopify-Topic", "refunds/create"))
        plan = plan_document(event, options=_USD_SHOP)
        assert plan is not None
        assert plan.sent is not None
        subtotals = sum(Decimal(str(r["subtotal"])) for r in refund["refund_line_items"])
        assert plan.sent.taxable_amount == subtotals == Decimal("391.33")

    def test_cancelled_mirrors_the_invoice(self) -> None:
        """orders/cancelled becomes order.cancelled without order, the reason kept."""
        body = json.loads(_corpus("shopify/orders-paid.json"))
        body.update(cancelled_at="2024-04-03T10:00:00-05:00", cancel_reason="customer")
        (event,) = _decode(body, ("X-Shopify-Topic", "orders/cancelled"))
        assert (event.event_type, event.order) == ("order.cancelled", None)
        assert event.reason == "Order cancelled (customer)"

    def test_other_topics_yield_nothing(self) -> None:
        """orders/fulfilled and friends are not ours."""
        assert (
            _decode(_corpus("shopify/orders-paid.json"), ("X-Shopify-Topic", "orders/fulfilled"))
            == ()
        )

    def test_shop_domain_is_the_store(self) -> None:
        """X-Shopify-Shop-Domain names the store; X-Shopify-Triggered-At the event time."""
        (event,) = _decode(
            _corpus("shopify/orders-paid.json"),
            ("X-Shopify-Topic", "orders/paid"),
            ("X-Shopify-Shop-Domain", "example.myshopify.com"),
            ("X-Shopify-Triggered-At", "2024-04-02T13:59:11Z"),
        )
        assert event.source.store_id == "example.myshopify.com"
        assert event.occurred_at.isoformat() == "2024-04-02T13:59:11+00:00"


class TestProjectExamples:
    MANIFEST: list[dict[str, Any]] = json.loads((EXAMPLES / "records.json").read_text())

    @pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
    def test_example_reaches_its_outcome(self, entry: dict[str, Any]) -> None:
        """Each shipped example decodes and maps to the outcome records.json names."""
        events = _decode((EXAMPLES / entry["file"]).read_bytes(), *entry["headers"].items())
        kinds = {plan.kind for e in events if (plan := plan_document(e)) is not None}
        assert kinds == ({entry["expected"]} if entry["expected"] != "skip" else set())
        for event in events:
            if event.order is not None and event.event_type != "order.refunded":
                assert abs(_total(event) - event.order.totals.total) <= Decimal("0.01")

    def test_business_buyer_from_note_attribute(self) -> None:
        """The business example's VAT and building numbers come from note_attributes."""
        (event,) = _decode(
            (EXAMPLES / "shopify/orders-paid.business.json").read_bytes(),
            ("X-Shopify-Topic", "orders/paid"),
        )
        assert event.order is not None
        customer = event.order.customer
        assert (customer.type, customer.name) == ("business", "Red Sea Supplies")
        assert customer.address.building_number == "7421"
        plan = plan_document(event)
        assert plan is not None
        assert plan.invoice_kind == "standard"


class TestDetection:
    def test_configured_topic_wins(self) -> None:
        """A topic set to zid reads zid whatever the header says."""
        config = PlatformConfig(topic_formats={"zid-orders": "zid"})
        assert detect_format("zid-orders", {"x-event-source": "salla"}, config) == "zid"

    def test_header_then_sniffing_then_v1(self) -> None:
        """Unlisted or auto topics use x-event-source, then X-Shopify-Topic, then v1."""
        config = PlatformConfig(topic_formats={"mixed": "auto"})
        assert detect_format("mixed", {"x-event-source": "salla"}, config) == "salla"
        assert detect_format("other", {"x-shopify-topic": "orders/paid"}, config) == "shopify"
        assert detect_format("other", {}, config) == "v1"

    def test_unknown_header_value_is_invalid(self) -> None:
        """An unknown format name in the header is an invalid event."""
        with pytest.raises(InvalidEvent, match="x-event-source"):
            detect_format("t", {"x-event-source": "magento"}, CONFIG)

    def test_unknown_configured_format_refused_at_start(self) -> None:
        """kafka.topic_formats with an unknown format is refused by the settings model when
        they load, and by the decoders' own config if one is built without them."""
        with pytest.raises(ValidationError, match="topic_formats"):
            KafkaSettings(topic_formats={"orders": "woo"})  # type: ignore[dict-item]
        with pytest.raises(SettingsError, match="topic_formats"):
            PlatformConfig(topic_formats={"orders": "woo"})

    def test_headers_are_case_insensitive(self) -> None:
        """Header names are matched in lower case."""
        assert header_map([("X-Shopify-Topic", b"orders/paid")]) == {
            "x-shopify-topic": "orders/paid"
        }

    def test_v1_records_pass_through_parse_event(self) -> None:
        """A v1 record decodes to its one event, with no delivery id (documents dedupe it)."""
        raw = (ROOT / "config/examples/order.paid.business-b2b.json").read_bytes()
        order_id = json.loads(raw)["order_id"].encode()
        decoded = decode_record(raw, key=order_id, config=CONFIG)
        assert (decoded.format, decoded.delivery_id, len(decoded.events)) == ("v1", None, 1)


class TestDeliveryIds:
    def test_shopify_event_id_with_topic(self) -> None:
        """Shopify deliveries are identified by topic + X-Shopify-Event-Id."""
        decoded = decode_record(
            _corpus("shopify/orders-paid.json"),
            headers=[
                ("X-Shopify-Topic", b"orders/paid"),
                ("X-Shopify-Webhook-Id", b"w-1"),
                ("X-Shopify-Event-Id", b"e-1"),
            ],
            config=CONFIG,
        )
        assert decoded.delivery_id == "orders/paid:e-1"

    def test_webhook_id_when_no_event_id(self) -> None:
        """Without X-Shopify-Event-Id the webhook id identifies the delivery."""
        decoded = decode_record(
            _corpus("shopify/orders-paid.json"),
            headers=[("X-Shopify-Topic", b"orders/paid"), ("X-Shopify-Webhook-Id", b"w-1")],
            config=CONFIG,
        )
        assert decoded.delivery_id == "orders/paid:w-1"

    def test_body_digest_otherwise(self) -> None:
        """Salla and Zid repeats are recognised by the SHA-256 of the identical body."""
        raw = _corpus("zid/order.create.json")
        decoded = decode_record(raw, headers=[("x-event-source", b"zid")], config=CONFIG)
        assert decoded.delivery_id == "sha256:" + hashlib.sha256(raw).hexdigest()
        assert decoded.events[0].event_id == f"zid:{decoded.delivery_id}"

    def test_producer_delivery_header(self) -> None:
        """An x-delivery-id header set by the producer is used as is."""
        decoded = decode_record(
            _corpus("zid/order.create.json"),
            headers=[("x-event-source", b"zid"), ("x-delivery-id", b"d-42")],
            config=CONFIG,
        )
        assert decoded.delivery_id == "d-42"


class TestSignatures:
    SECRET = b"s3cret-for-tests"

    def _config(self) -> PlatformConfig:
        return PlatformConfig.from_settings(
            Settings(
                platforms=PlatformSettings(
                    shopify_webhook_secret=SecretStr(self.SECRET.decode()),
                    salla_webhook_secret=SecretStr(self.SECRET.decode()),
                )
            )
        )

    def test_shopify_base64_hmac(self) -> None:
        """X-Shopify-Hmac-Sha256 is base64 HMAC-SHA256 of the raw body."""
        raw = _corpus("shopify/orders-paid.json")
        expected = base64.b64encode(hmac.new(self.SECRET, raw, hashlib.sha256).digest()).decode()
        assert sign("shopify", raw, self.SECRET) == expected
        verify_signature("shopify", raw, {"x-shopify-hmac-sha256": expected}, secret=self.SECRET)

    def test_salla_hex_hmac(self) -> None:
        """X-Salla-Signature is hex HMAC-SHA256 of the raw body (sha256= prefix accepted)."""
        raw = _corpus("salla/order.created.json")
        expected = hmac.new(self.SECRET, raw, hashlib.sha256).hexdigest()
        assert sign("salla", raw, self.SECRET) == expected
        for value in (expected, expected.upper(), f"sha256={expected}"):
            verify_signature("salla", raw, {"x-salla-signature": value}, secret=self.SECRET)

    @pytest.mark.parametrize(
        "value", [None, "", "not base64!", base64.b64encode(b"x" * 32).decode()]
    )
    def test_shopify_bad_or_missing(self, value: str | None) -> None:
        """A missing, malformed or wrong signature is bad_signature once a secret is set."""
        raw = _corpus("shopify/orders-paid.json")
        headers = [("X-Shopify-Topic", b"orders/paid")]
        if value is not None:
            headers.append(("X-Shopify-Hmac-Sha256", value.encode()))
        with pytest.raises(BadSignature):
            decode_record(raw, headers=headers, config=self._config())

    def test_tampered_body_fails(self) -> None:
        """A body changed after signing fails verification (checked before parsing)."""
        raw = _corpus("salla/order.created.json")
        signature = sign("salla", raw, self.SECRET).encode()
        headers = [("x-event-source", b"salla"), ("X-Salla-Signature", signature)]
        decode_record(raw, headers=headers, config=self._config())
        with pytest.raises(BadSignature):
            decode_record(raw.replace(b"196", b"169"), headers=headers, config=self._config())

    def test_off_by_default(self) -> None:
        """Without secrets no signature is required."""
        assert _decode(_corpus("salla/order.created.json"), ("x-event-source", "salla"))

    def test_secret_never_in_messages_or_repr(self) -> None:
        """Neither the error text nor the config repr shows the secret."""
        config = self._config()
        assert self.SECRET.decode() not in repr(config)
        with pytest.raises(BadSignature) as info:
            decode_record(b"{}", headers=[("x-event-source", b"salla")], config=config)
        assert self.SECRET.decode() not in str(info.value) + repr(info.value.details)

    def test_secret_from_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """INVOICE_SYNC_PLATFORMS__SHOPIFY_WEBHOOK_SECRET_FILE loads the secret from a file."""
        path = tmp_path / "shopify-secret"
        path.write_text("from-a-file\n")
        monkeypatch.setenv("INVOICE_SYNC_PLATFORMS__SHOPIFY_WEBHOOK_SECRET_FILE", str(path))
        secret = Settings().platforms.shopify_webhook_secret
        assert secret is not None
        assert secret.get_secret_value() == "from-a-file"


class TestReaders:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("Sun Jun 26 2022 12:21:48 GMT+0300", "2022-06-26T12:21:48+03:00"),
            ("2024-03-24T10:30:00Z", "2024-03-24T10:30:00Z"),
            ("2024-04-02T08:59:11-05:00", "2024-04-02T08:59:11-05:00"),
            ("2023-09-14 08:33:06", "2023-09-14T08:33:06Z"),
            (
                {"date": "2022-06-26 12:21:45.000000", "timezone": "Asia/Riyadh"},
                "2022-06-26T12:21:45+03:00",
            ),
        ],
    )
    def test_timestamps(self, value: object, expected: str) -> None:
        """JS Date text, ISO 8601, naive UTC and PHP date objects become RFC 3339."""
        result = timestamp(value, "t")
        assert result.replace("+00:00", "Z") == expected

    def test_bad_timestamp(self) -> None:
        """Anything else is an invalid event naming the field."""
        with pytest.raises(InvalidEvent, match=r"^created_at:"):
            timestamp("yesterday", "created_at")

    def test_field_paths(self) -> None:
        """Dotted keys, [N] indexes and [Label] lookups in name/value lists."""
        data = {
            "note_attributes": [{"name": "VAT_Number", "value": "300000000000003"}],
            "shipments": [{"ship_to": {"building_number": "1004"}}],
        }
        assert lookup(data, "note_attributes[vat_number]") == "300000000000003"
        assert lookup(data, "shipments[0].ship_to.building_number") == "1004"
        assert lookup(data, "shipments[3].ship_to") is None
        assert lookup(data, "missing.path") is None

    def test_long_decimal_strings_are_exact(self) -> None:
        """Zid's "899.10000000000000" reads as 899.10; floats never appear."""
        body = json.loads(_corpus("zid/order.create.json"))
        body["order_total"] = "899.10000000000000"
        events = _decode(body, ("x-event-source", "zid"))
        assert events[0].order is not None
        assert events[0].order.totals.total == Decimal("899.10")

    def test_malformed_json(self) -> None:
        """A platform body that is not JSON is malformed_event."""
        with pytest.raises(MalformedEvent):
            _decode(b"{not json", ("x-event-source", "zid"))


class TestPurity:
    @pytest.mark.parametrize(
        "module", ["__init__", "_common", "salla", "zid", "shopify", "signatures"]
    )
    def test_no_io_imports(self, module: str) -> None:
        """Adapters import no asyncio, aiohttp, aiokafka or database driver, and use no float."""
        tree = ast.parse((ROOT / "worker" / "platforms" / f"{module}.py").read_text("utf-8"))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        forbidden = {"asyncio", "aiohttp", "aiokafka", "asyncpg", "aiosqlite", "sqlite3", "httpx"}
        assert not imported & forbidden
        assert "float" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}

    def test_importing_loads_no_io_library(self) -> None:
        """A fresh interpreter importing worker.platforms loads none of the I/O libraries."""
        code = (
            "import sys, worker.platforms; "
            "print(sorted(m for m in ('asyncio','aiohttp','aiokafka','asyncpg','aiosqlite')"
            " if m in sys.modules))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == "[]"
