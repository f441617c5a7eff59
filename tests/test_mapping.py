"""Tests for worker.mapping: document plans, tax rules, reconciliation and credit notes."""

from __future__ import annotations

import ast
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from worker.errors import (
    InvalidBuyerVat,
    MissingBuyerId,
    MissingExemptionReason,
    SettingsError,
    TotalMismatch,
    UnmappableOrder,
)
from worker.events import OrderEvent, parse_event
from worker.mapping import (
    CustomerLookup,
    DocumentPlan,
    LedgerKey,
    MappingOptions,
    credit_excess,
    document_kind,
    idempotency_key,
    is_valid_saudi_vat,
    ledger_key,
    plan_document,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "config" / "examples"
S15 = {"category": "S", "rate": "15"}


def _data(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text("utf-8"))
    return data


def _event(data: dict[str, Any]) -> OrderEvent:
    return parse_event(json.dumps(data, ensure_ascii=False).encode("utf-8"))


def _plan(data: dict[str, Any], options: MappingOptions | None = None) -> DocumentPlan:
    plan = plan_document(_event(data), options=options)
    assert plan is not None
    return plan


def _b2b() -> dict[str, Any]:
    return _data("order.paid.business-b2b.json")


def _simple(
    lines: list[tuple[str, str]], *, inclusive: bool, discount: str | None, total: str
) -> dict[str, Any]:
    """A one-customer order with (quantity, unit_price) S-15 lines and one order discount."""
    data = _data("order.paid.individual-arabic.json")
    order = data["order"]
    order["prices_include_tax"] = inclusive
    order["lines"] = [
        {"line_id": str(i), "sku": f"SKU-{i}", "name": f"Item {i}", "quantity": q,
         "unit_price": p, "tax": S15}
        for i, (q, p) in enumerate(lines, 1)
    ]  # fmt: skip
    order["shipping"] = []
    order["order_discounts"] = [{"amount": discount}] if discount else []
    order["totals"] = {"total": total}
    return data


class TestOptions:
    def test_defaults(self) -> None:
        """Defaults: order.paid, SHIPPING, Approved, Asia/Riyadh, tolerance 0.05, create SKUs."""
        options = MappingOptions()
        assert options.invoice_trigger == "order.paid"
        assert options.shipping_sku == "SHIPPING"
        assert options.status == "Approved"
        assert options.timezone == "Asia/Riyadh"
        assert options.currency == "SAR"
        assert options.total_tolerance == Decimal("0.05")
        assert options.create_missing_products is True

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"timezone": "Mars/Olympus"},
            {"total_tolerance": Decimal("-0.01")},
            {"due_days": -1},
            {"invoice_trigger": "order.shipped"},
            {"reference_template": "{store_id}"},
            {"reference_template": "{order_id}-{branch}"},
            {"reference_template": "{order_id:>12}"},
            {"reference_template": "{}{order_id}"},
            {"reference_template": "{order_id"},
        ],
    )
    def test_bad_options_raise_settings_error(self, kwargs: dict[str, Any]) -> None:
        """Unknown zones, triggers without an order, negative tolerance or due days: refused."""
        with pytest.raises(SettingsError):
            MappingOptions(**kwargs)


class TestReferences:
    def test_default_reference_is_the_order_id(self) -> None:
        assert MappingOptions().reference_template == "{order_id}"
        assert _plan(_b2b()).reference == "ORD-1001"

    def test_template_with_store_reaches_every_document(self) -> None:
        """The invoice takes the template; its credit notes extend it, and find it by it."""
        options = MappingOptions(reference_template="{store_id}/{order_id}")
        invoice = _plan(_b2b(), options)
        assert (invoice.reference, invoice.invoice_reference) == (
            "store-1001/ORD-1001",
            "store-1001/ORD-1001",
        )
        refund = _plan(_data("order.refunded.json"), options)
        assert refund.reference == "store-1001/ORD-1001-CN-RF-77"
        assert refund.invoice_reference == "store-1001/ORD-1001"
        cancel = _plan(_data("order.cancelled.json"), options)
        assert cancel.reference == "store-1001/ORD-1002-CN-cancel"
        # The ledger key does not change with the reference: it holds the store already.
        assert invoice.ledger_key == _plan(_b2b()).ledger_key


