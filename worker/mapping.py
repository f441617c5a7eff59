"""Turn a validated order event into a plan of what to send to the accounting API.

Pure: ``plan_document`` reads an ``OrderEvent`` and ``MappingOptions`` and returns a frozen
``DocumentPlan``; the I/O layer finds or creates the contact and products the plan names, then
posts ``plan.payload(...)``. Everything that can make an event wrong for ZATCA is decided here,
before any request, and raised from the error tree:

* Saudi business buyer with a VAT number that is not 15 digits starting and ending in 3
  -> ``InvalidBuyerVat``; with neither VAT number nor ``other_id`` -> ``MissingBuyerId``
  (foreign businesses follow the export rules and need neither);
* a Z, E or O line or shipping without an exemption code -> ``MissingExemptionReason``
  (a code that does not belong to the category -> ``UnmappableOrder``);
* computed total further than ``total_tolerance`` from the platform's ``totals.total``
  -> ``TotalMismatch`` (details: computed, declared, difference, tolerance);
* refund of an unknown line, of more units than ordered, or of more shipping than charged
  -> ``UnmappableOrder``.

Order-level discounts. The API takes line discounts only, so each order discount is spread over
the product lines (not shipping) in proportion to their amounts after line discounts, in whole
minor units, largest remainder first, ties to the earliest line (``money.split_proportionally``).
Two documents are computed: ``expected`` follows the corpus convention (discounts stay at order
level, per tax group) and is reconciled with the declared total; ``sent`` is what the spread
lines add up to, i.e. what the API will compute. With net prices they are equal by
construction. With VAT-inclusive prices each line's net is rounded on its own, so ``sent`` can
drift by a few minor units; a drift beyond ``total_tolerance`` raises ``UnmappableOrder``
rather than posting a document that disagrees with the customer's receipt.

References: invoice ``{order_id}`` (``mapping.reference_template``); refund credit note
``<invoice reference>-CN-{refund_id}``; cancellation credit note ``<invoice reference>-CN-cancel``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from string import Formatter
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worker.errors import (
    InvalidBuyerVat,
    MissingBuyerId,
    MissingExemptionReason,
    SettingsError,
    TotalMismatch,
    UnmappableOrder,
)
from worker.events import (
    CANCELLATION_SUB_ID,
    ORDER_CANCELLED,
    ORDER_CREATED,
    ORDER_PAID,
    ORDER_REFUNDED,
    Address,
    Customer,
    Order,
    OrderEvent,
    Refund,
    Tax,
)
from worker.money import (
    Adjustment,
    DocumentTotals,
    LineInput,
    TaxCategory,
    TaxKey,
    compute_document,
    quantize,
    split_proportionally,
)

__all__ = [
    "EXEMPTION_CODES",
    "CustomerLookup",
    "CustomerPlan",
    "DocumentKind",
    "DocumentPlan",
    "InvoiceKind",
    "LedgerKey",
    "LinePlan",
    "MappingOptions",
    "ProductPlan",
    "credit_excess",
    "document_kind",
    "idempotency_key",
    "is_valid_saudi_vat",
    "ledger_key",
    "plan_document",
    "subtract_credited",
]

DocumentKind = Literal["invoice", "credit_note"]
InvoiceKind = Literal["standard", "simplified"]

#: ZATCA exemption codes (VATEX) allowed per tax category.
EXEMPTION_CODES: Mapping[str, frozenset[str]] = {
    "E": frozenset({"VATEX-SA-29", "VATEX-SA-29-7", "VATEX-SA-30"}),
    "Z": frozenset(
        {
            "VATEX-SA-32",
            "VATEX-SA-33",
            "VATEX-SA-34-1",
            "VATEX-SA-34-2",
            "VATEX-SA-34-3",
            "VATEX-SA-34-4",
            "VATEX-SA-34-5",
            "VATEX-SA-35",
            "VATEX-SA-36",
            "VATEX-SA-EDU",
            "VATEX-SA-HEA",
            "VATEX-SA-MLTRY",
        }
    ),
    "O": frozenset({"VATEX-SA-OOS"}),
    "S": frozenset(),
}

_SAUDI_VAT = re.compile(r"3[0-9]{13}3")
# Shared constants: the hot path would otherwise build these Decimals anew for every line.
_ZERO = Decimal(0)
_ONE = Decimal(1)
#: The API's longest text field (Qoyod, and the sandbox: 255 characters).
API_TEXT_MAX = 255


def _reason_text(text: str) -> str:
    """A credit note's reason, cut to the API's limit with an ellipsis.

    The contract allows 500 characters; the reason is free text, and a longer one refused
    by the API would leave the cancellation or refund without its credit note.
    """
    return text if len(text) <= API_TEXT_MAX else text[: API_TEXT_MAX - 1] + "\u2026"


#: Credit-note reason when the event gives none (the API requires one).
_DEFAULT_REASON = "Order cancelled"


@dataclass(frozen=True, slots=True)
class MappingOptions:
    """The mapping knobs (``settings.mapping`` and ``settings.api.inventory_id``).

    Raises:
        SettingsError: an unknown timezone, a trigger other than order.created/order.paid,
            a negative tolerance or negative ``due_days``.
    """

    invoice_trigger: str = ORDER_PAID
    shipping_sku: str = "SHIPPING"
    shipping_name: str = "Shipping"
    status: Literal["Approved", "Draft"] = "Approved"
    due_days: int = 0
    timezone: str = "Asia/Riyadh"
    #: The accounting system's currency: its documents carry none, so amounts are booked in it.
    currency: str = "SAR"
    total_tolerance: Decimal = Decimal("0.05")
    inventory_id: int | None = None
    #: Exposed for the I/O layer: when False it raises ``UnknownSku`` instead of creating.
    create_missing_products: bool = True
    #: The invoice's API reference; credit notes append ``-CN-...`` to it. ``{store_id}`` keeps
    #: two stores' equal order ids apart when they share one accounting organisation.
    reference_template: str = "{order_id}"

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise SettingsError(f"mapping.timezone: unknown zone {self.timezone!r}") from None
        if self.invoice_trigger not in (ORDER_CREATED, ORDER_PAID):
            # Only these two types carry a full order by contract.
            raise SettingsError("mapping.invoice_trigger: must be order.created or order.paid")
        if self.total_tolerance < 0:
            raise SettingsError("mapping.total_tolerance: must not be negative")
        if self.due_days < 0:
            raise SettingsError("mapping.due_days: must not be negative")
        problem = reference_template_problem(self.reference_template)
        if problem:
            raise SettingsError(f"mapping.reference_template: {problem}")

    def invoice_reference(self, event: OrderEvent) -> str:
        """The reference of the order's invoice, which its credit notes' references extend."""
        if self.reference_template == "{order_id}":
            return event.order_id
        return self.reference_template.format(
            order_id=event.order_id, store_id=event.source.store_id
        )


def reference_template_problem(template: str) -> str | None:
    """Why ``template`` cannot make references (``None`` when it can).

    It must name ``{order_id}``, so every order has its own reference, and may name
    ``{store_id}``; nothing else is known when the reference is built.
    """
    try:
        parsed = Formatter().parse(template)
        parts = [(name, spec, conv) for _, name, spec, conv in parsed if name is not None]
    except ValueError as exc:
        return f"not a template ({exc})"
    if any(spec or conv for _, spec, conv in parts):
        return "placeholders take no format spec or conversion"
    fields = {name for name, _, _ in parts}
    if "order_id" not in fields:
        return "must contain {order_id}"
    unknown = fields - {"order_id", "store_id"}
    if unknown:
        return f"unknown placeholder(s) {sorted(unknown)}; only {{order_id}} and {{store_id}}"
    return None


class LedgerKey(NamedTuple):
    """What the ledger records a document under; one key, one document, ever."""

    store_id: str
    kind: DocumentKind
    order_id: str
    refund_id: str | None


@dataclass(frozen=True, slots=True)
class CustomerLookup:
    """One way to find an existing contact: search ``field`` for ``value``."""

    field: Literal["tax_number", "email", "phone_number"]
    value: str


@dataclass(frozen=True, slots=True)
class CustomerPlan:
    """The buyer: how to find them (try ``lookups`` in order) and what to create if absent."""

    external_id: str
    name: str
    is_business: bool
    email: str | None
    phone: str | None
    tax_number: str | None
    address: Address
    lookups: tuple[CustomerLookup, ...]

    def payload(self) -> dict[str, object]:
        """The ``{"contact": {...}}`` body that creates the contact."""
        contact: dict[str, object] = {"name": self.name}
        if self.is_business:
            contact["organization"] = self.name
        for key, value in (
            ("email", self.email),
            ("phone_number", self.phone),
            ("tax_number", self.tax_number),
        ):
            if value:
                contact[key] = value
        a = self.address
        billing = {
            "street": a.street,
            "building_number": a.building_number,
            "additional_number": a.additional_number,
            "district": a.district,
            "city": a.city,
            "postal_code": a.postal_code,
        }
        contact["billing_address"] = {
            **{k: v for k, v in billing.items() if v},
            "country": a.country_code,
        }
        return {"contact": contact}


@dataclass(frozen=True, slots=True)
class ProductPlan:
    """A SKU the document uses and the body that creates it when missing."""

    sku: str
    name: str
    type: Literal["Product", "Service"]
    selling_price: Decimal
    tax_percent: Decimal

    def payload(self) -> dict[str, object]:
        """The ``{"product": {...}}`` body."""
        return {
            "product": {
                "sku": self.sku,
                "name": self.name,
                "type": self.type,
                "selling_price": _dec(self.selling_price),
                "tax_percent": _dec(self.tax_percent),
            }
        }


@dataclass(frozen=True, slots=True)
class LinePlan:
    """One API line item. ``discount`` is an amount for the whole line, order share included."""

    product_sku: str
    description: str
    quantity: Decimal
    unit_price: Decimal
    discount: Decimal
    tax_percent: Decimal
    is_inclusive: bool
    tax_category: TaxCategory
    tax_exemption_code: str | None

    def payload(self, product_id: int | str) -> dict[str, object]:
        """The line item with the SKU replaced by the API's product id."""
        item: dict[str, object] = {
            "product_id": product_id,
            "description": self.description,
            "quantity": _dec(self.quantity),
            "unit_price": _dec(self.unit_price),
            "discount": _dec(self.discount),
            "discount_type": "amount",
            "tax_percent": _dec(self.tax_percent),
            "is_inclusive": self.is_inclusive,
            "tax_category": self.tax_category,
        }
        if self.tax_exemption_code:
            item["tax_exemption_code"] = self.tax_exemption_code
        return item

    def line_input(self) -> LineInput:
        """The line as money.py sees it."""
        tax = TaxKey(self.tax_category, self.tax_percent, self.tax_exemption_code)
        return LineInput(self.quantity, self.unit_price, tax, discount_amount=self.discount)


