"""The accounting data: contacts, products, invoices and credit notes, in memory.

Every ``create_*`` and ``find_*`` returns ``(status, body)`` with the body in Qoyod's
envelope, so :mod:`worker.sandbox.resources` only does HTTP. Creation never awaits, which
is what makes "check the reference, then insert" atomic on the event loop.

``duplicate_references`` counts create attempts whose reference already existed (the
server rejects them with 422). Idempotent replays never reach the ledger, so a correct
client - one that retries with the same ``Idempotency-Key``, or searches before
re-posting - keeps it at 0; a client that re-sends a reference under a new key or with
no key raises it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from worker.sandbox.payloads import (
    CreditNoteIn,
    Errors,
    InvoiceIn,
    parse_contact,
    parse_credit_note,
    parse_invoice,
    parse_product,
)
from worker.sandbox.totals import LineItem, Totals, compute_totals

__all__ = ["CreditNote", "Invoice", "Ledger", "Result"]

Result = tuple[int, dict[str, Any]]
_TAKEN = "has already been taken"


def _m(value: Decimal) -> str:
    return f"{value:.2f}"


def _num(value: Decimal) -> str:
    return format(value.normalize(), "f") if value == value.to_integral() else format(value, "f")


def _render_lines(lines: list[LineItem], nets: tuple[Decimal, ...]) -> list[dict[str, Any]]:
    return [
        {
            "product_id": item.product_id,
            "description": item.description,
            "quantity": _num(item.quantity),
            "unit_price": _num(item.unit_price),
            "discount": _num(item.discount),
            "discount_type": item.discount_type,
            "tax_percent": _num(item.tax_percent),
            "is_inclusive": item.is_inclusive,
            "tax_category": item.tax_category,
            "tax_exemption_code": item.tax_exemption_code,
            "line_total": _m(net),
        }
        for item, net in zip(lines, nets, strict=True)
    ]


def _render_totals(totals: Totals) -> dict[str, Any]:
    return {
        "tax_breakdown": [
            {
                "tax_category": g.tax_category,
                "tax_percent": _num(g.tax_percent),
                "tax_exemption_code": g.tax_exemption_code,
                "taxable_amount": _m(g.taxable_amount),
                "tax_amount": _m(g.tax_amount),
            }
            for g in totals.groups
        ],
        "total_excluding_tax": _m(totals.total_excluding_tax),
        "tax_total": _m(totals.tax_total),
        "total": _m(totals.total),
    }


@dataclass(slots=True)
class Invoice:
    id: int
    data: InvoiceIn
    totals: Totals
    credited: Decimal = Decimal(0)

    @property
    def remaining_creditable(self) -> Decimal:
        return self.totals.total - self.credited

    def to_json(self) -> dict[str, Any]:
        d = self.data
        return {
            "id": self.id,
            "reference": d.reference,
            "status": d.status,
            "contact_id": d.contact_id,
            "issue_date": d.issue_date,
            "due_date": d.due_date,
            "inventory_id": d.inventory_id,
            "notes": d.notes,
            "line_items": _render_lines(d.lines, self.totals.line_nets),
            **_render_totals(self.totals),
            "remaining_creditable": _m(self.remaining_creditable),
        }


@dataclass(slots=True)
class CreditNote:
    id: int
    data: CreditNoteIn
    totals: Totals

    def to_json(self) -> dict[str, Any]:
        d = self.data
        return {
            "id": self.id,
            "reference": d.reference,
            "status": d.status,
            "contact_id": d.contact_id,
            "parent_id": d.parent_id,
            "reason": d.reason,
            "issue_date": d.issue_date,
            "inventory_id": d.inventory_id,
            "line_items": _render_lines(d.lines, self.totals.line_nets),
            **_render_totals(self.totals),
        }


def _not_found(what: str) -> Result:
    return 404, {"message": f"No {what} found"}


def _matching(
    rows: list[dict[str, Any]], filters: Mapping[str, str], what: str, envelope: str
) -> Result:
    found = [r for r in rows if all(str(r.get(k)) == v for k, v in filters.items())]
    return (200, {envelope: found}) if found else _not_found(what)


@dataclass
class Ledger:
    """All accounting records plus the reference bookkeeping that ``/_sandbox/stats`` shows."""

    contacts: dict[int, dict[str, Any]] = field(default_factory=dict)
    products: dict[int, dict[str, Any]] = field(default_factory=dict)
    invoices: dict[int, Invoice] = field(default_factory=dict)
    credit_notes: dict[int, CreditNote] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)
    reference_counts: Counter[str] = field(default_factory=Counter)
    duplicate_references: int = 0
    _skus: dict[str, int] = field(default_factory=dict)
    _invoice_refs: dict[str, int] = field(default_factory=dict)
    _credit_refs: dict[str, int] = field(default_factory=dict)

    # -- contacts and products ------------------------------------------------------------

    def create_contact(self, obj: dict[str, Any]) -> Result:
        errors: Errors = {}
        contact = parse_contact(obj, errors)
        if contact is None:
            return 422, {"errors": errors}
        contact = {"id": len(self.contacts) + 1, **contact}
        self.contacts[contact["id"]] = contact
        return 201, {"contact": contact}

    def get_contact(self, contact_id: int) -> Result:
        contact = self.contacts.get(contact_id)
        return (200, {"contact": contact}) if contact else _not_found("contact")

    def find_contacts(self, filters: Mapping[str, str]) -> Result:
        return _matching(list(self.contacts.values()), filters, "contacts", "contacts")

    def create_product(self, obj: dict[str, Any]) -> Result:
        errors: Errors = {}
        product = parse_product(obj, errors)
        sku = obj.get("sku")
        if isinstance(sku, str) and sku in self._skus:
            errors.setdefault("sku", []).append(_TAKEN)
        if product is None or errors:
            return 422, {"errors": errors}
        product = {"id": len(self.products) + 1, **product}
        self.products[product["id"]] = product
        self._skus[product["sku"]] = product["id"]
        return 201, {"product": product}

    def get_product(self, product_id: int) -> Result:
        product = self.products.get(product_id)
        return (200, {"product": product}) if product else _not_found("product")

    def find_products(self, filters: Mapping[str, str]) -> Result:
        sku = filters.get("sku")
        if sku is not None and len(filters) == 1:
            pid = self._skus.get(sku)
            return (200, {"products": [self.products[pid]]}) if pid else _not_found("products")
        return _matching(list(self.products.values()), filters, "products", "products")

    # -- invoices and credit notes --------------------------------------------------------

    def _check_refs(self, obj: dict[str, Any], taken: dict[str, int], errors: Errors) -> None:
        reference = obj.get("reference")
        if isinstance(reference, str) and reference in taken:
            errors.setdefault("reference", []).append(_TAKEN)
            self.duplicate_references += 1
            self.reference_counts[reference] += 1

    def _check_lines(self, lines: list[LineItem], errors: Errors) -> None:
        for i, item in enumerate(lines):
            if item.product_id not in self.products:
                errors.setdefault(f"line_items[{i}].product_id", []).append("not found")

    def _record_ref(self, reference: str) -> None:
        self.references.append(reference)
        self.reference_counts[reference] += 1

    def create_invoice(self, obj: dict[str, Any]) -> Result:
        errors: Errors = {}
        self._check_refs(obj, self._invoice_refs, errors)
        draft = parse_invoice(obj, errors)
        if draft is not None:
            if draft.contact_id not in self.contacts:
                errors.setdefault("contact_id", []).append("not found")
            self._check_lines(draft.lines, errors)
        if draft is None or errors:
            return 422, {"errors": errors}
        invoice = Invoice(len(self.invoices) + 1, draft, compute_totals(draft.lines))
        self.invoices[invoice.id] = invoice
        self._invoice_refs[draft.reference] = invoice.id
        self._record_ref(draft.reference)
        return 201, {"invoice": invoice.to_json()}

    def get_invoice(self, invoice_id: int) -> Result:
        invoice = self.invoices.get(invoice_id)
        return (200, {"invoice": invoice.to_json()}) if invoice else _not_found("invoice")

    def find_invoices(self, filters: Mapping[str, str]) -> Result:
        return self._find(filters, self.invoices, self._invoice_refs, "invoices")

    def create_credit_note(self, obj: dict[str, Any]) -> Result:
        errors: Errors = {}
        self._check_refs(obj, self._credit_refs, errors)
        draft = parse_credit_note(obj, errors)
        parent: Invoice | None = None
        totals: Totals | None = None
        if draft is not None:
            parent = self.invoices.get(draft.parent_id)
            if parent is None:
                errors.setdefault("parent_id", []).append("not found")
            elif parent.data.contact_id != draft.contact_id:
                errors.setdefault("contact_id", []).append("does not match the invoice's contact")
            self._check_lines(draft.lines, errors)
            totals = compute_totals(draft.lines)
            if parent is not None and totals.total > parent.remaining_creditable:
                errors.setdefault("total", []).append(
                    "exceeds the remaining creditable amount of the invoice "
                    f"({_m(parent.remaining_creditable)})"
                )
        if draft is None or parent is None or totals is None or errors:
            return 422, {"errors": errors}
        note = CreditNote(len(self.credit_notes) + 1, draft, totals)
        self.credit_notes[note.id] = note
        self._credit_refs[draft.reference] = note.id
        parent.credited += totals.total
        self._record_ref(draft.reference)
        return 201, {"credit_note": note.to_json()}

    def get_credit_note(self, note_id: int) -> Result:
        note = self.credit_notes.get(note_id)
        return (200, {"credit_note": note.to_json()}) if note else _not_found("credit note")

    def find_credit_notes(self, filters: Mapping[str, str]) -> Result:
        return self._find(filters, self.credit_notes, self._credit_refs, "credit_notes")

    @staticmethod
    def _find(
        filters: Mapping[str, str],
        rows: Mapping[int, Invoice | CreditNote],
        by_ref: dict[str, int],
        envelope: str,
    ) -> Result:
        what = envelope.replace("_", " ")
        ref = filters.get("reference")
        if ref is not None and len(filters) == 1:
            row = rows.get(by_ref.get(ref, 0))
            return (200, {envelope: [row.to_json()]}) if row else _not_found(what)
        return _matching([r.to_json() for r in rows.values()], filters, what, envelope)
