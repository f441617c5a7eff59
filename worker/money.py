"""Invoice arithmetic in ``Decimal``: one convention for every document invoice-sync builds.

Binary floats round 3.5 x 4.55 = 15.925 down to 15.92; ZATCA, the accounting API and the
customer's receipt all say 15.93. So every amount here is a ``Decimal`` and every rounding is
``ROUND_HALF_UP`` to the currency's minor unit, applied at the exact steps of the convention in
``../shared/corpus/README.md`` ("How expected is computed"):

1. line amount ``a = round(quantity x unit_price) - discount + charge``;
2. net prices: line net ``a``, line VAT ``round(a x r)``; VAT-inclusive prices: line net
   ``round(a / (1 + r))``, line VAT ``a - net``;
3. lines and order-level adjustments group by (category, rate, exemption code);
4. a group's taxable amount is its line nets minus discounts plus charges (inclusive prices with
   adjustments: ``round((sum a - discounts + charges) / (1 + r))``);
5. group VAT ``round(taxable x r)`` at document level, not the sum of line VATs;
6. total = taxable + VAT exactly, payable = total - prepaid, VAT in the tax currency
   ``round(VAT x exchange_rate)``.

Nothing here does I/O; inputs and results are frozen dataclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, localcontext
from typing import Literal, NamedTuple

__all__ = [
    "ISO_4217_CODES",
    "Adjustment",
    "DocumentTotals",
    "LineInput",
    "LineResult",
    "TaxCategory",
    "TaxKey",
    "TaxSubtotal",
    "compute_document",
    "minor_units",
    "quantize",
    "split_proportionally",
    "unit",
]

TaxCategory = Literal["S", "Z", "E", "O"]

_ZERO = Decimal(0)
_HUNDRED = Decimal(100)

# ISO 4217 minor units that are not 2. Everything else (SAR, USD, EUR, AED, ...) has 2.
_MINOR_UNITS: dict[str, int] = {
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
    **dict.fromkeys(
        (
            "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX",
            "UYI", "VND", "VUV", "XAF", "XOF", "XPF",
        ),
        0,
    ),
}  # fmt: skip

#: Active ISO 4217 alphabetic codes (fund and precious-metal codes excluded, except the
#: minor-unit oddities above). The event contract accepts only these.
ISO_4217_CODES: frozenset[str] = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP
    BYN BZD CAD CDF CHF CLF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP
    GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS
    KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR
    MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF
    SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD
    TZS UAH UGX USD UYI UYU UYW UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
    """.split()  # noqa: SIM905 - a table reads better than 170 quoted strings
)


