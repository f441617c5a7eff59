"""The OAuth 2.0 side: token endpoint (RFC 6749), revocation (RFC 7009), bearer checks (RFC 6750).

Token endpoint errors follow RFC 6749 §5.2 exactly: 400 with ``invalid_request``,
``unsupported_grant_type``, ``invalid_scope``, ``invalid_grant`` or
``unauthorized_client``; 401 ``invalid_client`` (with ``WWW-Authenticate: Basic`` when
the client tried Basic or sent no credentials). Resource checks raise aiohttp HTTP
exceptions so handlers read top to bottom; the success path is one dict lookup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web

from worker.sandbox.config import ALL_SCOPES, ClientSpec
from worker.sandbox.state import STATE_KEY, SandboxState

__all__ = ["REALM", "Principal", "Rejected", "authorize", "revoke", "token"]

REALM = "invoice-sync-sandbox"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str, *, basic: bool = False) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description
        self.basic = basic

    def response(self) -> web.Response:
        headers = dict(_NO_STORE)
        if self.basic:
            headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
        body = {"error": self.error, "error_description": self.description}
        return web.json_response(body, status=self.status, headers=headers)


def _bad_request(error: str, description: str) -> _OAuthError:
    return _OAuthError(400, error, description)


async def _form(request: web.Request) -> dict[str, str]:
    if request.content_type != "application/x-www-form-urlencoded":
        raise _bad_request("invalid_request", "body must be application/x-www-form-urlencoded")
    form = await request.post()
    params: dict[str, str] = {}
    for key, value in form.items():
        if key in params:
            raise _bad_request("invalid_request", f"parameter {key!r} is repeated")
        if isinstance(value, str):
            params[key] = value
    return params


def _client(state: SandboxState, request: web.Request, form: dict[str, str]) -> ClientSpec:
    """Authenticate the client by HTTP Basic or by body parameters, never both."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise _OAuthError(401, "invalid_client", "unsupported authentication", basic=True)
        if "client_secret" in form:
            raise _bad_request("invalid_request", "use one client authentication method")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise _OAuthError(
                401, "invalid_client", "malformed Basic credentials", basic=True
            ) from exc
        raw_id, sep, raw_secret = decoded.partition(":")
        if not sep:
            raise _OAuthError(401, "invalid_client", "malformed Basic credentials", basic=True)
        client_id, secret, basic = unquote_plus(raw_id), unquote_plus(raw_secret), True
    else:
        client_id, secret, basic = form.get("client_id", ""), form.get("client_secret", ""), False
        if not client_id:
            raise _OAuthError(401, "invalid_client", "client authentication missing", basic=True)
    client = state.clients.get(client_id)
    if client is None or not hmac.compare_digest(client.client_secret.encode(), secret.encode()):
        raise _OAuthError(401, "invalid_client", "client authentication failed", basic=basic)
    return client


def _scopes(form: dict[str, str], allowed: frozenset[str]) -> frozenset[str]:
    raw = form.get("scope", "").split()
    if not raw:
        return allowed
    requested = frozenset(raw)
    unknown = requested - ALL_SCOPES
    if unknown:
        raise _bad_request("invalid_scope", f"unknown scope: {' '.join(sorted(unknown))}")
    if not requested <= allowed:
        extra = " ".join(sorted(requested - allowed))
        raise _bad_request("invalid_scope", f"scope not granted to this client: {extra}")
    return requested


def _grant(state: SandboxState, client: ClientSpec, form: dict[str, str]) -> dict[str, Any]:
    grant = form.get("grant_type")
    if not grant:
        raise _bad_request("invalid_request", "grant_type is required")
    if grant == "client_credentials":
        scopes = _scopes(form, client.scopes)
        issued = state.tokens.issue(client.client_id, scopes, refresh=client.refresh_tokens)
    elif grant == "refresh_token":
        if not client.refresh_tokens:
            raise _bad_request("unauthorized_client", "client may not use refresh tokens")
        value = form.get("refresh_token")
        if not value:
            raise _bad_request("invalid_request", "refresh_token is required")
        record = state.tokens.records.get(value)
        if record is None or record.kind != "refresh" or record.client_id != client.client_id:
            raise _bad_request("invalid_grant", "refresh token is invalid")
        scopes = _scopes(form, record.scopes)
        if state.tokens.spend_refresh(value, client.client_id) is None:
            raise _bad_request("invalid_grant", "refresh token was already used or revoked")
        issued = state.tokens.issue(
            client.client_id, scopes, refresh=True, grant_id=record.grant_id
        )
    else:
        raise _bad_request("unsupported_grant_type", "supported: client_credentials, refresh_token")
    body: dict[str, Any] = {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": " ".join(sorted(issued.scopes)),
    }
    if issued.refresh_token is not None:
        body["refresh_token"] = issued.refresh_token
    return body


