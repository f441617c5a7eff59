"""A deterministic stream of demo sale-order events, with the outcome each should have.

The demo and the end-to-end tests feed these records to Kafka and compare what the worker did
with ``DemoRecord.expected``: ``"invoice"``, ``"credit_note"``, ``"skip"`` or
``"dlq:<reason>"`` (the ``reason`` of the error class that must dead-letter it).

The stream mixes individuals and businesses (Saudi VAT numbers ``3...3``), Arabic and English
names, line and order discounts, shipping (some of it discounted), zero-rated exports
(category Z, ``VATEX-SA-32``) to foreign businesses, cancellations and partial refunds after
payment, ``order.created``/``order.shipped`` events the pipeline skips, and a few broken
records, one defect each. Declared totals come from ``worker.money`` (net prices) or are the
amount the customer paid (VAT-inclusive prices, within the 0.05 tolerance), so every valid
event reconciles. One order's events share its key and come in order.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

from worker.money import (
    Adjustment,
    LineInput,
    TaxKey,
    compute_document,
    quantize,
    split_proportionally,
)

__all__ = ["DEMO_WEBHOOK_SECRETS", "DemoRecord", "generate_demo_events", "generate_platform_events"]

_START = datetime(2025, 1, 1, 6, 0, tzinfo=UTC)
_TOLERANCE = Decimal("0.05")

# (sku, English name, Arabic name, unit price)
_CATALOG: tuple[tuple[str, str, str, str], ...] = (
    ("DATES-1KG", "Sukkari dates 1 kg", "تمر سكري ١ كجم", "57.50"),
    ("COFFEE-500", "Arabic coffee 500 g", "قهوة عربية ٥٠٠ جم", "94.50"),
    ("OUD-50", "Oud oil 50 ml", "دهن عود ٥٠ مل", "120.00"),
    ("MUG-01", "Ceramic mug", "كوب خزفي", "208.69"),
    ("TEA-250", "Tea 250 g", "شاي ٢٥٠ جم", "4.55"),
    ("SAFFRON-5", "Saffron 5 g", "زعفران ٥ جم", "39.99"),
    ("HONEY-1", "Sidr honey 1 kg", "عسل سدر ١ كجم", "349.00"),
    ("DALLAH-S", "Brass dallah", "دلة نحاسية", "185.25"),
    ("CARDAMOM", "Cardamom 250 g", "هيل ٢٥٠ جم", "33.35"),
    ("INCENSE", "Incense sticks", "بخور", "12.15"),
)
_AR_NAMES = ("محمد العتيبي", "نورة القحطاني", "عبدالله الشهري", "سارة الدوسري", "فهد الحربي")
_EN_NAMES = ("Customer One", "Layla Haddad", "Omar Farouk", "Aisha Rahman", "John Smith")
_AR_COMPANIES = ("شركة المثال للتجارة", "مؤسسة النخيل", "شركة الواحة المحدودة")
_EN_COMPANIES = ("Example Trading Co.", "Desert Rose Ltd", "Red Sea Supplies")
_FOREIGN = (("AE", "Dubai"), ("KW", "Kuwait City"), ("GB", "London"), ("EG", "Cairo"))
_SA_CITIES = ("Riyadh", "Jeddah", "Dammam", "الرياض", "جدة")
_S15 = {"category": "S", "rate": "15"}
_Z_EXPORT = {
    "category": "Z",
    "rate": "0",
    "exemption_code": "VATEX-SA-32",
    "exemption_reason": "Export of goods",
}


@dataclass(frozen=True, slots=True)
class DemoRecord:
    """One Kafka record and the outcome the worker must reach for it."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    expected: str


def _saudi_vat(rng: random.Random) -> str:
    return "3" + "".join(str(rng.randrange(10)) for _ in range(13)) + "3"