@dataclass(frozen=True, slots=True)
class DocumentPlan:
    """Everything the I/O layer needs to create one invoice or credit note.

    ``mirror_invoice`` is True for a cancellation whose event carries no order: the credit
    note then copies the line items of the original invoice (found by ``invoice_reference``),
    so ``customer``, ``products``, ``lines`` and the documents are empty.
    """

    kind: DocumentKind
    ledger_key: LedgerKey
    idempotency_key: str
    reference: str
    invoice_reference: str
    invoice_kind: InvoiceKind | None
    issue_date: date
    due_date: date | None
    status: Literal["Approved", "Draft"]
    inventory_id: int | None
    currency: str | None
    customer: CustomerPlan | None
    products: tuple[ProductPlan, ...]
    lines: tuple[LinePlan, ...]
    reason: str | None = None
    mirror_invoice: bool = False
    #: Convention document (order discounts at order level), reconciled with the declared total.
    expected: DocumentTotals | None = None
    #: What the line items as sent add up to; within tolerance of ``expected``.
    sent: DocumentTotals | None = None
    declared_total: Decimal | None = None
    create_missing_products: bool = True

    def payload(
        self,
        *,
        contact_id: int | str,
        product_ids: Mapping[str, int | str],
        invoice_id: int | str | None = None,
        line_items: Sequence[Mapping[str, object]] | None = None,
    ) -> dict[str, object]:
        """The ``{"invoice": ...}`` or ``{"credit_note": ...}`` body.

        A credit note names its invoice as ``parent_id`` (``invoice_id``, the API's id of the
        original invoice) and always carries a ``reason``. ``line_items`` overrides the plan's
        lines (required when ``mirror_invoice``).

        Raises:
            KeyError: a SKU of the plan is missing from ``product_ids``.
            ValueError: a mirroring plan without ``line_items``.
        """
        if line_items is None:
            if self.mirror_invoice:
                raise ValueError("a mirroring credit note needs the original invoice's lines")
            line_items = [line.payload(product_ids[line.product_sku]) for line in self.lines]
        body: dict[str, object] = {
            "contact_id": contact_id,
            "reference": self.reference,
            "issue_date": self.issue_date.isoformat(),
            "status": self.status,
        }
        if self.kind == "invoice":
            body["due_date"] = (self.due_date or self.issue_date).isoformat()
        else:
            if invoice_id is not None:
                body["parent_id"] = invoice_id
            body["reason"] = self.reason or _DEFAULT_REASON
        if self.inventory_id is not None:
            body["inventory_id"] = self.inventory_id
        body["line_items"] = [dict(item) for item in line_items]
        return {self.kind: body}


