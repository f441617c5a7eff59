"""The one error tree of invoice-sync.

Every failure the worker can meet is one of these classes. Callers branch on the class
attributes, not on lists of classes: ``retriable`` says whether trying again can help and
``reason`` is the stable code that the dead-letter header, the metric label and the log
field all carry. Messages never contain a secret: build them from ids, codes and
figures only::

    InvoiceSyncError
     ├── PermanentEventError          (retriable=False: the event goes to the DLQ)
     │    ├── MalformedEvent           malformed_event       bytes that are not UTF-8 JSON
     │    ├── InvalidEvent             invalid_event         schema / contract violation
     │    ├── UnsupportedSchemaVersion unsupported_schema_version
     │    ├── TotalMismatch            total_mismatch        computed total != declared total
     │    ├── InvalidBuyerVat          invalid_buyer_vat
     │    ├── MissingBuyerId           missing_buyer_id
     │    ├── MissingExemptionReason   missing_exemption_reason
     │    ├── UnknownSku               unknown_sku
     │    ├── UnmappableOrder          unmappable_order      any other mapping rule
     │    ├── NoOriginalInvoice        no_original_invoice
     │    ├── BadSignature             bad_signature
     │    └── ApiRejected              api_rejected          4xx validation from the API
     ├── TransientError               (retriable=True: back off and try again)
     │    ├── ApiUnavailable           api_unavailable       5xx
     │    ├── RateLimited              rate_limited          429, carries retry_after
     │    ├── ApiTimeout               timeout
     │    ├── ConnectionFailed         connection_error
     │    ├── TokenUnavailable         token_unavailable     token endpoint down
     │    └── LedgerUnavailable        ledger_unavailable    database locked, down or slow
     ├── ConfigurationFault           (retriable=True, but slowly: pause consumption)
     │    ├── AuthConfigurationFault   auth_configuration    invalid_client, invalid_scope, ...
     │    └── InsufficientScope        insufficient_scope    403 from the API
     ├── DuplicateReference            duplicate_reference   the API already has the reference:
     │                                                      reconcile, never dead-letter
     └── SettingsError                 invalid_settings      start-up refuses to run
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "DLQ_REASONS",
    "ApiOutage",
    "ApiRejected",
    "ApiTimeout",
    "ApiUnavailable",
    "AuthConfigurationFault",
    "BadSignature",
    "ConfigurationFault",
    "ConnectionFailed",
    "DuplicateReference",
    "InsufficientScope",
    "InvalidBuyerVat",
    "InvalidEvent",
    "InvoiceSyncError",
    "LedgerUnavailable",
    "MalformedEvent",
    "MissingBuyerId",
    "MissingExemptionReason",
    "NoOriginalInvoice",
    "PermanentEventError",
    "RateLimited",
    "SettingsError",
    "TokenUnavailable",
    "TotalMismatch",
    "TransientError",
    "UnknownSku",
    "UnmappableOrder",
    "UnsupportedSchemaVersion",
    "for_status",
]


class InvoiceSyncError(Exception):
    """Base of every error the worker raises on purpose."""

    reason: ClassVar[str] = "internal_error"
    retriable: ClassVar[bool] = False

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.reason)
        self.message = message or self.reason
        # Details are non-secret facts (status codes, amounts, scopes) that ride along as log
        # fields and DLQ headers.
        self.details: dict[str, object] = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={self.message!r})"


# --- permanent: the event itself is wrong, retrying cannot help ---------------------------


class PermanentEventError(InvoiceSyncError):
    """The event cannot become a document; it goes to the dead-letter topic."""

    reason = "permanent_error"
    retriable = False


class MalformedEvent(PermanentEventError):
    reason = "malformed_event"


class InvalidEvent(PermanentEventError):
    reason = "invalid_event"


class UnsupportedSchemaVersion(PermanentEventError):
    reason = "unsupported_schema_version"


class TotalMismatch(PermanentEventError):
    reason = "total_mismatch"


class InvalidBuyerVat(PermanentEventError):
    reason = "invalid_buyer_vat"


class MissingBuyerId(PermanentEventError):
    reason = "missing_buyer_id"


class MissingExemptionReason(PermanentEventError):
    reason = "missing_exemption_reason"


class UnknownSku(PermanentEventError):
    reason = "unknown_sku"


class UnmappableOrder(PermanentEventError):
    reason = "unmappable_order"


class NoOriginalInvoice(PermanentEventError):
    reason = "no_original_invoice"


class BadSignature(PermanentEventError):
    reason = "bad_signature"


class ApiRejected(PermanentEventError):
    """The accounting API answered 4xx validation errors for the document."""

    reason = "api_rejected"


class ReferenceConflict(PermanentEventError):
    """The API holds a document under this event's reference that is not this order's.

    Another store's order with the same id (see ``mapping.reference_template``), or a
    document made by hand: adopting it would leave this order without its own invoice.
    """

    reason = "reference_conflict"


# --- transient: the world is briefly wrong, back off and retry ----------------------------


class TransientError(InvoiceSyncError):
    reason = "transient_error"
    retriable = True

    def __init__(
        self, message: str = "", *, retry_after: float | None = None, **details: object
    ) -> None:
        super().__init__(message, **details)
        # Seconds the server asked us to wait (Retry-After), before any cap is applied.
        self.retry_after = retry_after


class ApiUnavailable(TransientError):
    reason = "api_unavailable"


class RateLimited(TransientError):
    reason = "rate_limited"


class ApiTimeout(TransientError):
    reason = "timeout"


class ConnectionFailed(TransientError):
    reason = "connection_error"


class ApiOutage(ApiUnavailable):
    """Every API request has failed for a while (5xx, 429, timeouts, resets): not the event's.

    Raised instead of the failure itself once :class:`worker.api.AccountingApi` has seen
    ``api.outage_after_failures`` transient failures in a row and no other answer for
    ``api.outage_after_s``: the pipeline then pauses instead of spending events' attempts, so an
    outage longer than the retry budget does not send every waiting event to the DLQ.
    """

    reason = "api_outage"


class LedgerUnavailable(TransientError):
    """The idempotency ledger cannot be reached or is locked: not the event's fault."""

    reason = "ledger_unavailable"