class TestReasons:
    def test_long_reason_is_cut_to_the_api_limit(self) -> None:
        """A 400-character cancellation reason (the contract allows 500) fits the API's 255."""
        data = _data("order.cancelled.json")
        data["reason"] = "\u0633" * 400  # Arabic letters: characters, not bytes, count
        plan = _plan(data)
        assert plan.reason is not None
        assert len(plan.reason) == 255
        assert plan.reason == "\u0633" * 254 + "\u2026"

    def test_reason_at_the_limit_is_kept_whole(self) -> None:
        data = _data("order.refunded.json")
        data["refund"]["reason"] = "r" * 255
        assert _plan(data).reason == "r" * 255


class TestLedgerKey:
    def test_invoice_key(self) -> None:
        """A paid order keys the invoice by store and order, without refund id."""
        event = _event(_b2b())
        assert ledger_key(event) == LedgerKey("store-1001", "invoice", "ORD-1001", None)

    def test_refund_and_cancel_keys(self) -> None:
        """Refunds key by refund id; a cancellation's credit note has refund_id None."""
        refund = _event(_data("order.refunded.json"))
        cancel = _event(_data("order.cancelled.json"))
        assert ledger_key(refund) == LedgerKey("store-1001", "credit_note", "ORD-1001", "RF-77")
        assert ledger_key(cancel) == LedgerKey("store-1001", "credit_note", "ORD-1002", None)

    def test_idempotency_key_is_deterministic(self) -> None:
        """The same key always hashes the same; different kinds hash differently."""
        key = LedgerKey("store-1001", "invoice", "ORD-1001", None)
        value = idempotency_key(key)
        assert value == idempotency_key(LedgerKey("store-1001", "invoice", "ORD-1001", None))
        assert value.startswith("isync-")
        assert len(value) == len("isync-") + 64
        assert value != idempotency_key(key._replace(kind="credit_note"))

    def test_skipped_types_have_no_document(self) -> None:
        """order.created and order.shipped map to nothing; ledger_key refuses them."""
        data = _b2b()
        data["event_type"] = "order.created"
        event = _event(data)
        assert document_kind(event) is None
        assert plan_document(event) is None
        with pytest.raises(ValueError, match="no document"):
            ledger_key(event)

    def test_trigger_is_configurable(self) -> None:
        """With invoice_trigger order.created, order.created invoices and order.paid skips."""
        options = MappingOptions(invoice_trigger="order.created")
        data = _b2b()
        assert plan_document(_event(data), options=options) is None
        data["event_type"] = "order.created"
        assert document_kind(_event(data), options=options) == "invoice"