# --- helpers ----------------------------------------------------------------------------------


def _dec(value: Decimal) -> str:
    """A Decimal as plain text (never exponent notation), for JSON bodies."""
    return format(value, "f")


def _tax_key(tax: Tax) -> TaxKey:
    return TaxKey(tax.category, tax.rate, tax.exemption_code)


def is_valid_saudi_vat(vat_number: str) -> bool:
    """A Saudi VAT registration number: 15 digits, first and last ``3`` (ZATCA BR-KSA-39)."""
    return _SAUDI_VAT.fullmatch(vat_number) is not None


def document_kind(
    event: OrderEvent, *, options: MappingOptions | None = None
) -> DocumentKind | None:
    """Which document the event produces, or None when the pipeline skips it."""
    trigger = (options or _DEFAULT_OPTIONS).invoice_trigger
    if event.event_type == trigger:
        return "invoice"
    if event.event_type in (ORDER_CANCELLED, ORDER_REFUNDED):
        return "credit_note"
    return None


def ledger_key(event: OrderEvent, *, options: MappingOptions | None = None) -> LedgerKey:
    """``(store_id, kind, order_id, refund_id | None)``; a cancellation has refund_id None.

    Raises:
        ValueError: the event produces no document (check ``document_kind`` first).
    """
    kind = document_kind(event, options=options)
    if kind is None:
        raise ValueError(f"{event.event_type} produces no document")
    return _ledger_key(event, kind)


