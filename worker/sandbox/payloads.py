"""Validation of request bodies into typed values, with Rails-style error messages.

Each ``parse_*`` function takes the unwrapped JSON object (numbers already parsed as
``Decimal``) and an ``errors`` dict it fills as ``{"field": ["message", ...]}`` - the
shape Qoyod answers with on 422. It returns a value only when its own checks passed;
checks that need the stored data (unknown contact, taken reference) belong to
:mod:`worker.sandbox.state`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, cast

from worker.sandbox.totals import LineItem, line_amount

__all__ = [
    "CreditNoteIn",
    "Errors",
    "InvoiceIn",
    "parse_contact",
    "parse_credit_note",
    "parse_invoice",
    "parse_product",
]

Errors = dict[str, list[str]]

_BLANK = "can't be blank"
_TAX_CATEGORIES = ("S", "Z", "E", "O")
_VAT_NUMBER = re.compile(r"3\d{13}3")
_ADDRESS_FIELDS = (
    "street",
    "building_number",
    "additional_number",
    "district",
    "city",
    "postal_code",
    "country",
)


def _add(errors: Errors, field: str, message: str) -> None:
    errors.setdefault(field, []).append(message)


def _count(errors: Errors) -> int:
    return sum(len(messages) for messages in errors.values())


def _text(
    obj: dict[str, Any], key: str, errors: Errors, *, field: str = "", required: bool = True
) -> str | None:
    field = field or key
    value = obj.get(key)
    if value is None or value == "":
        if required:
            _add(errors, field, _BLANK)
        return None
    if not isinstance(value, str):
        _add(errors, field, "must be a string")
        return None
    if len(value) > 255:
        _add(errors, field, "is too long (maximum is 255 characters)")
        return None
    return value


def _ident(obj: dict[str, Any], key: str, errors: Errors, *, field: str = "") -> int | None:
    field = field or key
    value = obj.get(key)
    if value is None:
        _add(errors, field, _BLANK)
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        _add(errors, field, "must be a positive integer")
        return None
    return int(value)


def _number(
    obj: dict[str, Any],
    key: str,
    errors: Errors,
    *,
    field: str = "",
    required: bool = True,
    default: Decimal | None = None,
    positive: bool = False,
) -> Decimal | None:
    field = field or key
    value = obj.get(key)
    if value is None:
        if required:
            _add(errors, field, _BLANK)
        return default
    if isinstance(value, bool):
        number = None
    elif isinstance(value, Decimal | int):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            number = None
    else:
        number = None
    if number is None or not number.is_finite():
        _add(errors, field, "is not a number")
        return None
    if positive and number <= 0:
        _add(errors, field, "must be greater than 0")
        return None
    if number < 0:
        _add(errors, field, "must be greater than or equal to 0")
        return None
    return number


def _date(obj: dict[str, Any], key: str, errors: Errors) -> date | None:
    value = obj.get(key)
    if value is None or value == "":
        _add(errors, key, _BLANK)
        return None
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        _add(errors, key, "must be a date formatted YYYY-MM-DD")
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        _add(errors, key, "is not a valid date")
        return None


def _choice(
    obj: dict[str, Any], key: str, options: tuple[str, ...], errors: Errors, *, field: str = ""
) -> str | None:
    field = field or key
    value = obj.get(key)
    if value is None or value == "":
        _add(errors, field, _BLANK)
        return None
    if value not in options:
        _add(errors, field, f"must be one of: {', '.join(options)}")
        return None
    return cast(str, value)


def parse_contact(obj: dict[str, Any], errors: Errors) -> dict[str, Any] | None:
    """Validate a ``contact``; the result is the JSON-ready contact minus its id."""
    name = _text(obj, "name", errors)
    contact: dict[str, Any] = {"name": name}
    for key in ("organization", "email", "phone_number", "tax_number"):
        contact[key] = _text(obj, key, errors, required=False)
    email = contact["email"]
    if email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        _add(errors, "email", "is invalid")
    vat = contact["tax_number"]
    if vat is not None and not _VAT_NUMBER.fullmatch(vat):
        _add(errors, "tax_number", "must be 15 digits starting and ending with 3")
    address = obj.get("billing_address")
    if address is not None:
        if not isinstance(address, dict):
            _add(errors, "billing_address", "must be an object")
        else:
            contact["billing_address"] = {
                key: _text(address, key, errors, field=f"billing_address.{key}", required=False)
                for key in _ADDRESS_FIELDS
            }
    return None if errors else contact


def parse_product(obj: dict[str, Any], errors: Errors) -> dict[str, Any] | None:
    """Validate a ``product``; prices become 2-place strings as the API echoes them."""
    sku = _text(obj, "sku", errors)
    name = _text(obj, "name", errors)
    kind = _choice(obj, "type", ("Product", "Service"), errors)
    price = _number(obj, "selling_price", errors)
    tax = _number(obj, "tax_percent", errors, required=False, default=Decimal(15))
    if tax is not None and tax > 100:
        _add(errors, "tax_percent", "must be less than or equal to 100")
    if errors or price is None or tax is None:
        return None
    return {
        "sku": sku,
        "name": name,
        "type": kind,
        "selling_price": f"{price:.2f}",
        "tax_percent": format(tax.normalize(), "f"),
    }


def _line(raw: object, index: int, errors: Errors) -> LineItem | None:
    prefix = f"line_items[{index}]"
    if not isinstance(raw, dict):
        _add(errors, prefix, "must be an object")
        return None
    before = _count(errors)
    product_id = _ident(raw, "product_id", errors, field=f"{prefix}.product_id")
    description = _text(raw, "description", errors, field=f"{prefix}.description", required=False)
    quantity = _number(raw, "quantity", errors, field=f"{prefix}.quantity", positive=True)
    unit_price = _number(raw, "unit_price", errors, field=f"{prefix}.unit_price")
    discount = _number(
        raw, "discount", errors, field=f"{prefix}.discount", required=False, default=Decimal(0)
    )
    discount_type = raw.get("discount_type") or "percentage"
    if discount_type not in ("percentage", "amount"):
        _add(errors, f"{prefix}.discount_type", "must be one of: percentage, amount")
    tax_percent = _number(raw, "tax_percent", errors, field=f"{prefix}.tax_percent")
    inclusive = raw.get("is_inclusive", False)
    if not isinstance(inclusive, bool):
        _add(errors, f"{prefix}.is_inclusive", "must be true or false")
    category = raw.get("tax_category")
    exemption = _text(
        raw, "tax_exemption_code", errors, field=f"{prefix}.tax_exemption_code", required=False
    )
    if tax_percent is not None:
        if tax_percent > 100:
            _add(errors, f"{prefix}.tax_percent", "must be less than or equal to 100")
        if category is None:
            category = "S" if tax_percent > 0 else "Z"
        elif category not in _TAX_CATEGORIES:
            _add(errors, f"{prefix}.tax_category", "must be one of: S, Z, E, O")
        elif (category == "S") != (tax_percent > 0):
            _add(errors, f"{prefix}.tax_category", "does not match tax_percent")
        if category == "S" and exemption is not None:
            _add(errors, f"{prefix}.tax_exemption_code", "must be blank for standard-rated lines")
    if discount is not None and discount_type == "percentage" and discount > 100:
        _add(errors, f"{prefix}.discount", "must be less than or equal to 100")
    if discount is not None and discount_type == "amount" and discount != round(discount, 2):
        _add(errors, f"{prefix}.discount", "must have at most 2 decimal places")
    if (
        _count(errors) != before
        or product_id is None
        or quantity is None
        or unit_price is None
        or discount is None
        or tax_percent is None
        or not isinstance(category, str)
    ):
        return None
    item = LineItem(
        product_id=product_id,
        description=description or "",
        quantity=quantity,
        unit_price=unit_price,
        discount=discount,
        discount_type=cast(Literal["percentage", "amount"], discount_type),
        tax_percent=tax_percent,
        is_inclusive=inclusive,
        tax_category=category,
        tax_exemption_code=exemption,
    )
    if line_amount(item) < 0:
        _add(errors, f"{prefix}.discount", "is greater than the line amount")
        return None
    return item


def _lines(obj: dict[str, Any], errors: Errors) -> list[LineItem]:
    raw = obj.get("line_items")
    if not isinstance(raw, list) or not raw:
        _add(errors, "line_items", _BLANK if not raw else "must be a list")
        return []
    if len(raw) > 1000:
        _add(errors, "line_items", "has too many lines (maximum is 1000)")
        return []
    items = [_line(entry, i, errors) for i, entry in enumerate(raw)]
    return [item for item in items if item is not None]


@dataclass(frozen=True, slots=True)
class InvoiceIn:
    contact_id: int
    reference: str
    issue_date: str
    due_date: str
    status: str
    inventory_id: int
    notes: str | None
    lines: list[LineItem]


def parse_invoice(obj: dict[str, Any], errors: Errors) -> InvoiceIn | None:
    """Validate an ``invoice``; ``due_date`` may not precede ``issue_date``."""
    contact_id = _ident(obj, "contact_id", errors)
    reference = _text(obj, "reference", errors)
    issued = _date(obj, "issue_date", errors)
    due = _date(obj, "due_date", errors)
    status = _choice(obj, "status", ("Draft", "Approved"), errors)
    inventory_id = _ident(obj, "inventory_id", errors)
    notes = _text(obj, "notes", errors, required=False)
    lines = _lines(obj, errors)
    if issued is not None and due is not None and due < issued:
        _add(errors, "due_date", "must be on or after issue_date")
    if (
        errors
        or contact_id is None
        or reference is None
        or issued is None
        or due is None
        or status is None
        or inventory_id is None
    ):
        return None
    return InvoiceIn(
        contact_id,
        reference,
        issued.isoformat(),
        due.isoformat(),
        status,
        inventory_id,
        notes,
        lines,
    )


@dataclass(frozen=True, slots=True)
class CreditNoteIn:
    contact_id: int
    reference: str
    issue_date: str
    parent_id: int
    reason: str
    status: str
    inventory_id: int
    lines: list[LineItem]


def parse_credit_note(obj: dict[str, Any], errors: Errors) -> CreditNoteIn | None:
    """Validate a ``credit_note``; a credit note needs a parent invoice and a reason."""
    contact_id = _ident(obj, "contact_id", errors)
    reference = _text(obj, "reference", errors)
    issued = _date(obj, "issue_date", errors)
    parent_id = _ident(obj, "parent_id", errors)
    reason = _text(obj, "reason", errors)
    status = _choice(obj, "status", ("Draft", "Approved"), errors)
    inventory_id = _ident(obj, "inventory_id", errors)
    lines = _lines(obj, errors)
    if (
        errors
        or contact_id is None
        or reference is None
        or issued is None
        or parent_id is None
        or reason is None
        or status is None
        or inventory_id is None
    ):
        return None
    return CreditNoteIn(
        contact_id, reference, issued.isoformat(), parent_id, reason, status, inventory_id, lines
    )