class TokenUnavailable(TransientError):
    """The token endpoint is down or answered garbage; a valid cached token may still work."""

    reason = "token_unavailable"


# --- configuration faults: our settings are wrong, not the event --------------------------


class ConfigurationFault(InvoiceSyncError):
    """Pause consumption, report not ready, retry slowly, resume when it works again."""

    reason = "configuration_fault"
    retriable = True


class AuthConfigurationFault(ConfigurationFault):
    """The token endpoint refused our client (invalid_client, invalid_scope, ...)."""

    reason = "auth_configuration"


class InsufficientScope(ConfigurationFault):
    reason = "insufficient_scope"


# --- neither: handled by reconciliation or at start-up -------------------------------------


class DuplicateReference(InvoiceSyncError):
    """The API already holds a document with our reference: look it up and record it."""

    reason = "duplicate_reference"
    retriable = False


class SettingsError(InvoiceSyncError):
    """The configuration is invalid; the message names the setting and the rule."""

    reason = "invalid_settings"


#: Every reason code that can appear in a DLQ header (documented in docs/runbook.md).
DLQ_REASONS: frozenset[str] = frozenset(
    cls.reason
    for cls in (
        MalformedEvent,
        InvalidEvent,
        UnsupportedSchemaVersion,
        TotalMismatch,
        InvalidBuyerVat,
        MissingBuyerId,
        MissingExemptionReason,
        UnknownSku,
        UnmappableOrder,
        NoOriginalInvoice,
        BadSignature,
        ApiRejected,
        ReferenceConflict,
    )
) | {"retries_exhausted"}


def for_status(status: int, *, retry_after: float | None = None) -> type[InvoiceSyncError]:
    """Map an accounting-API HTTP status (other than 401, which auth handles) to a class."""
    if status == 429:
        return RateLimited
    if status >= 500 or status == 408:
        return ApiUnavailable
    if status == 403:
        return InsufficientScope
    if status == 409:
        return DuplicateReference
    return ApiRejected