def _ledger_key(event: OrderEvent, kind: DocumentKind) -> LedgerKey:
    """``ledger_key`` once the kind is known (``plan_document`` has it already)."""
    refund_id = (
        event.refund.refund_id if event.event_type == ORDER_REFUNDED and event.refund else None
    )
    return LedgerKey(event.source.store_id, kind, event.order_id, refund_id)


def idempotency_key(key: LedgerKey) -> str:
    """``isync-`` + sha256 hex of the key's parts: the same document always sends the same key."""
    parts = (key.store_id, key.kind, key.order_id, key.refund_id or "")
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return f"isync-{digest}"


def _check_buyer(customer: Customer) -> InvoiceKind:
    vat = (customer.vat_number or "").strip()
    if customer.type == "individual":
        return "simplified"
    if customer.address.country_code == "SA":
        if vat and not is_valid_saudi_vat(vat):
            raise InvalidBuyerVat(
                "customer.vat_number: a Saudi VAT number has 15 digits, first and last 3",
                customer_id=customer.external_id,
            )
        if not vat and customer.other_id is None:
            raise MissingBuyerId(
                "customer: a Saudi business needs vat_number or other_id",
                customer_id=customer.external_id,
            )
    return "standard"


def _check_tax(tax: Tax, field: str, index: int) -> None:
    """Check the tax of ``{field}[{index}]``; the error path is only spelled out on error."""
    if tax.category == "S" and not tax.exemption_code:
        return  # the common case, before any string is built
    path = f"{field}[{index}].tax"
    if tax.category == "S":
        if tax.exemption_code:
            raise UnmappableOrder(f"{path}.exemption_code: category S takes no exemption code")
        return
    if not tax.exemption_code:
        raise MissingExemptionReason(
            f"{path}.exemption_code: category {tax.category} needs a VATEX code",
            category=tax.category,
        )
    if tax.exemption_code not in EXEMPTION_CODES[tax.category]:
        raise UnmappableOrder(
            f"{path}.exemption_code: {tax.exemption_code} does not belong to category "
            f"{tax.category}",
            category=tax.category,
            exemption_code=tax.exemption_code,
        )