class TestInvoicePlan:
    def test_b2b_invoice(self) -> None:
        """The B2B example: standard invoice ORD-1001, total 941.79, order discount spread."""
        plan = _plan(_b2b())
        assert (plan.kind, plan.reference, plan.invoice_kind) == ("invoice", "ORD-1001", "standard")
        assert plan.status == "Approved"
        assert plan.expected is not None
        assert plan.sent is not None
        assert plan.expected.total_with_vat == plan.sent.total_with_vat == Decimal("941.79")
        assert plan.expected.document_vat == Decimal("122.84")
        assert plan.declared_total == Decimal("941.79")
        # 10.00 over 793.02 and 15.93: 9.80 and 0.20 (largest remainder gets the odd cent).
        assert [(x.product_sku, x.discount) for x in plan.lines] == [
            ("MUG-01", Decimal("51.54")),
            ("TEA-250", Decimal("0.20")),
            ("SHIPPING", Decimal("5.00")),
        ]

    def test_issue_date_in_riyadh(self) -> None:
        """21:15Z on 1 March is 00:15 on 2 March in Riyadh; due date = issue + due_days."""
        plan = _plan(_b2b(), MappingOptions(due_days=30))
        assert plan.issue_date == date(2025, 3, 2)
        assert plan.due_date == date(2025, 4, 1)
        utc = _plan(_b2b(), MappingOptions(timezone="UTC"))
        assert utc.issue_date == date(2025, 3, 1)

    def test_payload(self) -> None:
        """The invoice body carries ids, reference, dates, status, inventory and line items."""
        plan = _plan(_b2b(), MappingOptions(status="Draft", inventory_id=3))
        body = plan.payload(contact_id=42, product_ids={"MUG-01": 1, "TEA-250": 2, "SHIPPING": 9})
        invoice = body["invoice"]
        assert isinstance(invoice, dict)
        assert invoice["contact_id"] == 42
        assert invoice["reference"] == "ORD-1001"
        assert (invoice["issue_date"], invoice["due_date"]) == ("2025-03-02", "2025-03-02")
        assert (invoice["status"], invoice["inventory_id"]) == ("Draft", 3)
        assert invoice["line_items"][0] == {
            "product_id": 1,
            "description": "Ceramic mug",
            "quantity": "4",
            "unit_price": "208.69",
            "discount": "51.54",
            "discount_type": "amount",
            "tax_percent": "15",
            "is_inclusive": False,
            "tax_category": "S",
        }
        assert invoice["line_items"][2]["product_id"] == 9
        json.dumps(body)  # JSON-ready: strings, never floats or Decimals

    def test_products(self) -> None:
        """Each SKU once, and shipping as a Service product on the configured SKU."""
        plan = _plan(_b2b(), MappingOptions(shipping_sku="SHIP-SVC"))
        payloads = [p.payload()["product"] for p in plan.products]
        assert payloads == [
            {"sku": "MUG-01", "name": "Ceramic mug", "type": "Product",
             "selling_price": "208.69", "tax_percent": "15"},
            {"sku": "TEA-250", "name": "Tea 250 g", "type": "Product",
             "selling_price": "4.55", "tax_percent": "15"},
            {"sku": "SHIP-SVC", "name": "Shipping", "type": "Service",
             "selling_price": "25.00", "tax_percent": "15"},
        ]  # fmt: skip
        assert plan.lines[2].product_sku == "SHIP-SVC"

    def test_business_contact(self) -> None:
        """A business is looked up by VAT number, then email, then phone; created in full."""
        plan = _plan(_b2b())
        assert plan.customer is not None
        assert plan.customer.lookups == (
            CustomerLookup("tax_number", "310122393500003"),
            CustomerLookup("email", "buyer1@example.com"),
            CustomerLookup("phone_number", "+966500000001"),
        )
        assert plan.customer.payload() == {
            "contact": {
                "name": "Example Trading Co.",
                "organization": "Example Trading Co.",
                "email": "buyer1@example.com",
                "phone_number": "+966500000001",
                "tax_number": "310122393500003",
                "billing_address": {
                    "street": "Example Street",
                    "building_number": "1234",
                    "additional_number": "5678",
                    "district": "Al Olaya",
                    "city": "Riyadh",
                    "postal_code": "12345",
                    "country": "SA",
                },
            }
        }

    def test_individual_simplified(self) -> None:
        """An individual gets a simplified invoice, lookups by email then phone, inclusive lines."""
        plan = _plan(_data("order.paid.individual-arabic.json"))
        assert plan.invoice_kind == "simplified"
        assert plan.customer is not None
        assert [x.field for x in plan.customer.lookups] == ["email", "phone_number"]
        contact = plan.customer.payload()["contact"]
        assert isinstance(contact, dict)
        assert "organization" not in contact
        assert "tax_number" not in contact
        assert contact["name"] == "محمد عبدالله العتيبي"
        assert all(x.is_inclusive for x in plan.lines)

    def test_zero_rated_export(self) -> None:
        """A foreign business needs no Saudi VAT number; Z lines carry VATEX-SA-32."""
        plan = _plan(_data("order.paid.zero-rated-export.json"))
        assert plan.invoice_kind == "standard"
        assert plan.expected is not None
        assert plan.expected.total_with_vat == Decimal("1280.00")
        assert plan.expected.document_vat == Decimal("0.00")
        assert {x.tax_exemption_code for x in plan.lines} == {"VATEX-SA-32"}
        body = plan.payload(contact_id=1, product_ids={"OUD-50": 1, "SHIPPING": 2})
        items = body["invoice"]["line_items"]  # type: ignore[index]
        assert items[0]["tax_exemption_code"] == "VATEX-SA-32"


