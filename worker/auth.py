"""OAuth 2.0 client layer: who we are to the accounting API, and nothing else.

Two strategies share one small interface, :class:`Auth`, whose :meth:`Auth.send` attaches
the credential, sends one request and hands back a fully read :class:`Response`:

* :class:`BearerAuth` over a :class:`TokenProvider` (the client-credentials grant of
  RFC 6749 section 4.4, or the refresh-token grant with rotation when a refresh token is
  configured). A response whose status means "token expired" (``renew_on_status``, 401 by
  default) invalidates the token *by generation*, takes the current or a new token and
  resends once.
* :class:`ApiKeyAuth`, Qoyod's static ``API-KEY`` header.

The token cache, step by step (times on the injectable monotonic ``clock``, measured from
when the token request was *sent*)::

    sent ──────────── renew_at ─────── usable_until ────── expires_at
          fresh: reuse    │  renewing: the refresher       │  waiting: callers
                          │  fetches in the background;    │  await the one shared
                          │  callers keep using the old    │  fetch (single flight)
                          │  token meanwhile               │

``renew_at = expires_at - skew`` and ``usable_until = expires_at - skew / 2``, with
``skew = min(skew_s, lifetime / 2)``. So the refresh interval is ``lifetime - skew``, a
token past ``renew_at`` is only used while its replacement is being fetched, and no
request goes out in the last ``skew / 2`` of a token's life.

Failure classes (``worker.errors``): the token endpoint saying our configuration is wrong
(``invalid_client``, ``invalid_scope``, ``unsupported_grant_type``, ``invalid_grant``, a
redirect, a non-Bearer token type, a grant lacking required scopes) raises
:class:`~worker.errors.AuthConfigurationFault` / :class:`~worker.errors.InsufficientScope`
at once and is kept in :attr:`TokenProvider.fault` until a fetch succeeds. Everything else
(timeouts, connection errors, 5xx, 429, HTML pages, a 200 without a token) is retried with
full-jitter backoff, ``max_attempts`` times, and then raises
:class:`~worker.errors.TokenUnavailable`. Either failure is remembered: until its hold ends
(growing from ``backoff_base_s`` to ``backoff_max_s``, jittered) callers get a copy of it
without a request, and then one caller's fetch probes again. A fault therefore costs one
request per probe however many tasks wait.

No secret ever leaves this module except in an ``Authorization``/``API-KEY`` header or a
token-endpoint request body: every value is registered with
:func:`worker.logs.register_secret` in each encoded shape it travels in, reprs print
``[secure]``, aiohttp errors are rebuilt without request info (``from None``), and no
response body is logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import enum
import json
import math
import os
import random
import re
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, quote_plus, urlencode

import aiohttp
import orjson

from worker.errors import (
    AuthConfigurationFault,
    ConfigurationFault,
    InsufficientScope,
    InvoiceSyncError,
    SettingsError,
    TokenUnavailable,
)
from worker.lifecycle import Lifecycle
from worker.logs import get_logger, names_credential, register_secret, scrub
from worker.metrics import (
    RETRIES,
    TOKEN_EXPIRY,
    TOKEN_FETCH_LATENCY,
    TOKEN_FETCHES,
    TOKEN_RENEWALS_401,
)
from worker.retry import Backoff
from worker.settings import (
    ApiSettings,
    OAuthSettings,
    Settings,
    grant_param_problem,
    url_security_problem,
)

__all__ = [
    "ApiKeyAuth",
    "Auth",
    "BearerAuth",
    "ClientCredentialsProvider",
    "Response",
    "Token",
    "TokenProvider",
    "bearer_challenge",
    "build_auth",
    "encode_json",
    "parse_retry_after",
    "require_secure_url",
]

_log = get_logger(__name__)

Grant = Literal["client_credentials", "refresh_token"]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_SECURE = "[secure]"
_CONFIG_ERRORS = frozenset(
    {
        "invalid_client",
        "invalid_scope",
        "unsupported_grant_type",
        "invalid_grant",
        "unauthorized_client",
        "invalid_request",
        "access_denied",
    }
)
_MAX_TEXT = 200  # longest server-provided text we carry in a message or log field
_PERCENT_HEX = re.compile(r"%[0-9A-F]{2}")
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_\-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


# --- small public helpers -----------------------------------------------------------------


def require_secure_url(name: str, url: str, *, allow_insecure: bool) -> None:
    """Refuse a URL that would send credentials in clear text.

    Settings validate this already; constructors check again so direct construction
    (``model_construct``, hand-built objects) is just as safe.

    Raises:
        SettingsError: naming the setting and the rule, never a credential.
    """
    problem = url_security_problem(name, url, allow_insecure=allow_insecure)
    if problem:
        raise SettingsError(problem)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); ``None`` if absent
    or unreadable. Never negative; the caller applies its own cap."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def bearer_challenge(header: str | None) -> dict[str, str]:
    """The auth-params of a ``WWW-Authenticate: Bearer ...`` header (RFC 6750 section 3),
    e.g. ``{"error": "insufficient_scope", "scope": "invoices.write"}``."""
    if not header:
        return {}
    return {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _CHALLENGE_PARAM.finditer(header)
    }


def _json_default(obj: object) -> object:
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON; a ``Decimal`` becomes its exact string (never a float).

    orjson, because every invoice body is encoded on the hot path (about 10x the standard
    library's speed for these bodies).
    """
    return orjson.dumps(obj, default=_json_default)