def _customer_plan(customer: Customer) -> CustomerPlan:
    is_business = customer.type == "business"
    vat = (customer.vat_number or "").strip() or None
    lookups: list[CustomerLookup] = []
    if is_business and vat:
        lookups.append(CustomerLookup("tax_number", vat))
    if customer.email:
        lookups.append(CustomerLookup("email", customer.email))
    if customer.phone:
        lookups.append(CustomerLookup("phone_number", customer.phone))
    return CustomerPlan(
        external_id=customer.external_id,
        name=customer.name,
        is_business=is_business,
        email=customer.email,
        phone=customer.phone,
        tax_number=vat if is_business else None,
        address=customer.address,
        lookups=tuple(lookups),
    )


class _Priced(NamedTuple):
    """The invoice as lines (with order discounts spread) plus both documents.

    A NamedTuple rather than a frozen dataclass: private, built once per event, and a tuple
    is created several times faster than a frozen dataclass sets its fields.
    """

    lines: tuple[LinePlan, ...]  # product lines first, in order, then shipping lines
    product_count: int
    expected: DocumentTotals
    sent: DocumentTotals


def _price_order(order: Order, options: MappingOptions) -> _Priced:
    cur = order.currency
    inclusive = order.prices_include_tax
    amounts = [line.amount(cur) for line in order.lines]
    discounts = order.order_discounts
    discount_total = sum((d.amount for d in discounts), _ZERO) if discounts else _ZERO
    if discount_total > sum(amounts, _ZERO):
        raise UnmappableOrder(
            "order_discounts: exceed the lines they apply to",
            discount=_dec(discount_total),
        )
    # Without order discounts every share is a zero of the currency's exponent (cheap: the
    # split returns early); adding it keeps each line discount at that exponent ("0.00").
    shares = split_proportionally(discount_total, amounts, currency=cur)

    lines: list[LinePlan] = []
    base: list[LineInput] = []
    adjustments: dict[TaxKey, Decimal] = {}
    for i, (line, share) in enumerate(zip(order.lines, shares, strict=True)):
        tax = line.tax
        _check_tax(tax, "order.lines", i)
        key = TaxKey(tax.category, tax.rate, tax.exemption_code)
        base.append(LineInput(line.quantity, line.unit_price, key, line.discount_amount))
        if share:
            adjustments[key] = adjustments.get(key, _ZERO) + share
        lines.append(
            LinePlan(
                product_sku=line.sku,
                description=line.name,
                quantity=line.quantity,
                unit_price=line.unit_price,
                discount=line.discount_amount + share,
                tax_percent=tax.rate,
                is_inclusive=inclusive,
                tax_category=tax.category,
                tax_exemption_code=tax.exemption_code,
            )
        )
    for i, ship in enumerate(order.shipping):
        tax = ship.tax
        _check_tax(tax, "order.shipping", i)
        key = TaxKey(tax.category, tax.rate, tax.exemption_code)
        base.append(LineInput(_ONE, ship.amount, key, ship.discount_amount))
        lines.append(
            LinePlan(
                product_sku=options.shipping_sku,
                description=options.shipping_name,
                quantity=_ONE,
                unit_price=ship.amount,
                discount=ship.discount_amount,
                tax_percent=tax.rate,
                is_inclusive=inclusive,
                tax_category=tax.category,
                tax_exemption_code=tax.exemption_code,
            )
        )
    expected = compute_document(
        base,
        currency=cur,
        prices_include_tax=inclusive,
        order_discounts=[Adjustment(amount, key) for key, amount in adjustments.items()]
        if adjustments
        else (),
    )
    if not adjustments:
        # No order discount was spread: the lines as sent are the lines computed.
        return _Priced(tuple(lines), len(order.lines), expected, expected)
    sent = compute_document(
        [line.line_input() for line in lines], currency=cur, prices_include_tax=inclusive
    )
    drift = abs(sent.total_with_vat - expected.total_with_vat)
    if drift > options.total_tolerance:
        raise UnmappableOrder(
            "order_discounts: spreading over lines moves the total beyond the tolerance",
            computed=_dec(expected.total_with_vat),
            spread=_dec(sent.total_with_vat),
        )
    return _Priced(tuple(lines), len(order.lines), expected, sent)