def _customer(rng: random.Random, n: int, kind: str) -> dict[str, Any]:
    arabic = rng.random() < 0.5
    ident = f"cust-{n:05d}"
    email = f"buyer{n}@example.com"
    phone = f"+9665{n % 100_000_000:08d}"
    if kind == "individual":
        customer: dict[str, Any] = {
            "external_id": ident,
            "type": "individual",
            "name": rng.choice(_AR_NAMES if arabic else _EN_NAMES),
            "phone": phone,
            "address": {"city": rng.choice(_SA_CITIES), "country_code": "SA"},
        }
        if rng.random() < 0.7:
            customer["email"] = email
        return customer
    if kind == "business":
        return {
            "external_id": ident,
            "type": "business",
            "name": rng.choice(_AR_COMPANIES if arabic else _EN_COMPANIES),
            "email": email,
            "phone": phone,
            "vat_number": _saudi_vat(rng),
            "address": {
                "street": "Example Street",
                "building_number": f"{rng.randrange(1000, 10000)}",
                "additional_number": f"{rng.randrange(1000, 10000)}",
                "district": "Al Olaya",
                "city": rng.choice(_SA_CITIES),
                "postal_code": f"{rng.randrange(10000, 100000)}",
                "country_code": "SA",
            },
        }
    country, city = rng.choice(_FOREIGN)
    return {
        "external_id": ident,
        "type": "business",
        "name": rng.choice(_EN_COMPANIES) + f" ({country})",
        "email": email,
        "address": {"street": "Example Street", "city": city, "country_code": country},
    }


def _declared_total(order: dict[str, Any]) -> Decimal:
    """The platform's total: money.py's document total, or what was paid when inclusive."""
    cur = order["currency"]
    inclusive = order["prices_include_tax"]

    def key(tax: dict[str, str]) -> TaxKey:
        return TaxKey(tax["category"], Decimal(tax["rate"]), tax.get("exemption_code"))  # type: ignore[arg-type]

    lines = [
        LineInput(
            Decimal(line["quantity"]),
            Decimal(line["unit_price"]),
            key(line["tax"]),
            Decimal(line["discount_amount"]),
        )
        for line in order["lines"]
    ]
    amounts = [quantize(x.quantity * x.unit_price, cur) - x.discount_amount for x in lines]
    discount = sum((Decimal(d["amount"]) for d in order["order_discounts"]), Decimal(0))
    shares = split_proportionally(discount, amounts, currency=cur)
    adjustments = [Adjustment(s, x.tax) for s, x in zip(shares, lines, strict=True) if s]
    shipping = [
        LineInput(Decimal(1), Decimal(s["amount"]), key(s["tax"]), Decimal(s["discount_amount"]))
        for s in order["shipping"]
    ]
    doc = compute_document(
        lines + shipping, currency=cur, prices_include_tax=inclusive, order_discounts=adjustments
    )
    if inclusive:
        paid = sum((r.amount for r in doc.lines), Decimal(0)) - discount
        if abs(paid - doc.total_with_vat) <= _TOLERANCE:
            return paid
    return doc.total_with_vat


def _order(rng: random.Random, n: int) -> dict[str, Any]:
    roll = rng.random()
    kind = "individual" if roll < 0.55 else "business" if roll < 0.85 else "export"
    export = kind == "export"
    tax = _Z_EXPORT if export else _S15
    arabic_items = rng.random() < 0.5
    lines: list[dict[str, Any]] = []
    for i, (sku, en, ar, price) in enumerate(rng.sample(_CATALOG, rng.randint(1, 4)), 1):
        quantity = Decimal(rng.randint(1, 6))
        if sku in ("DATES-1KG", "TEA-250") and rng.random() < 0.3:
            quantity += Decimal("0.5")
        gross = quantize(quantity * Decimal(price), "SAR")
        discount = quantize(gross * Decimal("0.10"), "SAR") if rng.random() < 0.2 else Decimal(0)
        lines.append(
            {
                "line_id": f"{n}-{i}",
                "sku": sku,
                "name": ar if arabic_items else en,
                "quantity": str(quantity),
                "unit_price": price,
                "discount_amount": f"{discount:.2f}",
                "tax": dict(tax),
            }
        )
    shipping = []
    if rng.random() < 0.7:
        amount = Decimal(rng.choice(("15.00", "25.00", "35.00", "80.00" if export else "20.00")))
        roll = rng.random()
        off = amount if roll < 0.1 else Decimal("5.00") if roll < 0.25 else Decimal(0)
        shipping.append({"amount": str(amount), "discount_amount": f"{off:.2f}", "tax": dict(tax)})
    order_discounts = []
    if rng.random() < 0.25:
        # At most a fifth of the lines, so a discount never exceeds what it applies to.
        room = (
            sum((Decimal(x["quantity"]) * Decimal(x["unit_price"]) for x in lines), Decimal(0)) / 5
        )
        amount = min(Decimal(rng.randint(5, 20)), room.quantize(Decimal(1), rounding=ROUND_DOWN))
        if amount > 0:
            order_discounts.append({"amount": f"{amount:.2f}", "code": f"SAVE{n % 7}"})
    order: dict[str, Any] = {
        "currency": "SAR",
        "prices_include_tax": kind == "individual" and rng.random() < 0.6,
        "customer": _customer(rng, n, kind),
        "lines": lines,
        "shipping": shipping,
        "order_discounts": order_discounts,
        "totals": {"total": "0"},
    }
    order["totals"]["total"] = str(_declared_total(order))
    return order


