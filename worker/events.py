"""The v1 sale-order event contract: bytes from Kafka in, a frozen, validated event out.

Producers publish one JSON object per record, keyed by the order id. ``parse_event`` is the
only way in, and it sorts every failure into the error tree so the pipeline can dead-letter
with a stable reason:

* not UTF-8, not JSON, duplicate keys, too large       -> ``MalformedEvent``
* ``schema_version`` other than the string ``"1"``     -> ``UnsupportedSchemaVersion``
* anything else the contract forbids                  -> ``InvalidEvent``, whose message
  names the field path (``order.lines[2].unit_price: ...``), never the payload.

Numbers: money, quantities and rates are decimal strings (``"15.93"``). A JSON number is also
accepted when it is *exact*: it is read as a ``Decimal`` from its text (never through float),
must be finite, at most 10^12 in size, and must need no more decimals than the field allows
(the currency's minor units for money: ``12.5`` and ``12.50`` pass for SAR, ``12.345`` does
not; 6 for quantities; 2 for rates). Trailing zeros beyond that are harmless
(``"899.10000"`` is 899.10). NaN, Infinity, booleans and exponent strings are rejected.

Which parts are required depends on ``event_type`` (docs/event-contract.md):

* ``order.created``, ``order.paid``: envelope + ``order``;
* ``order.refunded``: envelope + ``order`` (the original order, to price the refund) +
  ``refund``;
* ``order.cancelled``: envelope; ``order`` and ``reason`` optional (validated if present);
* any other type (``order.shipped``...): envelope only; the body is not inspected, so a type
  the pipeline skips can never dead-letter because of its body.

Unknown fields are ignored, so producers can add fields within v1.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.errors import InvalidEvent, MalformedEvent, UnsupportedSchemaVersion
from worker.money import ISO_4217_CODES, TaxCategory, minor_units, quantize

__all__ = [
    "CANCELLATION_SUB_ID",
    "DOCUMENT_EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "ORDER_CANCELLED",
    "ORDER_CREATED",
    "ORDER_PAID",
    "ORDER_REFUNDED",
    "SCHEMA_VERSION",
    "Address",
    "Customer",
    "Line",
    "Order",
    "OrderDiscount",
    "OrderEvent",
    "OtherId",
    "Refund",
    "RefundLine",
    "Shipping",
    "Source",
    "Tax",
    "Totals",
    "no_duplicate_keys",
    "parse_event",
    "parse_event_dict",
]

SCHEMA_VERSION: Final = "1"
ORDER_CREATED: Final = "order.created"
ORDER_PAID: Final = "order.paid"
ORDER_CANCELLED: Final = "order.cancelled"
#: What stands for the refund id in a cancellation credit note's ledger key and reference
#: (``<order>-CN-cancel``); no refund may have it as its id.
CANCELLATION_SUB_ID: Final = "cancel"
ORDER_REFUNDED: Final = "order.refunded"
#: Types whose order body is parsed; every other type passes with its envelope only.
DOCUMENT_EVENT_TYPES: Final = frozenset(
    {ORDER_CREATED, ORDER_PAID, ORDER_CANCELLED, ORDER_REFUNDED}
)
_ORDER_REQUIRED: Final = frozenset({ORDER_CREATED, ORDER_PAID, ORDER_REFUNDED})
#: Records larger than this are refused before decoding (1 MiB, Kafka's default max message).
MAX_EVENT_BYTES: Final = 1_048_576

_MAX_AMOUNT = Decimal(10) ** 12
_QUANTITY_DECIMALS = 6
_RATE_DECIMALS = 2
_DECIMAL_TEXT = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,20})?")
_EARLIEST = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
_LATEST = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


# --- field types -----------------------------------------------------------------------------
#
# These validators run for every number of every event on the consumer's hot path. They read
# prebuilt quantize steps instead of building ``Decimal(1).scaleb(-n)`` per field, and they
# memoise the outcome for decimal *strings* (see ``_TEXT_CACHE_SIZE``).

#: Distinct decimal strings remembered per kind of number. Real traffic repeats a small set
#: of prices, quantities, rates and "0.00"s, so a bounded cache turns most number checks into
#: one lookup. Only strings are cached: ``Decimal("1.0") == 1`` would make a Decimal or int key
#: return another input's digits. A refused string raises each time (exceptions are not cached).
#: The checks are exact (``Decimal(str)``, comparisons, a quantize far inside 28 digits), so a
#: remembered result is the one a fresh check would give.
_TEXT_CACHE_SIZE: Final = 4096


def _step(decimals: int) -> Decimal:
    """``10**-decimals`` as a Decimal (``0.01`` for 2): the ``quantize`` target."""
    return Decimal(1).scaleb(-decimals)


_QUANTITY_STEP: Final = _step(_QUANTITY_DECIMALS)
_RATE_STEP: Final = _step(_RATE_DECIMALS)
#: (minor units, quantize step) per currency the contract accepts, looked up per money field.
_CURRENCY_STEPS: Final[dict[str, tuple[int, Decimal]]] = {
    code: (minor_units(code), _step(minor_units(code))) for code in ISO_4217_CODES
}


def _to_decimal(value: object) -> Decimal:
    """A decimal string, an int or a JSON-text Decimal, as a finite, bounded Decimal."""
    if isinstance(value, str):  # the usual case first: the contract asks for strings
        if not _DECIMAL_TEXT.fullmatch(value):
            raise ValueError("must be a plain decimal string such as '12.50'")
        number = Decimal(value)  # the pattern admits finite numbers only
    elif isinstance(value, bool):
        raise ValueError("must be a decimal string or number, not a boolean")
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("must be a finite number")
        number = value
    else:
        # A Python float can only come from a caller bypassing parse_event; refuse it.
        raise ValueError("must be a decimal string or number")
    if abs(number) >= _MAX_AMOUNT:
        raise ValueError("is too large")
    return number


def _rounded(number: Decimal, step: Decimal) -> Decimal | None:
    """``number`` quantized to ``step``, or ``None`` when that would change its value."""
    try:
        rounded = number.quantize(step)
    except InvalidOperation as exc:  # pragma: no cover - bounded above, kept as a guard
        raise ValueError("is out of range") from exc
    return rounded if rounded == number else None


def _money_value(value: object, currency: str | None) -> Decimal:
    """A non-negative amount, rounded to the minor units of ``currency`` when one is known."""
    number = _to_decimal(value)
    if number < 0:
        raise ValueError("must not be negative")
    if currency is None:
        return number
    known = _CURRENCY_STEPS.get(currency)
    if known is None:  # a context from a caller other than parse_event_dict
        known = minor_units(currency), _step(minor_units(currency))
    decimals, step = known
    rounded = _rounded(number, step)
    if rounded is None:
        raise ValueError(f"must have at most {decimals} decimals for {currency}")
    return rounded


def _quantity_value(value: object) -> Decimal:
    """A positive quantity of at most six decimals, kept as written (``"2.500"`` stays)."""
    number = _to_decimal(value)
    if number <= 0:
        raise ValueError("must be greater than zero")
    if _rounded(number, _QUANTITY_STEP) is None:
        raise ValueError(f"must have at most {_QUANTITY_DECIMALS} decimals")
    return number


def _rate_value(value: object) -> Decimal:
    """A percentage of at most two decimals, kept as written (``"15"`` stays ``15``)."""
    number = _to_decimal(value)
    if not 0 <= number <= 100:
        raise ValueError("must be a percentage between 0 and 100")
    if _rounded(number, _RATE_STEP) is None:
        raise ValueError(f"must have at most {_RATE_DECIMALS} decimals")
    return number


_money_text = functools.lru_cache(maxsize=_TEXT_CACHE_SIZE)(_money_value)
_quantity_text = functools.lru_cache(maxsize=_TEXT_CACHE_SIZE)(_quantity_value)
_rate_text = functools.lru_cache(maxsize=_TEXT_CACHE_SIZE)(_rate_value)


def _money(value: object, info: ValidationInfo) -> Decimal:
    """Money field: the currency comes from the validation context (see parse_event_dict)."""
    context = info.context
    currency = None
    # ``type() is dict`` first: parse_event_dict passes a dict, and the ``Mapping`` ABC check
    # is several times slower.
    if type(context) is dict or isinstance(context, Mapping):
        found = context.get("currency")
        if isinstance(found, str):
            currency = found
    if type(value) is str:
        return _money_text(value, currency)
    return _money_value(value, currency)


def _quantity(value: object) -> Decimal:
    """Quantity field (see ``_quantity_value``)."""
    return _quantity_text(value) if type(value) is str else _quantity_value(value)


def _rate(value: object) -> Decimal:
    """Tax rate field (see ``_rate_value``)."""
    return _rate_text(value) if type(value) is str else _rate_value(value)


def _timestamp(value: object) -> datetime:
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 timestamp with an offset, e.g. 2025-01-31T09:30:00Z")
    try:
        moment = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError("is not a valid date and time") from exc
    # A day from either end of datetime's range, so the mapping can move it into any zone
    # (9999-12-31T23:59:59Z in Asia/Riyadh would overflow, an error no retry could mend).
    if not _EARLIEST <= moment <= _LATEST:
        raise ValueError("is outside the years 0001-9999 that every time zone can represent")
    return moment


Money = Annotated[Decimal, BeforeValidator(_money)]
Quantity = Annotated[Decimal, BeforeValidator(_quantity)]
Rate = Annotated[Decimal, BeforeValidator(_rate)]
Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]
Text = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=500)]
Id = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]
OptText = Annotated[str, StringConstraints(strict=True, max_length=500)] | None
ExemptionCode = Annotated[
    str, StringConstraints(strict=True, pattern=r"^VATEX-SA-[A-Z0-9-]{2,10}$")
]
Email = Annotated[str, StringConstraints(strict=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")]
Phone = Annotated[str, StringConstraints(strict=True, pattern=r"^\+?[0-9 ()-]{5,20}$")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", strict=False)


# --- order ------------------------------------------------------------------------------------


class Tax(_Model):
    """How a line is taxed: ZATCA category, percentage rate and, unless S, an exemption code."""

    category: TaxCategory
    rate: Rate
    exemption_code: ExemptionCode | None = None
    exemption_reason: OptText = None

    @model_validator(mode="after")
    def _rate_fits_category(self) -> Tax:
        if self.category == "S" and self.rate == 0:
            raise ValueError("category S needs a rate above 0")
        if self.category != "S" and self.rate != 0:
            raise ValueError(f"category {self.category} needs rate 0")
        return self


class Address(_Model):
    """Buyer address (Saudi national address fields); only the country is required."""

    street: OptText = None
    building_number: OptText = None
    additional_number: OptText = None
    district: OptText = None
    city: OptText = None
    postal_code: OptText = None
    country_code: Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Z]{2}$")]


class OtherId(_Model):
    """A buyer id other than the VAT number (ZATCA schemes: CRN, MOM, MLS, 700, SAG, ...)."""

    scheme: Literal["TIN", "CRN", "MOM", "MLS", "700", "SAG", "NAT", "GCC", "IQA", "PAS", "OTH"]
    value: Id


class Customer(_Model):
    """The buyer. At least one of vat_number, email and phone identifies them in the API."""

    external_id: Id
    type: Literal["individual", "business"]
    name: Text
    email: Email | None = None
    phone: Phone | None = None
    vat_number: Annotated[str, StringConstraints(strict=True, max_length=30)] | None = None
    other_id: OtherId | None = None
    address: Address

    @model_validator(mode="after")
    def _identifiable(self) -> Customer:
        if not (self.vat_number or self.email or self.phone):
            raise ValueError("needs at least one of vat_number, email, phone")
        return self


class Line(_Model):
    """One ordered product; ``discount_amount`` is for the whole line, not per unit."""

    line_id: Id
    sku: Id
    name: Text
    quantity: Quantity
    unit_price: Money
    discount_amount: Money = Decimal(0)
    tax: Tax

    def amount(self, currency: str) -> Decimal:
        """``round(quantity x unit_price) - discount_amount`` in ``currency``."""
        return quantize(self.quantity * self.unit_price, currency) - self.discount_amount

    @model_validator(mode="after")
    def _discount_fits(self, info: ValidationInfo) -> Line:
        if not self.discount_amount:
            return self  # no discount always fits: quantity > 0 and unit_price >= 0
        currency = info.context.get("currency") if isinstance(info.context, Mapping) else None
        gross = self.quantity * self.unit_price
        if isinstance(currency, str):
            gross = quantize(gross, currency)
        if self.discount_amount > gross:
            raise ValueError("discount_amount exceeds quantity x unit_price")
        return self


class Shipping(_Model):
    """A shipping charge; it becomes a line on the configured service product."""

    amount: Money
    discount_amount: Money = Decimal(0)
    tax: Tax

    @model_validator(mode="after")
    def _discount_fits(self) -> Shipping:
        if self.discount_amount > self.amount:
            raise ValueError("discount_amount exceeds amount")
        return self


class OrderDiscount(_Model):
    """An order-level discount (VAT-inclusive when prices include tax), spread over lines."""

    amount: Money
    code: OptText = None


class Totals(_Model):
    """The platform's own figures; ``total`` (with VAT) is reconciled, the rest informative."""

    total: Money
    subtotal: Money | None = None
    tax: Money | None = None
    shipping: Money | None = None
    discount: Money | None = None