def _check_declared(order: Order, expected: DocumentTotals, options: MappingOptions) -> None:
    declared = order.totals.total
    difference = expected.total_with_vat - declared
    if abs(difference) > options.total_tolerance:
        raise TotalMismatch(
            f"totals.total: computed {_dec(expected.total_with_vat)}, declared {_dec(declared)}",
            computed=_dec(expected.total_with_vat),
            declared=_dec(declared),
            difference=_dec(difference),
            tolerance=_dec(options.total_tolerance),
        )


def _refund_lines(refund: Refund, order: Order, priced: _Priced) -> tuple[LinePlan, ...]:
    cur = order.currency
    known = {line.line_id for line in order.lines}
    wanted: dict[str, Decimal] = {}
    for i, item in enumerate(refund.lines):
        if item.line_id not in known:
            raise UnmappableOrder(
                f"refund.lines[{i}].line_id: not a line of the order", line_id=item.line_id
            )
        wanted[item.line_id] = wanted.get(item.line_id, Decimal(0)) + item.quantity

    result: list[LinePlan] = []
    for line, plan in zip(order.lines, priced.lines[: priced.product_count], strict=True):
        quantity = wanted.get(line.line_id)
        if quantity is None:
            continue
        if quantity > line.quantity:
            raise UnmappableOrder(
                f"refund.lines: refunds {_dec(quantity)} of line {line.line_id}, "
                f"ordered {_dec(line.quantity)}",
                line_id=line.line_id,
            )
        # Line and order discounts are given back pro rata to the units refunded.
        discount = plan.discount
        if quantity != line.quantity:
            discount = quantize(plan.discount * quantity / line.quantity, cur)
        result.append(
            LinePlan(
                product_sku=plan.product_sku,
                description=plan.description,
                quantity=quantity,
                unit_price=plan.unit_price,
                discount=discount,
                tax_percent=plan.tax_percent,
                is_inclusive=plan.is_inclusive,
                tax_category=plan.tax_category,
                tax_exemption_code=plan.tax_exemption_code,
            )
        )

    if refund.shipping_amount:
        charged = sum((s.amount - s.discount_amount for s in order.shipping), Decimal(0))
        if refund.shipping_amount > charged:
            raise UnmappableOrder(
                "refund.shipping_amount: exceeds the shipping charged",
                refunded=_dec(refund.shipping_amount),
                charged=_dec(charged),
            )
        keys = {_tax_key(s.tax) for s in order.shipping}
        if len(keys) != 1:
            raise UnmappableOrder("refund.shipping_amount: shipping has mixed tax treatments")
        template = priced.lines[priced.product_count]
        result.append(
            LinePlan(
                product_sku=template.product_sku,
                description=template.description,
                quantity=Decimal(1),
                unit_price=refund.shipping_amount,
                discount=Decimal(0),
                tax_percent=template.tax_percent,
                is_inclusive=template.is_inclusive,
                tax_category=template.tax_category,
                tax_exemption_code=template.tax_exemption_code,
            )
        )
    return tuple(result)


