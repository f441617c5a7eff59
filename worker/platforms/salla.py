"""Salla webhooks (``{event, merchant, created_at, data}``) as v1 events. Pure.

Every Salla order event carries the same order model in ``data`` (Salla: "10 order webhook
events that share the same model"); the event name and ``data.status.slug`` decide what it
means for us (docs/platforms/salla.md):

* ``order.refunded``, or status ``restored``/``refunded``: a credit note for the whole invoice
  (v1 ``order.cancelled`` without the order, reason "Order refunded": it mirrors the invoice,
  and a cancellation plus a refund of one order give one credit note, not two);
* ``order.cancelled``, or status ``canceled``: the same, reason "Order cancelled";
* a status in ``paid_statuses``: ``order.paid`` (repeats are ledger duplicates);
* ``order.created`` also yields ``order.created`` (skipped unless it is the invoice trigger);
* anything else (other ``order.*`` updates, ``invoice.*``, ``product.*``...): no event.

Salla prices are net of VAT (``price_without_tax``; the invoice sample: 4 x 208.69 - 41.74 =
793.02 + 15 % = 911.97), so ``prices_include_tax`` is false and discounts are net too.
"""

from __future__ import annotations

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

PLATFORM: Final = "salla"
CANCELLED_STATUSES: Final = frozenset({"canceled", "cancelled"})
REFUNDED_STATUSES: Final = frozenset({"restored", "refunded"})
_ZERO = Decimal(0)


def adapt(body: object, *, event_id: str, options: PlatformOptions) -> tuple[OrderEvent, ...]:
    """The v1 events one Salla webhook body stands for (possibly none).

    Raises:
        InvalidEvent: the envelope or the order lacks what the mapping needs, or the result
            breaks the v1 contract.
    """
    envelope = as_dict(body, "event")
    event = text(envelope.get("event"))
    if event is None:
        raise InvalidEvent("event: a Salla webhook needs its event name")
    if not event.startswith("order.") or event == "order.deleted":
        return ()
    data = as_dict(envelope.get("data"), "data")
    if isinstance(data.get("order"), dict) and "items" not in data:
        data = data["order"]  # some status events wrap the order model
    order_id = text(data.get("id"))
    store_id = text(envelope.get("merchant"))
    if order_id is None or store_id is None:
        raise InvalidEvent("data.id: a Salla order event needs the order id and the merchant")
    when = envelope.get("created_at") or data.get("date")
    occurred_at = timestamp(when, "created_at")
    status = (text(lookup(data, "status.slug")) or "").lower()

    parts: list[tuple[str, dict[str, Any]]] = []
    if event == "order.refunded" or status in REFUNDED_STATUSES:
        parts.append(("order.cancelled", {"reason": "Order refunded"}))
    elif event == "order.cancelled" or status in CANCELLED_STATUSES:
        parts.append(("order.cancelled", {"reason": "Order cancelled"}))
    else:
        paid = status in options.paid_statuses
        if event == "order.created" or paid:
            order = _order(data, options)
            if event == "order.created":
                parts.append(("order.created", {"order": order}))
            if paid:
                parts.append(("order.paid", {"order": order}))
    return build_events(
        platform=PLATFORM,
        store_id=store_id,
        order_id=order_id,
        occurred_at=occurred_at,
        event_id=event_id,
        parts=parts,
    )