class TestSpreading:
    @pytest.mark.parametrize("inclusive", [False, True])
    def test_no_order_discount_sends_zero_discounts_in_minor_units(self, inclusive: bool) -> None:
        """Without order discounts a line without its own discount still sends "0.00"."""
        total = "23.00" if inclusive else "26.45"
        plan = _plan(
            _simple(
                [("2", "10.00"), ("1", "3.00")], inclusive=inclusive, discount=None, total=total
            )
        )
        assert [line.discount.as_tuple() for line in plan.lines] == [Decimal("0.00").as_tuple()] * 2
        body = plan.payload(contact_id=1, product_ids={"SKU-1": 1, "SKU-2": 2})
        invoice = body["invoice"]
        assert isinstance(invoice, dict)
        assert [item["discount"] for item in invoice["line_items"]] == ["0.00", "0.00"]
        assert plan.sent is plan.expected

    def test_inclusive_corpus_case_keeps_total(self) -> None:
        """Inclusive 12 x 1.00 + 3 x 6.50 less 3.00 (zt-many-units): both documents 28.50."""
        plan = _plan(_simple([("12", "1.00"), ("3", "6.50")], inclusive=True, discount="3.00",
                             total="28.50"))  # fmt: skip
        assert plan.expected is not None
        assert plan.sent is not None
        assert plan.expected.taxable_amount == Decimal("24.78")
        assert plan.expected.document_vat == Decimal("3.72")
        assert plan.sent.total_with_vat == plan.expected.total_with_vat == Decimal("28.50")
        assert [x.discount for x in plan.lines] == [Decimal("1.14"), Decimal("1.86")]

    def test_inclusive_spreading_drift_within_tolerance(self) -> None:
        """1.00 + 2.01 inclusive less 0.30: convention 2.71, spread lines 2.70 - accepted."""
        plan = _plan(_simple([("1", "1.00"), ("1", "2.01")], inclusive=True, discount="0.30",
                             total="2.71"))  # fmt: skip
        assert plan.expected is not None
        assert plan.sent is not None
        assert plan.expected.total_with_vat == Decimal("2.71")
        assert plan.sent.total_with_vat == Decimal("2.70")

    def test_drift_beyond_tolerance_is_unmappable(self) -> None:
        """With a zero tolerance the same 0.01 spreading drift is refused."""
        data = _simple([("1", "1.00"), ("1", "2.01")], inclusive=True, discount="0.30",
                       total="2.71")  # fmt: skip
        with pytest.raises(UnmappableOrder, match="spreading"):
            _plan(data, MappingOptions(total_tolerance=Decimal(0)))

    def test_discount_larger_than_lines(self) -> None:
        """An order discount above the lines it applies to is unmappable."""
        data = _simple([("1", "5.00")], inclusive=False, discount="6.00", total="0.00")
        with pytest.raises(UnmappableOrder, match="exceed"):
            _plan(data)


class TestTotals:
    def test_mismatch_carries_both_values(self) -> None:
        """Declared 941.85 against computed 941.79 (0.06 off) is a TotalMismatch."""
        data = _b2b()
        data["order"]["totals"]["total"] = "941.85"
        with pytest.raises(TotalMismatch) as info:
            _plan(data)
        assert info.value.details["computed"] == "941.79"
        assert info.value.details["declared"] == "941.85"
        assert info.value.details["difference"] == "-0.06"

    def test_within_tolerance(self) -> None:
        """0.05 off is accepted by the default tolerance."""
        data = _b2b()
        data["order"]["totals"]["total"] = "941.84"
        assert _plan(data).declared_total == Decimal("941.84")

    @pytest.mark.parametrize(
        ("lines", "paid", "computed"),
        [
            ([("1", "5.25"), ("1", "5.25"), ("3", "28.00")], "94.50", "94.51"),
            ([("1", "58.00"), ("1", "288.00")], "346.00", "345.99"),
        ],
    )
    def test_corpus_inclusive_differences_accepted(
        self, lines: list[tuple[str, str]], paid: str, computed: str
    ) -> None:
        """The corpus's 0.01 inclusive-price differences (94.51/94.50, 345.99/346.00) pass."""
        plan = _plan(_simple(lines, inclusive=True, discount=None, total=paid))
        assert plan.expected is not None
        assert plan.expected.total_with_vat == Decimal(computed)