def _envelope(n: int, seq: int, event_type: str, when: datetime) -> dict[str, Any]:
    return {
        "event_id": f"evt-{n:05d}-{seq}",
        "event_type": event_type,
        "occurred_at": when.isoformat().replace("+00:00", "Z"),
        "schema_version": "1",
        "source": {"platform": "demo", "store_id": "store-demo"},
        "order_id": f"ORD-{n:05d}",
    }


def _record(event: dict[str, Any], expected: str) -> DemoRecord:
    return DemoRecord(
        key=str(event["order_id"]).encode(),
        value=json.dumps(event, ensure_ascii=False).encode("utf-8"),
        headers=[
            ("content-type", b"application/json"),
            ("event-type", str(event.get("event_type", "")).encode()),
        ],
        expected=expected,
    )


def _order_events(rng: random.Random, n: int) -> list[DemoRecord]:
    when = _START + timedelta(minutes=47 * n + rng.randrange(40))
    order = _order(rng, n)
    records = []
    seq = 0

    def event(event_type: str, at: datetime, **body: Any) -> dict[str, Any]:
        nonlocal seq
        seq += 1
        return {**_envelope(n, seq, event_type, at), **body}

    if rng.random() < 0.15:
        records.append(_record(event("order.created", when, order=order), "skip"))
    paid_at = when + timedelta(minutes=5)
    records.append(_record(event("order.paid", paid_at, order=order), "invoice"))
    if rng.random() < 0.2:
        shipped = event("order.shipped", paid_at + timedelta(hours=20), tracking="TRK")
        records.append(_record(shipped, "skip"))
    roll = rng.random()
    later = paid_at + timedelta(days=rng.randint(1, 10))
    if roll < 0.1:
        body: dict[str, Any] = {"reason": "Customer changed their mind"}
        if rng.random() < 0.7:
            body["order"] = order
        records.append(_record(event("order.cancelled", later, **body), "credit_note"))
    elif roll < 0.22:
        line = rng.choice(order["lines"])
        quantity = min(Decimal(rng.randint(1, 3)), Decimal(line["quantity"]))
        refund: dict[str, Any] = {
            "refund_id": f"RF-{n:05d}",
            "lines": [{"line_id": line["line_id"], "quantity": str(quantity)}],
            "reason": rng.choice(("Damaged in transit", "تالف أثناء الشحن", "Wrong size")),
        }
        if order["shipping"] and rng.random() < 0.3:
            charged = Decimal(order["shipping"][0]["amount"]) - Decimal(
                order["shipping"][0]["discount_amount"]
            )
            refund["shipping_amount"] = str(quantize(charged / 2, "SAR"))
        records.append(
            _record(event("order.refunded", later, order=order, refund=refund), "credit_note")
        )
    return records


