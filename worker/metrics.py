"""The Prometheus metric catalogue: every metric of invoice-sync is declared here and only here.

Names carry the ``invoice_sync_`` prefix and a base unit (``_seconds``, ``_total``). Every label
value comes from a small fixed set written next to the metric: event types are folded into
``KNOWN_EVENT_TYPES`` + ``other``, reasons come from :mod:`worker.errors`, endpoints are URL
templates, statuses are classes (``2xx``). Never an order id, a token, or an exception text.
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info

from worker import __version__
from worker.errors import DLQ_REASONS

__all__ = [
    "API_LATENCY",
    "API_REQUESTS",
    "BUILD_INFO",
    "COMMIT_FAILURES",
    "CONFIG_FAULT",
    "CONSUMER_LAG",
    "DEAD_LETTERS",
    "DEAD_LETTERS_VALUE_OMITTED",
    "DEDUPLICATED",
    "DOCUMENTS_CREATED",
    "EVENTS_CONSUMED",
    "EVENTS_IN_FLIGHT",
    "KNOWN_EVENT_TYPES",
    "LAST_COMMIT",
    "LEDGER_LATENCY",
    "PARTITIONS_PAUSED",
    "PLATFORM_EVENTS",
    "PLATFORM_OUTCOMES",
    "READY",
    "RETRIES",
    "TOKEN_EXPIRY",
    "TOKEN_FETCHES",
    "TOKEN_FETCH_LATENCY",
    "TOKEN_RENEWALS_401",
    "event_type_label",
    "initialise_label_sets",
    "labelled",
    "status_class",
]

#: Event types that get their own label value; anything else is counted as "other".
KNOWN_EVENT_TYPES = frozenset(
    {"order.created", "order.paid", "order.cancelled", "order.refunded", "order.updated"}
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

EVENTS_CONSUMED = Counter(
    "invoice_sync_events_consumed_total",
    "Events read from Kafka and finished, by event type and outcome "
    "(created, reconciled, duplicate, void: cancelled before it was invoiced, skipped, "
    "dead_lettered).",
    ["event_type", "outcome"],
)
DOCUMENTS_CREATED = Counter(
    "invoice_sync_documents_created_total",
    "Invoices and credit notes created in the accounting API by this worker.",
    ["kind"],  # invoice | credit_note
)
DEAD_LETTERS = Counter(
    "invoice_sync_dead_letters_total",
    "Events written to the dead-letter topic, by reason code (see docs/runbook.md).",
    ["reason"],
)
DEAD_LETTERS_VALUE_OMITTED = Counter(
    "invoice_sync_dead_letters_value_omitted_total",
    "Dead letters written without the original value because it was too large for the DLQ "
    "producer or broker, by reason code (the value stays on the source topic).",
    ["reason"],
)
DEDUPLICATED = Counter(
    "invoice_sync_deduplicated_total",
    "Events skipped because the ledger shows their document already exists "
    "(redelivery after a restart or rebalance, or a repeated platform webhook).",
    ["kind"],  # invoice | credit_note | delivery (a repeated platform webhook delivery)
)
API_REQUESTS = Counter(
    "invoice_sync_api_requests_total",
    "Requests to the accounting API, by endpoint template, method and status class "
    "(2xx, 4xx, 5xx, or error when no response arrived).",
    ["endpoint", "method", "status_class"],
)
API_LATENCY = Histogram(
    "invoice_sync_api_request_duration_seconds",
    "Time from sending an accounting-API request to its full response, in seconds.",
    ["endpoint", "method"],
    buckets=_LATENCY_BUCKETS,
)
TOKEN_FETCHES = Counter(
    "invoice_sync_token_fetches_total",
    "Requests to the OAuth token endpoint, by grant type and outcome "
    "(success, transient_error, config_error).",
    ["grant", "outcome"],
)
TOKEN_FETCH_LATENCY = Histogram(
    "invoice_sync_token_fetch_duration_seconds",
    "Time one token request took, in seconds.",
    ["grant"],
    buckets=_LATENCY_BUCKETS,
)
TOKEN_EXPIRY = Gauge(
    "invoice_sync_token_expiry_seconds",
    "Seconds until the cached access token expires (0 when there is none).",
)
TOKEN_RENEWALS_401 = Counter(
    "invoice_sync_token_renewals_after_401_total",
    "Times an API 401 made the worker renew its access token and resend the request.",
)
RETRIES = Counter(
    "invoice_sync_retries_total",
    "Attempts retried after a transient failure, by reason code.",
    ["reason"],
)
EVENTS_IN_FLIGHT = Gauge(
    "invoice_sync_events_in_flight",
    "Events taken from Kafka and not yet finished (being processed or waiting for their key).",
)
PARTITIONS_PAUSED = Gauge(
    "invoice_sync_partitions_paused",
    "Assigned partitions currently paused (buffers full, Retry-After, or configuration fault).",
)
LEDGER_LATENCY = Histogram(
    "invoice_sync_ledger_operation_duration_seconds",
    "Time of one idempotency-ledger operation, by operation, in seconds.",
    ["operation"],  # claim | complete | fail | lookup
    buckets=_LATENCY_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "invoice_sync_consumer_lag_messages",
    "Log-end offset (high watermark) minus committed offset, per assigned partition.",
    ["topic", "partition"],
)
LAST_COMMIT = Gauge(
    "invoice_sync_last_commit_timestamp_seconds",
    "Unix time of the last successful offset commit.",
)
COMMIT_FAILURES = Counter(
    "invoice_sync_commit_failures_total",
    "Offset commits that failed (the offsets are committed again later).",
)
CONFIG_FAULT = Gauge(
    "invoice_sync_configuration_fault",
    "1 while consumption is paused by a configuration fault (bad credentials or scopes).",
    ["reason"],  # auth_configuration | insufficient_scope
)
READY = Gauge(
    "invoice_sync_ready",
    "1 when the worker reports ready on /readyz, else 0.",
)
#: Outcomes of one platform record (closed set for PLATFORM_EVENTS).
PLATFORM_OUTCOMES = ("decoded", "ignored", "duplicate", "bad_signature", "rejected")
PLATFORM_EVENTS = Counter(
    "invoice_sync_platform_events_total",
    "Platform webhook records (salla, zid, shopify) by outcome: decoded into v1 events, "
    "ignored (no event for us), duplicate (a repeated delivery skipped), bad_signature, "
    "rejected (any other reason it could not be decoded).",
    ["platform", "outcome"],
)
BUILD_INFO = Info("invoice_sync_build", "Version of the running invoice-sync worker.")
BUILD_INFO.info({"version": __version__})


def event_type_label(event_type: str) -> str:
    """Fold an event type into the fixed label set."""
    return event_type if event_type in KNOWN_EVENT_TYPES else "other"


def status_class(status: int | None) -> str:
    """``2xx``/``3xx``/``4xx``/``5xx``, or ``error`` when no response arrived."""
    if status is None:
        return "error"
    return f"{status // 100}xx"


def initialise_label_sets() -> None:
    """Create every child of the closed label sets alerts count on, at zero.

    ``increase()`` cannot see a counter's first step from "no series" to 1, so a first dead
    letter would never alert; a series that already exists at 0 makes that step visible.
    Existing values are left as they are, so calling this again is harmless.
    """
    for reason in DLQ_REASONS:
        DEAD_LETTERS.labels(reason)
        DEAD_LETTERS_VALUE_OMITTED.labels(reason)
    for kind in ("invoice", "credit_note"):
        DOCUMENTS_CREATED.labels(kind)
        DEDUPLICATED.labels(kind)
    for reason in ("auth_configuration", "insufficient_scope"):
        CONFIG_FAULT.labels(reason)
    for grant in ("client_credentials", "refresh_token"):
        for outcome in ("success", "transient_error", "config_error"):
            TOKEN_FETCHES.labels(grant, outcome)
    DEDUPLICATED.labels("delivery")
    for platform in ("salla", "zid", "shopify"):
        for outcome in PLATFORM_OUTCOMES:
            PLATFORM_EVENTS.labels(platform, outcome)


@functools.lru_cache(maxsize=1024)
def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once per combination (label sets are small).

    For the per-event hot path: ``labels()`` validates and locks on every call. Children are
    never removed here, so a cached child stays the one the registry exports.
    """
    return metric.labels(*values)