class TestCurrency:
    def test_order_in_another_currency_is_refused_before_its_totals(self) -> None:
        """A KWD order is not booked as the same figures in SAR: unmappable, currency named."""
        data = _b2b()
        data["order"]["currency"] = "KWD"
        data["order"]["totals"]["total"] = "1.000"  # wrong too: the currency is reported first
        with pytest.raises(UnmappableOrder, match=r"order\.currency: KWD .* books SAR") as info:
            _plan(data)
        assert info.value.details["currency"] == "KWD"

    def test_refund_of_an_order_in_another_currency_is_refused(self) -> None:
        """A credit note in a currency the ledger does not book is refused like the invoice."""
        data = _data("order.refunded.json")
        data["order"]["currency"] = "USD"
        with pytest.raises(UnmappableOrder, match=r"order\.currency: USD"):
            _plan(data)

    def test_configured_currency_is_the_one_booked(self) -> None:
        """With mapping.currency KWD, a KWD order is planned and a SAR order refused."""
        data = _simple([("2", "1.250")], inclusive=False, discount=None, total="2.875")
        data["order"]["currency"] = "KWD"
        plan = _plan(data, MappingOptions(currency="KWD"))
        assert plan.currency == "KWD"
        assert plan.expected is not None
        assert plan.expected.total_with_vat == Decimal("2.875")
        with pytest.raises(UnmappableOrder, match=r"order\.currency: SAR"):
            _plan(_b2b(), MappingOptions(currency="KWD"))

    def test_cancellation_without_order_mirrors_the_invoice(self) -> None:
        """A cancellation that carries no order has no currency to check: it mirrors."""
        data = _data("order.cancelled.json")
        data.pop("order", None)
        assert _plan(data, MappingOptions(currency="KWD")).mirror_invoice


def _item(pid: int, quantity: str, price: str, discount: str = "0", kind: str = "amount") -> Any:
    return {
        "product_id": pid,
        "quantity": quantity,
        "unit_price": price,
        "discount": discount,
        "discount_type": kind,
    }


class TestCreditExcess:
    INVOICE = (_item(1, "4", "208.69", "41.74"), _item(2, "1", "25.00", "10", "percentage"))

    def test_refunds_within_the_invoice_fit(self) -> None:
        """Credited 1 unit of 4; 3 more units (net of their discount share) still fit."""
        credited = [_item(1, "1", "208.69", "10.44")]
        new = [_item(1, "3", "208.69", "31.30")]
        assert credit_excess(self.INVOICE, credited, new) == Decimal("0")

    def test_excess_is_the_amount_beyond_what_is_left(self) -> None:
        """Product 1 nets 793.02; after 793.02 credited, one more unit exceeds by its net."""
        credited = [_item(1, "4", "208.69", "41.74")]
        new = [_item(1, "1", "208.69", "10.44"), _item(2, "1", "25.00", "10", "percentage")]
        # 198.25 for product 1 (nothing left); product 2 nets 22.50 and fits exactly.
        assert credit_excess(self.INVOICE, credited, new) == Decimal("198.25")

    def test_a_product_not_on_the_invoice_is_all_excess(self) -> None:
        """Crediting a product the invoice never had exceeds by the whole line."""
        assert credit_excess(self.INVOICE, [], [_item(9, "2", "1.005")], currency="KWD") == Decimal(
            "2.010"
        )


