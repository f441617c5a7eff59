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

import json
import random
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

__all__ = ["DemoRecord", "generate_demo_events"]

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
    *, seed: int = 7, orders: int = 350, broken_each: int = 3
) -> list[DemoRecord]:
    """``orders`` orders (about 1.6 events each) plus ``broken_each`` records per defect.

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
    return [record for batch in batches for record in batch]