def _register_secret_forms(value: str, *, rotating: bool = False) -> None:
    """Register ``value`` and every encoded shape it travels in for log redaction.

    A form body carries ``quote_plus(value)``; a server may echo ``quote(value)`` or the
    lower-case hex of either (``%2f``). Each shape is a secret of its own: redacting only
    the raw value would let ``p%40ss+w%2Frd`` through a log line or an exception message.
    """
    register_secret(*_encoded_shapes(value), rotating=rotating)


def _encoded_shapes(value: str) -> set[str]:
    """``value`` as sent in a form body or echoed by a server, raw or percent-encoded."""
    shapes = {value, quote_plus(value), quote(value, safe=""), quote(value)}
    return shapes | {_PERCENT_HEX.sub(lambda m: m.group(0).lower(), s) for s in shapes}


def _short(text: object) -> str:
    """Server-provided text made safe for a message: scrubbed, one line, bounded."""
    flat = " ".join(str(text).split())
    flat = scrub(flat)
    return flat if len(flat) <= _MAX_TEXT else flat[: _MAX_TEXT - 1] + "…"


# --- token ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Token:
    """One access token. Immutable: a renewal makes a new object with a higher generation.

    ``expires_at``, ``renew_at`` and ``usable_until`` are on the provider's monotonic clock.
    ``value`` never appears in ``repr``/``str``.
    """

    value: str
    generation: int
    expires_at: float
    scopes: frozenset[str]
    renew_at: float
    usable_until: float

    def header(self) -> str:
        """The ``Authorization`` header value (the type is always sent as ``Bearer``)."""
        return f"Bearer {self.value}"

    def __repr__(self) -> str:
        return (
            f"Token(value={_SECURE}, generation={self.generation}, "
            f"expires_at={self.expires_at:.3f}, scopes={sorted(self.scopes)!r})"
        )

    __str__ = __repr__