class Order(_Model):
    """The order as the platform holds it."""

    currency: Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Z]{3}$")]
    prices_include_tax: StrictBool
    customer: Customer
    lines: Annotated[tuple[Line, ...], Field(max_length=1000)]
    shipping: Annotated[tuple[Shipping, ...], Field(max_length=20)] = ()
    order_discounts: Annotated[tuple[OrderDiscount, ...], Field(max_length=50)] = ()
    totals: Totals

    @model_validator(mode="after")
    def _consistent(self) -> Order:
        if self.currency not in ISO_4217_CODES:
            raise ValueError("currency is not an ISO 4217 code")
        if not self.lines:
            raise ValueError("lines must hold at least one line")
        seen: set[str] = set()
        for line in self.lines:
            if line.line_id in seen:
                raise ValueError(f"line_id {line.line_id!r} appears twice")
            seen.add(line.line_id)
        return self


class RefundLine(_Model):
    """Units of one order line given back (a positive count)."""

    line_id: Id
    quantity: Quantity


class Refund(_Model):
    """What an ``order.refunded`` event gives back: lines and/or a shipping amount."""

    refund_id: Id
    lines: Annotated[tuple[RefundLine, ...], Field(max_length=1000)] = ()
    shipping_amount: Money = Decimal(0)
    reason: OptText = None

    @field_validator("refund_id")
    @classmethod
    def _not_the_cancellations(cls, value: str) -> str:
        # The cancellation's credit note is keyed and referenced as "<order>-CN-cancel": a
        # refund of that id would take its place, and the cancellation would be skipped as
        # a duplicate of it, leaving the rest of the invoice uncredited.
        # In any case: an API that compares references without case would still collide.
        if value.casefold() == CANCELLATION_SUB_ID:
            raise ValueError(
                f'"{CANCELLATION_SUB_ID}" is reserved for the cancellation\'s credit note'
            )
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Refund:
        if not self.lines and self.shipping_amount == 0:
            raise ValueError("refunds nothing: needs lines or a shipping_amount")
        return self