def _broken(rng: random.Random, n: int, defect: str) -> DemoRecord:
    """A paid order with exactly one defect, and the DLQ reason it must produce."""
    order = _order(rng, n)
    event = {**_envelope(n, 1, "order.paid", _START + timedelta(minutes=47 * n)), "order": order}
    if defect == "not_utf8":
        good = _record(event, "")
        return DemoRecord(
            good.key, b"\xff\xfe" + good.value[2:], good.headers, "dlq:malformed_event"
        )
    if defect == "invalid_json":
        good = _record(event, "")
        return DemoRecord(good.key, good.value[:-7], good.headers, "dlq:malformed_event")
    if defect == "schema":
        order["lines"][0]["quantity"] = "-1"
        return _record(event, "dlq:invalid_event")
    if defect == "version":
        event["schema_version"] = "2"
        return _record(event, "dlq:unsupported_schema_version")
    if defect == "total":
        order["totals"]["total"] = str(Decimal(order["totals"]["total"]) + Decimal("10.00"))
        return _record(event, "dlq:total_mismatch")
    business = _customer(rng, n, "business")
    order["customer"] = business
    order["prices_include_tax"] = False
    if defect == "buyer_vat":
        business["vat_number"] = "31234567890123"  # 14 digits
    elif defect == "buyer_id":
        del business["vat_number"]
    else:  # exemption: a zero-rated export line without its VATEX code
        business["address"] = {"city": "Dubai", "country_code": "AE"}
        del business["vat_number"]
        order["lines"][0]["tax"] = {"category": "Z", "rate": "0"}
    order["totals"]["total"] = str(_declared_total(order))
    reason = {
        "buyer_vat": "invalid_buyer_vat",
        "buyer_id": "missing_buyer_id",
        "exemption": "missing_exemption_reason",
    }[defect]
    return _record(event, f"dlq:{reason}")


_DEFECTS: tuple[str, ...] = (
    *("not_utf8", "invalid_json", "schema", "version", "total"),
    *("buyer_vat", "buyer_id", "exemption"),
)


def generate_demo_events(
    *, seed: int = 7, orders: int = 350, broken_each: int = 3, platforms: bool = True
) -> list[DemoRecord]:
    """``orders`` orders (about 1.6 events each) plus ``broken_each`` records per defect.

    With ``platforms``, the Salla, Zid and Shopify webhooks of ``generate_platform_events``
    are mixed in too (header ``x-event-source`` names their format).

    The same ``seed`` always gives the same bytes. Broken records use their own order ids
    (``ORD-9xxxx``) and are scattered between whole orders, so per-key order holds.
    """
    rng = random.Random(seed)
    batches = [_order_events(rng, n) for n in range(1, orders + 1)]
    broken = [
        [_broken(rng, 90_000 + i * len(_DEFECTS) + j, defect)]
        for i in range(broken_each)
        for j, defect in enumerate(_DEFECTS)
    ]
    for batch in broken:
        batches.insert(rng.randrange(len(batches) + 1), batch)
    if platforms:
        placer = random.Random(seed + 1)  # its own stream: the v1 records stay as they were
        for batch in generate_platform_events(seed=seed):
            batches.insert(placer.randrange(len(batches) + 1), batch)
    return [record for batch in batches for record in batch]


# --- platform webhooks (Salla, Zid, Shopify; worker.platforms) -------------------------------

#: Development secrets the demo signs platform records with (public, like the sandbox client).
DEMO_WEBHOOK_SECRETS: dict[str, bytes] = {
    "salla": b"demo-salla-webhook-secret",
    "shopify": b"demo-shopify-webhook-secret",
}
_PLATFORM_START = datetime(2025, 2, 1, 9, 0, tzinfo=UTC)
_RAW_NUMBER = re.compile(r'"\\u00a7(-?[0-9]+(?:\.[0-9]+)?)\\u00a7"')


def _num(value: Decimal | str) -> str:
    """A JSON number written from its decimal text (never through a float): see ``_dumps``."""
    return f"\u00a7{value}\u00a7"


def _dumps(body: dict[str, Any]) -> bytes:
    text = json.dumps(body, ensure_ascii=True)
    return _RAW_NUMBER.sub(r"\1", text).encode("utf-8")


def _platform_record(
    platform: str,
    order_id: str,
    body: dict[str, Any],
    expected: str,
    headers: list[tuple[str, bytes]],
) -> DemoRecord:
    value = _dumps(body)
    signed = list(headers)
    if platform == "shopify":
        signed.append(("X-Shopify-Hmac-Sha256", _sign(platform, value)))
    elif platform == "salla":
        signed += [
            ("X-Salla-Signature", _sign(platform, value)),
            ("X-Salla-Security-Strategy", b"Signature"),
        ]
    return DemoRecord(
        key=order_id.encode(),
        value=value,
        headers=[
            ("content-type", b"application/json"),
            ("x-event-source", platform.encode()),
            *signed,
        ],
        expected=expected,
    )


def _sign(platform: str, value: bytes) -> bytes:
    digest = hmac.new(DEMO_WEBHOOK_SECRETS[platform], value, hashlib.sha256).digest()
    return base64.b64encode(digest) if platform == "shopify" else digest.hex().encode()


