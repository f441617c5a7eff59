"""What the platform adapters share: options, number and time readers, field paths, v1 parts.

Pure: no I/O. Every reader raises :class:`~worker.errors.InvalidEvent` whose message names
the platform field path and the problem, never the value (names and e-mails stay out of logs).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worker.errors import InvalidEvent
from worker.events import SCHEMA_VERSION, OrderEvent, parse_event_dict
from worker.money import minor_units

__all__ = [
    "PlatformOptions",
    "as_dict",
    "as_list",
    "body_digest",
    "build_events",
    "customer_dict",
    "decimal",
    "first_text",
    "fmt",
    "lookup",
    "money",
    "phone_number",
    "rate_percent",
    "tax_dict",
    "text",
    "timestamp",
]

_MAX_TEXT: Final = 500
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_ISO_WITH_OFFSET = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:?[0-9]{2})"
)
_NAIVE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?")
# JavaScript Date.toString(): "Sun Jun 26 2022 12:21:48 GMT+0300 (Arabian Standard Time)".
_JS_DATE = re.compile(
    r"[A-Za-z]{3} ([A-Za-z]{3}) ([0-9]{1,2}) ([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) "
    r"GMT([+-])([0-9]{2}):?([0-9]{2})"
)
_MONTHS: Final = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_PATH_PART = re.compile(r"([^.\[\]]+)((?:\[[^\]]+\])*)")
_LABEL_KEYS: Final = ("name", "key", "title", "label", "code")


@dataclass(frozen=True, slots=True)
class PlatformOptions:
    """The knobs one adapter reads (from ``settings.platforms``; see docs/platforms/)."""

    #: Platform statuses that mean "paid" (what they are matched against is per platform).
    paid_statuses: frozenset[str] = frozenset()
    #: Field paths tried in order for the buyer's VAT number; none found = an individual.
    vat_number_fields: tuple[str, ...] = ()
    #: Field paths tried in order for the national-address building number.
    building_number_fields: tuple[str, ...] = ()
    default_country_code: str = "SA"
    untaxed_category: str = "O"
    untaxed_exemption_code: str | None = "VATEX-SA-OOS"


# --- reading values -----------------------------------------------------------------------


def as_dict(value: object, path: str, *, required: bool = True) -> dict[str, Any]:
    """``value`` as a JSON object; ``{}`` when absent and not required."""
    if isinstance(value, dict):
        return value
    if value is None and not required:
        return {}
    raise InvalidEvent(f"{path}: must be an object")


def as_list(value: object, path: str) -> list[Any]:
    """``value`` as a JSON array; ``[]`` when absent (null)."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise InvalidEvent(f"{path}: must be an array")


def text(value: object, *, limit: int = _MAX_TEXT) -> str | None:
    """A trimmed, non-empty string (numbers become their text), else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | Decimal):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value[:limit] or None


def decimal(value: object, path: str) -> Decimal:
    """A number from a platform field: JSON number, numeric string or ``{amount: ...}``.

    Long decimal strings (Zid's ``"899.10000000000000"``) are read exactly. A Python float
    never gets here: payloads are decoded with ``parse_float=Decimal``.

    Raises:
        InvalidEvent: missing, boolean, or not a finite number.
    """
    if isinstance(value, dict) and "amount" in value:
        value = value["amount"]
    if isinstance(value, bool) or value is None:
        raise InvalidEvent(f"{path}: must be a number")
    if isinstance(value, int | Decimal):
        number = Decimal(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip().replace(",", "")):
        number = Decimal(value.strip().replace(",", ""))
    else:
        raise InvalidEvent(f"{path}: must be a number")
    if not number.is_finite() or abs(number) >= Decimal(10) ** 12:
        raise InvalidEvent(f"{path}: must be a finite number below 10^12")
    return number


def money(value: object, currency: str, path: str, *, default: Decimal | None = None) -> Decimal:
    """An amount rounded half up to ``currency``'s minor unit (missing -> ``default``)."""
    if value is None and default is not None:
        return default
    number = decimal(value, path)
    step = Decimal(1).scaleb(-minor_units(currency))
    try:
        return number.quantize(step, rounding=ROUND_HALF_UP)
    except InvalidOperation:  # pragma: no cover - bounded by decimal()
        raise InvalidEvent(f"{path}: is out of range") from None


def rate_percent(value: object, path: str, *, fraction: bool) -> Decimal:
    """A tax rate as a percentage with at most 2 decimals (``fraction``: 0.15 means 15 %)."""
    number = decimal(value, path)
    if fraction:
        number *= 100
    return number.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP).normalize()


def fmt(value: Decimal) -> str:
    """A Decimal as plain text (never exponent notation)."""
    return format(value, "f")