# --- provider contract ----------------------------------------------------------------------


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class TokenProvider(Lifecycle, ABC):
    """Hands out access tokens, shared by every task of the process.

    Contract (as ``aiokafka.abc.AbstractTokenProvider``): :meth:`token` is cheap when the
    cached token is fresh and concurrent callers share one fetch. :meth:`invalidate` drops
    exactly the token given, so a stale 401 cannot throw away a newer token. Start once
    (``async with`` or :meth:`start`; a second start raises), close idempotently.

    Readiness hooks: :attr:`fault` is the current configuration fault (cleared by the next
    successful fetch) and :attr:`token_obtainable` says whether a token is held or the last
    fetch worked.
    """

    fault: InvoiceSyncError | None = None

    def __init__(self) -> None:
        self._state = _State.NEW

    @abstractmethod
    async def token(self) -> Token:
        """A usable token, fetching one if needed.

        Raises:
            TokenUnavailable: the endpoint stayed unreachable for the bounded attempts.
            AuthConfigurationFault, InsufficientScope: our configuration is wrong.
            RuntimeError: the provider is not running.
        """

    @abstractmethod
    def invalidate(self, token: Token) -> None:
        """Forget ``token`` if it is still the cached one (compared by generation)."""

    @property
    @abstractmethod
    def token_obtainable(self) -> bool:
        """True while a usable token is held, or the last fetch did not fail."""

    async def start(self) -> None:
        """Open resources and start background renewal. Raises RuntimeError if reused."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"{type(self).__name__} can only be started once")
        self._state = _State.RUNNING
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop background work and release resources; safe to call twice."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        await self._shutdown()

    async def _open(self) -> None:
        pass

    async def _shutdown(self) -> None:
        pass

    def _check_running(self) -> None:
        if self._state is not _State.RUNNING:
            raise RuntimeError(f"{type(self).__name__} is {self._state.value}, not running")

    def __del__(self) -> None:
        if getattr(self, "_state", None) is _State.RUNNING:
            warnings.warn(
                f"{type(self).__name__} was started and never closed",
                ResourceWarning,
                stacklevel=1,
            )


# --- client credentials / refresh token -----------------------------------------------------


class _Transient(Exception):
    """One failed attempt worth retrying; never leaves this module."""

    def __init__(self, kind: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(kind)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after


class ClientCredentialsProvider(TokenProvider):
    """Tokens from the configured token endpoint, cached per credential.

    One instance serves one credential (token URL, client id, scope set) and is shared by
    every task of the process; :attr:`credential` names it. With ``settings.refresh_token``
    set, it uses the refresh-token grant instead and rotates the refresh token: each one is
    sent once, only to the token endpoint, and the newest replaces it in memory and, when
    the token came from ``settings.refresh_token_file``, in that file (atomically, 0600), so
    a restart continues the grant. One replica only: replicas would spend each other's.

    ``clock``, ``sleep`` and ``rng`` drive expiry, retry backoff and jitter, so tests can
    run backoff logic instantly. The background refresher waits on the event loop's own
    timer (its wait is recomputed from ``clock`` each time it wakes).
    """

    def __init__(
        self,
        settings: OAuthSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        insecure = settings.allow_insecure_http
        require_secure_url("oauth.token_url", settings.token_url, allow_insecure=insecure)
        if settings.revoke_url:
            require_secure_url("oauth.revoke_url", settings.revoke_url, allow_insecure=insecure)
        # The settings refuse these at load; checked again for settings built in code.
        problem = grant_param_problem(settings.extra_params)
        if problem:
            raise SettingsError(f"oauth.extra_params {problem}")
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(
            total=settings.timeout_s, connect=settings.connect_timeout_s
        )
        scopes = list(dict.fromkeys(settings.scopes))
        self._scopes = frozenset(scopes)
        self._scope_param = " ".join(scopes)
        self.credential = (settings.token_url, settings.client_id, self._scopes)

        secret = settings.client_secret.get_secret_value()
        _register_secret_forms(secret)
        for name, value in settings.extra_params.items():
            if names_credential(name):  # a client_assertion travels like the secret
                _register_secret_forms(value)
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        auth_params: dict[str, str] = {}
        # RFC 6749 section 2.3.1: form-encode id and secret, then Base64 "id:secret". A
        # server that decodes Basic without URL-decoding sees (and may echo) the encoded
        # pair, so every shape of it is registered, whichever method sends it.
        pair = f"{quote_plus(settings.client_id)}:{quote_plus(secret)}"
        pairs = (pair, f"{settings.client_id}:{secret}")
        register_secret(
            *(shape for p in pairs for shape in _encoded_shapes(p)),
            *(base64.b64encode(p.encode()).decode("ascii") for p in pairs),
        )
        if settings.auth_method == "client_secret_basic":
            basic = base64.b64encode(pair.encode()).decode("ascii")
            headers["Authorization"] = f"Basic {basic}"
        else:
            auth_params = {"client_id": settings.client_id, "client_secret": secret}
        self._headers = headers
        self._auth_params = auth_params
        self._refresh_token: str | None = None
        if settings.refresh_token is not None:
            self._refresh_token = settings.refresh_token.get_secret_value()
            _register_secret_forms(self._refresh_token)
        self.grant: Grant = "refresh_token" if self._refresh_token else "client_credentials"
        # Where a rotated refresh token is written back so a restart continues the grant
        # (checked in _open; None when it cannot be kept current). _persisted is the value
        # the file holds.
        self._refresh_file: Path | None = None
        if self._refresh_token is not None and settings.refresh_token_file:
            self._refresh_file = Path(settings.refresh_token_file)
        self._persisted = self._refresh_token
        # Client credentials: the same body on every fetch, encoded once.
        self._cc_body = urlencode(
            {"grant_type": "client_credentials", "scope": self._scope_param}
            | dict(settings.extra_params)
            | auth_params
        ).encode()

        # Cache state. Everything runs on one event loop and the swaps below never await,
        # so plain attributes are enough: _token and _refresh_token are replaced whole, and
        # _inflight (the one shared fetch, the single-flight guard) is set and cleared only
        # by _start_fetch / _on_fetch_done.
        self._token: Token | None = None
        self._generation = 0
        self._inflight: asyncio.Task[Token] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._background_not_before = 0.0
        self._last_fetch_ok: bool | None = None
        self.fault = None
        # The failure of the last fetch (a refusal, or TokenUnavailable after the bounded
        # attempts), answered to callers without a new request until _probe_at; then one
        # caller's fetch probes again. So a fault costs one request per probe, however many
        # tasks wait. _failures counts consecutive failed fetches (the probe backoff).
        self._held: InvoiceSyncError | None = None
        self._probe_at = 0.0
        self._failures = 0
        if settings.revoke_on_shutdown and not settings.revoke_url:
            _log.warning(
                "token.revoke_on_shutdown_ignored",
                hint="oauth.revoke_on_shutdown is set without oauth.revoke_url",
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(client_id={self._settings.client_id!r}, "
            f"endpoint={self._settings.token_url!r}, grant={self.grant!r}, "
            f"scopes={sorted(self._scopes)!r}, state={self._state.value!r})"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def _open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        TOKEN_EXPIRY.set_function(self._seconds_to_expiry)
        if self.grant == "refresh_token":
            self._check_refresh_file()
        self._refresher = asyncio.create_task(self._refresh_loop(), name="token-refresher")

    def _check_refresh_file(self) -> None:
        """Warn once, at start-up, when rotated refresh tokens cannot outlive the process.

        The server spends a refresh token on use; one kept only in memory is lost on exit,
        and presenting the spent one again revokes the grant (OAuth security BCP).
        """
        path = self._refresh_file
        problem = None
        if path is None:
            problem = "it was not read from a file (set INVOICE_SYNC_OAUTH__REFRESH_TOKEN_FILE)"
        else:
            try:
                held = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                held, problem = None, f"the file cannot be read ({exc.strerror})"
            if problem is None and held != self._refresh_token:
                problem = "the file holds another token than the one in use"
            elif problem is None and not os.access(path.parent, os.W_OK):
                problem = "its folder is not writable (a read-only Secret mount?)"
        if problem is None:
            return
        self._refresh_file = None
        _log.warning(
            "refresh_token.kept_in_memory_only",
            hint="a restart will need a fresh refresh token",
            problem=problem,
            path=None if path is None else str(path),
        )

    async def _shutdown(self) -> None:
        tasks = [t for t in (self._refresher, self._inflight) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            # return_exceptions: the tasks' own CancelledError is expected; ours propagates.
            await asyncio.gather(*tasks, return_exceptions=True)
        self._refresher = self._inflight = None
        try:
            token = self._token
            if self._settings.revoke_on_shutdown and self._settings.revoke_url and token:
                await self._revoke(token)
        finally:
            self._token = None
            TOKEN_EXPIRY.set_function(lambda: 0.0)
            if self._own_session and self._session is not None:
                await self._session.close()
            self._session = None

    def _seconds_to_expiry(self) -> float:
        token = self._token
        return 0.0 if token is None else max(0.0, token.expires_at - self._clock())

    # -- the contract ------------------------------------------------------------------------

    @property
    def token_obtainable(self) -> bool:
        token = self._token
        if token is not None and self._clock() < token.usable_until:
            return True
        return self._last_fetch_ok is not False

    async def token(self) -> Token:
        self._check_running()
        token = self._token
        if token is not None:
            now = self._clock()
            if now < token.renew_at:
                return token
            if now < token.usable_until:
                # Past the renewal point: make sure a renewal runs, keep using this one.
                if now >= self._background_not_before:
                    self._start_fetch()
                return token
        held = self._held
        if held is not None and self._inflight is None and self._clock() < self._probe_at:
            # The endpoint failed us a moment ago: answer with that, not with a request.
            raise copy.copy(held) from None
        fetched = await self._await_fetch()
        current = self._token
        # Re-check: a newer token may have landed while we waited.
        if current is not None and current.generation > fetched.generation:
            return current
        return fetched

    def invalidate(self, token: Token) -> None:
        current = self._token
        if current is not None and current.generation == token.generation:
            self._token = None
            self._wakeup.set()
            _log.debug("token.invalidated", token_generation=token.generation)

    # -- single flight ----------------------------------------------------------------------

    def _start_fetch(self) -> asyncio.Task[Token]:
        task = self._inflight
        if task is None or task.done():
            task = asyncio.create_task(self._fetch(), name="token-fetch")
            task.add_done_callback(self._on_fetch_done)
            self._inflight = task
        return task

    async def _await_fetch(self) -> Token:
        task = self._start_fetch()
        try:
            # Shielded: a cancelled waiter must not cancel the fetch the others wait for.
            return await asyncio.shield(task)
        except InvoiceSyncError as exc:
            # Every waiter gets its own copy: one exception object raised in a thousand
            # tasks would grow one traceback a thousand frames long.
            raise copy.copy(exc) from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                raise TokenUnavailable("token provider closed while fetching") from None
            raise

    def _on_fetch_done(self, task: asyncio.Task[Token]) -> None:
        if self._inflight is task:
            self._inflight = None
        if task.cancelled():
            return
        exc = task.exception()  # also marks it retrieved when nobody awaited the fetch
        if exc is None:
            return
        token = self._token
        now = self._clock()
        if token is not None and now < token.usable_until:
            # Renewal failed while the cached token still works: warn, keep using it, and
            # try again later (halfway to the point where it stops being usable).
            wait = min(self._settings.backoff_max_s, (token.usable_until - now) / 2)
            self._background_not_before = now + max(wait, 0.0)
            _log.warning(
                "token.renewal_failed_using_cached",
                reason=exc.reason if isinstance(exc, InvoiceSyncError) else "internal_error",
                token_generation=token.generation,
                token_expires_in_s=round(token.expires_at - now, 3),
                retry_in_s=round(wait, 3),
            )
            self._wakeup.set()

    async def _refresh_loop(self) -> None:
        """Renew the cached token at ``renew_at`` so callers normally never wait."""
        loop = asyncio.get_running_loop()
        while True:
            self._wakeup.clear()
            token = self._token
            now = self._clock()
            if token is None or now >= token.usable_until:
                # Nothing worth renewing: the next caller fetches (and wakes us).
                await self._wakeup.wait()
                continue
            due = max(token.renew_at, self._background_not_before)
            if now < due:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(loop.time() + (due - now)):
                        await self._wakeup.wait()
                continue
            task = self._start_fetch()
            await asyncio.wait({task})  # outcome handled by _on_fetch_done

    # -- fetching ----------------------------------------------------------------------------

    async def _fetch(self) -> Token:
        """One need: up to ``max_attempts`` token requests with full-jitter backoff."""
        settings = self._settings
        attempts = settings.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                token = await self._request_token()
            except _Transient as exc:
                self._last_fetch_ok = False
                TOKEN_FETCHES.labels(self.grant, "transient_error").inc()
                if attempt >= attempts:
                    unavailable = TokenUnavailable(
                        f"token endpoint unavailable after {attempts} attempts (last: {exc.kind})",
                        status=exc.status,
                        error_kind=exc.kind,
                        attempts=attempts,
                    )
                    hold = self._hold(unavailable)
                    _log.warning(
                        "token.endpoint_unavailable",
                        attempts=attempts,
                        error_kind=exc.kind,
                        status=exc.status,
                        next_probe_in_s=round(hold, 3),
                    )
                    raise unavailable from None
                delay = self._backoff(attempt, exc.retry_after)
                RETRIES.labels(TokenUnavailable.reason).inc()
                _log.warning(
                    "token.request_retrying",
                    attempt=attempt,
                    max_attempts=attempts,
                    error_kind=exc.kind,
                    status=exc.status,
                    delay_s=round(delay, 3),
                )
                await self._sleep(delay)
            except ConfigurationFault as exc:
                self._last_fetch_ok = False
                TOKEN_FETCHES.labels(self.grant, "config_error").inc()
                self.fault = exc
                hold = self._hold(exc)
                _log.error(
                    "token.configuration_refused",
                    hint="fix the settings",
                    reason=exc.reason,
                    message=exc.message,
                    next_probe_in_s=round(hold, 3),
                    **exc.details,
                )
                raise
            else:
                TOKEN_FETCHES.labels(self.grant, "success").inc()
                if self._held is not None:
                    _log.info("token.endpoint_recovered", failed_fetches=self._failures)
                self._last_fetch_ok = True
                self.fault = None
                self._held = None
                self._failures = 0
                self._background_not_before = 0.0
                self._token = token
                self._wakeup.set()
                if self._refresh_file is not None and self._refresh_token != self._persisted:
                    await self._persist_refresh_token()
                return token
        raise AssertionError("unreachable")  # pragma: no cover

    async def _persist_refresh_token(self) -> None:
        """Write the rotated refresh token back to its file, so a restart continues the
        grant. A failure is a warning: the token in memory keeps working until exit."""
        path, value = self._refresh_file, self._refresh_token
        assert path is not None
        assert value is not None
        try:
            await asyncio.to_thread(_replace_private_file, path, value)
        except OSError as exc:
            _log.warning(
                "refresh_token.write_failed",
                hint="a restart will need a fresh refresh token",
                path=str(path),
                error_kind=type(exc).__name__,
                error=exc.strerror,
            )
            return
        self._persisted = value
        _log.info("refresh_token.written", path=str(path))

    def _hold(self, failure: InvoiceSyncError) -> float:
        """Remember a failed fetch until the next probe; returns the seconds until then.

        The hold grows like the retry backoff (``backoff_base_s`` doubling up to
        ``backoff_max_s``) with equal jitter, ``U(ceiling / 2, ceiling)``: never near zero,
        so a probe is never followed at once by another, and replicas drift apart.
        """
        self._failures += 1
        settings = self._settings
        ceiling = min(
            settings.backoff_max_s, settings.backoff_base_s * 2.0 ** min(self._failures - 1, 32)
        )
        hold = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        self._held = failure
        self._probe_at = self._clock() + hold
        return hold

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """The project's one backoff policy (:class:`worker.retry.Backoff`): full jitter, and
        a server's Retry-After as a floor, capped."""
        settings = self._settings
        return Backoff(
            settings.backoff_base_s, settings.backoff_max_s, settings.retry_after_cap_s, self._rng
        ).delay(attempt, retry_after=retry_after)

    def _body(self) -> tuple[bytes, str | None]:
        if self.grant == "client_credentials":
            return self._cc_body, None
        refresh = self._refresh_token
        assert refresh is not None
        params = (
            {"grant_type": "refresh_token", "refresh_token": refresh, "scope": self._scope_param}
            | dict(self._settings.extra_params)
            | self._auth_params
        )
        return urlencode(params).encode(), refresh

    async def _request_token(self) -> Token:
        """One POST to the token endpoint, classified. Raises _Transient or a fault."""
        session = self._session
        assert session is not None
        body, used_refresh = self._body()
        sent_at = self._clock()
        started = time.perf_counter()
        failure: _Transient | None = None
        try:
            async with session.post(
                self._settings.token_url,
                data=body,
                headers=self._headers,
                allow_redirects=False,
                timeout=self._timeout,
            ) as resp:
                status = resp.status
                payload = await resp.read()
                content_type = resp.content_type
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            failure = _Transient("timeout")
        except aiohttp.ClientError as exc:
            failure = _Transient(type(exc).__name__)  # only the type: no request info
        finally:
            TOKEN_FETCH_LATENCY.labels(self.grant).observe(time.perf_counter() - started)
        if failure is not None:
            raise failure  # outside the except block, so no __context__ to the aiohttp error

        if status == 200:
            return self._parse_success(payload, content_type, sent_at, used_refresh)
        if status in (408, 429) or status >= 500:
            raise _Transient(f"http_{status}", status=status, retry_after=retry_after)
        if 300 <= status < 400:
            raise AuthConfigurationFault(
                f"token endpoint answered a redirect ({status}); redirects are not followed, "
                "set oauth.token_url to the final URL",
                status=status,
                oauth_error="redirect",
                scope=self._scope_param,
            )
        raise self._refusal(status, payload)

    def _refusal(self, status: int, payload: bytes) -> InvoiceSyncError:
        """A 4xx (or odd status) from the token endpoint: our configuration is wrong."""
        error = description = None
        doc = _json_object(payload)
        if doc is not None:
            raw_error, raw_desc = doc.get("error"), doc.get("error_description")
            error = _short(raw_error) if isinstance(raw_error, str) else None
            description = _short(raw_desc) if isinstance(raw_desc, str) else None
        details: dict[str, object] = {
            "status": status,
            "oauth_error": error,
            "error_description": description,
            "scope": self._scope_param,
            "grant": self.grant,
        }
        what = error or f"http_{status}"
        if error is not None and error not in _CONFIG_ERRORS:
            what = f"{error} (unrecognised OAuth error)"
        message = f"token endpoint refused the {self.grant} grant: {what} (HTTP {status})"
        if description:
            message += f": {description}"
        return AuthConfigurationFault(message, **details)

    def _parse_success(
        self, payload: bytes, content_type: str, sent_at: float, used_refresh: str | None
    ) -> Token:
        doc = _json_object(payload)
        if doc is None:
            # A proxy's or load balancer's HTML page with a 200: not a token.
            raise _Transient("non_json_200", status=200)
        value = doc.get("access_token")
        if not isinstance(value, str) or not value:
            raise _Transient("no_access_token", status=200)
        new_refresh = doc.get("refresh_token")
        if not isinstance(new_refresh, str) or not new_refresh:
            new_refresh = None
        # One call: the redaction pattern is rebuilt once per token response.
        shapes = _encoded_shapes(value) | (_encoded_shapes(new_refresh) if new_refresh else set())
        register_secret(*shapes, rotating=True)

        token_type = doc.get("token_type")
        if token_type is None:
            _log.warning("token.type_missing_assumed_bearer")
        elif not isinstance(token_type, str) or token_type.lower() != "bearer":
            shown = _short(token_type) if isinstance(token_type, str) else type(token_type).__name__
            raise AuthConfigurationFault(
                f"token endpoint issued a {shown!r} token; only Bearer is supported",
                status=200,
                oauth_error="unsupported_token_type",
                received_type=shown,
                scope=self._scope_param,
            )

        lifetime = _parse_expires_in(doc.get("expires_in"))
        if lifetime is None:
            lifetime = self._settings.default_lifetime_s
            _log.warning(
                "token.expires_in_unusable",
                default_lifetime_s=lifetime,
            )

        granted = self._granted_scopes(doc.get("scope"))
        missing = self._scopes - granted
        if missing:
            raise InsufficientScope(
                "token endpoint granted fewer scopes than required; missing: "
                + " ".join(sorted(missing)),
                status=200,
                oauth_error="insufficient_scope",
                missing_scopes=sorted(missing),
                granted_scopes=sorted(granted),
                scope=self._scope_param,
            )

        # Rotation (refresh grant only): the newest refresh token replaces the spent one.
        # For client credentials a returned refresh token is ignored (RFC 6749 4.4.3).
        rotated = isinstance(new_refresh, str) and bool(new_refresh) and new_refresh != used_refresh
        if self.grant == "refresh_token" and rotated:
            self._refresh_token = new_refresh
        _check_jwt_exp(value, lifetime)

        skew = min(self._settings.skew_s, lifetime / 2)
        expires_at = sent_at + lifetime
        self._generation += 1
        token = Token(
            value=value,
            generation=self._generation,
            expires_at=expires_at,
            scopes=granted,
            renew_at=expires_at - skew,
            usable_until=expires_at - skew / 2,
        )
        _log.debug(
            "token.obtained",
            grant=self.grant,
            token_generation=token.generation,
            token_expires_in_s=lifetime,
            scopes=sorted(granted),
        )
        return token

    def _granted_scopes(self, raw: object) -> frozenset[str]:
        if isinstance(raw, str) and raw.strip():
            return frozenset(raw.split())
        if isinstance(raw, list) and raw and all(isinstance(s, str) for s in raw):
            return frozenset(raw)
        # Omitted (RFC 6749 section 5.1: "identical to the scope requested").
        return self._scopes

    async def _revoke(self, token: Token) -> None:
        """RFC 7009 revocation of the live access token; failures are logged, not raised."""
        session = self._session
        url = self._settings.revoke_url
        if session is None or url is None:
            return
        body = urlencode(
            {"token": token.value, "token_type_hint": "access_token"} | self._auth_params
        ).encode()
        try:
            async with session.post(
                url, data=body, headers=self._headers, allow_redirects=False, timeout=self._timeout
            ) as resp:
                await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            _log.warning("token.revocation_failed", error_kind=type(exc).__name__)
            return
        if status == 200:
            _log.info("token.revoked", token_generation=token.generation)
        else:
            _log.warning("token.revocation_refused", status=status)