def _platform_items(rng: random.Random, count: int) -> list[tuple[str, str, Decimal, Decimal]]:
    return [
        (sku, en, Decimal(rng.randint(1, 3)), Decimal(price))
        for sku, en, _ar, price in rng.sample(_CATALOG, count)
    ]


def _net_total(
    items: list[tuple[str, str, Decimal, Decimal]],
    discounts: list[Decimal],
    shipping: Decimal,
    *,
    order_discount: Decimal = Decimal(0),
) -> tuple[Decimal, Decimal]:
    """(VAT, total) of a net-priced order at 15 %, as the platforms compute it."""
    key = TaxKey("S", Decimal(15), None)
    lines = [LineInput(q, p, key, d) for (_s, _n, q, p), d in zip(items, discounts, strict=True)]
    adjustments = [Adjustment(order_discount, key)] if order_discount else []
    if shipping:
        lines.append(LineInput(Decimal(1), shipping, key, Decimal(0)))
    doc = compute_document(
        lines, currency="SAR", prices_include_tax=False, order_discounts=adjustments
    )
    return doc.total_with_vat - doc.taxable_amount, doc.total_with_vat


def _salla_body(
    rng: random.Random, order_id: int, *, event: str, status: str, when: datetime
) -> dict[str, Any]:
    items = _platform_items(rng, 2)
    discounts = [Decimal("10.00"), Decimal(0)]
    shipping = Decimal("15.00")
    vat, total = _net_total(items, discounts, shipping)

    def amount(value: Decimal) -> dict[str, Any]:
        return {"amount": _num(value), "currency": "SAR"}

    return {
        "event": event,
        "merchant": 1305146709,
        "created_at": when.strftime("%a %b %d %Y %H:%M:%S GMT+0000"),
        "data": {
            "id": order_id,
            "reference_id": order_id - 8_000_000,
            "status": {"name": status, "slug": status},
            "currency": "SAR",
            "amounts": {
                "sub_total": amount(sum((q * p for _s, _n, q, p in items), Decimal(0))),
                "shipping_cost": amount(shipping),
                "cash_on_delivery": amount(Decimal(0)),
                "tax": {"percent": "15.00", "amount": amount(vat)},
                "discounts": [
                    {
                        "title": "Ramadan offer",
                        "type": "special",
                        "code": "RAMADAN",
                        "discount": "10.00",
                        "discounted_shipping": 0,
                    }
                ],
                "total": amount(total),
            },
            "shipping": {
                "receiver": {
                    "name": "Customer One",
                    "email": "buyer1@example.com",
                    "phone": "966500000001",
                },
                "address": {
                    "country_code": "SA",
                    "city": "Riyadh",
                    "street_number": "Example Street 1",
                    "block": "Al Olaya",
                    "postal_code": "12211",
                },
            },
            "customer": {
                "id": 225167971,
                "first_name": "Customer",
                "last_name": "One",
                "mobile": 500000001,
                "mobile_code": "+966",
                "email": "buyer1@example.com",
                "country_code": "SA",
            },
            "items": [
                {
                    "id": order_id * 10 + i,
                    "name": name,
                    "sku": sku,
                    "quantity": int(q),
                    "amounts": {
                        "price_without_tax": amount(p),
                        "total_discount": amount(d),
                        "tax": {"percent": "15.00", "amount": amount(Decimal(0))},
                        "total": amount(q * p),
                    },
                }
                for i, ((sku, name, q, p), d) in enumerate(zip(items, discounts, strict=True), 1)
            ],
        },
    }


