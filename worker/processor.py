"""What one event does: parse, map, claim in the ledger, resolve ids, create, record.

The pipeline (:mod:`worker.pipeline`) calls :meth:`EventProcessor.handle` for each record, in
key order, and owns retries: this module raises classified errors and never sleeps.

The exactly-once steps, in order (see :mod:`worker.ledger`):

1. parse and map (pure; permanent errors raise before any I/O);
2. claim the ledger row: ``DONE`` -> skip as a duplicate, ``VOID`` -> skip (cancelled before
   it was invoiced), ``RESUME`` -> look the document up by reference before creating;
3. find or create the contact and products (cached, one lookup in flight per identity);
4. POST with the row's Idempotency-Key; "reference already taken" -> look it up and record it;
5. complete the row with the document id and the body sent (the audit trail, and the lines a
   later cancellation mirrors).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from decimal import Decimal
from typing import Any, Generic, TypeVar

from aiokafka.structs import ConsumerRecord

from worker.api import AccountingApi
from worker.auth import encode_json
from worker.errors import (
    ApiUnavailable,
    BadSignature,
    DuplicateReference,
    NoOriginalInvoice,
    PermanentEventError,
    ReferenceConflict,
    TransientError,
    UnknownSku,
    UnmappableOrder,
)
from worker.events import CANCELLATION_SUB_ID, ORDER_CANCELLED, OrderEvent, parse_event
from worker.ledger import ClaimStatus, Ledger, LedgerKey
from worker.logs import event_context, get_logger
from worker.mapping import (
    DocumentPlan,
    MappingOptions,
    credit_excess,
    document_kind,
    plan_document,
    subtract_credited,
)
from worker.metrics import DEDUPLICATED, DOCUMENTS_CREATED, PLATFORM_EVENTS, labelled
from worker.pipeline import HandleResult
from worker.platforms import DecodedRecord, PlatformConfig, decode_record, detect_format, header_map
from worker.settings import Settings

__all__ = ["EventProcessor", "TtlCache", "mapping_options"]

log = get_logger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A bounded LRU map whose entries expire; ``get_or_load`` runs one load per key at once."""

    def __init__(
        self, *, maxsize: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._maxsize = maxsize
        self._ttl_s = ttl_s
        self._clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        # Loads in flight, so concurrent events for one new customer create it once.
        self._loading: dict[K, asyncio.Future[V]] = {}

    def get(self, key: K) -> V | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        expires, value = hit
        if self._clock() >= expires:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self._maxsize <= 0:
            return
        self._data[key] = (self._clock() + self._ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self._maxsize:
            self._data.popitem(last=False)

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        cached = self.get(key)
        if cached is not None:
            return cached
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters may be none
            raise
        else:
            future.set_result(value)
            self.put(key, value)
            return value
        finally:
            del self._loading[key]


def mapping_options(settings: Settings) -> MappingOptions:
    """The mapping knobs from settings."""
    m = settings.mapping
    return MappingOptions(
        invoice_trigger=m.invoice_trigger,
        shipping_sku=m.shipping_sku,
        status=m.document_status,
        due_days=m.due_days,
        timezone=m.timezone,
        currency=m.currency,
        total_tolerance=Decimal(m.total_tolerance),
        inventory_id=settings.api.inventory_id,
        create_missing_products=m.create_missing_products,
        reference_template=m.reference_template,
    )


class NothingToCredit(Exception):
    """A cancellation after full refunds: there is no credit note left to create."""


def _derived_key(*parts: str) -> str:
    return "isync-" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


class EventProcessor:
    """Turns one Kafka record into at most one document (see the module docstring)."""

    def __init__(self, *, api: AccountingApi, ledger: Ledger, settings: Settings) -> None:
        self._api = api
        self._ledger = ledger
        self._options = mapping_options(settings)
        self._platforms = PlatformConfig.from_settings(settings)
        size, ttl = settings.pipeline.lookup_cache_size, settings.pipeline.lookup_cache_ttl_s
        self._contacts: TtlCache[tuple[str, str], int | str] = TtlCache(maxsize=size, ttl_s=ttl)
        self._products: TtlCache[str, int | str] = TtlCache(maxsize=size, ttl_s=ttl)
        # Types outside the contract's four already logged (bounded: a topic cannot grow it).
        self._unknown_types: set[str] = set()

    def _note_unknown_type(self, event_type: str) -> None:
        """Say once per type that events of a type outside the contract are skipped.

        The contract lets producers publish other order events (``order.shipped``), so they
        are not errors; but a misspelt ``order.payed`` would lose its invoice without a trace
        in the logs if only a counter (``event_type="other"``) saw it.
        """
        if event_type in self._unknown_types or len(self._unknown_types) >= _UNKNOWN_TYPES_LOGGED:
            return
        self._unknown_types.add(event_type)
        log.info("event.unknown_type_skipped", event_type=event_type, first_of_type=True)

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> HandleResult:
        """Process one record.

        Raises:
            PermanentEventError: the event cannot become a document (the pipeline
                dead-letters it); ``details["event_type"]`` is set when known.
            TransientError, ConfigurationFault: try again later (a transient error carries
                ``details["event_type"]`` too, for the dead letter if retries run out).
        """
        # A record is v1 or a platform webhook (worker.platforms): 0..n v1 events. A platform
        # delivery seen before is skipped; it is recorded only after all its events finished.
        decoded = self._decode(record)
        platform, delivery = decoded.format, decoded.delivery_id
        if delivery is not None and await self._ledger.delivery_seen(platform, delivery):
            DEDUPLICATED.labels("delivery").inc()
            PLATFORM_EVENTS.labels(platform, "duplicate").inc()
            log.info("delivery.duplicate", platform=platform, source_event=decoded.source_event)
            return HandleResult(_event_type(decoded), "duplicate")
        results = []
        for event in decoded.events:
            with event_context(
                order_id=event.order_id, event_type=event.event_type, event_id=event.event_id
            ):
                try:
                    results.append(await self._handle_event(event))
                except (PermanentEventError, TransientError) as exc:
                    # The type labels the dead letter, also when retries run out.
                    exc.details.setdefault("event_type", event.event_type)
                    raise
        if delivery is not None:
            await self._ledger.record_delivery(platform, delivery)
            PLATFORM_EVENTS.labels(platform, "decoded" if results else "ignored").inc()
        return _combined(decoded, results)

    def _decode(self, record: ConsumerRecord[bytes, bytes]) -> DecodedRecord:
        headers = header_map(record.headers)
        fmt = detect_format(record.topic, headers, self._platforms)
        if fmt == "v1":
            return DecodedRecord("v1", (parse_event(record.value or b"", key=record.key),))
        try:
            return decode_record(
                record.value, headers=record.headers, config=self._platforms, fmt=fmt
            )
        except PermanentEventError as exc:
            outcome = "bad_signature" if isinstance(exc, BadSignature) else "rejected"
            PLATFORM_EVENTS.labels(fmt, outcome).inc()
            exc.details.setdefault("platform", fmt)
            raise

    async def _handle_event(self, event: OrderEvent) -> HandleResult:
        kind = document_kind(event, options=self._options)
        if kind is None:
            if not event.is_document_event:
                self._note_unknown_type(event.event_type)
            log.debug("event.skipped")
            return HandleResult(event.event_type, "skipped")
        plan = plan_document(event, options=self._options)
        assert plan is not None
        key = self._ledger_key(plan)
        parent_payload: dict[str, Any] | None = None
        parent_id: int | str | None = None
        if kind == "credit_note":
            invoice_key = LedgerKey(key.store_id, "invoice", key.order_id)
            invoice = await self._ledger.get(invoice_key)
            if invoice is None and event.event_type == ORDER_CANCELLED:
                if await self._ledger.void(invoice_key, event_id=event.event_id):
                    log.info("order.cancelled_before_invoice", reference=plan.invoice_reference)
                    return HandleResult(event.event_type, "void")
                invoice = await self._ledger.get(invoice_key)
            if invoice is not None and invoice.state == "void":
                return HandleResult(event.event_type, "void")
            if invoice is None or invoice.state != "done" or not invoice.document_id:
                raise NoOriginalInvoice(
                    f"no invoice in the ledger for order {key.order_id}",
                    invoice_reference=plan.invoice_reference,
                )
            parent_id = (
                int(invoice.document_id) if invoice.document_id.isdigit() else (invoice.document_id)
            )
            parent_payload = json.loads(invoice.payload) if invoice.payload else None

        claim = await self._ledger.claim(
            key,
            idempotency_key=plan.idempotency_key,
            reference=plan.reference,
            event_id=event.event_id,
        )
        if claim.status is ClaimStatus.DONE:
            DEDUPLICATED.labels(kind).inc()
            log.debug("document.already_exists", reference=plan.reference)
            return HandleResult(event.event_type, "duplicate")
        if claim.status is ClaimStatus.VOID:
            log.info("order.not_invoiced_cancelled", reference=plan.reference)
            return HandleResult(event.event_type, "void")
        try:
            if claim.status is ClaimStatus.RESUME:
                found = await self._find(kind, plan.reference)
                if found is not None:
                    # The contact too, not the total alone: two stores' orders with one id
                    # and one total differ only in their buyer.
                    contact = await self._contact_id(plan) if plan.customer is not None else None
                    self._check_ours(kind, plan, found, contact_id=contact)
                    await self._ledger.complete(key, document_id=str(found["id"]), payload=None)
                    log.info(
                        "document.reconciled",
                        kind=kind,
                        reference=plan.reference,
                        document_id=found["id"],
                        attempt=claim.attempts,
                    )
                    return HandleResult(event.event_type, "reconciled")
            try:
                body = await self._body(plan, parent_id=parent_id, parent_payload=parent_payload)
            except NothingToCredit as done:
                await self._ledger.complete(key, document_id="", payload=None)
                log.info("credit_note.nothing_left", reference=plan.reference, why=str(done))
                return HandleResult(event.event_type, "skipped")
            document, outcome = await self._create(kind, plan, body)
            await self._ledger.complete(
                key, document_id=str(document["id"]), payload=encode_json(body).decode()
            )
        except PermanentEventError as exc:
            await self._ledger.record_error(key, reason=exc.reason, dead_lettered=True)
            raise
        except TransientError as exc:
            await self._ledger.record_error(key, reason=exc.reason, dead_lettered=False)
            raise
        if outcome == "created":
            labelled(DOCUMENTS_CREATED, kind).inc()
        log.info(
            "document.created" if outcome == "created" else "document.reconciled",
            kind=kind,
            reference=plan.reference,
            document_id=document["id"],
            attempt=claim.attempts,
            total=str(document.get("total", "")),
        )
        return HandleResult(event.event_type, outcome)

    @staticmethod
    def _ledger_key(plan: DocumentPlan) -> LedgerKey:
        k = plan.ledger_key
        sub = k.refund_id or (CANCELLATION_SUB_ID if plan.kind == "credit_note" else "")
        return LedgerKey(k.store_id, k.kind, k.order_id, sub)

    async def _find(self, kind: str, reference: str) -> dict[str, Any] | None:
        if kind == "invoice":
            return await self._api.find_invoice(reference)
        return await self._api.find_credit_note(reference)

    async def _create(
        self, kind: str, plan: DocumentPlan, body: dict[str, object]
    ) -> tuple[dict[str, Any], str]:
        inner = body[kind]
        assert isinstance(inner, dict)
        try:
            key = plan.idempotency_key
            if kind == "invoice":
                return await self._api.create_invoice(inner, idempotency_key=key), "created"
            return await self._api.create_credit_note(inner, idempotency_key=key), "created"
        except DuplicateReference:
            # The API has the reference already (an earlier attempt whose answer was lost):
            # record that document, never dead-letter or create a second one.
            found = await self._find(kind, plan.reference)
            if found is None:
                raise ApiUnavailable(
                    "reference reported taken but not found yet", reference=plan.reference
                ) from None
            self._check_ours(kind, plan, found, contact_id=inner.get("contact_id"))
            return found, "reconciled"

    def _check_ours(
        self,
        kind: str,
        plan: DocumentPlan,
        found: Mapping[str, Any],
        *,
        contact_id: object | None,
    ) -> None:
        """Refuse to record as ours a document under our reference that another order made.

        An earlier attempt of this event (its answer lost) made the same document: the same
        contact and the total its lines add up to. Two stores' orders with one id (when
        ``mapping.reference_template`` lacks ``{store_id}``), or a document entered by hand,
        differ in one or the other; recording it would leave this order without an invoice.
        The total is compared where the plan knows what it sent (not for a cancellation,
        whose lines depend on earlier refunds) and the answer has one; the contact where the
        plan has a buyer (a mirroring cancellation takes its invoice's).

        Raises:
            ReferenceConflict: the contact or the total differs (``details["differs"]``).
        """
        differs = []
        if (
            contact_id is not None
            and "contact_id" in found
            and str(found["contact_id"]) != str(contact_id)
        ):
            differs.append("contact")
        answered = found.get("total")
        if (
            plan.sent is not None
            and (kind == "invoice" or plan.ledger_key.refund_id)
            and answered is not None
        ):
            try:
                total: Decimal | None = Decimal(str(answered))
            except ArithmeticError:  # decimal.InvalidOperation: not a number
                total = None
            expected = plan.sent.total_with_vat
            if (
                total is None
                or not total.is_finite()
                or abs(total - expected) > self._options.total_tolerance
            ):
                differs.append("total")
        if differs:
            raise ReferenceConflict(
                f"the API's {kind} {plan.reference} (id {found.get('id')}) is not this "
                f"order's: its {' and '.join(differs)} differ(s); two stores with one order id "
                "need {store_id} in mapping.reference_template",
                reference=plan.reference,
                document_id=str(found.get("id")),
                differs=",".join(differs),
            )

    async def _body(
        self,
        plan: DocumentPlan,
        *,
        parent_id: int | str | None,
        parent_payload: dict[str, Any] | None,
    ) -> dict[str, object]:
        line_items: list[dict[str, object]] | None = None
        if plan.mirror_invoice:
            invoice = (parent_payload or {}).get("invoice")
            if not invoice:
                # By the id the ledger holds, not by reference: an invoice made before
                # mapping.reference_template changed has the old reference.
                found = (
                    await self._api.get_invoice(parent_id)
                    if parent_id is not None
                    else await self._api.find_invoice(plan.invoice_reference)
                )
                if found is None:
                    raise NoOriginalInvoice(f"invoice {plan.invoice_reference} not found to mirror")
                invoice = found
            contact_id = invoice["contact_id"]
            line_items = [
                {k: v for k, v in item.items() if k not in ("id", "line_total")}
                for item in invoice["line_items"]
            ]
            product_ids: dict[str, int | str] = {}
        else:
            assert plan.customer is not None
            contact_id = await self._contact_id(plan)
            product_ids = {}
            for p in plan.products:
                # A cache hit (nearly always) costs a lookup, not a coroutine and a payload.
                product_id = self._products.get(p.sku)
                if product_id is None:
                    product_id = await self._product_id(
                        p.sku, _inner(p.payload(), "product"), plan.create_missing_products
                    )
                product_ids[p.sku] = product_id
        if plan.kind == "credit_note" and plan.ledger_key.refund_id is None:
            # A cancellation credits what earlier refunds left of the invoice.
            key = plan.ledger_key
            refunds = await self._ledger.refund_payloads(key.store_id, key.order_id)
            if refunds:
                if line_items is None:
                    line_items = [
                        line.payload(product_ids[line.product_sku]) for line in plan.lines
                    ]
                credited = [
                    item
                    for body_text in refunds
                    for item in json.loads(body_text)["credit_note"]["line_items"]
                ]
                line_items = subtract_credited(line_items, credited, currency=plan.currency)
                if not line_items:
                    raise NothingToCredit(f"order {key.order_id} was refunded in full already")
        elif plan.kind == "credit_note":
            await self._check_refund_fits(plan, product_ids, parent_payload)
        body = plan.payload(
            contact_id=contact_id,
            product_ids=product_ids,
            invoice_id=parent_id,
            line_items=line_items,
        )
        if plan.kind == "credit_note":
            inner = body["credit_note"]
            assert isinstance(inner, dict)
            inner.pop("invoice_id", None)
            inner["parent_id"] = parent_id
            inner["reason"] = plan.reason or "refund"
        return body

    async def _check_refund_fits(
        self,
        plan: DocumentPlan,
        product_ids: Mapping[str, int | str],
        parent_payload: Mapping[str, Any] | None,
    ) -> None:
        """Refuse a refund that would credit more of the invoice than earlier credit notes left.

        A second full refund, or a refund after the cancellation credited the rest, would
        credit one sale twice; an API that does not refuse it would book it. Checked against
        the invoice and credit-note bodies in the ledger (a reconciled document has none, and
        then the API's own limit is what is left), within ``mapping.total_tolerance``.

        Raises:
            UnmappableOrder: the refund exceeds what is left, by ``details["excess"]``.
        """
        invoice = (parent_payload or {}).get("invoice") or {}
        invoice_lines = invoice.get("line_items")
        if not invoice_lines:
            return
        key = plan.ledger_key
        earlier = await self._ledger.refund_payloads(
            key.store_id, key.order_id, with_cancellation=True
        )
        credited = [
            item for text in earlier for item in json.loads(text)["credit_note"]["line_items"]
        ]
        new = [line.payload(product_ids[line.product_sku]) for line in plan.lines]
        excess = credit_excess(invoice_lines, credited, new, currency=plan.currency)
        # Partial refunds round their share of discounts each on its own, so refunds that add
        # up to the whole line can pass it by a cent or two; a refund twice is far more.
        if excess > self._options.total_tolerance:
            raise UnmappableOrder(
                f"refund {key.refund_id} credits {excess} more than is left of invoice "
                f"{plan.invoice_reference} after {len(earlier)} earlier credit note(s)",
                excess=str(excess),
                invoice_reference=plan.invoice_reference,
            )

    async def _contact_id(self, plan: DocumentPlan) -> int | str:
        customer = plan.customer
        assert customer is not None
        lookups = customer.lookups
        identity = (
            (lookups[0].field, lookups[0].value)
            if lookups
            else ("external_id", customer.external_id)
        )
        cached = self._contacts.get(identity)
        if cached is not None:
            return cached

        async def load() -> int | str:
            for lookup in lookups:
                found = await self._api.find_customer(**{_FIND_ARG[lookup.field]: lookup.value})
                if found is not None:
                    return _id(found)
            created = await self._api.create_customer(
                _inner(customer.payload(), "contact"),  # the API adds the envelope
                idempotency_key=_derived_key("contact", *identity),
            )
            log.info("customer.created", contact_id=created["id"])
            return _id(created)

        return await self._contacts.get_or_load(identity, load)

    async def _product_id(self, sku: str, payload: dict[str, object], create: bool) -> int | str:
        async def load() -> int | str:
            found = await self._api.find_product(sku)
            if found is not None:
                return _id(found)
            if not create:
                raise UnknownSku(f"product {sku} does not exist in the API", sku=sku)
            created = await self._api.create_product(
                payload, idempotency_key=_derived_key("product", sku)
            )
            log.info("product.created", sku=sku, product_id=created["id"])
            return _id(created)

        return await self._products.get_or_load(sku, load)


def _inner(body: dict[str, object], envelope: str) -> dict[str, object]:
    """The object inside a ``{"contact": {...}}``-style body."""
    inner = body[envelope]
    assert isinstance(inner, dict)
    return inner


def _id(resource: dict[str, Any]) -> int | str:
    """The API's id as it gave it (Qoyod ids are integers; keep their type in bodies)."""
    value = resource["id"]
    if isinstance(value, int | str):
        return value
    raise ApiUnavailable("resource without a usable id")


#: Distinct unknown event types logged per process; later ones only count in the metric.
_UNKNOWN_TYPES_LOGGED = 100
#: Which result stands for a record that became several events (the most telling first).
_OUTCOME_RANK = ("created", "reconciled", "void", "duplicate", "skipped")


def _event_type(decoded: DecodedRecord) -> str:
    return decoded.events[0].event_type if decoded.events else "other"


def _combined(decoded: DecodedRecord, results: list[HandleResult]) -> HandleResult:
    """One result per record: a record without events is skipped."""
    if not results:
        return HandleResult(_event_type(decoded), "skipped")
    rank = {outcome: i for i, outcome in enumerate(_OUTCOME_RANK)}
    return min(results, key=lambda r: rank.get(r.outcome, len(rank)))


_FIND_ARG = {"tax_number": "tax_number", "email": "email", "phone_number": "phone"}
