"""worker.api: the accounting-API client against the sandbox over real HTTP.

Runs under the same autouse leak scan as tests/test_auth.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web

from tests.plugins.logs import undotted_events
from tests.plugins.sandbox import SandboxFactory
from tests.test_auth import Leaks, leak_scan_fixture, metric, oauth_settings, socket_port  # noqa: F401 - autouse
from worker.api import AccountingApi
from worker.auth import build_auth
from worker.errors import (
    ApiOutage,
    ApiRejected,
    ApiTimeout,
    ApiUnavailable,
    ConfigurationFault,
    ConnectionFailed,
    DuplicateReference,
    InsufficientScope,
    RateLimited,
    TransientError,
)
from worker.sandbox import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    ClientSpec,
    FaultRule,
    Faults,
    Sandbox,
    SandboxConfig,
)
from worker.settings import ApiSettings, Settings

ApiFactory = Callable[..., Awaitable[AccountingApi]]


def settings_for(url: str, **api: Any) -> Settings:
    return Settings(
        api=ApiSettings(base_url=url, **api),
        oauth=oauth_settings(url, max_attempts=2),
    )


@pytest.fixture
async def api_factory() -> AsyncIterator[ApiFactory]:
    """``await api_factory(sbx_or_url, scopes=..., **api_settings)``; closes all at teardown."""
    async with AsyncExitStack() as stack:

        async def make(url: str, *, scopes: list[str] | None = None, **api: Any) -> AccountingApi:
            settings = settings_for(url, **api)
            if scopes is not None:
                settings = Settings(
                    api=settings.api, oauth=oauth_settings(url, scopes=scopes, max_attempts=2)
                )
            auth = await stack.enter_async_context(build_auth(settings))
            return await stack.enter_async_context(AccountingApi(settings.api, auth=auth))

        yield make


@pytest.fixture
async def sbx(sandbox_factory: SandboxFactory, leak_scan: Leaks) -> Sandbox:
    return leak_scan.sandbox(await sandbox_factory(SandboxConfig()))


@pytest.fixture
async def api(sbx: Sandbox, api_factory: ApiFactory) -> AccountingApi:
    return await api_factory(sbx.url)


async def _invoice_payload(api: AccountingApi, reference: str) -> dict[str, Any]:
    contact = await api.create_customer(
        {"name": "Buyer Co", "tax_number": "300000000000003"}, idempotency_key=f"c-{reference}"
    )
    product = await api.create_product(
        {"sku": f"SKU-{reference}", "name": "Widget", "type": "Product", "selling_price": "10.00"},
        idempotency_key=f"p-{reference}",
    )
    return {
        "contact_id": contact["id"],
        "reference": reference,
        "issue_date": "2026-01-15",
        "due_date": "2026-01-15",
        "status": "Approved",
        "inventory_id": 1,
        "line_items": [
            {
                "product_id": product["id"],
                "quantity": Decimal("2"),
                "unit_price": Decimal("10.00"),
                "tax_percent": "15",
            }
        ],
    }


class TestLookupsAndCreates:
    async def test_customer_search_create_find(self, api: AccountingApi) -> None:
        """A missing customer is None (404); after create, each key finds it."""
        assert await api.find_customer(tax_number="300000000000003") is None
        made = await api.create_customer(
            {
                "name": "Buyer Co",
                "email": "buyer@example.com",
                "phone_number": "+966500000000",
                "tax_number": "300000000000003",
            },
            idempotency_key="cust-1",
        )
        assert made["id"] == 1
        assert (await api.find_customer(tax_number="300000000000003")) == made
        assert (await api.find_customer(email="buyer@example.com")) == made
        assert (await api.find_customer(phone="+966500000000")) == made

    async def test_find_customer_needs_a_key(self, api: AccountingApi) -> None:
        """Calling find_customer with no key is a programming error."""
        with pytest.raises(ValueError, match="tax_number"):
            await api.find_customer()

    async def test_product_search_create_find(self, api: AccountingApi) -> None:
        """find_product is None until the SKU is created."""
        assert await api.find_product("SKU-1") is None
        made = await api.create_product(
            {"sku": "SKU-1", "name": "Widget", "type": "Product", "selling_price": Decimal("9.5")},
            idempotency_key="prod-1",
        )
        assert made["selling_price"] == "9.50"
        assert (await api.find_product("SKU-1")) == made

    async def test_invoice_create_find_get(self, api: AccountingApi) -> None:
        """An invoice with Decimal amounts is created, found by reference and fetched by id."""
        payload = await _invoice_payload(api, "INV-1001")
        made = await api.create_invoice(payload, idempotency_key="inv-1001")
        assert made["reference"] == "INV-1001"
        assert made["total"] == "23.00"
        assert (await api.find_invoice("INV-1001"))["id"] == made["id"]  # type: ignore[index]
        assert (await api.get_invoice(made["id"]))["id"] == made["id"]  # type: ignore[index]
        assert await api.get_invoice(999_999) is None
        assert await api.find_invoice("INV-none") is None

    async def test_idempotency_key_replays(self, api: AccountingApi, sbx: Sandbox) -> None:
        """Resending a create with the same Idempotency-Key returns the same document."""
        payload = await _invoice_payload(api, "INV-2001")
        first = await api.create_invoice(payload, idempotency_key="inv-2001")
        second = await api.create_invoice(payload, idempotency_key="inv-2001")
        assert first == second
        assert sbx.stats()["invoices"] == 1
        assert sbx.stats()["idempotent_replays"] == 1

    async def test_credit_note_create_find(self, api: AccountingApi) -> None:
        """A credit note against an invoice is created and found by reference."""
        payload = await _invoice_payload(api, "INV-3001")
        invoice = await api.create_invoice(payload, idempotency_key="inv-3001")
        note = {
            "contact_id": payload["contact_id"],
            "reference": "CN-3001",
            "issue_date": "2026-01-16",
            "parent_id": invoice["id"],
            "reason": "returned",
            "status": "Approved",
            "inventory_id": 1,
            "line_items": payload["line_items"],
        }
        made = await api.create_credit_note(note, idempotency_key="cn-3001")
        assert made["reference"] == "CN-3001"
        assert (await api.find_credit_note("CN-3001"))["id"] == made["id"]  # type: ignore[index]
        assert await api.find_credit_note("CN-none") is None


class TestErrorMapping:
    async def test_duplicate_reference(self, api: AccountingApi, leak_scan: Leaks) -> None:
        """A second invoice with a taken reference (new key) raises DuplicateReference."""
        payload = await _invoice_payload(api, "INV-4001")
        await api.create_invoice(payload, idempotency_key="inv-4001-a")
        with pytest.raises(DuplicateReference) as caught:
            await api.create_invoice(payload, idempotency_key="inv-4001-b")
        leak_scan.exc(caught.value)

    async def test_validation_error_is_rejected_with_summary(
        self, api: AccountingApi, leak_scan: Leaks
    ) -> None:
        """Other 422s raise ApiRejected whose message summarizes fields and messages."""
        with pytest.raises(ApiRejected) as caught:
            await api.create_invoice({"reference": "INV-bad"}, idempotency_key="bad-1")
        leak_scan.exc(caught.value)
        assert "contact_id: can't be blank" in caught.value.message
        assert len(caught.value.message) < 400
        assert "contact_id" in caught.value.details["fields"]  # type: ignore[operator]
        assert caught.value.details["status"] == 422

    async def test_insufficient_scope(
        self, sandbox_factory: SandboxFactory, api_factory: ApiFactory, leak_scan: Leaks
    ) -> None:
        """403 insufficient_scope raises InsufficientScope naming the scope; no renewal."""
        reader = ClientSpec(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, frozenset({"invoices.read"}))
        sbx = leak_scan.sandbox(await sandbox_factory(SandboxConfig(clients=[reader])))
        api = await api_factory(sbx.url, scopes=["invoices.read"])
        with pytest.raises(InsufficientScope) as caught:
            await api.create_invoice({"reference": "x"}, idempotency_key="k")
        leak_scan.exc(caught.value)
        assert caught.value.details["scope"] == "invoices.write"
        assert caught.value.details["oauth_error"] == "insufficient_scope"
        assert sbx.stats()["token_requests"] == {"client_credentials": 1}

    async def test_rate_limited_carries_retry_after(self, sbx: Sandbox, api: AccountingApi) -> None:
        """429 raises RateLimited with the server's Retry-After (uncapped; the pipeline caps)."""
        sbx.set_faults(Faults(rules=(FaultRule(error_rates={429: 1.0}, retry_after=7),)))
        with pytest.raises(RateLimited) as caught:
            await api.find_invoice("INV-1")
        assert caught.value.retry_after == 7.0

    @pytest.mark.parametrize("status", [500, 502, 503, 504])
    async def test_server_errors_are_unavailable(
        self, sbx: Sandbox, api: AccountingApi, status: int
    ) -> None:
        """5xx raises ApiUnavailable (transient); nothing is retried here."""
        sbx.set_faults(Faults(rules=(FaultRule(error_rates={status: 1.0}),)))
        with pytest.raises(ApiUnavailable):
            await api.find_product("SKU-1")
        assert sbx.stats()["resource_requests"] == 1

    async def test_connection_reset_is_connection_failed(
        self, sbx: Sandbox, api: AccountingApi, leak_scan: Leaks
    ) -> None:
        """A connection dropped without a response raises ConnectionFailed."""
        sbx.set_faults(Faults(rules=(FaultRule(reset_rate=1.0),)))
        with pytest.raises(ConnectionFailed) as caught:
            await api.find_product("SKU-1")
        leak_scan.exc(caught.value)
        assert caught.value.__context__ is None

    async def test_slow_response_is_timeout(
        self, sbx: Sandbox, api_factory: ApiFactory, leak_scan: Leaks
    ) -> None:
        """A response held past api.timeout_s raises ApiTimeout."""
        api = await api_factory(sbx.url, timeout_s=0.3)
        await api.find_product("SKU-warm")  # the token fetch is not part of the timed call
        rule = FaultRule(slow_success_rate=1.0, slow_success_delay=2.0)
        sbx.set_faults(Faults(rules=(rule,)))
        with pytest.raises(ApiTimeout) as caught:
            await api.find_product("SKU-1")
        leak_scan.exc(caught.value)

    async def test_waiting_for_a_slot_does_not_count_against_the_timeout(
        self, sbx: Sandbox
    ) -> None:
        """Six requests through two slots, each answered in 0.2 s with a 0.35 s timeout: the
        later ones wait 0.2-0.4 s for a slot, and none of them times out; at most two are at
        the API at once."""
        settings = settings_for(sbx.url, timeout_s=0.35)
        async with (
            build_auth(settings) as auth,
            AccountingApi(settings.api, auth=auth, max_connections=2) as api,
        ):
            await api.find_product("SKU-warm")  # the token fetch is not part of the timed calls
            sbx.set_faults(Faults(rules=(FaultRule(latency_ms=200),)))
            peak = 0

            async def one(i: int) -> None:
                nonlocal peak
                peak = max(peak, 2 - api._slots._value)
                await api.find_product(f"SKU-{i}")

            started = asyncio.get_running_loop().time()
            await asyncio.gather(*(one(i) for i in range(6)))
            assert asyncio.get_running_loop().time() - started >= 0.6  # three rounds of two
            assert peak <= 2

    async def test_connection_refused(self, api_factory: ApiFactory, sbx: Sandbox) -> None:
        """Nobody listening on the API port raises ConnectionFailed."""
        with socket_port() as port:
            pass
        settings = settings_for(f"http://127.0.0.1:{port}")
        settings = Settings(api=settings.api, oauth=oauth_settings(sbx.url))
        async with build_auth(settings) as auth, AccountingApi(settings.api, auth=auth) as api:
            with pytest.raises(ConnectionFailed):
                await api.find_invoice("x")

    async def test_non_json_success_is_unavailable(self, api_factory: ApiFactory) -> None:
        """A 200 HTML page (a proxy) is ApiUnavailable, not a document."""
        app = web.Application()

        async def token(_r: web.Request) -> web.Response:
            body = {"access_token": "opaque-proxy-test", "token_type": "Bearer"}
            return web.json_response(body)

        async def page(_r: web.Request) -> web.Response:
            return web.Response(text="<html>maintenance</html>", content_type="text/html")

        app.router.add_post("/oauth/token", token)
        app.router.add_get("/2.0/invoices", page)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            api = await api_factory(f"http://127.0.0.1:{runner.addresses[0][1]}")
            with pytest.raises(ApiUnavailable, match="not a JSON object"):
                await api.find_invoice("x")
        finally:
            await runner.cleanup()