def _replace_private_file(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, mode 0600: a temporary file in the same
    folder, fsynced, renamed over it, then the folder fsynced. A crash leaves the old or the
    new content, never a torn file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _parse_expires_in(raw: object) -> float | None:
    """``expires_in`` as a number or numeric string; ``None`` when missing or unusable."""
    if isinstance(raw, bool):
        return None
    value: float
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return value


def _check_jwt_exp(value: str, lifetime: float) -> None:
    """Diagnostics only: a JWT's ``exp`` decoded *without* trust, compared with expires_in."""
    parts = value.split(".")
    if len(parts) != 3 or not parts[0].startswith("eyJ"):
        return
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (ValueError, UnicodeDecodeError):
        return
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return
    jwt_left = exp - time.time()
    if abs(jwt_left - lifetime) > max(5.0, lifetime * 0.1):
        _log.warning(
            "token.jwt_exp_disagrees",
            trusted="expires_in",
            jwt_exp_in_s=round(jwt_left, 1),
            token_expires_in_s=lifetime,
        )


# --- the send flow --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    """A fully read API response (the connection is already released)."""

    status: int
    body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)

    def json(self) -> Any:
        """The body as JSON. Raises ValueError if it is not JSON."""
        return json.loads(self.body)


class Auth(Lifecycle, ABC):
    """Attach a credential, send, and deal with "credential expired" answers.

    :meth:`send` returns every response except the ones it handles itself. It lets aiohttp
    transport errors (``TimeoutError``, ``aiohttp.ClientError``) propagate unchanged for the
    caller to classify; none of them carries request headers.
    """

    @abstractmethod
    async def send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        endpoint: str,
    ) -> Response:
        """Send one request with the credential attached.

        Raises:
            TokenUnavailable: no token could be had, or a fresh token was rejected again.
            AuthConfigurationFault, InsufficientScope: the credential is misconfigured.
        """

    @property
    @abstractmethod
    def fault(self) -> InvoiceSyncError | None:
        """The current configuration fault, if any (readiness)."""

    @property
    @abstractmethod
    def token_obtainable(self) -> bool:
        """Whether requests can currently be authenticated (readiness)."""

    async def start(self) -> None:
        """Start the credential's background work (token renewal)."""

    async def close(self) -> None:
        """Stop it; idempotent."""

    @staticmethod
    async def _send_once(
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> Response:
        async with session.request(
            method, url, data=body, headers=headers, allow_redirects=False
        ) as resp:
            payload = await resp.read()
            return Response(resp.status, payload, resp.headers)


def _request_headers(
    credential: Mapping[str, str], extra: Mapping[str, str] | None, has_body: bool
) -> Mapping[str, str]:
    if not extra and not has_body:
        return credential
    merged = dict(credential)
    if has_body:
        merged["Content-Type"] = "application/json"
    if extra:
        merged.update(extra)
    return merged


class BearerAuth(Auth):
    """OAuth bearer tokens from a :class:`TokenProvider`, renewed once on an expiry status.

    A status in ``renew_on_status`` invalidates the token the request carried (only if it
    is still the cached generation), takes the current or a new token (single flight) and
    resends once. A 403 whose ``WWW-Authenticate`` says ``insufficient_scope`` is never a
    renewal. A second 401 with the fresh token raises :class:`TokenUnavailable`.
    """

    def __init__(self, provider: TokenProvider, *, renew_on_status: frozenset[int]) -> None:
        self.provider = provider
        self._renew = frozenset(renew_on_status) | {401}
        # The Authorization header for the current generation, built once per token.
        self._cached: tuple[int, dict[str, str]] = (-1, {})

    def __repr__(self) -> str:
        return f"BearerAuth(provider={self.provider!r}, renew_on_status={sorted(self._renew)})"

    @property
    def fault(self) -> InvoiceSyncError | None:
        return self.provider.fault

    @property
    def token_obtainable(self) -> bool:
        return self.provider.token_obtainable

    async def start(self) -> None:
        await self.provider.start()

    async def close(self) -> None:
        await self.provider.close()

    def _credential(self, token: Token) -> dict[str, str]:
        generation, headers = self._cached
        if generation != token.generation:
            headers = {"Authorization": token.header()}
            self._cached = (token.generation, headers)
        return headers

    async def send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        endpoint: str,
    ) -> Response:
        body = None if json is None else encode_json(json)
        token = await self.provider.token()
        hdrs = _request_headers(self._credential(token), headers, body is not None)
        resp = await self._send_once(session, method, url, body, hdrs)
        if not self._is_renewal(resp):
            return resp
        self.provider.invalidate(token)
        TOKEN_RENEWALS_401.inc()
        _log.debug(
            "auth.token_rejected",
            endpoint=endpoint,
            status=resp.status,
            token_generation=token.generation,
        )
        token = await self.provider.token()
        hdrs = _request_headers(self._credential(token), headers, body is not None)
        resp = await self._send_once(session, method, url, body, hdrs)
        if resp.status == 401:
            raise TokenUnavailable(
                "API rejected a freshly issued token (401)",
                status=401,
                endpoint=endpoint,
                token_generation=token.generation,
            )
        return resp

    def _is_renewal(self, resp: Response) -> bool:
        status = resp.status
        if status not in self._renew:
            return False
        if status == 403:
            challenge = bearer_challenge(resp.headers.get("WWW-Authenticate"))
            return challenge.get("error") != "insufficient_scope"
        return True


