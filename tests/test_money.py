"""Tests for worker.money: the corpus vectors, float traps and non-2-decimal currencies."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from tests.corpus import corpus_file, money_vectors
from worker.money import (
    ISO_4217_CODES,
    Adjustment,
    DocumentTotals,
    LineInput,
    TaxKey,
    compute_document,
    minor_units,
    quantize,
    split_proportionally,
    unit,
)

VECTORS: list[dict[str, Any]] = money_vectors()

S15 = TaxKey("S", Decimal(15))


def _key(item: dict[str, Any]) -> TaxKey:
    return TaxKey(item["tax_category"], Decimal(item["tax_rate"]), item.get("exemption_code"))


def _compute(vector: dict[str, Any]) -> DocumentTotals:
    lines = [
        LineInput(
            quantity=Decimal(line["quantity"]),
            unit_price=Decimal(line["unit_price"]),
            tax=_key(line),
            discount_amount=Decimal(line.get("discount_amount", "0")),
            charge_amount=Decimal(line.get("charge_amount", "0")),
        )
        for line in vector["lines"]
    ]
    exchange = vector.get("exchange_rate")
    return compute_document(
        lines,
        currency=vector["currency"],
        prices_include_tax=vector["prices_include_tax"],
        order_discounts=[
            Adjustment(Decimal(d["amount"]), _key(d)) for d in vector["order_discounts"]
        ],
        order_charges=[
            Adjustment(Decimal(c["amount"]), _key(c)) for c in vector.get("order_charges", [])
        ],
        prepaid_amount=Decimal(vector.get("prepaid_amount", "0")),
        tax_currency=vector.get("tax_currency"),
        exchange_rate=Decimal(exchange) if exchange is not None else None,
    )


def _strs(values: Any) -> list[str]:
    return [str(v) for v in values]


class TestVectors:
    def test_every_vector_is_loaded(self) -> None:
        """The corpus file is found and holds the 25 published vectors."""
        corpus_file("money", "vectors.json")  # skips, or fails in strict mode, when absent
        assert len(VECTORS) >= 25
        assert len({v["id"] for v in VECTORS}) == len(VECTORS)

    @pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
    def test_vector_matches_every_expected_field(self, vector: dict[str, Any]) -> None:
        """Every expected field of every vector comes out of compute_document exactly."""
        doc = _compute(vector)
        expected = vector["expected"]
        checked = set()
        for name, actual in (
            ("line_net_amounts", _strs(r.net for r in doc.lines)),
            ("line_vat_amounts", _strs(r.vat for r in doc.lines)),
            ("line_amounts_with_vat", _strs(r.with_vat for r in doc.lines)),
            ("taxable_amount", str(doc.taxable_amount)),
            ("document_vat", str(doc.document_vat)),
            ("total_with_vat", str(doc.total_with_vat)),
            ("prepaid_amount", str(doc.prepaid_amount)),
            ("payable_amount", str(doc.payable_amount)),
            ("document_vat_in_tax_currency", str(doc.document_vat_in_tax_currency)),
        ):
            if name in expected:
                assert actual == expected[name], name
                checked.add(name)
        assert len(doc.tax_subtotals) == len(expected["tax_subtotals"])
        for got, want in zip(doc.tax_subtotals, expected["tax_subtotals"], strict=True):
            assert got.tax.category == want["tax_category"]
            assert got.tax.rate == Decimal(want["tax_rate"])
            assert got.tax.exemption_code == want.get("exemption_code")
            assert str(got.taxable_amount) == want["taxable_amount"]
            assert str(got.tax_amount) == want["tax_amount"]
            if "order_adjustments_net" in want:
                assert str(got.order_adjustments_net) == want["order_adjustments_net"]
        checked.add("tax_subtotals")
        assert checked == set(expected), "an expected field went unchecked"

    @pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
    def test_total_is_taxable_plus_vat(self, vector: dict[str, Any]) -> None:
        """The total is taxable + VAT exactly and every line's net + VAT is its gross."""
        doc = _compute(vector)
        assert doc.total_with_vat == doc.taxable_amount + doc.document_vat
        assert all(r.net + r.vat == r.with_vat for r in doc.lines)


