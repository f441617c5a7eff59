"""worker.auth: the OAuth 2.0 client layer, against the sandbox over real HTTP.

Every test here runs under :func:`leak_scan` (autouse): all loggers at DEBUG (aiohttp and
aiokafka included) into a StringIO, plus a raw copy of every record *before* redaction;
at teardown the captured text, the raw records, the exceptions the test handed to
``leaks.exc(...)``, pytest's captured stdout/stderr/log and ``generate_latest()`` are
scanned for every token the sandboxes issued, every client secret, its Basic form and any
``sbx_at_``/``sbx_rt_`` value. Failures name the kind of secret and where, never the value.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import logging
import os
import random
import re
import stat
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY, generate_latest

from tests.plugins.sandbox import SandboxFactory
from worker.api import AccountingApi
from worker.auth import (
    ApiKeyAuth,
    BearerAuth,
    ClientCredentialsProvider,
    Token,
    bearer_challenge,
    build_auth,
    encode_json,
    parse_retry_after,
    require_secure_url,
)
from worker.errors import (
    AuthConfigurationFault,
    InsufficientScope,
    InvoiceSyncError,
    SettingsError,
    TokenUnavailable,
)
from worker.logs import REDACTED, configure_logging, scrub
from worker.sandbox import (
    ALL_SCOPES,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    ClientOverride,
    ClientSpec,
    FaultRule,
    Faults,
    Sandbox,
    SandboxConfig,
)
from worker.settings import ApiSettings, OAuthSettings, Settings, load_settings

_TOKEN_SHAPE = re.compile(r"sbx_(?:at|rt)_[A-Za-z0-9_\-]{8,}")
_LOGGERS = (
    "",
    "aiohttp",
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
    "aiokafka",
    "asyncio",
    "worker",
)


# --- leak scan --------------------------------------------------------------------------------


class _RawRecords(logging.Handler):
    """Keeps every record as emitted, before the redacting formatter sees it."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        parts = [str(record.msg), repr(record.args)]
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(record.exc_info[1])))
        self.texts.append(" ".join(parts))


@dataclass
class Leaks:
    """What a test exposes: secrets to look for, and exceptions and texts to look in."""

    stream: io.StringIO
    raw: _RawRecords
    secrets: dict[str, str] = field(default_factory=dict)  # value -> kind (never printed)
    sandboxes: list[Sandbox] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)

    def secret(self, value: str, kind: str) -> None:
        self.secrets[value] = kind

    def sandbox(self, sbx: Sandbox) -> Sandbox:
        self.sandboxes.append(sbx)
        return sbx

    def exc(self, exc: BaseException) -> BaseException:
        """Record an exception's str, repr, details and formatted traceback for the scan."""
        self.texts.append(("exception str", str(exc)))
        self.texts.append(("exception repr", repr(exc)))
        if isinstance(exc, InvoiceSyncError):
            self.texts.append(("exception details", repr(exc.details)))
        self.texts.append(("traceback", "".join(traceback.format_exception(exc))))
        return exc

    def text(self, where: str, value: str) -> None:
        self.texts.append((where, value))

    def lines(self, event: str) -> list[dict[str, Any]]:
        """The captured JSON log lines whose ``event`` is ``event``."""
        parsed = (json.loads(line) for line in self.stream.getvalue().splitlines())
        return [line for line in parsed if line.get("event") == event]

    def scan(self, extra: list[tuple[str, str]]) -> list[str]:
        secrets = dict(self.secrets)
        for sbx in self.sandboxes:
            for value in sbx.issued_secrets():
                secrets.setdefault(value, "sandbox-issued secret")
        places = [
            ("log output", self.stream.getvalue()),
            *[("raw log record", t) for t in self.raw.texts],
            *self.texts,
            *extra,
        ]
        found = []
        for where, text in places:
            for value, kind in secrets.items():
                if value and value in text:
                    found.append(f"{kind} in {where}")
            if _TOKEN_SHAPE.search(text):
                found.append(f"sbx_ token value in {where}")
        return sorted(set(found))