def _order(data: dict[str, Any], options: PlatformOptions) -> dict[str, Any]:
    amounts = as_dict(data.get("amounts"), "data.amounts")
    currency = text(data.get("currency")) or text(lookup(amounts, "total.currency"))
    if currency is None:
        raise InvalidEvent("data.currency: missing")
    order_rate = rate_percent(
        lookup(amounts, "tax.percent") or 0, "data.amounts.tax.percent", fraction=False
    )

    lines: list[dict[str, Any]] = []
    allocated = _ZERO
    for i, item in enumerate(as_list(data.get("items"), "data.items")):
        path = f"data.items[{i}]"
        item = as_dict(item, path)
        item_amounts = as_dict(item.get("amounts"), f"{path}.amounts", required=False)
        unit_price = money(
            item_amounts.get("price_without_tax", item.get("price")),
            currency,
            f"{path}.amounts.price_without_tax",
        )
        discount = money(
            item_amounts.get("total_discount"),
            currency,
            f"{path}.amounts.total_discount",
            default=_ZERO,
        )
        allocated += discount
        percent = lookup(item_amounts, "tax.percent")
        rate = (
            order_rate
            if percent is None
            else rate_percent(percent, f"{path}.amounts.tax.percent", fraction=False)
        )
        line_id = text(item.get("id")) or str(i + 1)
        sku = (
            text(item.get("sku"))
            or text(lookup(item, "product.sku"))
            or f"salla-{text(lookup(item, 'product.id')) or line_id}"
        )
        lines.append(
            {
                "line_id": line_id,
                "sku": sku[:200],
                "name": text(item.get("name")) or sku,
                "quantity": fmt(decimal(item.get("quantity"), f"{path}.quantity")),
                "unit_price": fmt(unit_price),
                "discount_amount": fmt(discount),
                "tax": tax_dict(rate, options),
            }
        )

    shipping_cost = money(
        amounts.get("shipping_cost"), currency, "data.amounts.shipping_cost", default=_ZERO
    )
    cod = money(
        amounts.get("cash_on_delivery"), currency, "data.amounts.cash_on_delivery", default=_ZERO
    )
    discount_total = _ZERO
    shipping_discount = _ZERO
    codes = []
    for i, entry in enumerate(as_list(amounts.get("discounts"), "data.amounts.discounts")):
        entry = as_dict(entry, f"data.amounts.discounts[{i}]")
        discount_total += money(
            entry.get("discount"), currency, f"data.amounts.discounts[{i}].discount"
        )
        shipped = entry.get("discounted_shipping")
        if isinstance(shipped, int | Decimal | str) and not isinstance(shipped, bool):
            shipping_discount += money(
                shipped, currency, f"data.amounts.discounts[{i}].discounted_shipping"
            )
        if code := text(entry.get("code")) or text(entry.get("title")):
            codes.append(code)
    shipping_discount = min(shipping_discount, shipping_cost)
    # Item discounts are Salla's own allocation of the order discounts; only what it did not
    # allocate to items or shipping is left to spread as an order discount.
    unallocated = discount_total - shipping_discount - allocated
    order_discounts = (
        [{"amount": fmt(unallocated), "code": ", ".join(codes)[:500] or None}]
        if unallocated > 0
        else []
    )
    shipping = []
    if shipping_cost or shipping_discount:
        shipping.append(
            {
                "amount": fmt(shipping_cost),
                "discount_amount": fmt(shipping_discount),
                "tax": tax_dict(order_rate, options),
            }
        )
    if cod:
        shipping.append({"amount": fmt(cod), "tax": tax_dict(order_rate, options)})

    totals: dict[str, str] = {
        "total": fmt(money(amounts.get("total"), currency, "data.amounts.total"))
    }
    for name, value in (
        ("subtotal", amounts.get("sub_total")),
        ("tax", lookup(amounts, "tax.amount")),
    ):
        if value is not None:
            totals[name] = fmt(abs(money(value, currency, f"data.amounts.{name}")))
    return {
        "currency": currency,
        "prices_include_tax": False,
        "customer": _customer(data, options),
        "lines": lines,
        "shipping": shipping,
        "order_discounts": order_discounts,
        "totals": totals,
    }


def _customer(data: dict[str, Any], options: PlatformOptions) -> dict[str, Any]:
    customer = as_dict(data.get("customer"), "data.customer", required=False)
    receiver = as_dict(lookup(data, "shipping.receiver"), "data.shipping.receiver", required=False)
    address = as_dict(lookup(data, "shipping.address"), "data.shipping.address", required=False)
    name = " ".join(
        part for part in (text(customer.get("first_name")), text(customer.get("last_name"))) if part
    )
    mobile = text(customer.get("mobile"))
    code = text(customer.get("mobile_code")) or ""
    return customer_dict(
        external_id=text(customer.get("id")) or f"salla-order-{text(data.get('id'))}",
        name=name or text(receiver.get("name")),
        email=text(customer.get("email")) or text(receiver.get("email")),
        phone=phone_number(mobile, code) or phone_number(text(receiver.get("phone")), ""),
        vat_number=first_text(data, options.vat_number_fields),
        company=text(customer.get("company_name")),
        address={
            "street": text(address.get("street_number")) or text(address.get("shipping_address")),
            "building_number": first_text(data, options.building_number_fields),
            "district": text(address.get("block")),
            "city": text(address.get("city")) or text(customer.get("city")),
            "postal_code": text(address.get("postal_code")),
            "country_code": text(address.get("country_code")) or text(customer.get("country_code")),
        },
        options=options,
    )