class TestRounding:
    @pytest.mark.parametrize(
        ("quantity", "price", "expected"),
        [
            ("3.5", "4.55", "15.93"),
            ("1.5", "4.55", "6.83"),
            ("2.90", "0.15", "0.44"),
            ("8.70", "0.15", "1.31"),
            ("93.10", "0.15", "13.97"),
        ],
    )
    def test_float_traps_round_half_up(self, quantity: str, price: str, expected: str) -> None:
        """The README's float traps (3.5 x 4.55 = 15.925 -> 15.93, ...) round half up."""
        product = Decimal(quantity) * Decimal(price)
        assert quantize(product, "SAR") == Decimal(expected)
        # The float product really does round the other way, which is why we never use it.
        assert round(float(quantity) * float(price), 2) != float(expected)

    def test_float_trap_inside_a_document(self) -> None:
        """A 3.5 x 4.55 line is 15.93 net and 2.39 VAT (15.93 x 0.15 = 2.3895)."""
        doc = compute_document(
            [LineInput(Decimal("3.5"), Decimal("4.55"), S15)],
            currency="SAR",
            prices_include_tax=False,
        )
        assert doc.lines[0].net == Decimal("15.93")
        assert doc.document_vat == Decimal("2.39")
        assert doc.total_with_vat == Decimal("18.32")

    def test_vat_of_document_not_sum_of_lines(self) -> None:
        """Group VAT is rounded once: three 0.05 lines have VAT 0.01 each, the document 0.02."""
        lines = [LineInput(Decimal(1), Decimal("0.05"), S15) for _ in range(3)]
        doc = compute_document(lines, currency="SAR", prices_include_tax=False)
        assert [r.vat for r in doc.lines] == [Decimal("0.01")] * 3
        assert doc.document_vat == Decimal("0.02")
        assert doc.total_with_vat == Decimal("0.17")


class TestCurrencies:
    @pytest.mark.parametrize(
        ("currency", "digits"),
        [
            *[("SAR", 2), ("USD", 2), ("EUR", 2), ("AED", 2), ("KWD", 3), ("BHD", 3), ("OMR", 3)],
            *[("JOD", 3), ("TND", 3), ("LYD", 3), ("IQD", 3), ("JPY", 0), ("KRW", 0), ("XYZ", 2)],
        ],
    )
    def test_minor_units(self, currency: str, digits: int) -> None:
        """Minor units follow ISO 4217, with 2 for anything not listed."""
        assert minor_units(currency) == digits
        assert unit(currency) == Decimal(1).scaleb(-digits)

    def test_unit_of_every_code_keeps_the_scaleb_exponent(self) -> None:
        """The precomputed steps are exactly ``Decimal(1).scaleb(-n)``: digits and exponent."""
        for code in [*sorted(ISO_4217_CODES), "sar", "Kwd", "jpy", "XYZ", ""]:
            expected = Decimal(1).scaleb(-minor_units(code))
            assert unit(code).as_tuple() == expected.as_tuple(), code
            assert (
                quantize(Decimal("1.5"), code).as_tuple()
                == Decimal("1.5").quantize(expected, rounding=ROUND_HALF_UP).as_tuple()
            ), code

    def test_kwd_three_decimals(self) -> None:
        """KWD rounds to 0.001: 3 x 1.2345 = 3.7035 -> 3.704, VAT 15 % = 0.5556 -> 0.556."""
        doc = compute_document(
            [LineInput(Decimal(3), Decimal("1.2345"), S15)],
            currency="KWD",
            prices_include_tax=False,
        )
        assert doc.lines[0].net == Decimal("3.704")
        assert doc.document_vat == Decimal("0.556")
        assert doc.total_with_vat == Decimal("4.260")

    def test_jpy_zero_decimals(self) -> None:
        """JPY rounds to whole yen: 3 x 333.5 = 1000.5 -> 1001, VAT 150.15 -> 150."""
        doc = compute_document(
            [LineInput(Decimal(3), Decimal("333.5"), S15)], currency="JPY", prices_include_tax=False
        )
        assert doc.lines[0].net == Decimal(1001)
        assert doc.document_vat == Decimal(150)
        assert doc.total_with_vat == Decimal(1151)

    def test_jpy_inclusive(self) -> None:
        """VAT-inclusive 1150 JPY is 1000 net + 150 VAT."""
        doc = compute_document(
            [LineInput(Decimal(1), Decimal(1150), S15)], currency="JPY", prices_include_tax=True
        )
        assert (doc.lines[0].net, doc.lines[0].vat) == (Decimal(1000), Decimal(150))
        assert doc.total_with_vat == Decimal(1150)


