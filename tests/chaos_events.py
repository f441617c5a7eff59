"""Event streams for the reliability suite, with the outcome every record must reach.

Built on :mod:`worker.demo_data` (its orders, lifecycles and broken records), rewritten to a
store id of the caller's choice so each scenario owns its ledger rows even on a shared
PostgreSQL database, and cut to about the number of events asked for, whole orders only so
one order's events keep their order. The expected documents come from the events themselves:
an invoice is referenced by its order id, a cancellation credit note by
``{order_id}-CN-cancel`` and a refund credit note by ``{order_id}-CN-{refund_id}`` (see
:mod:`worker.mapping`).
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from worker.demo_data import _DEFECTS, DemoRecord, _broken, _order_events

__all__ = ["ChaosEvents", "ChaosRecord", "generate_chaos_events", "unique_store_id"]

#: Defects in the order poison records cycle through: broken bytes, invalid events, totals.
POISON_DEFECTS: tuple[str, ...] = _DEFECTS


@dataclass(frozen=True, slots=True)
class ChaosRecord:
    """One Kafka record, what must become of it, and the document reference if any."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    expected: str  # invoice | credit_note | skip | dlq:<reason>
    reference: str | None = None

    @property
    def dlq_reason(self) -> str | None:
        return self.expected.split(":", 1)[1] if self.expected.startswith("dlq:") else None


@dataclass(frozen=True, slots=True)
class ChaosEvents:
    """A stream of records for one store and the documents it must produce."""

    store_id: str
    records: list[ChaosRecord]

    @property
    def invoices(self) -> set[str]:
        return {r.reference for r in self.records if r.expected == "invoice" and r.reference}

    @property
    def credit_notes(self) -> set[str]:
        return {r.reference for r in self.records if r.expected == "credit_note" and r.reference}

    @property
    def documents(self) -> set[str]:
        """Every reference the API must end up holding exactly once."""
        return self.invoices | self.credit_notes

    @property
    def poison(self) -> list[ChaosRecord]:
        return [r for r in self.records if r.dlq_reason is not None]

    def summary(self) -> dict[str, int]:
        counts = Counter(r.expected.split(":", 1)[0] for r in self.records)
        return {"events": len(self.records), **counts}


def unique_store_id(prefix: str = "chaos") -> str:
    """A store id no other scenario run uses (ledger keys start with the store id)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _restore(record: DemoRecord, store_id: str) -> DemoRecord:
    """The same record with ``source.store_id`` set, when its bytes are a JSON object."""
    try:
        event: Any = json.loads(record.value)
    except (UnicodeDecodeError, ValueError):
        return record  # broken bytes never reach the ledger; keep them byte for byte
    if not isinstance(event, dict) or not isinstance(event.get("source"), dict):
        return record
    event["source"]["store_id"] = store_id
    value = json.dumps(event, ensure_ascii=False).encode("utf-8")
    return DemoRecord(record.key, value, record.headers, record.expected)


def _reference(record: DemoRecord) -> str | None:
    if record.expected not in ("invoice", "credit_note"):
        return None
    event = json.loads(record.value)
    order_id = event["order_id"]
    if event["event_type"] == "order.paid":
        return str(order_id)
    if event["event_type"] == "order.cancelled":
        return f"{order_id}-CN-cancel"
    return f"{order_id}-CN-{event['refund']['refund_id']}"


def generate_chaos_events(
    *,
    events: int,
    seed: int,
    store_id: str | None = None,
    poison_rate: float = 0.0,
) -> ChaosEvents:
    """About ``events`` records (whole orders), ``poison_rate`` of them broken.

    Poison records cycle through every defect of :mod:`worker.demo_data` (bytes that are not
    UTF-8 or not JSON, schema violations, an unsupported version, buyer and exemption faults,
    a total mismatch) and sit between whole orders, as in the demo stream.
    """
    rng = random.Random(seed)
    store = store_id or unique_store_id()
    poison_count = round(events * poison_rate)
    batches: list[list[DemoRecord]] = []
    produced = 0
    n = 0
    while produced < events - poison_count:
        n += 1
        batch = _order_events(rng, n)
        batches.append(batch)
        produced += len(batch)
    for i in range(poison_count):
        defect = POISON_DEFECTS[i % len(POISON_DEFECTS)]
        batches.insert(rng.randrange(len(batches) + 1), [_broken(rng, 90_000 + i, defect)])
    records = []
    for batch in batches:
        for demo in batch:
            fixed = _restore(demo, store)
            records.append(
                ChaosRecord(
                    fixed.key, fixed.value, fixed.headers, fixed.expected, _reference(fixed)
                )
            )
    return ChaosEvents(store, records)
