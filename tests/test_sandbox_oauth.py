"""The sandbox's OAuth 2.0 side: token endpoint, refresh rotation, revocation, JWT mode."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from tests.plugins.sandbox import SandboxFactory, bearer, fetch_token
from worker.sandbox import (
    ALL_SCOPES,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    ClientSpec,
    Sandbox,
    SandboxConfig,
    decode_hs256,
)

Http = aiohttp.ClientSession
FULL_SCOPE = " ".join(sorted(ALL_SCOPES))


async def _token(
    http: Http, sbx: Sandbox, form: dict[str, str], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    async with http.post(f"{sbx.url}/oauth/token", data=form, headers=headers) as response:
        return response.status, await response.json(), response.headers


def _basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def _creds(**extra: str) -> dict[str, str]:
    return {"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET, **extra}


async def _status(http: Http, sbx: Sandbox, token: str) -> int:
    async with http.get(f"{sbx.url}/2.0/invoices", headers=bearer(token)) as response:
        return response.status


class TestClientCredentials:
    async def test_body_authentication_issues_bearer_token(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """Body credentials give an opaque sbx_at_ Bearer token, no-store, full scope."""
        status, body, headers = await _token(
            sandbox_http, sandbox, _creds(grant_type="client_credentials")
        )
        assert status == 200
        assert headers["Cache-Control"] == "no-store"
        assert body["token_type"] == "Bearer"
        assert body["access_token"].startswith("sbx_at_")
        assert body["expires_in"] == 3600
        assert body["scope"] == FULL_SCOPE
        assert "refresh_token" not in body

    async def test_basic_authentication_is_accepted(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """HTTP Basic client credentials work like body credentials."""
        status, body, _ = await _token(
            sandbox_http,
            sandbox,
            {"grant_type": "client_credentials"},
            _basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET),
        )
        assert status == 200
        assert await _status(sandbox_http, sandbox, body["access_token"]) == 404

    async def test_wrong_secret_in_body_is_invalid_client(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """A wrong body secret is 401 invalid_client without a Basic challenge."""
        form = {"grant_type": "client_credentials", "client_id": DEMO_CLIENT_ID}
        status, body, headers = await _token(sandbox_http, sandbox, {**form, "client_secret": "x"})
        assert status == 401
        assert body["error"] == "invalid_client"
        assert "error_description" in body
        assert "WWW-Authenticate" not in headers

    async def test_wrong_secret_with_basic_challenges_basic(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """A wrong Basic secret is 401 invalid_client with WWW-Authenticate: Basic."""
        status, body, headers = await _token(
            sandbox_http,
            sandbox,
            {"grant_type": "client_credentials"},
            _basic(DEMO_CLIENT_ID, "nope"),
        )
        assert status == 401
        assert body["error"] == "invalid_client"
        assert headers["WWW-Authenticate"].startswith("Basic ")

    async def test_unknown_client_is_invalid_client(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """An unknown client id is 401 invalid_client."""
        form = {"grant_type": "client_credentials", "client_id": "who", "client_secret": "x"}
        status, body, _ = await _token(sandbox_http, sandbox, form)
        assert (status, body["error"]) == (401, "invalid_client")

    async def test_missing_grant_type_is_invalid_request(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """No grant_type is 400 invalid_request."""
        status, body, _ = await _token(sandbox_http, sandbox, _creds())
        assert (status, body["error"]) == (400, "invalid_request")

    async def test_unsupported_grant_type(self, sandbox: Sandbox, sandbox_http: Http) -> None:
        """A grant the server does not support is 400 unsupported_grant_type."""
        status, body, _ = await _token(sandbox_http, sandbox, _creds(grant_type="password"))
        assert (status, body["error"]) == (400, "unsupported_grant_type")

    async def test_repeated_parameter_is_invalid_request(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """A parameter sent twice is 400 invalid_request (RFC 6749 §3.2)."""
        data = "grant_type=client_credentials&grant_type=client_credentials"
        data += f"&client_id={DEMO_CLIENT_ID}&client_secret={DEMO_CLIENT_SECRET}"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        async with sandbox_http.post(
            f"{sandbox.url}/oauth/token", data=data, headers=headers
        ) as response:
            assert response.status == 400
            assert (await response.json())["error"] == "invalid_request"

    async def test_json_body_is_invalid_request(self, sandbox: Sandbox, sandbox_http: Http) -> None:
        """The token endpoint only takes form-encoded bodies."""
        async with sandbox_http.post(
            f"{sandbox.url}/oauth/token", json=_creds(grant_type="client_credentials")
        ) as response:
            assert response.status == 400
            assert (await response.json())["error"] == "invalid_request"

    async def test_scope_the_client_lacks_is_invalid_scope(
        self, sandbox_factory: SandboxFactory, sandbox_http: Http
    ) -> None:
        """Asking for a scope outside the client's set is 400 invalid_scope."""
        reader = ClientSpec("reader", "s3cret", frozenset({"invoices.read"}))
        sbx = await sandbox_factory(SandboxConfig(clients=[reader]))
        form = {
            "grant_type": "client_credentials",
            "client_id": "reader",
            "client_secret": "s3cret",
        }
        status, body, _ = await _token(sandbox_http, sbx, {**form, "scope": "invoices.write"})
        assert (status, body["error"]) == (400, "invalid_scope")

    async def test_unknown_scope_is_invalid_scope(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """A scope the server has never heard of is 400 invalid_scope."""
        form = _creds(grant_type="client_credentials", scope="invoices.read admin")
        status, body, _ = await _token(sandbox_http, sandbox, form)
        assert (status, body["error"]) == (400, "invalid_scope")

    async def test_requested_subset_is_granted(self, sandbox: Sandbox, sandbox_http: Http) -> None:
        """Asking for fewer scopes grants exactly those."""
        form = _creds(grant_type="client_credentials", scope="invoices.write invoices.read")
        status, body, _ = await _token(sandbox_http, sandbox, form)
        assert status == 200
        assert body["scope"] == "invoices.read invoices.write"

    async def test_omitted_scope_grants_the_clients_full_set(
        self, sandbox_factory: SandboxFactory, sandbox_http: Http
    ) -> None:
        """Without a scope parameter the client gets every scope it is configured for."""
        scopes = frozenset({"invoices.read", "invoices.write"})
        sbx = await sandbox_factory(SandboxConfig(clients=[ClientSpec("c", "s", scopes)]))
        form = {"grant_type": "client_credentials", "client_id": "c", "client_secret": "s"}
        status, body, _ = await _token(sandbox_http, sbx, form)
        assert status == 200
        assert body["scope"] == "invoices.read invoices.write"

    async def test_stats_count_grants_and_errors_without_token_values(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """Stats count token requests by grant and errors by code, and show no token."""
        token = await fetch_token(sandbox_http, sandbox)
        await _token(sandbox_http, sandbox, _creds(grant_type="password"))
        async with sandbox_http.get(f"{sandbox.url}/_sandbox/stats") as response:
            text = await response.text()
        stats = json.loads(text)
        assert stats["token_requests"] == {"client_credentials": 1, "password": 1}
        assert stats["token_errors"] == {"unsupported_grant_type": 1}
        assert len(stats["token_request_times"]) == 2
        assert token not in text
        assert DEMO_CLIENT_SECRET not in text


class TestExpiry:
    async def test_expired_token_is_rejected(
        self, sandbox_factory: SandboxFactory, sandbox_http: Http
    ) -> None:
        """A token stops working once its lifetime has passed."""
        sbx = await sandbox_factory(SandboxConfig(token_lifetime=1))
        token = await fetch_token(sandbox_http, sbx)
        assert await _status(sandbox_http, sbx, token) == 404
        deadline = time.monotonic() + 10
        while await _status(sandbox_http, sbx, token) != 401:
            assert time.monotonic() < deadline, "token never expired"
            await asyncio.sleep(0.05)
        async with sandbox_http.get(f"{sbx.url}/2.0/invoices", headers=bearer(token)) as response:
            assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
            assert "expired" in response.headers["WWW-Authenticate"]


class TestRefreshTokens:
    @pytest.fixture
    async def refreshing(self, sandbox_factory: SandboxFactory) -> Sandbox:
        client = ClientSpec("r", "rs", frozenset({"invoices.read"}), refresh_tokens=True)
        return await sandbox_factory(SandboxConfig(clients=[client, *SandboxConfig().clients]))

    async def test_refresh_rotates_and_spent_token_is_invalid_grant(
        self, refreshing: Sandbox, sandbox_http: Http
    ) -> None:
        """Each refresh returns a new refresh token; re-using the old one is invalid_grant."""
        creds = {"client_id": "r", "client_secret": "rs"}
        status, first, _ = await _token(
            sandbox_http, refreshing, {**creds, "grant_type": "client_credentials"}
        )
        assert status == 200
        assert first["refresh_token"].startswith("sbx_rt_")
        refresh = {**creds, "grant_type": "refresh_token"}
        status, second, _ = await _token(
            sandbox_http, refreshing, {**refresh, "refresh_token": first["refresh_token"]}
        )
        assert status == 200
        assert second["refresh_token"] != first["refresh_token"]
        assert second["access_token"] != first["access_token"]
        assert await _status(sandbox_http, refreshing, second["access_token"]) == 404
        status, third, _ = await _token(
            sandbox_http, refreshing, {**refresh, "refresh_token": second["refresh_token"]}
        )
        assert status == 200  # the rotated token rotates in turn
        assert await _status(sandbox_http, refreshing, third["access_token"]) == 404
        status, body, _ = await _token(
            sandbox_http, refreshing, {**refresh, "refresh_token": first["refresh_token"]}
        )
        assert (status, body["error"]) == (400, "invalid_grant")

    async def test_replayed_refresh_token_revokes_its_whole_grant(
        self, refreshing: Sandbox, sandbox_http: Http
    ) -> None:
        """RFC 9700 (security BCP): a spent refresh token used again ends its whole grant."""
        creds = {"client_id": "r", "client_secret": "rs"}
        _, first, _ = await _token(
            sandbox_http, refreshing, {**creds, "grant_type": "client_credentials"}
        )
        _, other, _ = await _token(
            sandbox_http, refreshing, {**creds, "grant_type": "client_credentials"}
        )
        refresh = {**creds, "grant_type": "refresh_token"}
        _, second, _ = await _token(
            sandbox_http, refreshing, {**refresh, "refresh_token": first["refresh_token"]}
        )
        status, body, _ = await _token(
            sandbox_http, refreshing, {**refresh, "refresh_token": first["refresh_token"]}
        )
        assert (status, body["error"]) == (400, "invalid_grant")
        assert await _status(sandbox_http, refreshing, second["access_token"]) == 401
        status, body, _ = await _token(
            sandbox_http, refreshing, {**refresh, "refresh_token": second["refresh_token"]}
        )
        assert (status, body["error"]) == (400, "invalid_grant")
        # Another grant of the same client is untouched.
        assert await _status(sandbox_http, refreshing, other["access_token"]) == 404

    async def test_unknown_refresh_token_is_invalid_grant(
        self, refreshing: Sandbox, sandbox_http: Http
    ) -> None:
        """A refresh token the server never issued is invalid_grant."""
        form = {"client_id": "r", "client_secret": "rs", "grant_type": "refresh_token"}
        status, body, _ = await _token(sandbox_http, refreshing, {**form, "refresh_token": "x"})
        assert (status, body["error"]) == (400, "invalid_grant")

    async def test_client_without_refresh_is_unauthorized_client(
        self, refreshing: Sandbox, sandbox_http: Http
    ) -> None:
        """A client not configured for refresh tokens cannot use that grant."""
        form = _creds(grant_type="refresh_token", refresh_token="sbx_rt_x")
        status, body, _ = await _token(sandbox_http, refreshing, form)
        assert (status, body["error"]) == (400, "unauthorized_client")

    async def test_refresh_token_is_not_a_bearer_token(
        self, refreshing: Sandbox, sandbox_http: Http
    ) -> None:
        """A refresh token presented to a resource is 401 invalid_token."""
        form = {"client_id": "r", "client_secret": "rs", "grant_type": "client_credentials"}
        _, body, _ = await _token(sandbox_http, refreshing, form)
        assert await _status(sandbox_http, refreshing, body["refresh_token"]) == 401


class TestRevocation:
    async def _revoke(self, http: Http, sbx: Sandbox, form: dict[str, str]) -> int:
        async with http.post(f"{sbx.url}/oauth/revoke", data=form) as response:
            return response.status

    async def test_revoked_access_token_is_rejected(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """After RFC 7009 revocation the access token gets 401."""
        token = await fetch_token(sandbox_http, sandbox)
        assert await self._revoke(sandbox_http, sandbox, _creds(token=token)) == 200
        assert await _status(sandbox_http, sandbox, token) == 401

    async def test_unknown_token_revocation_is_200(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """Revoking a token the server does not know still answers 200."""
        form = _creds(token="nonsense", token_type_hint="refresh_token")
        assert await self._revoke(sandbox_http, sandbox, form) == 200

    async def test_revocation_requires_client_authentication(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """Revocation with bad client credentials is 401."""
        token = await fetch_token(sandbox_http, sandbox)
        form = {"client_id": DEMO_CLIENT_ID, "client_secret": "bad", "token": token}
        assert await self._revoke(sandbox_http, sandbox, form) == 401
        assert await _status(sandbox_http, sandbox, token) == 404

    async def test_revoking_refresh_token_revokes_its_access_tokens(
        self, sandbox_factory: SandboxFactory, sandbox_http: Http
    ) -> None:
        """Revoking a refresh token also invalidates access tokens of the same grant."""
        client = ClientSpec("r", "rs", ALL_SCOPES, refresh_tokens=True)
        sbx = await sandbox_factory(SandboxConfig(clients=[client]))
        creds = {"client_id": "r", "client_secret": "rs"}
        _, body, _ = await _token(sandbox_http, sbx, {**creds, "grant_type": "client_credentials"})
        form = {**creds, "token": body["refresh_token"]}
        assert await self._revoke(sandbox_http, sbx, form) == 200
        assert await _status(sandbox_http, sbx, body["access_token"]) == 401

    async def test_revoke_all_kills_every_live_token(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """POST /_sandbox/revoke-all invalidates every live token at once."""
        tokens = [await fetch_token(sandbox_http, sandbox) for _ in range(3)]
        async with sandbox_http.post(f"{sandbox.url}/_sandbox/revoke-all") as response:
            assert (await response.json())["revoked"] == 3
        assert [await _status(sandbox_http, sandbox, t) for t in tokens] == [401] * 3
        fresh = await fetch_token(sandbox_http, sandbox)
        assert await _status(sandbox_http, sandbox, fresh) == 404


class TestJwtMode:
    async def test_jwt_token_carries_claims_and_is_tracked(
        self, sandbox_factory: SandboxFactory, sandbox_http: Http
    ) -> None:
        """JWT mode issues HS256 tokens with exp, scope and client_id, still revocable."""
        sbx = await sandbox_factory(SandboxConfig(token_format="jwt", jwt_secret="k3y"))
        token = await fetch_token(sandbox_http, sbx, scope="invoices.read")
        claims = decode_hs256(token, "k3y")
        assert claims["client_id"] == DEMO_CLIENT_ID
        assert claims["scope"] == "invoices.read"
        assert claims["exp"] - claims["iat"] == 3600
        assert token in sbx.issued_secrets()
        with pytest.raises(ValueError, match="signature"):
            decode_hs256(token, "other")
        assert await _status(sandbox_http, sbx, token) == 404