class TestSplitProportionally:
    def test_shares_sum_to_total(self) -> None:
        """10.00 over 1:1:1 gives 3.34, 3.33, 3.33: the leftover cent goes to the earliest tie."""
        shares = split_proportionally(
            Decimal("10.00"), [Decimal(1), Decimal(1), Decimal(1)], currency="SAR"
        )
        assert shares == (Decimal("3.34"), Decimal("3.33"), Decimal("3.33"))

    def test_largest_remainder_wins(self) -> None:
        """1.00 over 10:20:70.1 floors to 0.09/0.19/0.70; 2 cents go to the largest remainders."""
        shares = split_proportionally(
            Decimal("1.00"), [Decimal(10), Decimal(20), Decimal("70.1")], currency="SAR"
        )
        assert sum(shares) == Decimal("1.00")
        assert shares == (Decimal("0.10"), Decimal("0.20"), Decimal("0.70"))

    def test_zero_weights(self) -> None:
        """A zero total over zero weights is all zeros; a non-zero total raises."""
        assert split_proportionally(Decimal(0), [Decimal(0)], currency="SAR") == (Decimal("0.00"),)
        with pytest.raises(ValueError, match="zero weights"):
            split_proportionally(Decimal(1), [Decimal(0)], currency="SAR")

    @pytest.mark.parametrize(
        ("currency", "zero"), [("SAR", "0.00"), ("KWD", "0.000"), ("JPY", "0")]
    )
    def test_zero_total_shares_are_zeros_of_the_currency(self, currency: str, zero: str) -> None:
        """No order discount: every share is a zero at the minor-unit exponent, sign kept."""
        weights = [Decimal("20.00"), Decimal("7.33"), Decimal(5)]
        shares = split_proportionally(Decimal(0), weights, currency=currency)
        assert [s.as_tuple() for s in shares] == [Decimal(zero).as_tuple()] * 3
        negative = split_proportionally(Decimal("-0"), weights, currency=currency)
        assert [s.as_tuple() for s in negative] == [Decimal("-" + zero).as_tuple()] * 3

    def test_zero_total_with_a_zero_or_negative_weight(self) -> None:
        """The shortcut is for positive weights only; the rules for the others are unchanged."""
        assert split_proportionally(Decimal(0), [Decimal(1), Decimal(0)], currency="SAR") == (
            Decimal("0.00"),
            Decimal("0.00"),
        )
        with pytest.raises(ValueError, match="must not be negative"):
            split_proportionally(Decimal(0), [Decimal(1), Decimal(-1)], currency="SAR")

    def test_net_document_unchanged_by_spreading(self) -> None:
        """With net prices, spreading an order discount over lines leaves the document equal."""
        lines = [
            LineInput(Decimal(2), Decimal("10.00"), S15),
            LineInput(Decimal(1), Decimal("7.33"), S15),
        ]
        with_discount = compute_document(
            lines,
            currency="SAR",
            prices_include_tax=False,
            order_discounts=[Adjustment(Decimal("5.00"), S15)],
        )
        shares = split_proportionally(
            Decimal("5.00"), [Decimal("20.00"), Decimal("7.33")], currency="SAR"
        )
        spread = compute_document(
            [
                LineInput(line.quantity, line.unit_price, line.tax, discount_amount=share)
                for line, share in zip(lines, shares, strict=True)
            ],
            currency="SAR",
            prices_include_tax=False,
        )
        assert spread.total_with_vat == with_discount.total_with_vat == Decimal("25.68")
        assert spread.document_vat == with_discount.document_vat


class TestComputeDocumentShortcuts:
    """compute_document skips work that cannot change a result; the results must not change."""

    @pytest.mark.parametrize("inclusive", [False, True])
    def test_zero_discount_and_charge_are_no_ops(self, inclusive: bool) -> None:
        """Explicit zero adjustments give the same line, exponent included, as none at all."""
        plain = LineInput(Decimal(3), Decimal("4.55"), S15)
        zeros = LineInput(Decimal(3), Decimal("4.55"), S15, Decimal("0.000"), Decimal(0))
        one = compute_document([plain], currency="SAR", prices_include_tax=inclusive)
        other = compute_document([zeros], currency="SAR", prices_include_tax=inclusive)
        assert repr(one) == repr(other)
        assert one.lines[0].amount.as_tuple() == Decimal("13.65").as_tuple()

    def test_zero_amount_line(self) -> None:
        """A free line is 0.00 at the currency's exponent."""
        doc = compute_document(
            [LineInput(Decimal(2), Decimal(0), S15)], currency="SAR", prices_include_tax=False
        )
        assert doc.lines[0].amount.as_tuple() == Decimal("0.00").as_tuple()
        assert doc.total_with_vat.as_tuple() == Decimal("0.00").as_tuple()

    @pytest.mark.parametrize("inclusive", [False, True])
    def test_rate_spelling_does_not_change_a_group(self, inclusive: bool) -> None:
        """Keys equal up to the rate's exponent share a group and each line's results."""
        s15_00 = TaxKey("S", Decimal("15.00"))
        lines = [
            LineInput(Decimal(3), Decimal("4.55"), S15),
            LineInput(Decimal(1), Decimal("208.69"), s15_00),
        ]
        doc = compute_document(lines, currency="SAR", prices_include_tax=inclusive)
        alone = [
            compute_document([line], currency="SAR", prices_include_tax=inclusive).lines[0]
            for line in lines
        ]
        assert repr(doc.lines) == repr(tuple(alone))
        assert len(doc.tax_subtotals) == 1
        assert doc.tax_subtotals[0].tax.rate.as_tuple() == Decimal(15).as_tuple()
