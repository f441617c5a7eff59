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


#: The minor unit of every code above as a ready ``Decimal`` step (``Decimal("0.01")`` for SAR).
#: ``quantize`` runs a dozen times per document on the consumer's hot path; building the step
#: with ``scaleb`` and ``upper()`` each time cost more than the rounding itself. The values are
#: exactly what ``Decimal(1).scaleb(-minor_units(code))`` gives, exponent included.
_UNITS: dict[str, Decimal] = {
    code: Decimal(1).scaleb(-_MINOR_UNITS.get(code, 2))
    for code in ISO_4217_CODES | _MINOR_UNITS.keys()
}


def minor_units(currency: str) -> int:
    """Decimals of ``currency`` (ISO 4217): 3 for KWD, 0 for JPY, 2 for SAR and the default."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def unit(currency: str) -> Decimal:
    """The smallest amount of ``currency``: 0.01 for SAR, 1 for JPY, 0.001 for KWD."""
    step = _UNITS.get(currency)
    if step is None:  # lower case or not an ISO code: the slow path, never cached
        step = Decimal(1).scaleb(-minor_units(currency))
    return step


def quantize(amount: Decimal, currency: str) -> Decimal:
    """Round ``amount`` half up to the minor unit of ``currency`` (15.925 SAR -> 15.93)."""
    # Rounding by position: CPython's decimal parses a keyword argument slower than it rounds.
    # A step is never zero, so ``or`` only falls back for codes outside ``_UNITS``.
    return amount.quantize(_UNITS.get(currency) or unit(currency), ROUND_HALF_UP)


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
    if total == 0 and weights and all(w > 0 for w in weights):
        # Most orders have no order discount. With every weight positive each share of a
        # zero total is ``total`` itself (0 x w / sum keeps its sign and rounds to its
        # exponent), so the arithmetic below would only confirm it. A zero, negative or NaN
        # weight takes the full path, which raises exactly as before.
        return (total,) * len(weights)
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


class _Group:
    """Running sums of one tax group while ``compute_document`` walks lines and adjustments.

    One mutable record per key means one dict lookup per line instead of four, and the rate
    and the inclusive-price divisor are computed once per group instead of once per line. A
    line whose key equals the group's but spells the rate differently (``15`` vs ``15.00``)
    gets the same results: rate and divisor only enter products and quotients that are then
    rounded with ``quantize``, where equal values give equal results whatever their exponent.
    """

    __slots__ = ("adjust", "divisor", "gross", "nets", "rate", "tax")

    def __init__(self, tax: TaxKey) -> None:
        self.tax = tax  # the first key met, as the group's subtotal reports it
        self.rate = tax.rate / _HUNDRED
        self.divisor = 1 + self.rate
        self.gross = _ZERO  # sum of line amounts a
        self.nets = _ZERO  # sum of line nets
        self.adjust: Decimal | None = None  # charges minus discounts; None: the group has none


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
    step = unit(currency)  # looked up once: q runs about eight times per line

    def q(amount: Decimal) -> Decimal:
        return amount.quantize(step, ROUND_HALF_UP)  # see quantize: no keyword on purpose

    with localcontext() as ctx:
        ctx.prec = 50
        results: list[LineResult] = []
        groups: dict[TaxKey, _Group] = {}
        line_net_sum = _ZERO
        for line in lines:
            tax = line.tax
            a = q(line.quantity * line.unit_price)
            if line.discount_amount or line.charge_amount or not a:
                a = a - q(line.discount_amount) + q(line.charge_amount)
            # else: subtracting and adding a rounded zero would give back this very ``a``
            # (same digits and exponent; only a zero ``a`` could change sign), so skip it.
            group = groups.get(tax)
            if group is None:
                group = groups[tax] = _Group(tax)
            if prices_include_tax:
                net = q(a / group.divisor)
                vat = a - net
            else:
                net = a
                vat = q(a * group.rate)
            results.append(LineResult(tax, a, net, vat, net + vat))
            group.gross += a
            group.nets += net
            line_net_sum += net
        if order_discounts or order_charges:
            for sign, adjustments in ((-1, order_discounts), (1, order_charges)):
                for adj in adjustments:
                    group = groups.get(adj.tax)
                    if group is None:
                        group = groups[adj.tax] = _Group(adj.tax)
                    previous = _ZERO if group.adjust is None else group.adjust
                    group.adjust = previous + sign * q(adj.amount)

        subtotals: list[TaxSubtotal] = []
        taxable_sum = vat_sum = _ZERO
        for group in groups.values():
            line_nets = group.nets
            adjustments_net: Decimal | None = None
            if group.adjust is None:
                taxable = line_nets
            else:
                if prices_include_tax:
                    taxable = q((group.gross + group.adjust) / group.divisor)
                else:
                    taxable = line_nets + group.adjust
                adjustments_net = line_nets - taxable
            tax_amount = q(taxable * group.rate)
            subtotals.append(
                TaxSubtotal(group.tax, line_nets, taxable, tax_amount, adjustments_net)
            )
            taxable_sum += taxable
            vat_sum += tax_amount

        taxable_amount = q(taxable_sum)
        document_vat = q(vat_sum)
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
            line_net_total=q(line_net_sum),
            taxable_amount=taxable_amount,
            document_vat=document_vat,
            total_with_vat=total,
            prepaid_amount=prepaid,
            payable_amount=total - prepaid,
            tax_currency=tax_currency,
            document_vat_in_tax_currency=vat_in_tax_currency,
        )