def _zid_body(
    rng: random.Random, order_id: int, *, status: str, payment: str, when: datetime
) -> dict[str, Any]:
    items = _platform_items(rng, 2)
    discount = Decimal("12.50")
    shipping = Decimal("25.00")
    vat, total = _net_total(items, [Decimal(0)] * len(items), shipping, order_discount=discount)
    subtotal = sum((q * p for _s, _n, q, p in items), Decimal(0))

    def long(value: Decimal) -> str:
        return f"{value:.14f}"

    invoice = [
        ("sub_totals_before_vat", subtotal),
        ("products_discount", -discount),
        ("sub_totals_after_products_discount", subtotal - discount),
        ("vat", vat),
        ("shipping", shipping),
        ("shipping_discount", Decimal(0)),
        ("total", total),
    ]
    stamp = when.strftime("%Y-%m-%d %H:%M:%S")
    return {
        "id": order_id,
        "store_id": 224947,
        "order_status": {"name": status, "code": status},
        "currency_code": "SAR",
        "customer": {
            "id": 179647,
            "name": "عبدالله الشهري",
            "email": "buyer3@example.com",
            "mobile": "966500000003",
            "type": "individual",
        },
        "order_total": long(total),
        "payment_status": payment,
        "created_at": stamp,
        "updated_at": stamp,
        "shipping": {
            "address": {
                "street": "Example Street",
                "district": "Al Malqa",
                "city": {"id": 1, "name": "الرياض"},
                "country": {"id": 184, "name": "السعودية"},
            }
        },
        "payment": {"invoice": [{"code": c, "value": long(v)} for c, v in invoice]},
        "coupon": {"code": "WELCOME"},
        "products": [
            {
                "id": f"{order_id}-{i}",
                "name": name,
                "sku": sku,
                "quantity": int(q),
                "is_taxable": True,
                "tax_percentage": 15,
                "price": _num(p),
                "net_price_with_additions": _num(p),
            }
            for i, (sku, name, q, p) in enumerate(items, 1)
        ],
    }


def _shopify_order(rng: random.Random, order_id: int, *, business: bool) -> dict[str, Any]:
    items = _platform_items(rng, 3)
    v1_lines = [
        {
            "quantity": str(q),
            "unit_price": str(p),
            "discount_amount": "5.00" if i == 0 else "0",
            "tax": {"category": "S", "rate": "15"},
        }
        for i, (_s, _n, q, p) in enumerate(items)
    ]
    shipping = {"amount": "25.00", "discount_amount": "0", "tax": {"category": "S", "rate": "15"}}
    total = _declared_total(
        {
            "currency": "SAR",
            "prices_include_tax": True,
            "lines": v1_lines,
            "shipping": [shipping],
            "order_discounts": [],
        }
    )

    def tax_lines(gross: Decimal) -> list[dict[str, Any]]:
        tax = quantize(gross * Decimal(15) / Decimal(115), "SAR")
        return [{"title": "VAT", "price": f"{tax:.2f}", "rate": _num("0.15")}]

    notes = []
    if business:
        notes = [
            {"name": "vat_number", "value": "300000000000003"},
            {"name": "building_number", "value": "7421"},
        ]
    return {
        "id": order_id,
        "name": f"#{order_id % 10_000}",
        "email": "buyer4@example.com",
        "phone": "+966500000004",
        "currency": "SAR",
        "taxes_included": True,
        "financial_status": "paid",
        "total_price": f"{total:.2f}",
        "note_attributes": notes,
        "customer": {
            "id": 207119551,
            "first_name": "Layla",
            "last_name": "Haddad",
            "email": "buyer4@example.com",
        },
        "billing_address": {
            "address1": "Example Street 4",
            "city": "Jeddah",
            "zip": "21577",
            "country_code": "SA",
            "company": "Red Sea Supplies" if business else None,
        },
        "line_items": [
            {
                "id": order_id * 10 + i,
                "variant_id": order_id * 100 + i,
                "sku": sku,
                "name": name,
                "quantity": int(q),
                "price": f"{p:.2f}",
                "taxable": True,
                "tax_lines": tax_lines(q * p),
                "discount_allocations": (
                    [{"amount": "5.00", "discount_application_index": 0}] if i == 1 else []
                ),
            }
            for i, (sku, name, q, p) in enumerate(items, 1)
        ],
        "shipping_lines": [
            {
                "title": "Standard",
                "price": "25.00",
                "discounted_price": "25.00",
                "tax_lines": tax_lines(Decimal(25)),
                "discount_allocations": [],
            }
        ],
        "updated_at": "2025-02-01T12:00:00+03:00",
    }


def _shopify_headers(topic: str, event: int, when: datetime) -> list[tuple[str, bytes]]:
    return [
        ("X-Shopify-Topic", topic.encode()),
        ("X-Shopify-Shop-Domain", b"demo-store.myshopify.com"),
        ("X-Shopify-Webhook-Id", f"b54557e4-{event:04d}".encode()),
        ("X-Shopify-Event-Id", f"98880550-{event:04d}".encode()),
        ("X-Shopify-Triggered-At", when.isoformat().encode()),
    ]


