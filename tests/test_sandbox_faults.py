"""The sandbox's fault injection: latency, statuses, resets, slow success, outages."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.plugins.sandbox import SandboxFactory, bearer, fetch_token
from worker.sandbox import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    ClientOverride,
    FaultRule,
    Faults,
    Sandbox,
    SandboxConfig,
)

Http = aiohttp.ClientSession


def _faults(*rules: FaultRule, **kwargs: Any) -> Faults:
    return Faults(rules=rules, **kwargs)


async def _get(http: Http, sbx: Sandbox, token: str, **kwargs: Any) -> aiohttp.ClientResponse:
    async with http.get(f"{sbx.url}/2.0/invoices", headers=bearer(token), **kwargs) as response:
        await response.read()
        return response


async def _token_status(http: Http, sbx: Sandbox) -> tuple[int, str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET,
    }
    async with http.post(f"{sbx.url}/oauth/token", data=form) as response:
        return response.status, response.content_type, await response.text()


async def _setup_invoice_data(http: Http, sbx: Sandbox, token: str) -> None:
    for path, body in (
        ("/2.0/customers", {"contact": {"name": "Buyer"}}),
        (
            "/2.0/products",
            {"product": {"sku": "S", "name": "S", "type": "Service", "selling_price": "1"}},
        ),
    ):
        async with http.post(sbx.url + path, json=body, headers=bearer(token)) as response:
            assert response.status == 201


def _invoice(reference: str) -> dict[str, Any]:
    line = {
        "product_id": 1,
        "description": "x",
        "quantity": 1,
        "unit_price": 10,
        "discount": 0,
        "discount_type": "amount",
        "tax_percent": 15,
        "is_inclusive": False,
    }
    return {
        "invoice": {
            "contact_id": 1,
            "reference": reference,
            "issue_date": "2024-01-01",
            "due_date": "2024-01-01",
            "status": "Approved",
            "inventory_id": 1,
            "line_items": [line],
        }
    }


async def _wait_for(predicate: Any) -> None:
    """Poll ``predicate`` for up to five seconds (a condition, not a fixed sleep)."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