async def token(request: web.Request) -> web.Response:
    """``POST /oauth/token``."""
    state = request.app[STATE_KEY]
    grant = "(unreadable)"
    try:
        form = await _form(request)
        grant = form.get("grant_type") or "(missing)"
        client = _client(state, request, form)
        body = _grant(state, client, form)
    except _OAuthError as exc:
        state.token_requests[grant] += 1
        state.token_errors[exc.error] += 1
        return exc.response()
    state.token_requests[grant] += 1
    return web.json_response(body, headers=_NO_STORE)


async def revoke(request: web.Request) -> web.Response:
    """``POST /oauth/revoke``: 200 whether or not the token was known (RFC 7009 §2.2)."""
    state = request.app[STATE_KEY]
    try:
        form = await _form(request)
        client = _client(state, request, form)
        value = form.get("token")
        if not value:
            raise _bad_request("invalid_request", "token is required")
    except _OAuthError as exc:
        state.token_errors[exc.error] += 1
        return exc.response()
    if state.tokens.revoke(value, client.client_id):
        state.revocations += 1
    return web.Response(status=200, headers=_NO_STORE)


# -- resource side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: a client id (or ``api-key:<digest>``) and its scopes."""

    name: str
    scopes: frozenset[str]


class Rejected(Exception):
    """Raised by :func:`authorize` with the finished error response to send."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _reject(status: int, body: dict[str, str], headers: dict[str, str]) -> Rejected:
    return Rejected(web.json_response(body, status=status, headers=headers))


def _unauthorized(state: SandboxState, error: str, message: str, *, detail: bool) -> Rejected:
    state.auth_failures[error] += 1
    challenge = f'Bearer realm="{REALM}"'
    if detail:
        challenge += f', error="{error}", error_description="{message}"'
    return _reject(401, {"error": error, "message": message}, {"WWW-Authenticate": challenge})


def authorize(request: web.Request, state: SandboxState, scope: str) -> Principal:
    """Check the bearer token (or ``API-KEY``) for ``scope``, then per-client overrides.

    Raises:
        Rejected: 401 for no credentials or an unknown, expired or revoked token; 403 when
            the token lacks ``scope``; or the status a per-client override fault forces.
    """
    header = request.headers.get("Authorization")
    if header is not None and header[:7].lower() == "bearer ":
        record, why = state.tokens.access(header[7:].strip())
        if record is None:
            raise _unauthorized(state, "invalid_token", why, detail=True)
        principal = Principal(record.client_id, record.scopes)
    else:
        api_key = request.headers.get("API-KEY")
        if api_key is None or header is not None:
            raise _unauthorized(state, "missing_token", "bearer token required", detail=False)
        granted = state.api_keys.get(api_key)
        if granted is None:
            raise _unauthorized(state, "invalid_token", "unknown API key", detail=True)
        digest = hashlib.sha256(api_key.encode()).hexdigest()[:12]
        principal = Principal(f"api-key:{digest}", granted)
    if scope not in principal.scopes:
        state.auth_failures["insufficient_scope"] += 1
        challenge = f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"'
        body = {"error": "insufficient_scope", "message": f"requires scope {scope}"}
        raise _reject(403, body, {"WWW-Authenticate": challenge})
    forced = state.faults.take_override(principal.name)
    if forced is not None:
        raise _forced(*forced)
    return principal


def _forced(status: int, retry_after: int) -> Rejected:
    headers: dict[str, str] = {}
    if status == 429:
        headers["Retry-After"] = str(retry_after)
    elif status == 401:
        headers["WWW-Authenticate"] = f'Bearer realm="{REALM}", error="invalid_token"'
    return _reject(status, {"message": f"injected status {status}"}, headers)