class ApiKeyAuth(Auth):
    """Qoyod's static ``API-KEY`` header. A 401 means the key is wrong: a configuration
    fault, never retried by renewal."""

    def __init__(self, settings: ApiSettings) -> None:
        if settings.api_key is None:
            raise SettingsError("api.api_key is required when api.auth_mode is api_key")
        key = settings.api_key.get_secret_value()
        register_secret(key)
        self._headers = {"API-KEY": key}
        self._fault: InvoiceSyncError | None = None

    def __repr__(self) -> str:
        return f"ApiKeyAuth(api_key={_SECURE})"

    @property
    def fault(self) -> InvoiceSyncError | None:
        return self._fault

    @property
    def token_obtainable(self) -> bool:
        return self._fault is None

    async def send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        endpoint: str,
    ) -> Response:
        body = None if json is None else encode_json(json)
        hdrs = _request_headers(self._headers, headers, body is not None)
        resp = await self._send_once(session, method, url, body, hdrs)
        if resp.status == 401:
            fault = AuthConfigurationFault(
                "API rejected the API key (401); check api.api_key", status=401, endpoint=endpoint
            )
            self._fault = fault
            _log.error(
                "auth.api_key_rejected", hint="check api.api_key", status=401, endpoint=endpoint
            )
            raise copy.copy(fault)
        if resp.status < 400 and self._fault is not None:
            self._fault = None
        return resp


def build_auth(
    settings: Settings,
    *,
    session: aiohttp.ClientSession | None = None,
) -> Auth:
    """The auth strategy ``settings.api.auth_mode`` names (``session`` is for the token
    endpoint; by default the provider opens its own)."""
    if settings.api.auth_mode == "api_key":
        return ApiKeyAuth(settings.api)
    provider = ClientCredentialsProvider(settings.oauth, session=session)
    return BearerAuth(provider, renew_on_status=frozenset(settings.oauth.renew_on_status))
