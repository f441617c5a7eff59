"""Paid-order v1 events for the benchmark: cheap to make in bulk, valid, cache-friendly.

Each order has its own key (the order id) and 1-3 product lines from a ten-SKU catalogue,
taxed at 15 % with net prices, no discounts and no shipping, so the declared total is
``money.compute_document``'s total and every event becomes exactly one invoice. Buyers
are individuals drawn from a small pool, as real traffic repeats customers: after the
first few hundred events the worker's customer and product lookups are cache hits, and
what is measured is the steady state, not the warm-up.

For the paced latency run an event is built with a fixed-width placeholder
``occurred_at`` that :func:`stamp` overwrites at send time without re-encoding JSON.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from worker.money import LineInput, TaxKey, compute_document, quantize

__all__ = ["PLACEHOLDER", "BenchEvent", "make_events", "stamp", "warmup_events"]

#: Same width as :func:`_rfc3339` output, so stamping keeps the byte length.
PLACEHOLDER = "2000-01-01T00:00:00.000000Z"
_PLACEHOLDER_BYTES = PLACEHOLDER.encode()
_FIXED_TIME = "2025-03-01T09:30:00.000000Z"

_CATALOG: tuple[tuple[str, str, str], ...] = (
    ("DATES-1KG", "Sukkari dates 1 kg", "57.50"),
    ("COFFEE-500", "Arabic coffee 500 g", "94.50"),
    ("OUD-50", "Oud oil 50 ml", "120.00"),
    ("MUG-01", "Ceramic mug", "208.69"),
    ("TEA-250", "Tea 250 g", "4.55"),
    ("SAFFRON-5", "Saffron 5 g", "39.99"),
    ("HONEY-1", "Sidr honey 1 kg", "349.00"),
    ("DALLAH-S", "Brass dallah", "185.25"),
    ("CARDAMOM", "Cardamom 250 g", "33.35"),
    ("INCENSE", "Incense sticks", "12.15"),
)
_NAMES = ("Layla Haddad", "Omar Farouk", "Aisha Rahman", "محمد العتيبي", "نورة القحطاني")
_S15 = {"category": "S", "rate": "15"}
_S15_KEY = TaxKey("S", Decimal(15))


@dataclass(frozen=True, slots=True)
class BenchEvent:
    """One Kafka record: ``key`` is the order id, which is also the invoice reference."""

    key: bytes
    value: bytes

    @property
    def reference(self) -> str:
        return self.key.decode()


def _customer(n: int) -> dict[str, Any]:
    return {
        "external_id": f"bench-cust-{n:04d}",
        "type": "individual",
        "name": _NAMES[n % len(_NAMES)],
        "email": f"bench.buyer{n}@example.com",
        "phone": f"+96650{n:07d}",
        "address": {"city": "Riyadh", "country_code": "SA"},
    }


def _event(order_id: str, customer: dict[str, Any], rng: random.Random, when: str) -> bytes:
    lines = []
    inputs = []
    for i, (sku, name, price) in enumerate(rng.sample(_CATALOG, rng.randint(1, 3)), 1):
        quantity = Decimal(rng.randint(1, 5))
        lines.append(
            {
                "line_id": f"{order_id}-{i}",
                "sku": sku,
                "name": name,
                "quantity": str(quantity),
                "unit_price": price,
                "discount_amount": "0.00",
                "tax": _S15,
            }
        )
        inputs.append(LineInput(quantity, Decimal(price), _S15_KEY))
    total = compute_document(inputs, currency="SAR", prices_include_tax=False).total_with_vat
    event = {
        "event_id": f"evt-{order_id}",
        "event_type": "order.paid",
        "occurred_at": when,
        "schema_version": "1",
        "source": {"platform": "bench", "store_id": "store-bench"},
        "order_id": order_id,
        "order": {
            "currency": "SAR",
            "prices_include_tax": False,
            "customer": customer,
            "lines": lines,
            "shipping": [],
            "order_discounts": [],
            "totals": {"total": str(quantize(total, "SAR"))},
        },
    }
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def make_events(
    count: int, *, prefix: str, customers: int = 100, seed: int = 11, paced: bool = False
) -> list[BenchEvent]:
    """``count`` paid orders ``<prefix>-000001``...; ``paced`` leaves ``occurred_at`` to stamp."""
    rng = random.Random(seed)
    pool = [_customer(n) for n in range(customers)]
    when = PLACEHOLDER if paced else _FIXED_TIME
    events = []
    for n in range(1, count + 1):
        order_id = f"{prefix}-{n:06d}"
        value = _event(order_id, pool[rng.randrange(customers)], rng, when)
        events.append(BenchEvent(order_id.encode(), value))
    return events


def warmup_events(*, prefix: str, customers: int = 100) -> list[BenchEvent]:
    """One order per pool customer, so a latency run starts with the lookups cached."""
    rng = random.Random(5)
    return [
        BenchEvent(
            f"{prefix}-{n:06d}".encode(),
            _event(f"{prefix}-{n:06d}", _customer(n), rng, _FIXED_TIME),
        )
        for n in range(customers)
    ]


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stamp(value: bytes, moment: datetime | None = None) -> bytes:
    """``value`` with its placeholder ``occurred_at`` set to ``moment`` (default: now, UTC)."""
    text = _rfc3339(moment or datetime.now(UTC)).encode()
    return value.replace(_PLACEHOLDER_BYTES, text, 1)