class TestOutage:
    async def test_failures_in_a_row_become_an_outage_until_an_answer(
        self, sbx: Sandbox, api_factory: ApiFactory
    ) -> None:
        """Five failing requests in a row (5xx, 429, resets alike): the fifth is ApiOutage."""
        api = await api_factory(sbx.url, outage_after_failures=5, outage_after_s=0)
        sbx.set_faults(
            Faults(rules=(FaultRule(target="resources", error_rates={503: 0.5, 429: 0.5}),))
        )
        for _ in range(4):
            with pytest.raises(TransientError) as caught:
                await api.find_customer(email="a@example.com")
            assert not isinstance(caught.value, ApiOutage)
        with pytest.raises(ApiOutage) as outage:
            await api.find_customer(email="a@example.com")
        assert outage.value.details["last_reason"] in {"api_unavailable", "rate_limited"}
        assert api.in_outage
        sbx.set_faults(Faults(rules=(FaultRule(target="resources", reset_rate=1.0),)))
        with pytest.raises(ApiOutage) as reset:
            await api.find_customer(email="a@example.com")
        assert reset.value.details["last_reason"] == "connection_error"
        sbx.set_faults(Faults())
        assert await api.find_customer(email="a@example.com") is None  # an answer: over
        assert not api.in_outage

    async def test_failures_interrupted_by_answers_are_no_outage(
        self, sbx: Sandbox, api_factory: ApiFactory
    ) -> None:
        """Any other answer (a 404 lookup too) starts the count again."""
        api = await api_factory(sbx.url, outage_after_failures=3, outage_after_s=0)
        failing = Faults(rules=(FaultRule(target="resources", error_rates={503: 1.0}),))
        for _ in range(3):
            sbx.set_faults(failing)
            for _ in range(2):
                with pytest.raises(ApiUnavailable) as caught:
                    await api.find_customer(email="a@example.com")
                assert not isinstance(caught.value, ApiOutage)
            sbx.set_faults(Faults())
            assert await api.find_customer(email="a@example.com") is None

    async def test_no_outage_before_its_time(self, sbx: Sandbox, api_factory: ApiFactory) -> None:
        """Failures in a row alone are not an outage until outage_after_s has passed."""
        api = await api_factory(sbx.url, outage_after_failures=2, outage_after_s=3600)
        sbx.set_faults(Faults(rules=(FaultRule(target="resources", error_rates={503: 1.0}),)))
        for _ in range(5):
            with pytest.raises(ApiUnavailable) as caught:
                await api.find_customer(email="a@example.com")
            assert not isinstance(caught.value, ApiOutage)


