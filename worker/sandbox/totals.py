"""Invoice arithmetic, the way a VAT accounting system does it: Decimal, half-up, 2 places.

Pure functions only. The rules, per line: ``a = round(quantity × unit_price) − discount``
(a percentage discount is ``round(a × pct / 100)``); the line net is ``a`` for net prices
or ``round(a / (1 + r))`` for VAT-inclusive prices. Lines are grouped by
``(tax_category, tax_percent, tax_exemption_code)``; each group's VAT is
``round(sum(net) × r)`` - computed once per group, not summed from per-line VAT, so the
document total is always exactly ``taxable + VAT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

__all__ = ["CENT", "LineItem", "TaxGroup", "Totals", "compute_totals", "line_amount", "money"]

CENT = Decimal("0.01")
_HUNDRED = Decimal(100)


def money(value: Decimal) -> Decimal:
    """Round half-up to two decimal places."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class LineItem:
    """One validated invoice or credit-note line."""

    product_id: int
    description: str
    quantity: Decimal
    unit_price: Decimal
    discount: Decimal
    discount_type: Literal["percentage", "amount"]
    tax_percent: Decimal
    is_inclusive: bool
    tax_category: str
    tax_exemption_code: str | None


@dataclass(frozen=True, slots=True)
class TaxGroup:
    tax_category: str
    tax_percent: Decimal
    tax_exemption_code: str | None
    taxable_amount: Decimal
    tax_amount: Decimal


@dataclass(frozen=True, slots=True)
class Totals:
    line_nets: tuple[Decimal, ...]
    groups: tuple[TaxGroup, ...]
    total_excluding_tax: Decimal
    tax_total: Decimal
    total: Decimal


def line_amount(item: LineItem) -> Decimal:
    """``round(quantity × unit_price)`` minus the discount; may be negative (caller checks)."""
    gross = money(item.quantity * item.unit_price)
    if item.discount_type == "percentage":
        return gross - money(gross * item.discount / _HUNDRED)
    return gross - item.discount


def _line_net(item: LineItem) -> Decimal:
    amount = line_amount(item)
    if not item.is_inclusive:
        return amount
    return money(amount / (1 + item.tax_percent / _HUNDRED))


def compute_totals(items: list[LineItem]) -> Totals:
    """Return line nets, per-group taxable/VAT and the document totals."""
    nets = tuple(_line_net(item) for item in items)
    taxable: dict[tuple[str, Decimal, str | None], Decimal] = {}
    for item, net in zip(items, nets, strict=True):
        key = (item.tax_category, item.tax_percent.normalize(), item.tax_exemption_code)
        taxable[key] = taxable.get(key, Decimal(0)) + net
    groups = tuple(
        TaxGroup(cat, pct, code, amount, money(amount * pct / _HUNDRED))
        for (cat, pct, code), amount in taxable.items()
    )
    excluding = sum((g.taxable_amount for g in groups), Decimal(0))
    tax = sum((g.tax_amount for g in groups), Decimal(0))
    return Totals(nets, groups, money(excluding), money(tax), money(excluding + tax))