def _products(
    order: Order, lines: Sequence[LinePlan], options: MappingOptions
) -> tuple[ProductPlan, ...]:
    used = {line.product_sku for line in lines}
    products: dict[str, ProductPlan] = {}
    for line in order.lines:
        if line.sku in used and line.sku not in products:
            products[line.sku] = ProductPlan(
                line.sku, line.name, "Product", line.unit_price, line.tax.rate
            )
    if options.shipping_sku in used and options.shipping_sku not in products:
        ship = order.shipping[0]
        products[options.shipping_sku] = ProductPlan(
            options.shipping_sku, options.shipping_name, "Service", ship.amount, ship.tax.rate
        )
    return tuple(products.values())


def plan_document(
    event: OrderEvent, *, options: MappingOptions | None = None
) -> DocumentPlan | None:
    """Map one event to the document to create, or None when its type is skipped.

    Raises:
        InvalidBuyerVat, MissingBuyerId: the buyer cannot receive a ZATCA invoice as sent.
        MissingExemptionReason: a Z, E or O line or shipping without a VATEX code.
        TotalMismatch: computed total beyond ``options.total_tolerance`` of ``totals.total``.
        UnmappableOrder: any other rule (refund lines, discount larger than the lines, a
            code of the wrong category, spreading drift).
    """
    options = options or _DEFAULT_OPTIONS
    kind = document_kind(event, options=options)
    if kind is None:
        return None
    key = _ledger_key(event, kind)
    idem_key = idempotency_key(key)  # first, as always: an id that cannot be encoded fails here
    issue_date = event.occurred_at.astimezone(ZoneInfo(options.timezone)).date()
    order = event.order
    invoice_reference = options.invoice_reference(event)

    if order is None:
        # Without its order (only a cancellation may omit it) the credit note mirrors the
        # original invoice.
        return DocumentPlan(
            kind=kind,
            ledger_key=key,
            idempotency_key=idem_key,
            reference=f"{invoice_reference}-CN-{CANCELLATION_SUB_ID}",
            invoice_reference=invoice_reference,
            invoice_kind=None,
            issue_date=issue_date,
            due_date=None,
            status=options.status,
            inventory_id=options.inventory_id,
            currency=None,
            customer=None,
            products=(),
            lines=(),
            reason=_reason_text(event.reason or _DEFAULT_REASON),
            mirror_invoice=True,
            create_missing_products=options.create_missing_products,
        )

    if order.currency != options.currency:
        # The API's documents have no currency field: a KWD order would be booked as the
        # same figures in SAR. Refused before any other check, since no amount means anything.
        raise UnmappableOrder(
            f"order.currency: {order.currency} orders cannot be booked; the accounting system "
            f"books {options.currency} (mapping.currency)",
            currency=order.currency,
        )
    invoice_kind = _check_buyer(order.customer)
    priced = _price_order(order, options)
    _check_declared(order, priced.expected, options)
    expected, sent = priced.expected, priced.sent
    declared: Decimal | None = order.totals.total
    lines = priced.lines
    due_date: date | None = None
    if kind == "invoice":
        reference, reason = invoice_reference, None
        due_date = issue_date + timedelta(days=options.due_days)
    elif event.refund is None:  # order.cancelled
        reference = f"{invoice_reference}-CN-{CANCELLATION_SUB_ID}"
        reason = _reason_text(event.reason or _DEFAULT_REASON)
    else:
        lines = _refund_lines(event.refund, order, priced)
        reference = f"{invoice_reference}-CN-{event.refund.refund_id}"
        reason = _reason_text(
            event.refund.reason or event.reason or f"Refund {event.refund.refund_id}"
        )
        sent = compute_document(
            [line.line_input() for line in lines],
            currency=order.currency,
            prices_include_tax=order.prices_include_tax,
        )
        expected, declared = sent, None

    # Built once, directly: ``dataclasses.replace`` on a mirror plan cost two constructions.
    return DocumentPlan(
        kind=kind,
        ledger_key=key,
        idempotency_key=idem_key,
        reference=reference,
        invoice_reference=invoice_reference,
        invoice_kind=invoice_kind,
        issue_date=issue_date,
        due_date=due_date,
        status=options.status,
        inventory_id=options.inventory_id,
        currency=order.currency,
        customer=_customer_plan(order.customer),
        products=_products(order, lines, options),
        lines=lines,
        reason=reason,
        mirror_invoice=False,
        expected=expected,
        sent=sent,
        declared_total=declared,
        create_missing_products=options.create_missing_products,
    )


