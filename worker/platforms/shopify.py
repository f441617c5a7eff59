"""Shopify order webhooks (the body plus ``X-Shopify-Topic``) as v1 events. Pure.

Topics (docs/platforms/shopify.md):

* ``orders/paid``: ``order.paid``;
* ``orders/create``/``orders/updated``: ``order.created`` for create, and ``order.paid`` when
  ``financial_status`` is in ``paid_statuses`` (repeats are ledger duplicates);
* ``orders/cancelled``: a credit note for the whole invoice (v1 ``order.cancelled`` without the
  order: it mirrors the invoice), reason ``cancel_reason``;
* ``refunds/create``: ``order.refunded`` for the refunded line items and shipping. Shopify's
  refund body has no customer and no order totals, so the producer must embed the order as
  ``order`` (``{...refund, "order": {...}}`` or ``{"refund": ..., "order": ...}``); without it
  the record is ``unmappable_order``;
* any other topic: no event.

Money: prices are strings in the shop currency; ``taxes_included`` is the v1
``prices_include_tax``. Discounts are taken from ``discount_allocations`` (Shopify's own split of
every discount application over lines and shipping), so there is nothing left to spread as an
order discount. A line's tax rate is the sum of its ``tax_lines`` rates (fractions, 0.15 =
15 %); the published tax amounts are not used, ``worker.money`` recomputes VAT from the rate.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

from worker.errors import InvalidEvent, UnmappableOrder
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

__all__ = ["TOPICS", "adapt"]

PLATFORM: Final = "shopify"
#: Topics that can produce events; every other topic yields none.
TOPICS: Final = frozenset(
    {"orders/paid", "orders/create", "orders/updated", "orders/cancelled", "refunds/create"}
)
_ZERO = Decimal(0)


def adapt(
    body: object,
    *,
    topic: str,
    shop_domain: str | None,
    event_id: str,
    options: PlatformOptions,
    triggered_at: str | None = None,
) -> tuple[OrderEvent, ...]:
    """The v1 events one Shopify webhook stands for (possibly none).

    ``shop_domain`` (``X-Shopify-Shop-Domain``) is the store id; ``triggered_at``
    (``X-Shopify-Triggered-At``) the event time when forwarded.

    Raises:
        InvalidEvent: the body lacks what the mapping needs or breaks the v1 contract.
        UnmappableOrder: a refund without its order.
    """
    topic = topic.strip().lower()
    if topic not in TOPICS:
        return ()
    data = as_dict(body, "order")
    store_id = shop_domain or "shopify"
    if topic == "refunds/create":
        return _refund(data, store_id=store_id, event_id=event_id, options=options)

    order_id = text(data.get("id"))
    if order_id is None:
        raise InvalidEvent("id: a Shopify order needs its id")
    parts: list[tuple[str, dict[str, Any]]] = []
    if topic == "orders/cancelled":
        when = data.get("cancelled_at") or triggered_at or data.get("updated_at")
        reason = text(data.get("cancel_reason"))
        parts.append(
            ("order.cancelled", {"reason": f"Order cancelled ({reason})" if reason else None})
        )
    else:
        when = triggered_at or data.get("updated_at") or data.get("processed_at")
        financial = (text(data.get("financial_status")) or "").lower()
        paid = topic == "orders/paid" or financial in options.paid_statuses
        order = _order(data, options)
        if topic == "orders/create":
            parts.append(("order.created", {"order": order}))
        if paid:
            parts.append(("order.paid", {"order": order}))
    return build_events(
        platform=PLATFORM,
        store_id=store_id,
        order_id=order_id,
        occurred_at=timestamp(when, "updated_at"),
        event_id=event_id,
        parts=parts,
    )


def _refund(
    data: dict[str, Any], *, store_id: str, event_id: str, options: PlatformOptions
) -> tuple[OrderEvent, ...]:
    refund = as_dict(data.get("refund"), "refund") if "refund" in data else data
    embedded = data.get("order")
    if not isinstance(embedded, dict):
        raise UnmappableOrder(
            "order: a Shopify refunds/create body has no customer or totals; "
            "the producer must embed the order as 'order'"
        )
    order_id = text(refund.get("order_id")) or text(embedded.get("id"))
    refund_id = text(refund.get("id"))
    if order_id is None or refund_id is None:
        raise InvalidEvent("id: a Shopify refund needs its id and order_id")
    if text(embedded.get("id")) != order_id:
        raise InvalidEvent("order.id: the embedded order is not the refunded order")
    order = _order(embedded, options)
    currency = order["currency"]
    lines = []
    for i, item in enumerate(as_list(refund.get("refund_line_items"), "refund_line_items")):
        path = f"refund_line_items[{i}]"
        item = as_dict(item, path)
        line_id = text(item.get("line_item_id")) or text(lookup(item, "line_item.id"))
        if line_id is None:
            raise InvalidEvent(f"{path}.line_item_id: missing")
        quantity = decimal(item.get("quantity"), f"{path}.quantity")
        if quantity > 0:
            lines.append({"line_id": line_id, "quantity": fmt(quantity)})
    shipping_amount = _ZERO
    for i, adjustment in enumerate(as_list(refund.get("order_adjustments"), "order_adjustments")):
        path = f"order_adjustments[{i}]"
        adjustment = as_dict(adjustment, path)
        if text(adjustment.get("kind")) != "shipping_refund":
            continue
        shipping_amount += abs(money(adjustment.get("amount"), currency, f"{path}.amount"))
        if order["prices_include_tax"]:
            shipping_amount += abs(
                money(adjustment.get("tax_amount"), currency, f"{path}.tax_amount", default=_ZERO)
            )
    if not lines and not shipping_amount:
        raise UnmappableOrder("refund: no line items or shipping to credit", refund_id=refund_id)
    body = {
        "order": order,
        "refund": {
            "refund_id": refund_id,
            "lines": lines,
            "shipping_amount": fmt(shipping_amount),
            "reason": text(refund.get("note")),
        },
    }
    when = refund.get("processed_at") or refund.get("created_at")
    return build_events(
        platform=PLATFORM,
        store_id=store_id,
        order_id=order_id,
        occurred_at=timestamp(when, "created_at"),
        event_id=event_id,
        parts=[("order.refunded", body)],
    )


def _tax_rate(item: dict[str, Any], path: str) -> Decimal:
    if item.get("taxable") is False:
        return _ZERO
    return sum(
        (
            rate_percent(
                as_dict(t, f"{path}.tax_lines[{j}]").get("rate"),
                f"{path}.tax_lines[{j}].rate",
                fraction=True,
            )
            for j, t in enumerate(as_list(item.get("tax_lines"), f"{path}.tax_lines"))
        ),
        _ZERO,
    )


def _allocated(item: dict[str, Any], currency: str, path: str) -> Decimal:
    return sum(
        (
            money(
                as_dict(a, f"{path}.discount_allocations[{j}]").get("amount"),
                currency,
                f"{path}.discount_allocations[{j}].amount",
            )
            for j, a in enumerate(
                as_list(item.get("discount_allocations"), f"{path}.discount_allocations")
            )
        ),
        _ZERO,
    )


def _order(data: dict[str, Any], options: PlatformOptions) -> dict[str, Any]:
    currency = text(data.get("currency"))
    if currency is None:
        raise InvalidEvent("currency: missing")
    lines = []
    for i, item in enumerate(as_list(data.get("line_items"), "line_items")):
        path = f"line_items[{i}]"
        item = as_dict(item, path)
        line_id = text(item.get("id")) or str(i + 1)
        discount = _allocated(item, currency, path)
        if not item.get("discount_allocations"):
            discount = money(
                item.get("total_discount"), currency, f"{path}.total_discount", default=_ZERO
            )
        sku = (
            text(item.get("sku"))
            or (
                f"shopify-variant-{text(item.get('variant_id'))}"
                if item.get("variant_id")
                else None
            )
            or f"shopify-line-{line_id}"
        )
        lines.append(
            {
                "line_id": line_id,
                "sku": sku[:200],
                "name": text(item.get("name")) or text(item.get("title")) or sku,
                "quantity": fmt(decimal(item.get("quantity"), f"{path}.quantity")),
                "unit_price": fmt(money(item.get("price"), currency, f"{path}.price")),
                "discount_amount": fmt(discount),
                "tax": tax_dict(_tax_rate(item, path), options),
            }
        )
    shipping = []
    for i, ship in enumerate(as_list(data.get("shipping_lines"), "shipping_lines")):
        path = f"shipping_lines[{i}]"
        ship = as_dict(ship, path)
        amount = money(ship.get("price"), currency, f"{path}.price")
        discount = _allocated(ship, currency, path)
        if not ship.get("discount_allocations") and ship.get("discounted_price") is not None:
            discount = amount - money(
                ship.get("discounted_price"), currency, f"{path}.discounted_price"
            )
        if amount:
            shipping.append(
                {
                    "amount": fmt(amount),
                    "discount_amount": fmt(min(max(discount, _ZERO), amount)),
                    "tax": tax_dict(_tax_rate(ship, path), options),
                }
            )
    totals = {"total": fmt(money(data.get("total_price"), currency, "total_price"))}
    for name, field in (
        ("subtotal", "subtotal_price"),
        ("tax", "total_tax"),
        ("discount", "total_discounts"),
    ):
        if data.get(field) is not None:
            totals[name] = fmt(abs(money(data.get(field), currency, field)))
    return {
        "currency": currency,
        "prices_include_tax": data.get("taxes_included") is True,
        "customer": _customer(data, options),
        "lines": lines,
        "shipping": shipping,
        "order_discounts": [],
        "totals": totals,
    }


def _customer(data: dict[str, Any], options: PlatformOptions) -> dict[str, Any]:
    customer = as_dict(data.get("customer"), "customer", required=False)
    address = (
        as_dict(data.get("billing_address"), "billing_address", required=False)
        or as_dict(data.get("shipping_address"), "shipping_address", required=False)
        or as_dict(customer.get("default_address"), "customer.default_address", required=False)
    )
    person = " ".join(
        p for p in (text(customer.get("first_name")), text(customer.get("last_name"))) if p
    )
    street = ", ".join(
        p for p in (text(address.get("address1")), text(address.get("address2"))) if p
    )
    return customer_dict(
        external_id=text(customer.get("id")) or f"shopify-order-{text(data.get('id'))}",
        name=person or text(address.get("name")),
        email=text(data.get("email"))
        or text(data.get("contact_email"))
        or text(customer.get("email")),
        phone=phone_number(
            text(data.get("phone")) or text(customer.get("phone")) or text(address.get("phone"))
        ),
        vat_number=first_text(data, options.vat_number_fields),
        company=text(address.get("company")),
        address={
            "street": street or None,
            "building_number": first_text(data, options.building_number_fields),
            "city": text(address.get("city")),
            "postal_code": text(address.get("zip")),
            "country_code": text(address.get("country_code")),
        },
        options=options,
    )