@pytest.fixture(autouse=True, name="leak_scan")
def leak_scan_fixture(
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> Iterator[Leaks]:
    """DEBUG everywhere into a StringIO; at teardown, assert nothing secret got out."""
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    stream = io.StringIO()
    configure_logging(level="DEBUG", stream=stream, quiet_libraries=_LOGGERS[1:])
    raw = _RawRecords()
    root.addHandler(raw)
    caplog.set_level(logging.DEBUG)
    leaks = Leaks(stream=stream, raw=raw)
    leaks.secret(DEMO_CLIENT_SECRET, "client secret")
    basic = base64.b64encode(f"{DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET}".encode()).decode()
    leaks.secret(basic, "Basic credentials")
    try:
        yield leaks
    finally:
        root.removeHandler(raw)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
    captured = capsys.readouterr()
    extra = [
        ("stdout", captured.out),
        ("stderr", captured.err),
        *[
            ("caplog record", f"{r.msg!s} {r.args!r}")
            for r in [*caplog.get_records("setup"), *caplog.get_records("call")]
        ],
        ("metrics", generate_latest().decode()),
    ]
    found = leaks.scan(extra)
    assert not found, f"secret leaked: {found}"


# --- helpers ----------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that moves only when told (or when FakeSleep sleeps)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSleep:
    """Records backoff delays and advances the fake clock instead of waiting."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.delays: list[float] = []
        self.clock = clock
        self.hooks: list[Callable[[int], None]] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)
        for hook in self.hooks:
            hook(len(self.delays))
        await asyncio.sleep(0)


def oauth_settings(url: str, **overrides: Any) -> OAuthSettings:
    """Settings for a token endpoint at ``url`` with short, test-sized timings."""
    values: dict[str, Any] = {
        "token_url": f"{url}/oauth/token",
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "retry_after_cap_s": 0.2,
        "max_attempts": 3,
        "timeout_s": 2.0,
        "connect_timeout_s": 1.0,
    }
    values.update(overrides)
    return OAuthSettings(**values)


def token_requests(sbx: Sandbox, grant: str = "client_credentials") -> int:
    return int(sbx.stats()["token_requests"].get(grant, 0))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def provider_factory() -> AsyncIterator[Callable[..., Awaitable[ClientCredentialsProvider]]]:
    """``await provider_factory(settings, **kw)`` starts a provider; all close at teardown."""
    made: list[ClientCredentialsProvider] = []

    async def make(settings: OAuthSettings, **kwargs: Any) -> ClientCredentialsProvider:
        provider = ClientCredentialsProvider(settings, **kwargs)
        made.append(provider)
        await provider.start()
        return provider

    yield make
    for provider in made:
        await provider.close()


@dataclass
class Recorded:
    at: float
    form: dict[str, str]
    basic: bool


class ScriptedTokenServer:
    """A tiny token endpoint answering a script of responses (for shapes the sandbox can't
    produce); the last entry repeats. Records when each request came and its form."""

    def __init__(self) -> None:
        self.script: list[Callable[[], web.StreamResponse]] = []
        self.requests: list[Recorded] = []
        self.url = ""

    def respond(self, *makers: Callable[[], web.StreamResponse]) -> None:
        self.script = list(makers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        basic = request.headers.get("Authorization", "").startswith("Basic ")
        self.requests.append(Recorded(time.monotonic(), form, basic))
        maker = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return maker()


def token_json(**fields: Any) -> Callable[[], web.Response]:
    body = {"token_type": "Bearer", "expires_in": 3600, **fields}
    return lambda: web.json_response(body)


@pytest.fixture
async def token_server(leak_scan: Leaks) -> AsyncIterator[ScriptedTokenServer]:
    server = ScriptedTokenServer()
    app = web.Application()
    app.router.add_post("/oauth/token", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def sbx(sandbox_factory: SandboxFactory, leak_scan: Leaks) -> Sandbox:
    """The demo sandbox, registered with the leak scan."""
    return leak_scan.sandbox(await sandbox_factory(SandboxConfig()))


# --- tests ------------------------------------------------------------------------------------


class TestToken:
    def test_repr_masks_value(self, leak_scan: Leaks) -> None:
        """A token's repr and str show generation and scopes, never the value."""
        value = "sbx_at_" + "x" * 30
        leak_scan.secret(value, "access token")
        token = Token(value, 3, 10.0, frozenset({"a"}), 5.0, 7.5)
        leak_scan.text("token repr", repr(token))
        leak_scan.text("token str", str(token))
        assert "[secure]" in repr(token)
        assert "generation=3" in repr(token)
        assert token.header() == f"Bearer {value}"


class TestHelpers:
    def test_parse_retry_after(self) -> None:
        """Delta-seconds and HTTP-dates parse; garbage and absence are None; never negative."""
        assert parse_retry_after("7") == 7.0
        assert parse_retry_after(" 1.5 ") == 1.5
        assert parse_retry_after(None) is None
        assert parse_retry_after("soon") is None
        assert parse_retry_after("-3") == 0.0
        date = "Wed, 21 Oct 2015 07:28:00 GMT"
        assert parse_retry_after(date, now=1445412470.0) == 10.0

    def test_bearer_challenge(self) -> None:
        """WWW-Authenticate auth-params are read, quoted or not."""
        header = 'Bearer realm="x", error="insufficient_scope", scope="a.read b.write"'
        assert bearer_challenge(header) == {
            "realm": "x",
            "error": "insufficient_scope",
            "scope": "a.read b.write",
        }
        assert bearer_challenge("Bearer error=invalid_token") == {"error": "invalid_token"}
        assert bearer_challenge(None) == {}

    def test_encode_json_keeps_decimals_exact(self) -> None:
        """Decimals are sent as their exact strings, never floats."""
        assert encode_json({"a": Decimal("0.10"), "b": "x"}) == b'{"a":"0.10","b":"x"}'


class TestConstruction:
    def test_http_non_loopback_token_url_is_refused(self) -> None:
        """Direct construction with an http:// non-loopback token URL raises SettingsError."""
        settings = OAuthSettings.model_construct(
            **(OAuthSettings().model_dump() | {"token_url": "http://auth.example.com/token"})
        )
        with pytest.raises(SettingsError, match="https"):
            ClientCredentialsProvider(settings)

    def test_settings_refuse_http_non_loopback(self) -> None:
        """The settings model refuses it too (validated before construction)."""
        with pytest.raises(ValueError, match="https"):
            OAuthSettings(token_url="http://auth.example.com/token")

    def test_https_loopback_and_opt_in_are_accepted(self) -> None:
        """https anywhere, http on loopback, and http with allow_insecure all pass."""
        require_secure_url("x", "https://auth.example.com/t", allow_insecure=False)
        require_secure_url("x", "http://127.0.0.1:1/t", allow_insecure=False)
        require_secure_url("x", "http://[::1]:1/t", allow_insecure=False)
        require_secure_url("x", "http://auth.example.com/t", allow_insecure=True)

    def test_api_refuses_http_non_loopback(self) -> None:
        """AccountingApi checks its base URL the same way."""
        settings = ApiSettings.model_construct(
            **(ApiSettings().model_dump() | {"base_url": "http://api.example.com"})
        )
        auth = ApiKeyAuth(ApiSettings(auth_mode="api_key", api_key="k" * 12))
        with pytest.raises(SettingsError, match="https"):
            AccountingApi(settings, auth=auth)

    def test_extra_params_cannot_override_the_grant(self) -> None:
        """extra_params naming a grant parameter is a settings error, not a silent override."""
        params = {"grant_type": "password", "audience": "x"}
        with pytest.raises(SettingsError, match="grant_type"):
            load_settings(oauth={"extra_params": params})
        # Settings built in code skip validation: the provider checks again.
        with pytest.raises(SettingsError, match="grant_type"):
            ClientCredentialsProvider(OAuthSettings.model_construct(extra_params=params))

    def test_credential_named_extra_param_is_redacted_like_the_secret(self) -> None:
        """A client_assertion sent in the form body is scrubbed from log text; audience is not."""
        assertion = "signed-assertion-value-7f3a"
        ClientCredentialsProvider(
            OAuthSettings(extra_params={"client_assertion": assertion, "audience": "api-aud"})
        )
        text = f"echo client_assertion {assertion} aud api-aud"
        assert scrub(text) == f"echo client_assertion {REDACTED} aud api-aud"

    def test_repr_has_no_secret(self, leak_scan: Leaks) -> None:
        """Provider and auth reprs name the client, never its secret."""
        provider = ClientCredentialsProvider(OAuthSettings())
        auth = BearerAuth(provider, renew_on_status=frozenset({401}))
        leak_scan.text("provider repr", repr(provider))
        leak_scan.text("auth repr", repr(auth))
        assert DEMO_CLIENT_ID in repr(provider)


class TestLifecycle:
    async def test_second_start_raises_and_close_is_idempotent(self, sbx: Sandbox) -> None:
        """start() twice raises; close() twice is fine; token() after close raises."""
        provider = ClientCredentialsProvider(oauth_settings(sbx.url))
        async with provider:
            with pytest.raises(RuntimeError):
                await provider.start()
        await provider.close()
        with pytest.raises(RuntimeError):
            await provider.token()

    async def test_token_before_start_raises(self, sbx: Sandbox) -> None:
        """Using a provider that was never started is a programming error."""
        provider = ClientCredentialsProvider(oauth_settings(sbx.url))
        with pytest.raises(RuntimeError):
            await provider.token()

    async def test_close_fails_waiters_with_token_unavailable(self, sbx: Sandbox) -> None:
        """Waiters of a fetch cut short by close() get TokenUnavailable, not a stray cancel."""
        sbx.set_faults(Faults(rules=(FaultRule(target="token", latency_ms=500),)))
        provider = ClientCredentialsProvider(oauth_settings(sbx.url))
        await provider.start()
        waiter = asyncio.create_task(provider.token())
        await asyncio.sleep(0.05)
        await provider.close()
        with pytest.raises(TokenUnavailable, match="closed"):
            await waiter


class TestGrant:
    @pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
    async def test_both_client_auth_methods(
        self, sbx: Sandbox, provider_factory: Any, method: str
    ) -> None:
        """Basic and body client authentication both obtain a token from the sandbox."""
        provider = await provider_factory(oauth_settings(sbx.url, auth_method=method))
        token = await provider.token()
        assert token.generation == 1
        assert token.scopes == ALL_SCOPES
        assert token_requests(sbx) == 1

    async def test_basic_auth_form_encodes_id_and_secret(
        self, sandbox_factory: SandboxFactory, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """A secret with ':', '+', '/' and non-ASCII works with client_secret_basic."""
        secret = "s3cr:t+/=ü-value"
        leak_scan.secret(secret, "odd client secret")
        spec = ClientSpec("odd:client", secret, ALL_SCOPES)
        sbx = leak_scan.sandbox(await sandbox_factory(SandboxConfig(clients=[spec])))
        settings = oauth_settings(sbx.url, client_id="odd:client", client_secret=secret)
        provider = await provider_factory(settings)
        assert (await provider.token()).generation == 1

    async def test_same_parameters_on_every_fetch(
        self, token_server: ScriptedTokenServer, provider_factory: Any
    ) -> None:
        """Every fetch posts the grant, the configured scope and the extra parameters."""
        token_server.respond(token_json(access_token="opaque-value-1"))
        settings = oauth_settings(
            token_server.url,
            scopes=["invoices.read", "invoices.write"],
            extra_params={"audience": "https://api.example.com"},
        )
        provider = await provider_factory(settings)
        first = await provider.token()
        provider.invalidate(first)
        await provider.token()
        forms = [r.form for r in token_server.requests]
        assert (
            forms[0]
            == forms[1]
            == {
                "grant_type": "client_credentials",
                "scope": "invoices.read invoices.write",
                "audience": "https://api.example.com",
            }
        )
        assert all(r.basic for r in token_server.requests)


class TestSingleFlight:
    async def test_concurrent_callers_share_one_fetch(
        self, sbx: Sandbox, provider_factory: Any
    ) -> None:
        """1,000 callers with an empty cache cause exactly one token request."""
        provider = await provider_factory(oauth_settings(sbx.url))
        tokens = await asyncio.gather(*(provider.token() for _ in range(1000)))
        assert {t.generation for t in tokens} == {1}
        assert token_requests(sbx) == 1

    async def test_expired_cache_refetched_once(self, sbx: Sandbox, provider_factory: Any) -> None:
        """1,000 callers with an expired token cause exactly one more request."""
        clock = FakeClock()
        provider = await provider_factory(oauth_settings(sbx.url), clock=clock)
        first = await provider.token()
        clock.advance(first.expires_at - clock.now + 1)
        tokens = await asyncio.gather(*(provider.token() for _ in range(1000)))
        assert {t.generation for t in tokens} == {2}
        assert token_requests(sbx) == 2

    async def test_failed_fetch_reaches_every_waiter_then_retries_fresh(
        self, sbx: Sandbox, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """A failed shared fetch fails all 1,000 waiters; the next need is again one request."""
        sbx.set_faults(Faults(token_outage=True))
        clock = FakeClock()
        settings = oauth_settings(sbx.url, max_attempts=1)
        provider = await provider_factory(settings, clock=clock)
        results = await asyncio.gather(
            *(provider.token() for _ in range(1000)), return_exceptions=True
        )
        assert all(isinstance(r, TokenUnavailable) for r in results)
        assert len({id(r) for r in results}) == 1000  # each waiter has its own copy
        leak_scan.exc(results[0])
        assert len(sbx.stats()["token_request_times"]) == 1
        assert not provider.token_obtainable
        again = await asyncio.gather(
            *(provider.token() for _ in range(1000)), return_exceptions=True
        )
        assert all(isinstance(r, TokenUnavailable) for r in again)
        assert len(sbx.stats()["token_request_times"]) == 1  # remembered, not re-asked

        sbx.set_faults(Faults())
        clock.advance(settings.backoff_max_s)  # past the outage's probe backoff
        tokens = await asyncio.gather(*(provider.token() for _ in range(1000)))
        assert {t.generation for t in tokens} == {1}
        assert len(sbx.stats()["token_request_times"]) == 2
        assert provider.token_obtainable

    async def test_cancelled_waiter_does_not_cancel_shared_fetch(
        self, sbx: Sandbox, provider_factory: Any
    ) -> None:
        """Cancelling one waiter leaves the shared fetch running for the others."""
        sbx.set_faults(Faults(rules=(FaultRule(target="token", latency_ms=200),)))
        provider = await provider_factory(oauth_settings(sbx.url))
        waiters = [asyncio.create_task(provider.token()) for _ in range(3)]
        await asyncio.sleep(0.05)
        waiters[0].cancel()
        done = await asyncio.gather(*waiters, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError)
        assert done[1] is done[2]
        assert isinstance(done[1], Token)
        assert token_requests(sbx) == 1

    async def test_invalidate_ignores_an_older_generation(
        self, sbx: Sandbox, provider_factory: Any
    ) -> None:
        """invalidate(old) after a renewal keeps the newer token."""
        provider = await provider_factory(oauth_settings(sbx.url))
        first = await provider.token()
        provider.invalidate(first)
        second = await provider.token()
        provider.invalidate(first)
        assert (await provider.token()) is second
        assert token_requests(sbx) == 2


class TestRenewalOnStatus:
    async def test_three_stale_401s_cause_one_refresh(
        self, sbx: Sandbox, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """Three requests sent with generation 1 that all get 401 cause one refresh, and
        every retry carries the new token."""
        provider = await provider_factory(oauth_settings(sbx.url))
        auth = BearerAuth(provider, renew_on_status=frozenset({401}))
        first = await provider.token()
        sent: list[str] = []

        async def on_start(_s: Any, _c: Any, params: aiohttp.TraceRequestStartParams) -> None:
            sent.append(params.headers.get("Authorization", ""))

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_start)
        sbx.revoke_all()  # generation 1 is now rejected by the server
        renewals = metric("invoice_sync_token_renewals_after_401_total")
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            url = f"{sbx.url}/2.0/invoices?q%5Breference_eq%5D=nope"
            responses = await asyncio.gather(
                *(auth.send(session, "GET", url, endpoint="/2.0/invoices") for _ in range(3))
            )
        assert [r.status for r in responses] == [404, 404, 404]
        assert token_requests(sbx) == 2
        current = await provider.token()
        generation = {first.header(): 1, current.header(): 2}
        assert [generation.get(h, 0) for h in sent] == [1, 1, 1, 2, 2, 2]
        assert sbx.stats()["requests_by_status"].get("401") == 3
        assert metric("invoice_sync_token_renewals_after_401_total") - renewals == 3

    async def test_second_401_with_fresh_token_is_an_error(
        self, sbx: Sandbox, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """A 401 for the freshly renewed token raises TokenUnavailable; no second refresh."""
        provider = await provider_factory(oauth_settings(sbx.url))
        auth = BearerAuth(provider, renew_on_status=frozenset({401}))
        sbx.set_faults(
            Faults(
                client_overrides=(ClientOverride(client_id=DEMO_CLIENT_ID, status=401, count=5),)
            )
        )
        async with aiohttp.ClientSession() as session:
            with pytest.raises(TokenUnavailable) as caught:
                await auth.send(session, "GET", f"{sbx.url}/2.0/invoices", endpoint="/2.0/invoices")
        leak_scan.exc(caught.value)
        assert token_requests(sbx) == 2
        assert sbx.stats()["requests_by_status"].get("401") == 2

    async def test_insufficient_scope_403_is_never_a_renewal(
        self, sandbox_factory: SandboxFactory, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """A 403 insufficient_scope is returned as is, even with renew_on_status=403."""
        reader = ClientSpec(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, frozenset({"invoices.read"}))
        sbx = leak_scan.sandbox(await sandbox_factory(SandboxConfig(clients=[reader])))
        provider = await provider_factory(oauth_settings(sbx.url, scopes=["invoices.read"]))
        auth = BearerAuth(provider, renew_on_status=frozenset({401, 403}))
        async with aiohttp.ClientSession() as session:
            resp = await auth.send(
                session, "POST", f"{sbx.url}/2.0/invoices", json={"invoice": {}}, endpoint="x"
            )
        assert resp.status == 403
        assert token_requests(sbx) == 1

    async def test_renew_on_403_renews_a_plain_403(
        self, sbx: Sandbox, provider_factory: Any
    ) -> None:
        """With renew_on_status=[401, 403] a plain 403 renews the token and resends once."""
        provider = await provider_factory(oauth_settings(sbx.url))
        auth = BearerAuth(provider, renew_on_status=frozenset({401, 403}))
        await provider.token()
        sbx.set_faults(
            Faults(client_overrides=(ClientOverride(client_id=DEMO_CLIENT_ID, status=403),))
        )
        async with aiohttp.ClientSession() as session:
            resp = await auth.send(session, "GET", f"{sbx.url}/2.0/invoices", endpoint="x")
        assert resp.status == 404
        assert token_requests(sbx) == 2

    async def test_plain_403_without_opt_in_is_returned(
        self, sbx: Sandbox, provider_factory: Any
    ) -> None:
        """By default a 403 is not a renewal: it comes back to the caller."""
        provider = await provider_factory(oauth_settings(sbx.url))
        auth = BearerAuth(provider, renew_on_status=frozenset({401}))
        sbx.set_faults(
            Faults(client_overrides=(ClientOverride(client_id=DEMO_CLIENT_ID, status=403),))
        )
        async with aiohttp.ClientSession() as session:
            resp = await auth.send(session, "GET", f"{sbx.url}/2.0/invoices", endpoint="x")
        assert resp.status == 403
        assert token_requests(sbx) == 1


class TestResponseParsing:
    async def test_non_json_200_is_not_a_token(
        self, token_server: ScriptedTokenServer, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """A proxy's HTML page with 200 is retried, then TokenUnavailable."""
        token_server.respond(
            lambda: web.Response(text="<html>login</html>", content_type="text/html")
        )
        provider = await provider_factory(oauth_settings(token_server.url), sleep=FakeSleep())
        with pytest.raises(TokenUnavailable, match="non_json_200") as caught:
            await provider.token()
        leak_scan.exc(caught.value)
        assert len(token_server.requests) == 3

    async def test_missing_access_token_is_not_a_token(
        self, token_server: ScriptedTokenServer, provider_factory: Any
    ) -> None:
        """A JSON 200 without access_token is an error, never a token."""
        token_server.respond(token_json())
        provider = await provider_factory(oauth_settings(token_server.url), sleep=FakeSleep())
        with pytest.raises(TokenUnavailable, match="no_access_token"):
            await provider.token()
        assert len(token_server.requests) == 3

    @pytest.mark.parametrize("token_type", ["bearer", "BEARER", "Bearer", None])
    async def test_token_type_is_case_insensitive(
        self, token_server: ScriptedTokenServer, provider_factory: Any, token_type: str | None
    ) -> None:
        """bearer in any case (or omitted) is accepted and always sent as Bearer."""
        token_server.respond(token_json(access_token="opaque-value-2", token_type=token_type))
        provider = await provider_factory(oauth_settings(token_server.url))
        token = await provider.token()
        assert token.header().startswith("Bearer ")

    async def test_other_token_type_is_a_configuration_fault(
        self, token_server: ScriptedTokenServer, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """A MAC (or any non-Bearer) token is AuthConfigurationFault, with no retry."""
        token_server.respond(token_json(access_token="opaque-value-3", token_type="mac"))
        leak_scan.secret("opaque-value-3", "access token")
        provider = await provider_factory(oauth_settings(token_server.url))
        with pytest.raises(AuthConfigurationFault, match="mac") as caught:
            await provider.token()
        leak_scan.exc(caught.value)
        assert len(token_server.requests) == 1
        assert provider.fault is not None

    @pytest.mark.parametrize(
        ("raw", "lifetime"),
        [
            (120, 120.0),
            ("120", 120.0),
            (" 90.5 ", 90.5),
            (None, 300.0),
            ("soon", 300.0),
            (-5, 300.0),
            ([], 300.0),
            (True, 300.0),
        ],
    )
    async def test_expires_in_forms(
        self,
        token_server: ScriptedTokenServer,
        provider_factory: Any,
        leak_scan: Leaks,
        raw: Any,
        lifetime: float,
    ) -> None:
        """expires_in as number or numeric string; missing or garbage means the default."""
        fields: dict[str, Any] = {"access_token": "opaque-value-4"}
        body = {"token_type": "Bearer", **fields}
        if raw is not None:
            body["expires_in"] = raw
        token_server.respond(lambda: web.json_response(body))
        clock = FakeClock()
        provider = await provider_factory(
            oauth_settings(token_server.url, default_lifetime_s=300.0), clock=clock
        )
        token = await provider.token()
        assert token.expires_at - 1000.0 == pytest.approx(lifetime)
        warned = bool(leak_scan.lines("token.expires_in_unusable"))
        assert warned is (lifetime == 300.0)

    async def test_missing_scope_means_requested(
        self, token_server: ScriptedTokenServer, provider_factory: Any
    ) -> None:
        """An omitted scope is the requested one (RFC 6749 section 5.1)."""
        token_server.respond(token_json(access_token="opaque-value-5"))
        provider = await provider_factory(oauth_settings(token_server.url, scopes=["a.read"]))
        assert (await provider.token()).scopes == frozenset({"a.read"})

    async def test_narrower_granted_scope_stops_with_missing_list(
        self, token_server: ScriptedTokenServer, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """A grant lacking required scopes raises InsufficientScope naming the missing ones."""
        token_server.respond(token_json(access_token="opaque-value-6", scope="a.read"))
        settings = oauth_settings(token_server.url, scopes=["a.read", "b.write", "c.write"])
        provider = await provider_factory(settings)
        with pytest.raises(InsufficientScope, match=r"missing: b\.write c\.write") as caught:
            await provider.token()
        leak_scan.exc(caught.value)
        assert caught.value.details["missing_scopes"] == ["b.write", "c.write"]
        assert provider.fault is not None
        assert "b.write" in leak_scan.stream.getvalue()

    async def test_skew_is_at_most_half_the_lifetime(
        self, token_server: ScriptedTokenServer, provider_factory: Any
    ) -> None:
        """With a 10 s token and 60 s skew, renewal starts at 5 s, not before issue."""
        token_server.respond(token_json(access_token="opaque-value-7", expires_in=10))
        clock = FakeClock()
        provider = await provider_factory(oauth_settings(token_server.url), clock=clock)
        token = await provider.token()
        assert token.renew_at == 1005.0
        assert token.usable_until == 1007.5
        assert token.expires_at == 1010.0

    async def test_jwt_exp_disagreement_is_a_warning_only(
        self, token_server: ScriptedTokenServer, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """A JWT whose exp disagrees with expires_in logs a warning; expires_in wins."""

        def b64(doc: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

        jwt = f"{b64({'alg': 'none'})}.{b64({'exp': int(time.time()) + 99999})}.sig"
        leak_scan.secret(jwt, "jwt access token")
        token_server.respond(token_json(access_token=jwt, expires_in=600))
        clock = FakeClock()
        provider = await provider_factory(oauth_settings(token_server.url), clock=clock)
        token = await provider.token()
        assert token.expires_at == 1600.0
        (warning,) = leak_scan.lines("token.jwt_exp_disagrees")
        assert warning["trusted"] == "expires_in"

    async def test_fault_clears_after_success(
        self, token_server: ScriptedTokenServer, provider_factory: Any
    ) -> None:
        """provider.fault is set by a refusal and cleared by the next successful fetch (the
        first probe once the fault's backoff has passed)."""
        refusal = web.json_response({"error": "invalid_scope"}, status=400)
        token_server.respond(lambda: refusal, token_json(access_token="opaque-value-8"))
        clock = FakeClock()
        settings = oauth_settings(token_server.url)
        provider = await provider_factory(settings, clock=clock)
        with pytest.raises(AuthConfigurationFault):
            await provider.token()
        assert provider.fault is not None
        clock.advance(settings.backoff_max_s)
        await provider.token()
        assert provider.fault is None
        assert len(token_server.requests) == 2


class TestConfigurationFaults:
    async def test_wrong_secret_is_invalid_client(
        self, sbx: Sandbox, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """A wrong secret gives AuthConfigurationFault(invalid_client) after one request."""
        wrong = "wrong-secret-value-123"
        leak_scan.secret(wrong, "wrong client secret")
        provider = await provider_factory(oauth_settings(sbx.url, client_secret=wrong))
        before = metric(
            "invoice_sync_token_fetches_total", grant="client_credentials", outcome="config_error"
        )
        with pytest.raises(AuthConfigurationFault) as caught:
            await provider.token()
        leak_scan.exc(caught.value)
        details = caught.value.details
        assert details["oauth_error"] == "invalid_client"
        assert details["status"] == 401
        assert details["error_description"] == "client authentication failed"
        assert "invoices.write" in str(details["scope"])
        assert token_requests(sbx) == 1
        assert provider.fault is not None
        assert not provider.token_obtainable
        logged = leak_scan.stream.getvalue()
        assert "invalid_client" in logged
        assert "client authentication failed" in logged
        after = metric(
            "invoice_sync_token_fetches_total", grant="client_credentials", outcome="config_error"
        )
        assert after - before == 1

    async def test_unknown_scope_is_invalid_scope(
        self, sandbox_factory: SandboxFactory, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """Asking for a scope the client lacks gives AuthConfigurationFault(invalid_scope)."""
        reader = ClientSpec(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, frozenset({"invoices.read"}))
        sbx = leak_scan.sandbox(await sandbox_factory(SandboxConfig(clients=[reader])))
        provider = await provider_factory(oauth_settings(sbx.url))
        with pytest.raises(AuthConfigurationFault, match="invalid_scope") as caught:
            await provider.token()
        assert caught.value.details["status"] == 400
        assert token_requests(sbx) == 1

    async def test_unsupported_grant_type(
        self, token_server: ScriptedTokenServer, provider_factory: Any
    ) -> None:
        """unsupported_grant_type is a configuration fault with no retry."""
        body = {"error": "unsupported_grant_type", "error_description": "nope"}
        token_server.respond(lambda: web.json_response(body, status=400))
        provider = await provider_factory(oauth_settings(token_server.url))
        with pytest.raises(AuthConfigurationFault, match="unsupported_grant_type"):
            await provider.token()
        assert len(token_server.requests) == 1

    async def test_redirect_is_not_followed(
        self, token_server: ScriptedTokenServer, sbx: Sandbox, provider_factory: Any
    ) -> None:
        """A 302 from the token endpoint is an error; the credentials never reach the target."""
        location = f"{sbx.url}/oauth/token"
        token_server.respond(lambda: web.Response(status=302, headers={"Location": location}))
        provider = await provider_factory(oauth_settings(token_server.url))
        with pytest.raises(AuthConfigurationFault, match="redirect"):
            await provider.token()
        assert token_requests(sbx) == 0
        assert len(token_server.requests) == 1


class TestTransientFailures:
    async def test_outage_backoff_is_bounded_with_full_jitter(
        self, sbx: Sandbox, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """A 503 HTML outage is retried max_attempts times with full-jitter delays."""
        sbx.set_faults(Faults(token_outage=True))
        sleep = FakeSleep()
        settings = oauth_settings(sbx.url, max_attempts=4, backoff_base_s=1.0, backoff_max_s=3.0)
        provider = await provider_factory(settings, sleep=sleep, rng=random.Random(7))
        with pytest.raises(TokenUnavailable) as caught:
            await provider.token()
        leak_scan.exc(caught.value)
        assert len(sbx.stats()["token_request_times"]) == 4
        expected_rng = random.Random(7)
        assert sleep.delays == [expected_rng.uniform(0, c) for c in (1.0, 2.0, 3.0)]
        assert caught.value.details["status"] == 503

    async def test_outage_then_recovery(self, sbx: Sandbox, provider_factory: Any) -> None:
        """Two 5xx HTML pages then recovery: the third attempt gets the token."""
        sbx.set_faults(Faults(token_outage=True))
        sleep = FakeSleep()
        sleep.hooks.append(lambda n: sbx.set_faults(Faults()) if n == 2 else None)
        provider = await provider_factory(oauth_settings(sbx.url, max_attempts=5), sleep=sleep)
        token = await provider.token()
        assert token.generation == 1
        assert len(sbx.stats()["token_request_times"]) == 3
        assert provider.fault is None
        assert provider.token_obtainable

    async def test_retry_after_is_honoured_but_capped(
        self, sbx: Sandbox, provider_factory: Any
    ) -> None:
        """429 with Retry-After: 30 waits the cap (0.2 s) between real attempts."""
        rule = FaultRule(target="token", error_rates={429: 1.0}, retry_after=30)
        sbx.set_faults(Faults(rules=(rule,)))
        provider = await provider_factory(oauth_settings(sbx.url, max_attempts=3))
        with pytest.raises(TokenUnavailable, match="http_429"):
            await provider.token()
        times = sbx.stats()["token_request_times"]
        assert len(times) == 3
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= 0.19 for gap in gaps)  # waited at least the capped Retry-After

    async def test_retry_after_cap_with_fake_sleep(
        self, sbx: Sandbox, provider_factory: Any
    ) -> None:
        """The capped Retry-After is exactly what the backoff sleeps."""
        rule = FaultRule(target="token", error_rates={429: 1.0}, retry_after=30)
        sbx.set_faults(Faults(rules=(rule,)))
        sleep = FakeSleep()
        provider = await provider_factory(oauth_settings(sbx.url, max_attempts=3), sleep=sleep)
        with pytest.raises(TokenUnavailable):
            await provider.token()
        assert sleep.delays == [0.2, 0.2]

    async def test_timeout_is_transient(self, sbx: Sandbox, provider_factory: Any) -> None:
        """A token endpoint slower than timeout_s is retried, then TokenUnavailable(timeout)."""
        sbx.set_faults(Faults(rules=(FaultRule(target="token", latency_ms=1000),)))
        settings = oauth_settings(sbx.url, timeout_s=0.1, max_attempts=2)
        provider = await provider_factory(settings, sleep=FakeSleep())
        with pytest.raises(TokenUnavailable, match="timeout"):
            await provider.token()

    async def test_connection_refused_is_transient(self, provider_factory: Any) -> None:
        """Nobody listening: bounded attempts, then TokenUnavailable."""
        with socket_port() as port:
            pass
        settings = oauth_settings(f"http://127.0.0.1:{port}", max_attempts=2)
        provider = await provider_factory(settings, sleep=FakeSleep())
        with pytest.raises(TokenUnavailable, match="ClientConnectorError"):
            await provider.token()

    async def test_valid_token_is_used_while_renewal_fails(
        self, sbx: Sandbox, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """Past renew_at during an outage, callers keep the cached token; past usable_until
        they get TokenUnavailable."""
        clock = FakeClock()
        provider = await provider_factory(oauth_settings(sbx.url), clock=clock, sleep=FakeSleep())
        token = await provider.token()
        sbx.set_faults(Faults(token_outage=True))
        clock.now = token.renew_at + 1
        assert await provider.token() is token  # kicks a background renewal
        for _ in range(50):
            await asyncio.sleep(0.01)
            if leak_scan.lines("token.renewal_failed_using_cached"):
                break
        assert leak_scan.lines("token.renewal_failed_using_cached")
        assert await provider.token() is token
        assert provider.token_obtainable
        clock.now = token.usable_until + 0.001
        with pytest.raises(TokenUnavailable):
            await provider.token()


class socket_port:
    """A loopback port that was free a moment ago (the socket closes on exit)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


async def _refresh_token_sandbox(sandbox_factory: SandboxFactory, leak_scan: Leaks) -> Sandbox:
    """A sandbox whose demo client is issued refresh tokens, watched by the leak scan."""
    spec = ClientSpec(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, ALL_SCOPES, refresh_tokens=True)
    return leak_scan.sandbox(await sandbox_factory(SandboxConfig(clients=[spec])))


class TestRefreshTokens:
    @staticmethod
    async def _first_refresh_token(sbx: Sandbox) -> str:
        async with aiohttp.ClientSession() as session:
            form = {
                "grant_type": "client_credentials",
                "client_id": DEMO_CLIENT_ID,
                "client_secret": DEMO_CLIENT_SECRET,
            }
            async with session.post(f"{sbx.url}/oauth/token", data=form) as resp:
                body = await resp.json()
        value = body["refresh_token"]
        assert isinstance(value, str)
        return value

    async def test_client_credentials_ignores_returned_refresh_token(
        self, sandbox_factory: SandboxFactory, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """With the client-credentials grant a returned refresh token is never used."""
        sbx = await _refresh_token_sandbox(sandbox_factory, leak_scan)
        provider = await provider_factory(oauth_settings(sbx.url))
        first = await provider.token()
        provider.invalidate(first)
        await provider.token()
        assert sbx.stats()["token_requests"] == {"client_credentials": 2}

    async def test_rotation_uses_each_refresh_token_once(
        self, sandbox_factory: SandboxFactory, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """Each refresh spends the newest refresh token; reusing an old one would fail."""
        sbx = await _refresh_token_sandbox(sandbox_factory, leak_scan)
        initial = await self._first_refresh_token(sbx)
        provider = await provider_factory(oauth_settings(sbx.url, refresh_token=initial))
        assert provider.grant == "refresh_token"
        for _ in range(3):
            token = await provider.token()
            provider.invalidate(token)
        await provider.token()
        stats = sbx.stats()
        assert stats["token_requests"] == {"client_credentials": 1, "refresh_token": 4}
        assert "invalid_grant" not in stats["token_errors"]

    async def test_refresh_token_only_goes_to_the_token_endpoint(
        self, sandbox_factory: SandboxFactory, leak_scan: Leaks
    ) -> None:
        """API requests carry the access token only; no refresh token in any header or URL."""
        sbx = await _refresh_token_sandbox(sandbox_factory, leak_scan)
        initial = await self._first_refresh_token(sbx)
        seen: list[str] = []

        async def on_start(_s: Any, _c: Any, params: aiohttp.TraceRequestStartParams) -> None:
            seen.append(str(params.url) + " " + " ".join(params.headers.values()))

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_start)
        settings = Settings(
            api=ApiSettings(base_url=sbx.url),
            oauth=oauth_settings(sbx.url, refresh_token=initial),
        )
        async with (
            aiohttp.ClientSession(trace_configs=[trace]) as session,
            build_auth(settings) as auth,
            AccountingApi(settings.api, auth=auth, session=session) as api,
        ):
            assert await api.find_invoice("INV-none") is None
            assert await api.find_product("SKU-none") is None
        assert len(seen) == 2
        assert not any("sbx_rt_" in s for s in seen)

    async def test_spent_refresh_token_is_invalid_grant(
        self, sandbox_factory: SandboxFactory, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """invalid_grant from the refresh grant is a configuration fault, not retried."""
        sbx = await _refresh_token_sandbox(sandbox_factory, leak_scan)
        initial = await self._first_refresh_token(sbx)
        first = await provider_factory(oauth_settings(sbx.url, refresh_token=initial))
        await first.token()  # spends `initial`
        second = await provider_factory(oauth_settings(sbx.url, refresh_token=initial))
        with pytest.raises(AuthConfigurationFault, match="invalid_grant") as caught:
            await second.token()
        leak_scan.exc(caught.value)
        assert caught.value.details["oauth_error"] == "invalid_grant"
        assert sbx.stats()["token_errors"] == {"invalid_grant": 1}


def _encoded_forms(value: str) -> set[str]:
    """Every shape a credential can travel or be echoed in (the leak scan looks for each)."""
    shapes = {value, quote_plus(value), quote(value, safe=""), quote(value)}
    return shapes | {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), s) for s in shapes}


_ODD_SECRET = "p@ss w/rd+&=LEAKSECRET"
_ODD_REFRESH = "rt/odd+value&=LEAKREFRESH"


@pytest.fixture
async def echo_server(leak_scan: Leaks) -> AsyncIterator[dict[str, str]]:
    """A token endpoint that refuses every request and echoes the credentials it saw in
    ``error_description``, in the shape ``state["echo"]`` names: the Basic pair as decoded
    without URL-decoding ("as_sent"), the secret or refresh token URL-decoded ("decoded"),
    ``quote()``d ("quote") or with lower-case percent escapes ("lower_hex")."""
    state = {"url": "", "echo": "as_sent"}

    async def handle(request: web.Request) -> web.Response:
        raw = (await request.read()).decode()
        auth = request.headers.get("Authorization", "")
        form = dict(pair.split("=", 1) for pair in raw.split("&"))
        if auth.startswith("Basic "):
            seen = base64.b64decode(auth.removeprefix("Basic ")).decode()
        else:
            seen = f"{form.get('client_id', '')}:{form.get('client_secret', '')}"
        if "refresh_token" in form:
            seen = form["refresh_token"]
        plain = unquote_plus(seen)
        shown = {
            "as_sent": seen,
            "decoded": plain,
            "quote": quote(plain, safe=""),
            "lower_hex": re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), seen),
        }[state["echo"]]
        body = {"error": "invalid_client", "error_description": f"unknown client {shown}"}
        return web.json_response(body, status=401)

    app = web.Application()
    app.router.add_post("/oauth/token", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield state
    finally:
        await runner.cleanup()


class TestSecretEncodings:
    @pytest.mark.parametrize("echo", ["as_sent", "decoded", "quote", "lower_hex"])
    @pytest.mark.parametrize(
        ("method", "refresh"),
        [
            ("client_secret_basic", None),
            ("client_secret_post", None),
            ("client_secret_basic", _ODD_REFRESH),
        ],
        ids=["basic", "post", "refresh_grant"],
    )
    async def test_echoed_credentials_are_redacted_in_every_encoding(
        self,
        echo_server: dict[str, str],
        provider_factory: Any,
        leak_scan: Leaks,
        echo: str,
        method: str,
        refresh: str | None,
    ) -> None:
        """A token endpoint echoing the client secret or refresh token (form-encoded, decoded,
        quote()d, lower-case hex) leaks it into no log line, exception message or repr."""
        echo_server["echo"] = echo
        for value in (_ODD_SECRET, f"{DEMO_CLIENT_ID}:{_ODD_SECRET}", _ODD_REFRESH):
            for shape in _encoded_forms(value):
                leak_scan.secret(shape, "client secret or refresh token, encoded")
        settings = oauth_settings(
            echo_server["url"], client_secret=_ODD_SECRET, auth_method=method, refresh_token=refresh
        )
        provider = await provider_factory(settings)
        with pytest.raises(AuthConfigurationFault) as caught:
            await provider.token()
        leak_scan.exc(caught.value)
        # The echo did arrive, and was cut out (else the scan below proves nothing).
        assert "unknown client [redacted]" in str(caught.value)
        (refusal,) = leak_scan.lines("token.configuration_refused")
        assert "unknown client [redacted]" in json.dumps(refusal)


class TestFaultMemory:
    @staticmethod
    async def _refusing(
        sandbox_factory: SandboxFactory, leak_scan: Leaks, kind: str
    ) -> tuple[Sandbox, OAuthSettings]:
        """A sandbox and settings it refuses with ``kind`` (invalid_client or invalid_grant)."""
        sbx = await _refresh_token_sandbox(sandbox_factory, leak_scan)
        if kind == "invalid_client":
            return sbx, oauth_settings(sbx.url, client_secret="wrong-secret-value-123")
        spent = await TestRefreshTokens._first_refresh_token(sbx)
        async with aiohttp.ClientSession() as session:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": spent,
                "client_id": DEMO_CLIENT_ID,
                "client_secret": DEMO_CLIENT_SECRET,
            }
            async with session.post(f"{sbx.url}/oauth/token", data=form) as resp:
                assert resp.status == 200
        return sbx, oauth_settings(sbx.url, refresh_token=spent)

    @pytest.mark.parametrize("kind", ["invalid_client", "invalid_grant"])
    async def test_token_requests_do_not_grow_with_waiting_callers(
        self,
        sandbox_factory: SandboxFactory,
        provider_factory: Any,
        leak_scan: Leaks,
        kind: str,
    ) -> None:
        """During a refusal, 1 or 20 concurrent callers, asking again and again, cause the
        same requests: one per probe. Waiters get the remembered fault; one ERROR per probe."""
        leak_scan.secret("wrong-secret-value-123", "wrong client secret")
        seen: dict[int, tuple[int, int]] = {}
        for waiters in (1, 20):
            sbx, settings = await self._refusing(sandbox_factory, leak_scan, kind)
            grant = "client_credentials" if kind == "invalid_client" else "refresh_token"
            before = token_requests(sbx, grant)
            clock = FakeClock()
            provider = await provider_factory(settings, clock=clock)
            logged_before = len(leak_scan.lines("token.configuration_refused"))
            for probe in range(3):
                for _ in range(3):  # each caller retrying at its own moment, as events do
                    for _ in range(waiters):
                        with pytest.raises(AuthConfigurationFault, match=kind):
                            await provider.token()
                results = await asyncio.gather(  # and all of them at once
                    *(provider.token() for _ in range(waiters)), return_exceptions=True
                )
                assert all(isinstance(r, AuthConfigurationFault) for r in results)
                assert provider.fault is not None
                if probe < 2:
                    clock.advance(settings.backoff_max_s)  # the longest hold has passed
            logged = len(leak_scan.lines("token.configuration_refused"))
            seen[waiters] = (token_requests(sbx, grant) - before, logged - logged_before)
        assert seen[1] == seen[20] == (3, 3)

    async def test_probes_back_off_growing_bounded_and_jittered(
        self, sandbox_factory: SandboxFactory, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """The hold before each probe is U(ceiling / 2, ceiling), the ceiling doubling from
        backoff_base_s up to backoff_max_s; no request goes out before it ends."""
        sbx, _ = await self._refusing(sandbox_factory, leak_scan, "invalid_client")
        leak_scan.secret("wrong-secret-value-123", "wrong client secret")
        settings = oauth_settings(
            sbx.url, client_secret="wrong-secret-value-123", backoff_base_s=1.0, backoff_max_s=4.0
        )
        clock = FakeClock()
        provider = await provider_factory(settings, clock=clock, rng=random.Random(11))
        expected = random.Random(11)
        with pytest.raises(AuthConfigurationFault):
            await provider.token()
        for requests, ceiling in enumerate((1.0, 2.0, 4.0, 4.0), start=1):
            hold = ceiling / 2 + expected.uniform(0, ceiling / 2)
            clock.advance(hold - 0.01)
            with pytest.raises(AuthConfigurationFault):
                await provider.token()
            assert token_requests(sbx) == requests  # still held: no request
            clock.advance(0.02)
            with pytest.raises(AuthConfigurationFault):
                await provider.token()
            assert token_requests(sbx) == requests + 1  # the probe
        holds = re.findall(r'"next_probe_in_s": ?([0-9.]+)', leak_scan.stream.getvalue())
        assert len(holds) == 5

    async def test_success_after_a_probe_clears_the_fault(
        self, token_server: ScriptedTokenServer, provider_factory: Any, leak_scan: Leaks
    ) -> None:
        """A fixed configuration is picked up by the next probe; the memory is cleared."""

        def refusal() -> web.Response:
            return web.json_response({"error": "invalid_client"}, status=401)

        token_server.respond(refusal, refusal, token_json(access_token="v-123456"))
        clock = FakeClock()
        settings = oauth_settings(token_server.url)
        provider = await provider_factory(settings, clock=clock)
        for _ in range(2):
            with pytest.raises(AuthConfigurationFault):
                await provider.token()
            clock.advance(settings.backoff_max_s)
        assert (await provider.token()).generation == 1
        assert provider.fault is None
        assert provider.token_obtainable
        assert len(token_server.requests) == 3
        assert leak_scan.lines("token.endpoint_recovered")


class TestRefreshTokenFile:
    async def test_rotated_token_survives_a_restart(
        self,
        sandbox_factory: SandboxFactory,
        provider_factory: Any,
        leak_scan: Leaks,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Rotation writes the new refresh token to the file it came from (0600, atomic); a
        second provider started from that file gets a token, and no grant is revoked."""
        sbx = await _refresh_token_sandbox(sandbox_factory, leak_scan)
        initial = await TestRefreshTokens._first_refresh_token(sbx)
        path = tmp_path / "refresh-token"
        path.write_text(initial + "\n")
        path.chmod(0o644)
        monkeypatch.setenv("INVOICE_SYNC_OAUTH__TOKEN_URL", f"{sbx.url}/oauth/token")
        monkeypatch.setenv("INVOICE_SYNC_OAUTH__REFRESH_TOKEN_FILE", str(path))

        def from_env() -> OAuthSettings:
            oauth = load_settings().oauth
            assert oauth.refresh_token_file == str(path)
            return oauth

        first = await provider_factory(from_env())
        await first.token()
        held = path.read_text().strip()
        rotated = held != initial and held.startswith("sbx_rt_")
        assert rotated  # a boolean: a failing comparison would print the tokens
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert os.listdir(tmp_path) == ["refresh-token"]  # no temp file left
        await first.close()

        second = await provider_factory(from_env())  # the restart
        assert (await second.token()).generation == 1
        stats = sbx.stats()
        assert stats["token_errors"] == {}
        assert stats["token_requests"] == {"client_credentials": 1, "refresh_token": 2}
        rotated_again = path.read_text().strip() not in (initial, held)
        assert rotated_again
        assert len(leak_scan.lines("refresh_token.written")) == 2
        assert not leak_scan.lines("refresh_token.kept_in_memory_only")

    async def test_secrets_dir_file_is_found_and_a_winning_variable_is_not_overwritten(
        self,
        sandbox_factory: SandboxFactory,
        provider_factory: Any,
        leak_scan: Leaks,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """oauth__refresh_token in INVOICE_SYNC_SECRETS_DIR names its file; when
        INVOICE_SYNC_OAUTH__REFRESH_TOKEN wins over it, the file (another token) is left
        alone with one warning."""
        sbx = await _refresh_token_sandbox(sandbox_factory, leak_scan)
        in_file = await TestRefreshTokens._first_refresh_token(sbx)
        in_env = await TestRefreshTokens._first_refresh_token(sbx)
        path = tmp_path / "oauth__refresh_token"
        path.write_text(in_file)
        monkeypatch.setenv("INVOICE_SYNC_SECRETS_DIR", str(tmp_path))
        monkeypatch.setenv("INVOICE_SYNC_OAUTH__TOKEN_URL", f"{sbx.url}/oauth/token")
        assert load_settings().oauth.refresh_token_file == str(path)
        monkeypatch.setenv("INVOICE_SYNC_OAUTH__REFRESH_TOKEN", in_env)
        settings = load_settings().oauth
        provider = await provider_factory(settings)
        await provider.token()
        kept = path.read_text() == in_file
        assert kept
        (warning,) = leak_scan.lines("refresh_token.kept_in_memory_only")
        assert "holds another token" in warning["problem"]

    async def test_unwritable_file_warns_once_at_start(
        self,
        sandbox_factory: SandboxFactory,
        provider_factory: Any,
        leak_scan: Leaks,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A refresh-token file in a read-only folder (a Secret mount) gives one WARNING at
        start-up, naming no value; the file is left alone and the grant still works."""
        sbx = await _refresh_token_sandbox(sandbox_factory, leak_scan)
        initial = await TestRefreshTokens._first_refresh_token(sbx)
        path = tmp_path / "oauth__refresh_token"
        path.write_text(initial)
        real_access = os.access
        # Root may write anywhere, so the read-only mount is simulated for this folder.
        monkeypatch.setattr(
            "worker.auth.os.access",
            lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode),
        )
        settings = oauth_settings(sbx.url, refresh_token=initial, refresh_token_file=str(path))
        provider = await provider_factory(settings)
        for _ in range(3):
            provider.invalidate(await provider.token())
        kept = path.read_text() == initial
        assert kept
        warnings = leak_scan.lines("refresh_token.kept_in_memory_only")
        assert len(warnings) == 1
        assert warnings[0]["level"] == "warning"
        assert "not writable" in warnings[0]["problem"]


class TestMetricsAndShutdown:
    async def test_fetch_metrics_and_expiry_gauge(
        self, sbx: Sandbox, provider_factory: Any
    ) -> None:
        """A fetch counts success by grant, observes latency, and sets the expiry gauge."""
        before = metric(
            "invoice_sync_token_fetches_total", grant="client_credentials", outcome="success"
        )
        latency = metric(
            "invoice_sync_token_fetch_duration_seconds_count", grant="client_credentials"
        )
        clock = FakeClock()
        provider = await provider_factory(oauth_settings(sbx.url), clock=clock)
        await provider.token()
        assert (
            metric(
                "invoice_sync_token_fetches_total", grant="client_credentials", outcome="success"
            )
            - before
            == 1
        )
        assert (
            metric("invoice_sync_token_fetch_duration_seconds_count", grant="client_credentials")
            - latency
            == 1
        )
        assert metric("invoice_sync_token_expiry_seconds") == 3600.0
        clock.advance(100)
        assert metric("invoice_sync_token_expiry_seconds") == 3500.0
        await provider.close()
        assert metric("invoice_sync_token_expiry_seconds") == 0.0

    async def test_revoke_on_shutdown(self, sbx: Sandbox, leak_scan: Leaks) -> None:
        """With revoke_on_shutdown the live token is revoked (RFC 7009) by close()."""
        settings = oauth_settings(
            sbx.url, revoke_url=f"{sbx.url}/oauth/revoke", revoke_on_shutdown=True
        )
        async with ClientCredentialsProvider(settings) as provider:
            token = await provider.token()
        assert sbx.stats()["revocations"] == 1
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": token.header()}
            async with session.get(f"{sbx.url}/2.0/invoices", headers=headers) as resp:
                assert resp.status == 401

    async def test_no_revoke_by_default(self, sbx: Sandbox) -> None:
        """Without revoke_on_shutdown the token is left alone."""
        async with ClientCredentialsProvider(oauth_settings(sbx.url)) as provider:
            await provider.token()
        assert sbx.stats()["revocations"] == 0


class TestApiKeyAuth:
    async def test_api_key_mode_works_and_leaks_nothing(
        self, sandbox_factory: SandboxFactory, leak_scan: Leaks
    ) -> None:
        """auth_mode=api_key sends API-KEY; no token request is ever made."""
        key = "qoyod-api-key-1234567890"
        sbx = leak_scan.sandbox(await sandbox_factory(SandboxConfig(api_keys={key: ALL_SCOPES})))
        settings = Settings(api=ApiSettings(base_url=sbx.url, auth_mode="api_key", api_key=key))
        async with build_auth(settings) as auth, AccountingApi(settings.api, auth=auth) as api:
            assert isinstance(auth, ApiKeyAuth)
            leak_scan.text("auth repr", repr(auth))
            assert await api.find_customer(email="nobody@example.com") is None
            made = await api.create_customer({"name": "Key Co"}, idempotency_key="k-1")
            assert made["id"] >= 1
            assert auth.fault is None
            assert auth.token_obtainable
        assert sbx.stats()["token_requests"] == {}

    async def test_wrong_api_key_is_a_configuration_fault(
        self, sandbox_factory: SandboxFactory, leak_scan: Leaks
    ) -> None:
        """A rejected API key raises AuthConfigurationFault and marks the auth faulty."""
        good, bad = "qoyod-api-key-good-000", "qoyod-api-key-bad-0000"
        leak_scan.secret(bad, "wrong api key")
        sbx = leak_scan.sandbox(await sandbox_factory(SandboxConfig(api_keys={good: ALL_SCOPES})))
        settings = Settings(api=ApiSettings(base_url=sbx.url, auth_mode="api_key", api_key=bad))
        async with build_auth(settings) as auth, AccountingApi(settings.api, auth=auth) as api:
            with pytest.raises(AuthConfigurationFault) as caught:
                await api.find_invoice("INV-1")
            leak_scan.exc(caught.value)
            assert auth.fault is not None
            assert not auth.token_obtainable
