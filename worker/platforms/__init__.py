"""Platform webhook payloads (Salla, Zid, Shopify) read from Kafka, as v1 events. Pure.

A producer forwards each webhook it receives as one Kafka record: the raw body as the value,
the webhook's HTTP headers as record headers. :func:`decode_record` turns such a record into
zero or more validated v1 :class:`~worker.events.OrderEvent` objects plus the platform's
delivery id, which the processor uses to skip repeated deliveries::

    format  = detect_format(topic, headers, config)      # v1 | salla | zid | shopify
    decoded = decode_record(value, headers=..., topic=..., key=..., config=config)
    decoded.events        # 0..n OrderEvent
    decoded.delivery_id   # "orders/paid:<X-Shopify-Event-Id>", "sha256:<body digest>", ...

The format comes from ``kafka.topic_formats`` for the record's topic; a topic set to ``auto``
(or not listed) reads the ``platforms.format_header`` record header (``x-event-source``), then
recognises Shopify by ``X-Shopify-Topic``, and otherwise reads v1. Signatures are checked
first (:mod:`worker.platforms.signatures`) when the platform's secret is configured.

Nothing here does I/O; each adapter (:mod:`.salla`, :mod:`.zid`, :mod:`.shopify`) is a pure
function of the decoded body, the headers it needs and :class:`PlatformOptions`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from worker.errors import InvalidEvent, MalformedEvent, SettingsError
from worker.events import MAX_EVENT_BYTES, OrderEvent, no_duplicate_keys, parse_event
from worker.platforms import salla, shopify, zid
from worker.platforms._common import PlatformOptions, body_digest
from worker.platforms.signatures import SIGNATURE_HEADERS, verify_signature

if TYPE_CHECKING:  # settings pull in pydantic-settings (and asyncio); the adapters need neither
    from worker.settings import Settings

__all__ = [
    "FORMATS",
    "PLATFORMS",
    "DecodedRecord",
    "PlatformConfig",
    "PlatformOptions",
    "decode_record",
    "detect_format",
    "header_map",
]

#: Platform formats (each has an adapter).
PLATFORMS: Final = ("salla", "zid", "shopify")
#: Every value ``kafka.topic_formats`` and the format header may name.
FORMATS: Final = ("v1", *PLATFORMS)
_AUTO: Final = "auto"
#: A producer-set delivery id honoured for every platform (when the platform has none).
_DELIVERY_HEADER: Final = "x-delivery-id"


@dataclass(frozen=True, slots=True)
class PlatformConfig:
    """What decoding needs from the settings, checked once at start-up."""

    topic_formats: Mapping[str, str] = field(default_factory=dict)
    format_header: str = "x-event-source"
    options: Mapping[str, PlatformOptions] = field(default_factory=dict)
    #: Signature secrets by platform; a platform listed here must sign every record.
    secrets: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for topic, fmt in self.topic_formats.items():
            if fmt not in (*FORMATS, _AUTO):
                raise SettingsError(
                    f"kafka.topic_formats[{topic!r}]: must be one of {', '.join(FORMATS)}, auto"
                )
        unknown = set(self.secrets) - set(SIGNATURE_HEADERS)
        if unknown:
            raise SettingsError(f"platform secrets: no signature scheme for {sorted(unknown)}")

    @classmethod
    def from_settings(cls, settings: Settings) -> PlatformConfig:
        """The decoding configuration from ``settings.kafka`` and ``settings.platforms``.

        Raises:
            SettingsError: a topic format that is not v1, salla, zid, shopify or auto.
        """
        p = settings.platforms
        shared = {
            "default_country_code": p.default_country_code,
            "untaxed_category": p.untaxed_category,
            "untaxed_exemption_code": p.untaxed_exemption_code,
        }
        options = {
            "salla": PlatformOptions(
                paid_statuses=_lower(p.salla_paid_statuses),
                vat_number_fields=tuple(p.salla_vat_number_fields),
                building_number_fields=tuple(p.salla_building_number_fields),
                **shared,
            ),
            "zid": PlatformOptions(
                paid_statuses=_lower(p.zid_paid_statuses),
                vat_number_fields=tuple(p.zid_vat_number_fields),
                building_number_fields=tuple(p.zid_building_number_fields),
                **shared,
            ),
            "shopify": PlatformOptions(
                paid_statuses=_lower(p.shopify_paid_statuses),
                vat_number_fields=tuple(p.shopify_vat_number_fields),
                building_number_fields=tuple(p.shopify_building_number_fields),
                **shared,
            ),
        }
        secrets = {
            name: secret.get_secret_value().encode("utf-8")
            for name, secret in (
                ("salla", p.salla_webhook_secret),
                ("shopify", p.shopify_webhook_secret),
            )
            if secret is not None and secret.get_secret_value()
        }
        return cls(
            topic_formats={t: f.strip().lower() for t, f in settings.kafka.topic_formats.items()},
            format_header=p.format_header.lower(),
            options=options,
            secrets=secrets,
        )


def _lower(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.strip().lower() for v in values)


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    """One record as v1 events.

    ``delivery_id`` is None for v1 records (the ledger's document keys dedupe those);
    ``source_event`` is the platform's event name or topic, for logs.
    """

    format: str
    events: tuple[OrderEvent, ...]
    delivery_id: str | None = None
    source_event: str = ""


def header_map(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Record headers as a lower-case name -> text map (the last value of a name wins)."""
    out: dict[str, str] = {}
    for name, value in headers or ():
        out[name.lower()] = (value or b"").decode("utf-8", "replace").strip()
    return out


def detect_format(topic: str, headers: Mapping[str, str], config: PlatformConfig) -> str:
    """The record's format: the topic's configured one, else the format header, else sniffed.

    Raises:
        InvalidEvent: the format header names an unknown format.
    """
    configured = config.topic_formats.get(topic, _AUTO)
    if configured != _AUTO:
        return configured
    named = headers.get(config.format_header, "").lower()
    if named:
        if named not in FORMATS:
            raise InvalidEvent(f"{config.format_header}: unknown event source format")
        return named
    if "x-shopify-topic" in headers:
        return "shopify"
    if "x-salla-signature" in headers:
        return "salla"
    return "v1"


def _load(raw: bytes) -> object:
    if len(raw) > MAX_EVENT_BYTES:
        raise MalformedEvent(f"record is {len(raw)} bytes, limit {MAX_EVENT_BYTES}", size=len(raw))
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_float=Decimal,
            parse_constant=Decimal,
            object_pairs_hook=no_duplicate_keys,
        )
    except UnicodeDecodeError as exc:
        raise MalformedEvent(f"record is not UTF-8 (byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise MalformedEvent(f"record is not valid JSON: {message}"[:200]) from None


def _delivery_id(fmt: str, raw: bytes, headers: Mapping[str, str], topic: str) -> str:
    if fmt == "shopify":
        # One event can fire several topics with one event id; the topic keeps them apart.
        ident = headers.get("x-shopify-event-id") or headers.get("x-shopify-webhook-id")
        if ident:
            return f"{topic}:{ident}"[:200]
    ident = headers.get(_DELIVERY_HEADER)
    return ident[:200] if ident else body_digest(raw)


def decode_record(
    value: bytes | None,
    *,
    headers: Iterable[tuple[str, bytes | None]] | None = None,
    topic: str = "",
    key: bytes | None = None,
    config: PlatformConfig,
    fmt: str | None = None,
) -> DecodedRecord:
    """Decode one Kafka record (any format) into v1 events and its delivery id.

    ``fmt`` skips detection when the caller already ran :func:`detect_format`. v1 records go
    through :func:`~worker.events.parse_event` unchanged (their key must equal the order id);
    platform records are keyed by the producer, and their key is not checked.

    Raises:
        BadSignature: the platform's secret is configured and the signature is missing or
            wrong (checked before the body is parsed).
        MalformedEvent: too large, not UTF-8, not JSON.
        InvalidEvent, UnsupportedSchemaVersion, UnmappableOrder: the payload cannot become
            v1 events (the message names the field path, never a value).
    """
    raw = value or b""
    mapped = header_map(headers)
    fmt = fmt or detect_format(topic, mapped, config)
    if fmt == "v1":
        return DecodedRecord("v1", (parse_event(raw, key=key),))
    secret = config.secrets.get(fmt)
    if secret is not None:
        verify_signature(fmt, raw, mapped, secret=secret)
    body = _load(raw)
    options = config.options.get(fmt, PlatformOptions())
    delivery = _delivery_id(fmt, raw, mapped, mapped.get("x-shopify-topic", ""))
    event_id = f"{fmt}:{delivery}"[:200]
    events: tuple[OrderEvent, ...]
    if fmt == "salla":
        source_event = str(body.get("event", "")) if isinstance(body, dict) else ""
        events = salla.adapt(body, event_id=event_id, options=options)
    elif fmt == "zid":
        source_event = (
            mapped.get("x-zid-event") or mapped.get("x-event-type") or mapped.get("event-type", "")
        )
        events = zid.adapt(body, event=source_event or None, event_id=event_id, options=options)
    elif fmt == "shopify":
        source_event = mapped.get("x-shopify-topic", "")
        if not source_event:
            raise InvalidEvent("x-shopify-topic: a Shopify record needs its topic header")
        events = shopify.adapt(
            body,
            topic=source_event,
            shop_domain=mapped.get("x-shopify-shop-domain") or None,
            triggered_at=mapped.get("x-shopify-triggered-at") or None,
            event_id=event_id,
            options=options,
        )
    else:  # pragma: no cover - PlatformConfig and detect_format allow only FORMATS
        raise InvalidEvent(f"format {fmt!r} is not supported")
    return DecodedRecord(fmt, events, delivery, source_event[:100])