class TestMalformedResponses:
    async def test_malformed_http_is_connection_failed_without_request_info(
        self, sbx: Sandbox, leak_scan: Leaks
    ) -> None:
        """A garbled response (aiohttp raises ClientResponseError, whose request_info holds
        our Authorization header) becomes ConnectionFailed with no aiohttp error attached."""

        async def garble(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header\r\n\r\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(garble, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        settings = Settings(
            api=ApiSettings(base_url=f"http://127.0.0.1:{port}"), oauth=oauth_settings(sbx.url)
        )
        try:
            async with build_auth(settings) as auth, AccountingApi(settings.api, auth=auth) as api:
                with pytest.raises(ConnectionFailed) as caught:
                    await api.find_invoice("x")
        finally:
            server.close()
            await server.wait_closed()
        leak_scan.exc(caught.value)
        assert caught.value.__context__ is None
        assert caught.value.__cause__ is None
        assert caught.value.details["error_kind"] == "ClientResponseError"

    async def test_api_redirect_is_a_configuration_fault(self, api_factory: ApiFactory) -> None:
        """A 3xx from the API is not followed (the bearer token stays home): a config fault."""
        app = web.Application()

        async def token(_r: web.Request) -> web.Response:
            return web.json_response(
                {"access_token": "opaque-redirect-test", "token_type": "Bearer"}
            )

        async def moved(_r: web.Request) -> web.Response:
            return web.Response(status=301, headers={"Location": "https://elsewhere.example/"})

        app.router.add_post("/oauth/token", token)
        app.router.add_get("/2.0/products", moved)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            api = await api_factory(f"http://127.0.0.1:{runner.addresses[0][1]}")
            with pytest.raises(ConfigurationFault, match="redirect"):
                await api.find_product("x")
        finally:
            await runner.cleanup()


class TestMetricsAndLifecycle:
    async def test_requests_counted_by_template_and_status_class(self, api: AccountingApi) -> None:
        """API_REQUESTS counts by endpoint template, method and status class."""
        labels = {"endpoint": "/2.0/invoices", "method": "GET", "status_class": "4xx"}
        before = metric("invoice_sync_api_requests_total", **labels)
        latency = metric(
            "invoice_sync_api_request_duration_seconds_count",
            endpoint="/2.0/invoices",
            method="GET",
        )
        await api.find_invoice("INV-404")
        assert metric("invoice_sync_api_requests_total", **labels) - before == 1
        after = metric(
            "invoice_sync_api_request_duration_seconds_count",
            endpoint="/2.0/invoices",
            method="GET",
        )
        assert after - latency == 1

    async def test_transport_errors_count_as_error_class(
        self, sbx: Sandbox, api: AccountingApi
    ) -> None:
        """A request with no response is counted with status_class=error."""
        labels = {"endpoint": "/2.0/products", "method": "GET", "status_class": "error"}
        before = metric("invoice_sync_api_requests_total", **labels)
        await api.find_product("warm")
        sbx.set_faults(Faults(rules=(FaultRule(reset_rate=1.0),)))
        with pytest.raises(ConnectionFailed):
            await api.find_product("SKU-1")
        assert metric("invoice_sync_api_requests_total", **labels) - before == 1

    async def test_start_twice_raises_and_use_after_close_raises(self, sbx: Sandbox) -> None:
        """The client starts once, closes idempotently and refuses calls after close."""
        settings = settings_for(sbx.url)
        async with build_auth(settings) as auth:
            api = AccountingApi(settings.api, auth=auth)
            async with api:
                with pytest.raises(RuntimeError):
                    await api.start()
            await api.close()
            with pytest.raises(RuntimeError):
                await api.find_invoice("x")


class TestLogEvents:
    async def test_every_worker_line_has_a_dotted_event(
        self, sbx: Sandbox, leak_scan: Leaks
    ) -> None:
        """Requests, a token fetch, a 401 renewal, a 422 and a revocation at close log only
        dotted event names (docs/observability.md), such as ``api.request``."""
        settings = Settings(
            api=ApiSettings(base_url=sbx.url),
            oauth=oauth_settings(
                sbx.url, revoke_url=f"{sbx.url}/oauth/revoke", revoke_on_shutdown=True
            ),
        )
        async with build_auth(settings) as auth, AccountingApi(settings.api, auth=auth) as api:
            payload = await _invoice_payload(api, "INV-5001")
            await api.create_invoice(payload, idempotency_key="inv-5001-a")
            sbx.revoke_all()  # the next request carries a rejected token: 401, renew, resend
            with pytest.raises(DuplicateReference):
                await api.create_invoice(payload, idempotency_key="inv-5001-b")
        assert undotted_events(leak_scan.stream.getvalue()) == []
        # The scenario logged what it is meant to cover, or the check above proves little.
        for event in (
            "token.obtained",
            "auth.token_rejected",
            "token.invalidated",
            "token.revoked",
        ):
            assert leak_scan.lines(event), event
        requests = leak_scan.lines("api.request")
        assert requests
        assert all(isinstance(line["seconds"], float) for line in requests)
