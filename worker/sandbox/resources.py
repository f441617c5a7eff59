"""The accounting endpoints under ``/2.0``, shaped like Qoyod's API.

Handlers are built from three small factories - search, fetch by id, create - so each
route is one line in :data:`ROUTES` naming its scope. A create reads the body, then does
"idempotency lookup → validate → insert → remember" without awaiting: on one event loop
that makes concurrent requests with the same ``Idempotency-Key`` serialize for free, and
only one of them can create.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

from aiohttp import web

from worker.sandbox.ledger import Ledger, Result
from worker.sandbox.oauth import Rejected, authorize
from worker.sandbox.state import STATE_KEY

__all__ = ["ROUTES", "add_routes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Finder = Callable[[Ledger, Mapping[str, str]], Result]
Getter = Callable[[Ledger, int], Result]
Creator = Callable[[Ledger, dict[str, Any]], Result]

_MAX_KEY = 255


def _json(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


def _filters(query: Mapping[str, str], allowed: Mapping[str, str]) -> dict[str, str]:
    filters: dict[str, str] = {}
    for param, value in query.items():
        if not param.startswith("q["):
            continue  # paging and other Qoyod parameters are accepted and ignored
        field = allowed.get(param)
        if field is None:
            raise Rejected(_json(400, {"message": f"unsupported filter {param}"}))
        filters[field] = value
    return filters


def _search(scope: str, allowed: Mapping[str, str], find: Finder) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        try:
            authorize(request, state, scope)
            filters = _filters(request.query, allowed)
        except Rejected as exc:
            return exc.response
        return _json(*find(state.ledger, filters))

    return handle


def _fetch(scope: str, get: Getter) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        try:
            authorize(request, state, scope)
        except Rejected as exc:
            return exc.response
        return _json(*get(state.ledger, int(request.match_info["id"])))

    return handle


def _unwrap(raw: bytes, envelope: str) -> dict[str, Any] | Result:
    try:
        doc = json.loads(raw, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        return 400, {"message": "body is not valid JSON"}
    inner = doc.get(envelope) if isinstance(doc, dict) else None
    if not isinstance(inner, dict):
        return 422, {"errors": {envelope: ["is missing or not an object"]}}
    return inner


def _create(scope: str, envelope: str, create: Creator) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        try:
            principal = authorize(request, state, scope)
        except Rejected as exc:
            return exc.response
        raw = await request.read()
        # From here to the return there is no await: lookup, insert and remember are atomic.
        key = request.headers.get("Idempotency-Key")
        fingerprint = b""
        if key is not None:
            if not key or len(key) > _MAX_KEY:
                return _json(400, {"message": "Idempotency-Key must be 1-255 characters"})
            fingerprint = state.fingerprint(request.method, request.path, raw)
            replay = state.replay(principal.name, key, fingerprint)
            if replay is not None and replay.status == 0:
                message = "was already used with a different request body"
                return _json(422, {"errors": {"idempotency_key": [message]}})
            if replay is not None:
                return web.Response(
                    status=replay.status,
                    body=replay.body,
                    content_type="application/json",
                    headers={"Idempotent-Replayed": "true"},
                )
        unwrapped = _unwrap(raw, envelope)
        status, body = create(state.ledger, unwrapped) if isinstance(unwrapped, dict) else unwrapped
        response = _json(status, body)
        if key is not None and 200 <= status < 300:
            assert isinstance(response.body, bytes)
            state.remember(principal.name, key, fingerprint, status, response.body)
        return response

    return handle


_CONTACT_FILTERS = {
    "q[tax_number_eq]": "tax_number",
    "q[email_eq]": "email",
    "q[phone_number_eq]": "phone_number",
    "q[name_eq]": "name",
}
_PRODUCT_FILTERS = {"q[sku_eq]": "sku", "q[name_eq]": "name"}
_INVOICE_FILTERS = {
    "q[reference_eq]": "reference",
    "q[status_eq]": "status",
    "q[contact_id_eq]": "contact_id",
}
_CREDIT_FILTERS = {"q[reference_eq]": "reference", "q[parent_id_eq]": "parent_id"}

ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/2.0/customers", _search("customers.read", _CONTACT_FILTERS, Ledger.find_contacts)),
    ("GET", "/2.0/customers/{id:\\d+}", _fetch("customers.read", Ledger.get_contact)),
    ("POST", "/2.0/customers", _create("customers.write", "contact", Ledger.create_contact)),
    ("GET", "/2.0/products", _search("products.read", _PRODUCT_FILTERS, Ledger.find_products)),
    ("GET", "/2.0/products/{id:\\d+}", _fetch("products.read", Ledger.get_product)),
    ("POST", "/2.0/products", _create("products.write", "product", Ledger.create_product)),
    ("GET", "/2.0/invoices", _search("invoices.read", _INVOICE_FILTERS, Ledger.find_invoices)),
    ("GET", "/2.0/invoices/{id:\\d+}", _fetch("invoices.read", Ledger.get_invoice)),
    ("POST", "/2.0/invoices", _create("invoices.write", "invoice", Ledger.create_invoice)),
    (
        "GET",
        "/2.0/credit_notes",
        _search("invoices.read", _CREDIT_FILTERS, Ledger.find_credit_notes),
    ),
    ("GET", "/2.0/credit_notes/{id:\\d+}", _fetch("invoices.read", Ledger.get_credit_note)),
    (
        "POST",
        "/2.0/credit_notes",
        _create("credit_notes.write", "credit_note", Ledger.create_credit_note),
    ),
)
"""``(method, path, handler)`` for every accounting route; the scope is inside the handler."""


def add_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