def timestamp(value: object, path: str, *, naive_zone: tzinfo = UTC) -> str:
    """An RFC 3339 timestamp with offset from the formats platforms send.

    Accepts ISO 8601 with an offset, ``YYYY-MM-DD HH:MM:SS`` (read in ``naive_zone``),
    JavaScript ``Date.toString()`` text (Salla's envelope ``created_at``) and PHP
    ``{date, timezone}`` objects (Salla's ``data.date``).

    Raises:
        InvalidEvent: none of these.
    """
    zone = naive_zone
    if isinstance(value, dict):
        name = value.get("timezone")
        if isinstance(name, str):
            try:
                zone = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                raise InvalidEvent(f"{path}.timezone: unknown time zone") from None
        value = value.get("date")
    if isinstance(value, str):
        raw = value.strip()
        try:
            if _ISO_WITH_OFFSET.fullmatch(raw):
                iso = raw.upper().replace("Z", "+00:00")
                if not re.search(r"[+-][0-9]{2}:[0-9]{2}$", iso):
                    iso = iso[:-2] + ":" + iso[-2:]
                return _rfc3339(datetime.fromisoformat(iso))
            if _NAIVE.fullmatch(raw):
                return _rfc3339(datetime.fromisoformat(raw.upper()).replace(tzinfo=zone))
            js = _JS_DATE.match(raw)
            if js and js.group(1) in _MONTHS:
                mon, day, year, hh, mm, ss, sign, oh, om = js.groups()
                offset = timedelta(hours=int(oh), minutes=int(om)) * (-1 if sign == "-" else 1)
                moment = datetime(
                    int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(ss),
                    tzinfo=timezone(offset),
                )  # fmt: skip
                return _rfc3339(moment)
        except ValueError:
            pass
    raise InvalidEvent(f"{path}: must be a date and time")


def _rfc3339(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def lookup(data: object, path: str) -> object:
    """The value at a field path, or None.

    A path is dot-separated keys; ``key[N]`` takes item N of an array and ``key[Label]``
    takes, from an array of ``{name, value}`` objects (Shopify ``note_attributes``, custom
    fields), the ``value`` of the one whose ``name``/``key``/``title``/``label``/``code``
    equals ``Label`` (case-insensitive); on an object it takes the key ``Label``.
    """
    current: object = data
    for part in path.split("."):
        match = _PATH_PART.fullmatch(part)
        if match is None:
            return None
        current = current.get(match.group(1)) if isinstance(current, dict) else None
        for selector in re.findall(r"\[([^\]]+)\]", match.group(2)):
            current = _select(current, selector)
        if current is None:
            return None
    return current


def _select(current: object, selector: str) -> object:
    if isinstance(current, list):
        if selector.isdigit():
            index = int(selector)
            return current[index] if index < len(current) else None
        wanted = selector.strip().lower()
        for item in current:
            if isinstance(item, dict) and any(
                isinstance(item.get(k), str) and item[k].strip().lower() == wanted
                for k in _LABEL_KEYS
            ):
                return item.get("value")
        return None
    if isinstance(current, dict):
        return current.get(selector)
    return None


def first_text(data: object, paths: Iterable[str]) -> str | None:
    """The first non-empty text found at ``paths``."""
    for path in paths:
        found = text(lookup(data, path))
        if found:
            return found
    return None


def phone_number(number: str | None, code: str = "") -> str | None:
    """``mobile_code`` + ``mobile`` (``+966`` + ``500000001``), or an international number."""
    if not number:
        return None
    digits = code.lstrip("+")
    if number.startswith("+") or not digits:
        return number if number.startswith("+") or len(number) < 11 else "+" + number
    if number.startswith(digits) and len(number) > 10:
        return "+" + number
    return f"+{digits}{number.lstrip('0')}"


def body_digest(raw: bytes) -> str:
    """A delivery id for payloads without one: the SHA-256 of the exact body."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


# --- building v1 parts --------------------------------------------------------------------


def tax_dict(rate: Decimal, options: PlatformOptions) -> dict[str, str]:
    """Category S at ``rate``; 0 % becomes the configured untaxed category and VATEX code."""
    if rate > 0:
        return {"category": "S", "rate": fmt(rate)}
    tax = {"category": options.untaxed_category, "rate": "0"}
    if options.untaxed_exemption_code:
        tax["exemption_code"] = options.untaxed_exemption_code
    return tax


def customer_dict(
    *,
    external_id: str,
    name: str | None,
    email: str | None,
    phone: str | None,
    vat_number: str | None,
    company: str | None,
    address: Mapping[str, str | None],
    options: PlatformOptions,
) -> dict[str, Any]:
    """A v1 customer: a business when a VAT number was found, else an individual."""
    country = (address.get("country_code") or "").strip().upper()
    cleaned = {k: v for k, v in address.items() if v and k != "country_code"}
    cleaned["country_code"] = (
        country if re.fullmatch(r"[A-Z]{2}", country) else options.default_country_code
    )
    customer: dict[str, Any] = {
        "external_id": external_id,
        "type": "business" if vat_number else "individual",
        "name": (company if vat_number and company else name) or name or company or external_id,
        "address": cleaned,
    }
    if email and re.fullmatch(r"[^@\s]+@[^@\s]+", email):
        customer["email"] = email
    if phone:
        customer["phone"] = phone
    if vat_number:
        customer["vat_number"] = re.sub(r"\s", "", vat_number)
    return customer


def build_events(
    *,
    platform: str,
    store_id: str,
    order_id: str,
    occurred_at: str,
    event_id: str,
    parts: Sequence[tuple[str, Mapping[str, Any]]],
) -> tuple[OrderEvent, ...]:
    """Validate ``(event_type, body)`` pairs as v1 events sharing one envelope.

    Each event gets ``event_id`` (suffixed ``#type`` when there are several) so the ledger's
    audit trail names the platform delivery it came from.

    Raises:
        InvalidEvent: an event breaks the v1 contract (the message names the v1 field path).
    """
    events = []
    for event_type, body in parts:
        suffix = f"#{event_type}" if len(parts) > 1 else ""
        data: dict[str, Any] = {
            **body,
            "event_id": (event_id[: 200 - len(suffix)] + suffix),
            "event_type": event_type,
            "occurred_at": occurred_at,
            "schema_version": SCHEMA_VERSION,
            "source": {"platform": platform, "store_id": store_id},
            "order_id": order_id,
        }
        events.append(parse_event_dict(data))
    return tuple(events)