def generate_platform_events(*, seed: int = 7) -> list[list[DemoRecord]]:
    """A handful of Salla, Zid and Shopify webhooks, one batch (in order) per order.

    Covers: a Salla order created under review (skip), paid later (invoice), another paid at
    creation and then cancelled (credit note); a Zid order paid at creation and later refunded
    (credit note) and one still unpaid (skip); Shopify orders/paid delivered twice (the repeat is
    skipped), a refund of one line (credit note), a business buyer whose VAT number comes from a
    note attribute, and a cancellation (credit note). Records carry the platforms' headers and
    signatures (``DEMO_WEBHOOK_SECRETS``).
    """
    rng = random.Random(seed)
    t = _PLATFORM_START
    hour = timedelta(hours=1)
    batches: list[list[DemoRecord]] = []

    salla_a = [
        _salla_body(
            random.Random(seed + 1), 8100001, event="order.created", status="under_review", when=t
        ),
        _salla_body(
            random.Random(seed + 1),
            8100001,
            event="order.status.updated",
            status="in_progress",
            when=t + hour,
        ),
    ]
    batches.append(
        [
            _platform_record("salla", "8100001", salla_a[0], "skip", []),
            _platform_record("salla", "8100001", salla_a[1], "invoice", []),
        ]
    )
    salla_b = _salla_body(rng, 8100002, event="order.created", status="completed", when=t)
    cancelled = {
        **salla_b,
        "event": "order.cancelled",
        "created_at": (t + 3 * hour).strftime("%a %b %d %Y %H:%M:%S GMT+0000"),
        "data": {**salla_b["data"], "status": {"name": "canceled", "slug": "canceled"}},
    }
    batches.append(
        [
            _platform_record("salla", "8100002", salla_b, "invoice", []),
            _platform_record("salla", "8100002", cancelled, "credit_note", []),
        ]
    )

    zid_c = _zid_body(rng, 27400001, status="new", payment="paid", when=t)
    zid_refunded = {
        **zid_c,
        "order_status": {"name": "refunded", "code": "refunded"},
        "updated_at": (t + 48 * hour).strftime("%Y-%m-%d %H:%M:%S"),
    }
    batches.append(
        [
            _platform_record(
                "zid", "27400001", zid_c, "invoice", [("x-zid-event", b"order.create")]
            ),
            _platform_record(
                "zid",
                "27400001",
                zid_refunded,
                "credit_note",
                [("x-zid-event", b"order.status.update")],
            ),
        ]
    )
    zid_d = _zid_body(rng, 27400002, status="new", payment="pending", when=t)
    batches.append(
        [
            _platform_record("zid", "27400002", zid_d, "skip", [("x-zid-event", b"order.create")]),
        ]
    )

    order_e = _shopify_order(rng, 5500000001, business=False)
    paid_e = _shopify_headers("orders/paid", 1, t)
    line = order_e["line_items"][0]
    refund = {
        "id": 930000001,
        "order_id": order_e["id"],
        "note": "Damaged in transit",
        "created_at": (t + 72 * hour).isoformat(),
        "processed_at": (t + 72 * hour).isoformat(),
        "refund_line_items": [
            {"id": 1, "line_item_id": line["id"], "quantity": 1, "line_item": line}
        ],
        "order_adjustments": [],
        "transactions": [],
        "order": order_e,
    }
    batches.append(
        [
            _platform_record("shopify", "5500000001", order_e, "invoice", paid_e),
            _platform_record("shopify", "5500000001", order_e, "skip", paid_e),  # redelivered
            _platform_record(
                "shopify",
                "5500000001",
                refund,
                "credit_note",
                _shopify_headers("refunds/create", 2, t + 72 * hour),
            ),
        ]
    )
    order_f = _shopify_order(rng, 5500000002, business=True)
    cancelled_f = {
        **order_f,
        "cancelled_at": (t + 5 * hour).isoformat(),
        "cancel_reason": "customer",
        "financial_status": "refunded",
    }
    batches.append(
        [
            _platform_record(
                "shopify", "5500000002", order_f, "invoice", _shopify_headers("orders/paid", 3, t)
            ),
            _platform_record(
                "shopify",
                "5500000002",
                cancelled_f,
                "credit_note",
                _shopify_headers("orders/cancelled", 4, t + 5 * hour),
            ),
        ]
    )
    return batches
