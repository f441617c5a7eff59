"""worker.auth over 30 s of wall time: short-lived tokens renewed in the background.

This module really runs for 30 seconds against the sandbox. It asserts counts (token
requests, 401s, expired tokens sent), never speed.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp

from tests.plugins.sandbox import SandboxFactory
from tests.test_auth import Leaks, leak_scan_fixture, oauth_settings  # noqa: F401 - autouse
from worker.api import AccountingApi
from worker.auth import BearerAuth, ClientCredentialsProvider, Token
from worker.sandbox import SandboxConfig
from worker.settings import ApiSettings

_LIFETIME_S = 3.0
_RUN_S = 30.0
_WORKERS = 4


class _RecordingProvider(ClientCredentialsProvider):
    """Remembers every token it handed out, keyed by header, to check each request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handed_out: dict[str, Token] = {}

    async def token(self) -> Token:
        token = await super().token()
        self.handed_out[token.header()] = token
        return token


class TestShortLivedTokens:
    async def test_renewal_keeps_pace_with_a_3s_token_for_30s(
        self, sandbox_factory: SandboxFactory, leak_scan: Leaks
    ) -> None:
        """Token requests equal 30 s / (lifetime - skew) plus at most one; no request goes
        out with an expired token and no 401 is caused by expiry."""
        sbx = leak_scan.sandbox(await sandbox_factory(SandboxConfig(token_lifetime=_LIFETIME_S)))
        settings = oauth_settings(sbx.url)  # skew_s 60 -> effective skew = lifetime / 2
        skew = min(settings.skew_s, _LIFETIME_S / 2)
        provider = _RecordingProvider(settings)
        auth = BearerAuth(provider, renew_on_status=frozenset({401}))
        sent: list[tuple[float, str]] = []

        async def on_start(_s: Any, _c: Any, params: aiohttp.TraceRequestStartParams) -> None:
            sent.append((time.monotonic(), params.headers.get("Authorization", "")))

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_start)
        statuses: list[int] = []
        async with (
            provider,
            aiohttp.ClientSession(trace_configs=[trace]) as session,
            AccountingApi(ApiSettings(base_url=sbx.url), auth=auth, session=session) as api,
        ):
            started = time.monotonic()
            await provider.token()

            async def use() -> None:
                while time.monotonic() - started < _RUN_S:
                    assert await api.find_invoice("INV-none") is None
                    statuses.append(404)
                    await asyncio.sleep(0.005)

            await asyncio.gather(*(use() for _ in range(_WORKERS)))
            elapsed = time.monotonic() - started

        intervals = elapsed / (_LIFETIME_S - skew)
        requests = sbx.stats()["token_requests"]["client_credentials"]
        print(f"token requests: {requests} over {elapsed:.2f} s (intervals {intervals:.2f})")
        assert math.floor(intervals) <= requests <= math.floor(intervals) + 1
        # .get, not [...]: a KeyError would print the header value.
        tokens = [provider.handed_out.get(header) for _, header in sent]
        assert sum(1 for t in tokens if t is None) == 0
        expired = sum(
            1 for (at, _), t in zip(sent, tokens, strict=True) if t and at >= t.expires_at
        )
        assert expired == 0
        assert "401" not in sbx.stats()["requests_by_status"]
        assert sbx.stats()["auth_failures"] == {}
        assert len(statuses) == len(sent) > 1000