def minor_units(currency: str) -> int:
    """Decimals of ``currency`` (ISO 4217): 3 for KWD, 0 for JPY, 2 for SAR and the default."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def unit(currency: str) -> Decimal:
    """The smallest amount of ``currency``: 0.01 for SAR, 1 for JPY, 0.001 for KWD."""
    return Decimal(1).scaleb(-minor_units(currency))


def quantize(amount: Decimal, currency: str) -> Decimal:
    """Round ``amount`` half up to the minor unit of ``currency`` (15.925 SAR -> 15.93)."""
    return amount.quantize(unit(currency), rounding=ROUND_HALF_UP)


def split_proportionally(
    total: Decimal, weights: Sequence[Decimal], *, currency: str
) -> tuple[Decimal, ...]:
    """Split ``total`` over ``weights`` in whole minor units, summing to ``total`` exactly.

    Largest remainder: every share is first rounded down, then the leftover units go one
    each to the shares with the largest fractional parts, ties to the earliest. Used to spread
    an order discount over lines for an API without document-level discounts.

    Raises:
        ValueError: ``total`` or a weight is negative, or the weights sum to zero while
            ``total`` is not zero.
    """
    step = unit(currency)
    total = total.quantize(step)
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError("total and weights must not be negative")
    weight_sum = sum(weights, _ZERO)
    if weight_sum == 0:
        if total != 0:
            raise ValueError("cannot split a non-zero total over zero weights")
        return tuple(_ZERO.quantize(step) for _ in weights)
    with localcontext() as ctx:
        ctx.prec = 50
        exact = [total * w / weight_sum for w in weights]
        floors = [e.quantize(step, rounding=ROUND_DOWN) for e in exact]
        leftover = int((total - sum(floors, _ZERO)) / step)
        # Sort by fractional part, largest first; Python's sort is stable, so ties keep the
        # earliest line first.
        order = sorted(range(len(weights)), key=lambda i: exact[i] - floors[i], reverse=True)
        shares = list(floors)
        for i in order[:leftover]:
            shares[i] += step
    return tuple(shares)


class TaxKey(NamedTuple):
    """What lines and adjustments group by: ZATCA gives each its own tax subtotal."""

    category: TaxCategory
    rate: Decimal
    exemption_code: str | None = None


@dataclass(frozen=True, slots=True)
class LineInput:
    """One document line as the arithmetic sees it (amounts in the document currency)."""

    quantity: Decimal
    unit_price: Decimal
    tax: TaxKey
    discount_amount: Decimal = _ZERO
    charge_amount: Decimal = _ZERO


@dataclass(frozen=True, slots=True)
class Adjustment:
    """An order-level discount or charge in one tax group (VAT-inclusive with inclusive prices)."""

    amount: Decimal
    tax: TaxKey


@dataclass(frozen=True, slots=True)
class LineResult:
    """A line after rounding: ``net + vat == with_vat`` always."""

    tax: TaxKey
    amount: Decimal
    net: Decimal
    vat: Decimal
    with_vat: Decimal


@dataclass(frozen=True, slots=True)
class TaxSubtotal:
    """One tax group at document level.

    ``order_adjustments_net`` is the net value of the group's order discounts minus charges
    (``line_net_total - taxable_amount``), or ``None`` when the group has none.
    """

    tax: TaxKey
    line_net_total: Decimal
    taxable_amount: Decimal
    tax_amount: Decimal
    order_adjustments_net: Decimal | None


@dataclass(frozen=True, slots=True)
class DocumentTotals:
    """Everything the convention derives for one document."""

    currency: str
    prices_include_tax: bool
    lines: tuple[LineResult, ...]
    tax_subtotals: tuple[TaxSubtotal, ...]
    line_net_total: Decimal
    taxable_amount: Decimal
    document_vat: Decimal
    total_with_vat: Decimal
    prepaid_amount: Decimal
    payable_amount: Decimal
    tax_currency: str | None = None
    document_vat_in_tax_currency: Decimal | None = None


def _rate(key: TaxKey) -> Decimal:
    return key.rate / _HUNDRED


def compute_document(
    lines: Sequence[LineInput],
    *,
    currency: str,
    prices_include_tax: bool,
    order_discounts: Sequence[Adjustment] = (),
    order_charges: Sequence[Adjustment] = (),
    prepaid_amount: Decimal = _ZERO,
    tax_currency: str | None = None,
    exchange_rate: Decimal | None = None,
) -> DocumentTotals:
    """Compute line, group and document amounts exactly as the corpus convention does.

    Groups appear in the order their key is first met (lines first, then adjustments), so
    the result is deterministic. Amounts round to the minor unit of ``currency``; the VAT in
    ``tax_currency`` rounds to that currency's minor unit.

    Raises:
        ValueError: ``tax_currency`` without ``exchange_rate`` (or the reverse).
    """
    if (tax_currency is None) != (exchange_rate is None):
        raise ValueError("tax_currency and exchange_rate go together")

    def q(amount: Decimal) -> Decimal:
        return quantize(amount, currency)

    with localcontext() as ctx:
        ctx.prec = 50
        results: list[LineResult] = []
        gross: dict[TaxKey, Decimal] = {}
        nets: dict[TaxKey, Decimal] = {}
        adjust: dict[TaxKey, Decimal] = {}
        for line in lines:
            a = q(line.quantity * line.unit_price) - q(line.discount_amount)
            a += q(line.charge_amount)
            r = _rate(line.tax)
            if prices_include_tax:
                net = q(a / (1 + r))
                vat = a - net
            else:
                net = a
                vat = q(a * r)
            results.append(LineResult(line.tax, a, net, vat, net + vat))
            gross[line.tax] = gross.get(line.tax, _ZERO) + a
            nets[line.tax] = nets.get(line.tax, _ZERO) + net
        for sign, adjustments in ((-1, order_discounts), (1, order_charges)):
            for adj in adjustments:
                gross.setdefault(adj.tax, _ZERO)
                nets.setdefault(adj.tax, _ZERO)
                adjust[adj.tax] = adjust.get(adj.tax, _ZERO) + sign * q(adj.amount)

        subtotals: list[TaxSubtotal] = []
        for key, line_nets in nets.items():
            r = _rate(key)
            if key not in adjust:
                taxable = line_nets
            elif prices_include_tax:
                taxable = q((gross[key] + adjust[key]) / (1 + r))
            else:
                taxable = line_nets + adjust[key]
            adjustments_net = line_nets - taxable if key in adjust else None
            subtotals.append(TaxSubtotal(key, line_nets, taxable, q(taxable * r), adjustments_net))

        taxable_amount = q(sum((s.taxable_amount for s in subtotals), _ZERO))
        document_vat = q(sum((s.tax_amount for s in subtotals), _ZERO))
        total = taxable_amount + document_vat
        prepaid = q(prepaid_amount)
        vat_in_tax_currency = None
        if tax_currency is not None and exchange_rate is not None:
            vat_in_tax_currency = quantize(document_vat * exchange_rate, tax_currency)
        return DocumentTotals(
            currency=currency,
            prices_include_tax=prices_include_tax,
            lines=tuple(results),
            tax_subtotals=tuple(subtotals),
            line_net_total=q(sum((r.net for r in results), _ZERO)),
            taxable_amount=taxable_amount,
            document_vat=document_vat,
            total_with_vat=total,
            prepaid_amount=prepaid,
            payable_amount=total - prepaid,
            tax_currency=tax_currency,
            document_vat_in_tax_currency=vat_in_tax_currency,
        )