class TestErrorRates:
    async def test_rate_one_always_answers_the_status(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """An error rate of 1.0 answers that status on every resource request."""
        token = await fetch_token(sandbox_http, sandbox)
        sandbox.set_faults(_faults(FaultRule(error_rates={502: 1.0})))
        statuses = [(await _get(sandbox_http, sandbox, token)).status for _ in range(5)]
        assert statuses == [502] * 5
        assert sandbox.stats()["faults_injected"] == {"status_502": 5}

    async def test_rate_zero_never_fires(self, sandbox: Sandbox, sandbox_http: Http) -> None:
        """An error rate of 0.0 leaves every request alone."""
        token = await fetch_token(sandbox_http, sandbox)
        sandbox.set_faults(_faults(FaultRule(error_rates={500: 0.0})))
        statuses = [(await _get(sandbox_http, sandbox, token)).status for _ in range(5)]
        assert statuses == [404] * 5

    async def test_429_carries_retry_after(self, sandbox: Sandbox, sandbox_http: Http) -> None:
        """An injected 429 has a Retry-After header with the configured seconds."""
        token = await fetch_token(sandbox_http, sandbox)
        sandbox.set_faults(_faults(FaultRule(error_rates={429: 1.0}, retry_after=7)))
        response = await _get(sandbox_http, sandbox, token)
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"

    async def test_seeded_rates_repeat_exactly(self, sandbox: Sandbox, sandbox_http: Http) -> None:
        """The same seed yields the same sequence of injected statuses."""
        token = await fetch_token(sandbox_http, sandbox)
        faults = _faults(FaultRule(error_rates={500: 0.3, 503: 0.3}), seed=42)
        runs = []
        for _ in range(2):
            sandbox.set_faults(faults)
            runs.append([(await _get(sandbox_http, sandbox, token)).status for _ in range(30)])
        assert runs[0] == runs[1]
        assert {500, 503, 404} <= set(runs[0])

    async def test_token_target_leaves_resources_alone(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """A rule targeting the token endpoint does not touch resource requests."""
        token = await fetch_token(sandbox_http, sandbox)
        sandbox.set_faults(_faults(FaultRule(target="token", error_rates={500: 1.0})))
        status, content_type, _ = await _token_status(sandbox_http, sandbox)
        assert (status, content_type) == (500, "text/html")
        assert (await _get(sandbox_http, sandbox, token)).status == 404

    async def test_faults_can_be_set_over_http(self, sandbox: Sandbox, sandbox_http: Http) -> None:
        """POST /_sandbox/faults validates and installs faults; GET shows them."""
        body = {"rules": [{"target": "resources", "error_rates": {"503": 1.0}}], "seed": 1}
        async with sandbox_http.post(f"{sandbox.url}/_sandbox/faults", json=body) as response:
            assert response.status == 200
        async with sandbox_http.get(f"{sandbox.url}/_sandbox/faults") as response:
            shown = await response.json()
        assert shown["faults"]["rules"][0]["error_rates"] == {"503": 1.0}
        assert sandbox.faults.rules[0].error_rates == {503: 1.0}
        bad = {"rules": [{"error_rates": {"418": 1.0}}]}
        async with sandbox_http.post(f"{sandbox.url}/_sandbox/faults", json=bad) as response:
            assert response.status == 400


class TestLatency:
    async def test_latency_makes_a_short_client_timeout_fire(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """A fixed delay longer than the client timeout makes the client time out."""
        token = await fetch_token(sandbox_http, sandbox)
        sandbox.set_faults(_faults(FaultRule(latency_ms=2000)))
        with pytest.raises(asyncio.TimeoutError):
            await _get(sandbox_http, sandbox, token, timeout=aiohttp.ClientTimeout(total=0.1))
        assert sandbox.stats()["injected_delays_ms"] == [2000.0]

    async def test_tail_adds_seeded_extra_delay(self, sandbox: Sandbox, sandbox_http: Http) -> None:
        """A latency tail adds a seeded random extra delay on top of the fixed part."""
        token = await fetch_token(sandbox_http, sandbox)
        faults = _faults(FaultRule(latency_ms=1, latency_tail_ms=2), seed=5)
        delays = []
        for _ in range(2):
            sandbox.reset()
            sandbox.set_faults(faults)
            for _ in range(3):
                await _get(sandbox_http, sandbox, token)
            delays.append(sandbox.stats()["injected_delays_ms"])
        assert delays[0] == delays[1]
        assert all(d > 1 for d in delays[0])
        assert len(set(delays[0])) == 3


class TestConnectionFaults:
    async def test_reset_closes_without_response_and_creates_nothing(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """A reset drops the connection before the request is handled."""
        token = await fetch_token(sandbox_http, sandbox)
        await _setup_invoice_data(sandbox_http, sandbox, token)
        sandbox.set_faults(_faults(FaultRule(reset_rate=1.0)))
        with pytest.raises(aiohttp.ClientConnectionError):
            async with sandbox_http.post(
                f"{sandbox.url}/2.0/invoices", json=_invoice("RST"), headers=bearer(token)
            ) as response:
                await response.read()
        assert sandbox.stats()["invoices"] == 0
        assert sandbox.stats()["faults_injected"]["reset"] >= 1

    async def test_slow_success_commits_although_client_times_out(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """A slow success times the client out, yet the invoice exists afterwards."""
        token = await fetch_token(sandbox_http, sandbox)
        await _setup_invoice_data(sandbox_http, sandbox, token)
        sandbox.set_faults(_faults(FaultRule(slow_success_rate=1.0, slow_success_delay=30)))
        with pytest.raises(asyncio.TimeoutError):
            async with sandbox_http.post(
                f"{sandbox.url}/2.0/invoices",
                json=_invoice("SLOW"),
                headers=bearer(token),
                timeout=aiohttp.ClientTimeout(total=0.2),
            ) as response:
                await response.read()
        await _wait_for(lambda: sandbox.stats()["invoices"] == 1)
        sandbox.set_faults(Faults())
        async with sandbox_http.get(
            f"{sandbox.url}/2.0/invoices", params={"q[reference_eq]": "SLOW"}, headers=bearer(token)
        ) as response:
            assert response.status == 200


class TestTokenEndpointFaults:
    async def test_outage_answers_html_5xx_and_is_counted(
        self, sandbox_factory: SandboxFactory, sandbox_http: Http
    ) -> None:
        """A token outage answers 503 with an HTML body and records each attempt's time."""
        sbx = await sandbox_factory(SandboxConfig(faults=Faults(token_outage=True)))
        results = [await _token_status(sandbox_http, sbx) for _ in range(3)]
        assert {(status, ctype) for status, ctype, _ in results} == {(503, "text/html")}
        assert results[0][2].startswith("<html>")
        times = sbx.stats()["token_request_times"]
        assert len(times) == 3
        assert times == sorted(times)
        sbx.set_faults(Faults())
        assert (await _token_status(sandbox_http, sbx))[0] == 200


class TestClientOverrides:
    async def test_next_n_responses_get_the_forced_status(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """An override answers the next N resource requests of that client with its status."""
        token = await fetch_token(sandbox_http, sandbox)
        override = ClientOverride(client_id=DEMO_CLIENT_ID, status=401, count=2)
        sandbox.set_faults(Faults(client_overrides=(override,)))
        responses = [await _get(sandbox_http, sandbox, token) for _ in range(3)]
        assert [r.status for r in responses] == [401, 401, 404]
        assert 'error="invalid_token"' in responses[0].headers["WWW-Authenticate"]

    async def test_override_applies_only_to_its_client(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """Another client's override does not affect this client."""
        token = await fetch_token(sandbox_http, sandbox)
        override = ClientOverride(client_id="someone-else", status=503, count=5)
        sandbox.set_faults(Faults(client_overrides=(override,)))
        assert (await _get(sandbox_http, sandbox, token)).status == 404


class TestCommandLine:
    @pytest.mark.parametrize(
        ("options", "expected"),
        [
            (["--reset-rate", "2"], "reset_rate: Input should be less than or equal to 1"),
            (["--error-rate", "418=0.5"], "error_rates: status 418 is not one of"),
            (["--latency-ms", "-5"], "latency_ms: Input should be greater than or equal to 0"),
        ],
    )
    def test_bad_option_is_one_line_on_stderr(self, options: list[str], expected: str) -> None:
        """Bad fault options exit 2 with one readable line on stderr and nothing on stdout
        (stdout carries only the "listening" banner that scripts wait for)."""
        import subprocess
        import sys

        result = subprocess.run(
            [sys.executable, "-m", "worker.sandbox", "--port", "0", *options],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.startswith("sandbox: invalid options: ")
        assert expected in result.stderr
        assert len(result.stderr.splitlines()) == 1
