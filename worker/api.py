"""The accounting API (Qoyod-shaped), thinly: one method per call the pipeline makes.

Each method sends one request through :class:`worker.auth.Auth` (which attaches the
credential and handles "token expired") and maps the answer onto :mod:`worker.errors`:

=======================================  ==================================================
answer                                   outcome
=======================================  ==================================================
2xx                                      the document (``dict``)
404 on a search or a get                 ``None``
422 ``errors.reference`` taken/already   :class:`~worker.errors.DuplicateReference`
409                                      :class:`~worker.errors.DuplicateReference`
403                                      :class:`~worker.errors.InsufficientScope`
429                                      :class:`~worker.errors.RateLimited` (``retry_after``)
5xx, 408, a non-JSON 2xx                 :class:`~worker.errors.ApiUnavailable`
other 4xx                                :class:`~worker.errors.ApiRejected` (field summary)
3xx                                      :class:`~worker.errors.ConfigurationFault`
timeout                                  :class:`~worker.errors.ApiTimeout`
connection refused / reset / dropped     :class:`~worker.errors.ConnectionFailed`
=======================================  ==================================================

Nothing here retries: the pipeline owns the retry policy (the only resend is the one
token renewal inside ``worker.auth``). Nothing here logs above DEBUG on the hot path, and
no error message carries a header, a token or a raw response body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

import aiohttp
import orjson

from worker import __version__
from worker.auth import Auth, Response, bearer_challenge, parse_retry_after, require_secure_url
from worker.errors import (
    ApiOutage,
    ApiRejected,
    ApiTimeout,
    ApiUnavailable,
    ConfigurationFault,
    ConnectionFailed,
    DuplicateReference,
    InsufficientScope,
    InvoiceSyncError,
    RateLimited,
    TransientError,
    for_status,
)
from worker.lifecycle import Lifecycle
from worker.logs import get_logger, scrub
from worker.metrics import API_LATENCY, API_REQUESTS, labelled, status_class
from worker.settings import ApiSettings

__all__ = ["AccountingApi"]

_log = get_logger(__name__)
_std_log = logging.getLogger(__name__)

_SUMMARY_MAX = 300
_DUPLICATE_WORDS = ("taken", "already")

# Endpoint templates: the only values of the metrics' ``endpoint`` label.
_CUSTOMERS = "/2.0/customers"
_PRODUCTS = "/2.0/products"
_INVOICES = "/2.0/invoices"
_INVOICE = "/2.0/invoices/{id}"
_CREDIT_NOTES = "/2.0/credit_notes"


class AccountingApi(Lifecycle):
    """Async client of the accounting API; an async context manager owning its session.

    ``auth`` is started and closed by its owner (compose both in one ``AsyncExitStack``).
    ``max_connections`` bounds the requests in flight (``pipeline.max_in_flight``) and the
    connection pool. A request waits for its turn *before* its timeout starts: a request
    queued behind slow ones must not time out for having waited (aiohttp counts the wait
    for a pooled connection against the timeout). Pass ``session`` to share a pool (it is
    then not closed here).
    """

    def __init__(
        self,
        settings: ApiSettings,
        *,
        auth: Auth,
        session: aiohttp.ClientSession | None = None,
        max_connections: int = 64,
    ) -> None:
        require_secure_url(
            "api.base_url", settings.base_url, allow_insecure=settings.allow_insecure_http
        )
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._settings = settings
        self._auth = auth
        self._session = session
        self._own_session = session is None
        self._max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._root = settings.base_url.rstrip("/")
        self._state = "new"
        # Outage detection (see ApiOutage): failures since the last answer that was not one.
        self._failures_in_row = 0
        self._last_answer = time.monotonic()

    def __repr__(self) -> str:
        return f"AccountingApi(base_url={self._root!r}, auth={self._auth!r}, state={self._state!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the connection pool. Raises RuntimeError when started twice."""
        if self._state != "new":
            raise RuntimeError("AccountingApi can only be started once")
        self._state = "running"
        if self._session is None:
            settings = self._settings
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, limit_per_host=self._max_connections
                ),
                timeout=aiohttp.ClientTimeout(
                    total=settings.timeout_s, connect=settings.connect_timeout_s
                ),
                headers={"Accept": "application/json", "User-Agent": f"invoice-sync/{__version__}"},
                raise_for_status=False,
            )

    async def close(self) -> None:
        """Close the pool if we own it; idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        session, self._session = self._session, None
        if self._own_session and session is not None:
            await session.close()

    # -- customers and products --------------------------------------------------------------

    async def find_customer(
        self, *, tax_number: str | None = None, email: str | None = None, phone: str | None = None
    ) -> dict[str, Any] | None:
        """The first contact matching the first given key (tax number, email, phone)."""
        if tax_number:
            query = {"q[tax_number_eq]": tax_number}
        elif email:
            query = {"q[email_eq]": email}
        elif phone:
            query = {"q[phone_number_eq]": phone}
        else:
            raise ValueError("find_customer needs tax_number, email or phone")
        return await self._search(_CUSTOMERS, query, "contacts")

    async def create_customer(
        self, payload: Mapping[str, Any], *, idempotency_key: str
    ) -> dict[str, Any]:
        """Create a contact; returns the API's ``contact`` (with its ``id``)."""
        return await self._create(_CUSTOMERS, "contact", payload, idempotency_key)

    async def find_product(self, sku: str) -> dict[str, Any] | None:
        """The product with this SKU, or ``None``."""
        return await self._search(_PRODUCTS, {"q[sku_eq]": sku}, "products")

    async def create_product(
        self, payload: Mapping[str, Any], *, idempotency_key: str
    ) -> dict[str, Any]:
        """Create a product; returns the API's ``product``."""
        return await self._create(_PRODUCTS, "product", payload, idempotency_key)

    # -- documents ---------------------------------------------------------------------------

    async def create_invoice(
        self, payload: Mapping[str, Any], *, idempotency_key: str
    ) -> dict[str, Any]:
        """Create an invoice; returns the API's ``invoice`` (``id``, ``reference``, ``total``).

        Raises:
            DuplicateReference: the API already holds an invoice with this reference.
        """
        return await self._create(_INVOICES, "invoice", payload, idempotency_key)

    async def find_invoice(self, reference: str) -> dict[str, Any] | None:
        """The invoice with this reference, or ``None``."""
        return await self._search(_INVOICES, {"q[reference_eq]": reference}, "invoices")

    async def get_invoice(self, invoice_id: int | str) -> dict[str, Any] | None:
        """The invoice with this id, or ``None`` when the API does not know it."""
        url = f"{self._root}/2.0/invoices/{quote(str(invoice_id), safe='')}"
        resp = await self._send("GET", _INVOICE, url)
        if resp.status == 404:
            return None
        return self._document(resp, _INVOICE, "GET", "invoice")

    async def create_credit_note(
        self, payload: Mapping[str, Any], *, idempotency_key: str
    ) -> dict[str, Any]:
        """Create a credit note; returns the API's ``credit_note``."""
        return await self._create(_CREDIT_NOTES, "credit_note", payload, idempotency_key)

    async def find_credit_note(self, reference: str) -> dict[str, Any] | None:
        """The credit note with this reference, or ``None``."""
        return await self._search(_CREDIT_NOTES, {"q[reference_eq]": reference}, "credit_notes")

    # -- plumbing ----------------------------------------------------------------------------

    async def _search(
        self, endpoint: str, query: Mapping[str, str], key: str
    ) -> dict[str, Any] | None:
        url = f"{self._root}{endpoint}?{urlencode(query)}"
        resp = await self._send("GET", endpoint, url)
        if resp.status == 404:
            return None
        doc = self._body(resp, endpoint, "GET")
        items = doc.get(key)
        if not isinstance(items, list):
            raise ApiUnavailable(
                f"GET {endpoint}: response has no {key!r} list", status=resp.status
            )
        first = items[0] if items else None
        return first if isinstance(first, dict) else None

    async def _create(
        self, endpoint: str, key: str, payload: Mapping[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        resp = await self._send(
            "POST",
            endpoint,
            self._root + endpoint,
            json={key: payload},
            headers={"Idempotency-Key": idempotency_key},
        )
        return self._document(resp, endpoint, "POST", key)

    async def _send(
        self,
        method: str,
        endpoint: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        session = self._session
        if self._state != "running" or session is None:
            raise RuntimeError(f"AccountingApi is {self._state}, not running")
        await self._slots.acquire()
        started = time.perf_counter()
        status: int | None = None
        failure: InvoiceSyncError | None = None
        try:
            resp = await self._auth.send(
                session, method, url, json=json, headers=headers, endpoint=endpoint
            )
            status = resp.status
        except TimeoutError:
            failure = ApiTimeout(f"{method} {endpoint} timed out", endpoint=endpoint, method=method)
        except aiohttp.ClientError as exc:
            # ServerDisconnectedError, ClientConnectorError, ClientOSError (reset),
            # ClientPayloadError, and ClientResponseError for a malformed response - whose
            # request_info holds our headers. Only the type name survives.
            failure = ConnectionFailed(
                f"{method} {endpoint}: {type(exc).__name__}",
                endpoint=endpoint,
                method=method,
                error_kind=type(exc).__name__,
            )
        finally:
            self._slots.release()
            self._observe(endpoint, method, status, time.perf_counter() - started)
        # A failure is what for_status classifies as transient, or no answer at all.
        if failure is not None or (
            status is not None and status >= 400 and issubclass(for_status(status), TransientError)
        ):
            self._failures_in_row += 1
        else:
            self._failures_in_row = 0
            self._last_answer = time.monotonic()
        if failure is not None:
            # Raised outside the except block: no __context__ points at the aiohttp error.
            raise self._as_outage(failure) or failure
        return resp

    @property
    def in_outage(self) -> bool:
        """Whether every request has failed for a while (see :class:`ApiOutage`)."""
        # Failures in a row alone happen at any error rate; no answer at all for
        # outage_after_s while requests keep failing does not, when traffic flows.
        return (
            self._failures_in_row >= self._settings.outage_after_failures
            and time.monotonic() - self._last_answer >= self._settings.outage_after_s
        )

    def _as_outage(self, failure: InvoiceSyncError) -> ApiOutage | None:
        """The outage error to raise instead of ``failure`` while in an outage, else None."""
        return _outage_error(failure) if self.in_outage else None

    def _observe(self, endpoint: str, method: str, status: int | None, seconds: float) -> None:
        labelled(API_REQUESTS, endpoint, method, status_class(status)).inc()
        labelled(API_LATENCY, endpoint, method).observe(seconds)
        if _std_log.isEnabledFor(logging.DEBUG):  # skip structlog's processors when off
            _log.debug(
                "api.request", endpoint=endpoint, method=method, status=status, seconds=seconds
            )

    def _document(self, resp: Response, endpoint: str, method: str, key: str) -> dict[str, Any]:
        doc = self._body(resp, endpoint, method)
        item = doc.get(key)
        if not isinstance(item, dict):
            raise ApiUnavailable(
                f"{method} {endpoint}: response has no {key!r} object", status=resp.status
            )
        return item

    def _body(self, resp: Response, endpoint: str, method: str) -> dict[str, Any]:
        """The JSON object of a 2xx answer; anything else raises its mapped error."""
        if not 200 <= resp.status < 300:
            try:
                _raise_for(resp, endpoint, method)
            except TransientError as exc:
                outage = self._as_outage(exc)
                if outage is None:
                    raise
                raise outage from None
        doc = _json_object(resp.body)
        if doc is None:
            raise ApiUnavailable(
                f"{method} {endpoint}: {resp.status} response is not a JSON object",
                status=resp.status,
            )
        return doc


def _outage_error(failure: InvoiceSyncError) -> ApiOutage:
    details = failure.details
    return ApiOutage(
        f"accounting API failing every request ({failure.reason}): {failure.message}",
        last_reason=failure.reason,
        endpoint=details.get("endpoint"),
        method=details.get("method"),
        status=details.get("status"),
    )


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(body)  # every answer is parsed on the hot path
    except ValueError:  # orjson.JSONDecodeError, also for bytes that are not UTF-8
        return None
    return doc if isinstance(doc, dict) else None


def _raise_for(resp: Response, endpoint: str, method: str) -> NoReturn:
    status = resp.status
    where = f"{method} {endpoint}"
    doc = _json_object(resp.body)
    errors = doc.get("errors") if doc is not None else None
    if 300 <= status < 400:
        raise ConfigurationFault(
            f"{where}: API answered a redirect ({status}); check api.base_url",
            status=status,
            endpoint=endpoint,
        )
    if status == 422 and _is_duplicate_reference(errors):
        raise DuplicateReference(f"{where}: reference already taken", status=status)
    if status == 403:
        challenge = bearer_challenge(resp.headers.get("WWW-Authenticate"))
        scope = challenge.get("scope")
        raise InsufficientScope(
            f"{where}: forbidden (403)" + (f"; required scope: {_clip(scope)}" if scope else ""),
            status=status,
            endpoint=endpoint,
            oauth_error=challenge.get("error"),
            error_description=_clip(challenge["error_description"])
            if "error_description" in challenge
            else None,
            scope=_clip(scope) if scope else None,
        )
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    if status == 429:
        raise RateLimited(
            f"{where}: rate limited (429)",
            retry_after=retry_after,
            status=status,
            endpoint=endpoint,
        )
    cls = for_status(status, retry_after=retry_after)
    if cls is ApiUnavailable:
        raise ApiUnavailable(
            f"{where}: server error ({status})",
            retry_after=retry_after,
            status=status,
            endpoint=endpoint,
        )
    if cls is DuplicateReference:
        raise DuplicateReference(f"{where}: conflict ({status})", status=status)
    summary = _summarize(errors, doc)
    raise ApiRejected(
        f"{where}: rejected ({status})" + (f": {summary}" if summary else ""),
        status=status,
        endpoint=endpoint,
        fields=_field_names(errors),
    )


def _is_duplicate_reference(errors: object) -> bool:
    """The reference is taken, or our Idempotency-Key was used before with another body.

    Both mean an earlier attempt created the document: the caller looks it up and records
    it (a ledger that lost its rows resends the key with a body that changed since).
    """
    if not isinstance(errors, dict):
        return False
    for field in ("reference", "idempotency_key"):
        messages = errors.get(field)
        if isinstance(messages, str):
            messages = [messages]
        if isinstance(messages, list) and any(
            isinstance(m, str) and any(word in m.lower() for word in _DUPLICATE_WORDS)
            for m in messages
        ):
            return True
    return False


def _field_names(errors: object) -> list[str]:
    if isinstance(errors, dict):
        return [_clip(str(k), 60) for k in list(errors)[:20]]
    return []


def _summarize(errors: object, doc: Mapping[str, Any] | None) -> str:
    """``field: message, message; field: message`` from an ``errors`` field, bounded."""
    parts: list[str] = []
    if isinstance(errors, dict):
        for name, messages in errors.items():
            if isinstance(messages, list):
                text = ", ".join(str(m) for m in messages[:3])
            else:
                text = str(messages)
            parts.append(f"{name}: {text}")
    elif isinstance(errors, list):
        parts = [str(e) for e in errors[:10]]
    elif isinstance(errors, str):
        parts = [errors]
    elif doc is not None:
        for key in ("message", "error"):
            value = doc.get(key)
            if isinstance(value, str):
                parts = [value]
                break
    return _clip("; ".join(parts), _SUMMARY_MAX)


def _clip(text: str, limit: int = 120) -> str:
    flat = scrub(" ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