# --- envelope -----------------------------------------------------------------------------------


class Source(_Model):
    """Where the order lives: the platform and the merchant's store on it."""

    platform: Id
    store_id: Id


class OrderEvent(_Model):
    """A validated v1 event. Immutable; money fields are ``Decimal`` in minor-unit precision."""

    event_id: Id
    event_type: Annotated[
        str, StringConstraints(strict=True, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
    ]
    occurred_at: Timestamp
    schema_version: Literal["1"]
    source: Source
    order_id: Id
    order: Order | None = None
    refund: Refund | None = None
    reason: OptText = None

    @model_validator(mode="before")
    @classmethod
    def _ignore_bodies_of_other_types(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("event_type") not in DOCUMENT_EVENT_TYPES:
            return {k: v for k, v in data.items() if k not in ("order", "refund")}
        return data

    @model_validator(mode="after")
    def _parts_for_type(self) -> OrderEvent:
        if self.event_type in _ORDER_REQUIRED and self.order is None:
            raise ValueError(f"order is required for {self.event_type}")
        if self.event_type == ORDER_REFUNDED and self.refund is None:
            raise ValueError("refund is required for order.refunded")
        return self

    @property
    def is_document_event(self) -> bool:
        """Whether the type is one of the four the contract defines a body for."""
        return self.event_type in DOCUMENT_EVENT_TYPES


# --- parsing ------------------------------------------------------------------------------------


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: a repeated key is malformed input, not "the last one wins".

    It runs for every JSON object, so the common case is one C-level ``dict(pairs)``; only
    when that lost a pair is the list walked again to name the first repeated key.
    """
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return result


#: One decoder for every record: ``json.loads`` with keyword arguments builds a new one per
#: call. Decoders keep no state between calls, so sharing one is safe.
_DECODER: Final = json.JSONDecoder(
    parse_float=Decimal,
    parse_constant=Decimal,  # NaN/Infinity become non-finite Decimals, refused later
    object_pairs_hook=no_duplicate_keys,
)


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "tagged-union[")):  # pydantic internals
            continue
        else:
            path += f".{part}" if path else part
    return path or "event"


def _describe(exc: ValidationError) -> list[str]:
    # include_input=False: the payload (names, emails) never reaches a message or a log.
    return [
        f"{_path(err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors(include_input=False, include_url=False, include_context=False)
    ]


def parse_event(
    raw: bytes, *, key: bytes | None = None, max_bytes: int = MAX_EVENT_BYTES
) -> OrderEvent:
    """Decode and validate one Kafka record value against contract v1.

    ``key``, when given, must equal the UTF-8 ``order_id``: the pipeline relies on the key to
    keep one order's events in one partition, in order.

    Raises:
        MalformedEvent: too large, not UTF-8, not JSON, or a JSON object with a duplicate key.
        UnsupportedSchemaVersion: ``schema_version`` is a string other than ``"1"``.
        InvalidEvent: any contract violation; the message names the first field path and
            ``details["errors"]`` lists up to ten ``path: problem`` strings.
    """
    if len(raw) > max_bytes:
        raise MalformedEvent(f"event is {len(raw)} bytes, limit {max_bytes}", size=len(raw))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedEvent(f"event is not UTF-8 (byte {exc.start})") from None
    try:
        if text.startswith("\ufeff"):  # as json.loads does, which _DECODER.decode does not
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        data = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise MalformedEvent(f"event is not valid JSON: {message}"[:200]) from None
    if not isinstance(data, dict):
        raise InvalidEvent("event: must be a JSON object")
    return parse_event_dict(data, key=key)


def _ids(data: dict[str, Any]) -> dict[str, str]:
    """The event and order ids an error carries, when they are strings (built on failure only)."""
    return {k: data[k] for k in ("event_id", "order_id") if isinstance(data.get(k), str)}


def parse_event_dict(data: dict[str, Any], *, key: bytes | None = None) -> OrderEvent:
    """Validate one already-decoded v1 event (a dict, as ``parse_event`` gets from JSON).

    The platform adapters (:mod:`worker.platforms`) build such dicts from webhook payloads;
    this applies exactly the checks ``parse_event`` applies after decoding. Numbers should be
    ``Decimal``, ``int`` or decimal strings (a Python ``float`` is refused).

    Raises:
        UnsupportedSchemaVersion: ``schema_version`` is a string other than ``"1"``.
        InvalidEvent: ``data`` is not a dict, or any contract violation (as ``parse_event``).
    """
    if not isinstance(data, dict):
        raise InvalidEvent("event: must be a JSON object")
    version = data.get("schema_version")
    if version is None:
        raise InvalidEvent("schema_version: Field required", **_ids(data))
    if not isinstance(version, str):
        raise InvalidEvent('schema_version: must be the string "1"', **_ids(data))
    if version != SCHEMA_VERSION:
        raise UnsupportedSchemaVersion(
            f"schema_version {version[:20]!r} is not supported (expected {SCHEMA_VERSION!r})",
            schema_version=version[:20],
            **_ids(data),
        )

    order = data.get("order")
    currency = order.get("currency") if isinstance(order, dict) else None
    context = (
        {"currency": currency} if isinstance(currency, str) and currency in ISO_4217_CODES else {}
    )
    try:
        # The core validator directly: model_validate only forwards to it, and this is the
        # hot path of the consumer.
        event: OrderEvent = OrderEvent.__pydantic_validator__.validate_python(data, context=context)
    except ValidationError as exc:
        problems = _describe(exc)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidEvent(problems[0] + more, errors=problems[:10], **_ids(data)) from None

    if key is not None and key != event.order_id.encode("utf-8"):
        raise InvalidEvent("order_id: does not match the record key", **_ids(data))
    return event