_DEFAULT_OPTIONS = MappingOptions()


def credit_excess(
    lines: Sequence[Mapping[str, object]],
    credited: Sequence[Mapping[str, object]],
    new: Sequence[Mapping[str, object]],
    *,
    currency: str | None = None,
) -> Decimal:
    """How much of the ``new`` credit note's lines exceeds what is left of the invoice.

    ``lines`` are the invoice's line items, ``credited`` the lines of credit notes already
    created for it. Matched per product, net of discounts, as :func:`subtract_credited`
    matches them; zero when the new credit note fits. A second full refund, or a refund
    after the cancellation credited the rest, exceeds by its whole amount: the worker must not
    rely on the API to refuse a credit note that would credit the same sale twice.
    """
    cur = currency or "SAR"
    left = _net_by_product(lines, cur)
    for pid, amount in _net_by_product(credited, cur).items():
        left[pid] = left.get(pid, Decimal(0)) - amount
    excess = Decimal(0)
    for pid, amount in _net_by_product(new, cur).items():
        excess += max(Decimal(0), amount - max(Decimal(0), left.get(pid, Decimal(0))))
    return excess


def _line_net(line: Mapping[str, object], cur: str) -> Decimal:
    """A line item's net amount as the API computes it: round(quantity x price) - discount."""
    gross = quantize(Decimal(str(line["quantity"])) * Decimal(str(line["unit_price"])), cur)
    discount = Decimal(str(line.get("discount") or "0"))
    if line.get("discount_type") == "percentage":
        discount = quantize(gross * discount / 100, cur)
    return gross - discount


def _net_by_product(lines: Sequence[Mapping[str, object]], cur: str) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for line in lines:
        pid = str(line["product_id"])
        totals[pid] = totals.get(pid, Decimal(0)) + _line_net(line, cur)
    return totals


def subtract_credited(
    lines: Sequence[Mapping[str, object]],
    credited: Sequence[Mapping[str, object]],
    *,
    currency: str | None = None,
) -> list[dict[str, object]]:
    """What is left to credit of an invoice's line items after earlier credit notes.

    A cancellation after a partial refund must credit only the rest: the API refuses a credit
    note larger than what remains of the invoice. Amounts are matched per product: each
    credited line's amount (``round(quantity x unit_price) - discount``) is taken off the
    invoice lines of the same product, in order, by raising their amount discount, so the API
    computes exactly the remaining net. Lines with nothing left are dropped.
    """
    cur = currency or "SAR"
    to_take = _net_by_product(credited, cur)
    remaining: list[dict[str, object]] = []
    for line in lines:
        pid = str(line["product_id"])
        available = _line_net(line, cur)
        take = min(available, to_take.get(pid, Decimal(0)))
        if take:
            to_take[pid] -= take
        left = available - take
        if left <= 0:
            continue
        item = dict(line)
        if take:
            gross = quantize(Decimal(str(line["quantity"])) * Decimal(str(line["unit_price"])), cur)
            item["discount"] = _dec(gross - left)
            item["discount_type"] = "amount"
        remaining.append(item)
    return remaining