class TestTaxRules:
    @pytest.mark.parametrize("vat", ["31012239350000", "210122393500003", "310122393500004",
                                     "3101223935000O3", "300000000000000003"])  # fmt: skip
    def test_invalid_saudi_vat(self, vat: str) -> None:
        """A Saudi business VAT number must be 15 digits starting and ending with 3."""
        data = _b2b()
        data["order"]["customer"]["vat_number"] = vat
        with pytest.raises(InvalidBuyerVat):
            _plan(data)
        assert not is_valid_saudi_vat(vat)

    def test_valid_saudi_vat(self) -> None:
        """310122393500003 is valid."""
        assert is_valid_saudi_vat("310122393500003")

    def test_saudi_business_without_any_id(self) -> None:
        """A Saudi business with neither VAT number nor other_id is MissingBuyerId."""
        data = _b2b()
        del data["order"]["customer"]["vat_number"]
        with pytest.raises(MissingBuyerId):
            _plan(data)

    def test_saudi_business_with_other_id(self) -> None:
        """A CRN instead of a VAT number gives a standard invoice, looked up by email."""
        data = _b2b()
        del data["order"]["customer"]["vat_number"]
        data["order"]["customer"]["other_id"] = {"scheme": "CRN", "value": "1010010000"}
        plan = _plan(data)
        assert plan.invoice_kind == "standard"
        assert plan.customer is not None
        assert plan.customer.lookups[0] == CustomerLookup("email", "buyer1@example.com")

    def test_foreign_business_vat_not_checked(self) -> None:
        """A foreign VAT number follows the export rules and is not held to the Saudi format."""
        plan = _plan(_data("order.paid.zero-rated-export.json"))
        assert plan.customer is not None
        assert plan.customer.tax_number == "100234567800003"

    def test_individual_vat_not_checked(self) -> None:
        """Individuals get simplified invoices; their VAT field is not validated."""
        data = _data("order.paid.individual-arabic.json")
        data["order"]["customer"]["vat_number"] = "123"
        assert _plan(data).invoice_kind == "simplified"

    @pytest.mark.parametrize("category", ["Z", "E", "O"])
    def test_exempt_line_without_code(self, category: str) -> None:
        """A Z, E or O line without exemption code is MissingExemptionReason."""
        data = _data("order.paid.zero-rated-export.json")
        data["order"]["lines"][0]["tax"] = {"category": category, "rate": "0"}
        with pytest.raises(MissingExemptionReason, match=r"order\.lines\[0\]\.tax"):
            _plan(data)

    def test_exempt_shipping_without_code(self) -> None:
        """Shipping follows the same rule."""
        data = _data("order.paid.zero-rated-export.json")
        data["order"]["shipping"][0]["tax"] = {"category": "Z", "rate": "0"}
        with pytest.raises(MissingExemptionReason, match=r"order\.shipping\[0\]\.tax"):
            _plan(data)

    def test_code_of_wrong_category(self) -> None:
        """VATEX-SA-OOS on a Z line (or any code on an S line) is unmappable."""
        data = _data("order.paid.zero-rated-export.json")
        data["order"]["lines"][0]["tax"]["exemption_code"] = "VATEX-SA-OOS"
        with pytest.raises(UnmappableOrder, match="does not belong"):
            _plan(data)
        data = _b2b()
        data["order"]["lines"][0]["tax"]["exemption_code"] = "VATEX-SA-32"
        with pytest.raises(UnmappableOrder, match="category S"):
            _plan(data)


