"""Zid order webhooks (``order.create``, ``order.status.update``: the order object) as v1. Pure.

The order's state decides, not the event name (docs/platforms/zid.md):

* ``order_status.code`` ``refunded``/``reversed``: a credit note for the whole invoice (v1
  ``order.cancelled`` without the order, reason "Order refunded"; it mirrors the invoice);
* ``cancelled``/``canceled``: the same, reason "Order cancelled";
* ``payment_status`` or ``order_status.code`` in ``paid_statuses``: ``order.paid``;
* ``order.create`` also yields ``order.created`` (skipped unless it is the invoice trigger).

Money: ``products[].price`` (``net_price_with_additions`` when present) is the unit price
before VAT; ``payment.invoice[]`` gives the order discounts (``products_discount``,
``coupon_discount``...), ``shipping``/``shipping_discount`` and a cash-on-delivery fee, all as
long decimal strings with negative discounts. Zid's naive timestamps are UTC (the sample's
``created_at`` 08:33:06 is its ``issue_date`` 11:33 in Riyadh).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Final

from worker.errors import InvalidEvent
from worker.events import OrderEvent
from worker.platforms._common import (
    PlatformOptions,
    as_dict,
    as_list,
    build_events,
    customer_dict,
    decimal,
    first_text,
    fmt,
    lookup,
    money,
    phone_number,
    rate_percent,
    tax_dict,
    text,
    timestamp,
)

__all__ = ["CANCELLED_STATUSES", "REFUNDED_STATUSES", "adapt"]

PLATFORM: Final = "zid"
CANCELLED_STATUSES: Final = frozenset({"cancelled", "canceled"})
REFUNDED_STATUSES: Final = frozenset({"refunded", "reversed"})
_COD_CODES: Final = frozenset({"cod", "cod_fee", "cash_on_delivery"})
_ZERO = Decimal(0)
_SAUDI_NAMES: Final = frozenset({"السعودية", "saudi arabia", "المملكة العربية السعودية"})


def adapt(
    body: object, *, event: str | None, event_id: str, options: PlatformOptions
) -> tuple[OrderEvent, ...]:
    """The v1 events one Zid order webhook stands for (possibly none).

    ``event`` is the webhook's event name when the producer forwarded it (header or body).

    Raises:
        InvalidEvent: the order lacks what the mapping needs or breaks the v1 contract.
    """
    order = as_dict(body, "order")
    if isinstance(order.get("order"), dict) and "id" not in order:
        event = event or text(order.get("event"))
        order = order["order"]  # {"event": ..., "order": {...}} wrappers
    event = event or text(order.get("event"))
    order_id = text(order.get("id"))
    store_id = text(order.get("store_id"))
    if order_id is None or store_id is None:
        raise InvalidEvent("id: a Zid order needs its id and store_id")
    occurred_at = timestamp(order.get("updated_at") or order.get("created_at"), "updated_at")
    status = (text(lookup(order, "order_status.code")) or "").lower()
    payment = (text(order.get("payment_status")) or "").lower()

    parts: list[tuple[str, dict[str, Any]]] = []
    if status in REFUNDED_STATUSES:
        parts.append(("order.cancelled", {"reason": "Order refunded"}))
    elif status in CANCELLED_STATUSES:
        parts.append(("order.cancelled", {"reason": "Order cancelled"}))
    else:
        paid = status in options.paid_statuses or payment in options.paid_statuses
        created = event == "order.create"
        if created or paid:
            body_order = _order(order, options)
            if created:
                parts.append(("order.created", {"order": body_order}))
            if paid:
                parts.append(("order.paid", {"order": body_order}))
    return build_events(
        platform=PLATFORM,
        store_id=store_id,
        order_id=order_id,
        occurred_at=occurred_at,
        event_id=event_id,
        parts=parts,
    )


def _rate(product: dict[str, Any], path: str) -> Decimal:
    if product.get("is_taxable") is False:
        return _ZERO
    raw = product.get("tax_percentage")
    if raw is None:
        return _ZERO
    number = decimal(raw, f"{path}.tax_percentage")
    # Zid sends a percentage (15); a fraction (0.15) is read as one too.
    return rate_percent(number, f"{path}.tax_percentage", fraction=0 < number < 1)


def _order(order: dict[str, Any], options: PlatformOptions) -> dict[str, Any]:
    currency = text(order.get("currency_code")) or text(
        lookup(order, "currency.order_currency.code")
    )
    if currency is None:
        raise InvalidEvent("currency_code: missing")
    lines = []
    rates = []
    for i, product in enumerate(as_list(order.get("products"), "products")):
        path = f"products[{i}]"
        product = as_dict(product, path)
        unit = product.get("net_price_with_additions", product.get("price"))
        rate = _rate(product, path)
        rates.append(rate)
        line_id = text(product.get("id")) or str(i + 1)
        sku = text(product.get("sku")) or f"zid-{line_id}"
        lines.append(
            {
                "line_id": line_id,
                "sku": sku[:200],
                "name": text(product.get("name")) or sku,
                "quantity": fmt(decimal(product.get("quantity"), f"{path}.quantity")),
                "unit_price": fmt(money(unit, currency, f"{path}.price")),
                "tax": tax_dict(rate, options),
            }
        )

    rows: dict[str, Decimal] = {}
    for i, row in enumerate(as_list(lookup(order, "payment.invoice"), "payment.invoice")):
        row = as_dict(row, f"payment.invoice[{i}]")
        code = (text(row.get("code")) or "").lower()
        if code:
            value = money(row.get("value"), currency, f"payment.invoice[{i}].value")
            rows[code] = rows.get(code, _ZERO) + value
    discount = sum(
        (
            abs(value)
            for code, value in rows.items()
            if code == "discount"
            or (code.endswith("_discount") and not code.startswith(("sub_total", "shipping")))
        ),
        _ZERO,
    )
    shipping_rate = max(rates, default=_ZERO)
    shipping_amount = abs(rows.get("shipping", _ZERO))
    shipping_discount = min(abs(rows.get("shipping_discount", _ZERO)), shipping_amount)
    shipping = []
    if shipping_amount:
        shipping.append(
            {
                "amount": fmt(shipping_amount),
                "discount_amount": fmt(shipping_discount),
                "tax": tax_dict(shipping_rate, options),
            }
        )
    for code in sorted(_COD_CODES & rows.keys()):
        if rows[code]:
            shipping.append(
                {"amount": fmt(abs(rows[code])), "tax": tax_dict(shipping_rate, options)}
            )
    coupon = text(lookup(order, "coupon.code"))
    total = order.get("order_total", rows.get("total"))
    totals = {"total": fmt(money(total, currency, "order_total"))}
    if "vat" in rows:
        totals["tax"] = fmt(abs(rows["vat"]))
    return {
        "currency": currency,
        "prices_include_tax": False,
        "customer": _customer(order, options),
        "lines": lines,
        "shipping": shipping,
        "order_discounts": [{"amount": fmt(discount), "code": coupon}] if discount else [],
        "totals": totals,
    }


def _customer(order: dict[str, Any], options: PlatformOptions) -> dict[str, Any]:
    customer = as_dict(order.get("customer"), "customer", required=False)
    address = as_dict(lookup(order, "shipping.address"), "shipping.address", required=False)
    country = (
        text(lookup(address, "country.code"))
        or text(lookup(address, "country.iso_code"))
        or text(lookup(address, "country.iso2"))
    )
    if country is None and (text(lookup(address, "country.name")) or "").lower() in _SAUDI_NAMES:
        country = "SA"
    mobile = text(customer.get("mobile"))
    if mobile:
        mobile = re.sub(r"[\s-]", "", mobile)
    return customer_dict(
        external_id=text(customer.get("id")) or f"zid-order-{text(order.get('id'))}",
        name=text(customer.get("name")),
        email=text(customer.get("email")),
        phone=phone_number(mobile),
        vat_number=first_text(order, options.vat_number_fields),
        company=text(customer.get("business_name")) or text(customer.get("company_name")),
        address={
            "street": text(address.get("street")) or text(address.get("formatted_address")),
            "building_number": first_text(order, options.building_number_fields),
            "district": text(address.get("district")),
            "city": text(lookup(address, "city.name")) or text(address.get("city")),
            "postal_code": text(address.get("postal_code")),
            "country_code": country,
        },
        options=options,
    )