class TestCreditNotes:
    def test_partial_refund(self) -> None:
        """1 of 4 mugs: discount 51.54 x 1/4 = 12.885 -> 12.89; total 195.80 + 29.37 = 225.17."""
        plan = _plan(_data("order.refunded.json"))
        assert (plan.kind, plan.reference) == ("credit_note", "ORD-1001-CN-RF-77")
        assert plan.invoice_reference == "ORD-1001"
        assert plan.reason == "Damaged in transit"
        assert [(x.product_sku, x.quantity, x.discount) for x in plan.lines] == [
            ("MUG-01", Decimal("1"), Decimal("12.89"))
        ]
        assert plan.expected is not None
        assert plan.expected.total_with_vat == Decimal("225.17")
        assert [p.sku for p in plan.products] == ["MUG-01"]
        body = plan.payload(contact_id=7, product_ids={"MUG-01": 1}, invoice_id=555)
        note = body["credit_note"]
        assert isinstance(note, dict)
        assert (note["parent_id"], note["reference"]) == (555, "ORD-1001-CN-RF-77")
        assert note["reason"] == "Damaged in transit"
        assert "due_date" not in note

    def test_full_refund_mirrors_invoice(self) -> None:
        """Refunding every unit and all shipping gives the invoice's total back."""
        data = _data("order.refunded.json")
        data["refund"]["lines"] = [
            {"line_id": "1", "quantity": "4"},
            {"line_id": "2", "quantity": "3.5"},
        ]
        data["refund"]["shipping_amount"] = "20.00"
        plan = _plan(data)
        assert plan.expected is not None
        assert plan.expected.total_with_vat == Decimal("941.79")
        assert plan.lines[-1].product_sku == "SHIPPING"
        assert plan.lines[-1].unit_price == Decimal("20.00")

    def test_refund_split_over_entries(self) -> None:
        """Two entries for one line add up; together they may not exceed the order."""
        data = _data("order.refunded.json")
        data["refund"]["lines"] = [
            {"line_id": "1", "quantity": "2"},
            {"line_id": "1", "quantity": "3"},
        ]
        with pytest.raises(UnmappableOrder, match="ordered 4"):
            _plan(data)

    def test_refund_of_unknown_line(self) -> None:
        """A refund line id that is not in the order is unmappable."""
        data = _data("order.refunded.json")
        data["refund"]["lines"][0]["line_id"] = "nope"
        with pytest.raises(UnmappableOrder, match="not a line of the order"):
            _plan(data)

    def test_refund_of_too_much_shipping(self) -> None:
        """Refunding more shipping than was charged (20.00 after discount) is unmappable."""
        data = _data("order.refunded.json")
        data["refund"]["shipping_amount"] = "20.01"
        with pytest.raises(UnmappableOrder, match="shipping"):
            _plan(data)

    def test_cancellation_with_order_mirrors_invoice(self) -> None:
        """A cancellation carrying the order credits every invoice line."""
        data = _b2b()
        data["event_type"] = "order.cancelled"
        data["reason"] = "Out of stock"
        invoice = _plan(_b2b())
        plan = _plan(data)
        assert (plan.kind, plan.reference, plan.reason) == (
            "credit_note", "ORD-1001-CN-cancel", "Out of stock",
        )  # fmt: skip
        assert plan.lines == invoice.lines
        assert plan.due_date is None
        assert plan.ledger_key.refund_id is None

    def test_cancellation_without_order(self) -> None:
        """Envelope-only cancellations mirror the original invoice's lines in the I/O layer."""
        data = _data("order.cancelled.json")
        del data["reason"]
        plan = _plan(data)
        assert plan.mirror_invoice
        assert plan.reason == "Order cancelled"
        assert (plan.reference, plan.invoice_reference) == ("ORD-1002-CN-cancel", "ORD-1002")
        assert plan.lines == ()
        assert plan.customer is None
        with pytest.raises(ValueError, match="original invoice"):
            plan.payload(contact_id=1, product_ids={})
        copied = [{"product_id": 5, "quantity": "1", "unit_price": "10.00"}]
        body = plan.payload(contact_id=1, product_ids={}, invoice_id=9, line_items=copied)
        assert body["credit_note"]["line_items"] == copied  # type: ignore[index]


class TestPurity:
    @pytest.mark.parametrize("module", ["money", "events", "mapping", "demo_data"])
    def test_no_io_imports(self, module: str) -> None:
        """The pure core imports no asyncio, aiohttp, aiokafka or database driver."""
        tree = ast.parse((REPO_ROOT / "worker" / f"{module}.py").read_text("utf-8"))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        forbidden = {"asyncio", "aiohttp", "aiokafka", "asyncpg", "aiosqlite", "sqlite3", "httpx"}
        assert not imported & forbidden
        assert "float" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
