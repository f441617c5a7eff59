"""Pytest fixtures for the sandbox accounting API.

``sandbox`` is a running server with the demo client (every scope, 3600 s tokens);
``sandbox_factory`` starts servers with any :class:`SandboxConfig` and closes them all at
teardown; ``sandbox_http`` is an aiohttp session that is always closed. The helpers
:func:`fetch_token` and :func:`bearer` keep tests short.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import aiohttp
import pytest

from worker.sandbox import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    Sandbox,
    SandboxConfig,
    run_sandbox,
)

__all__ = ["SandboxFactory", "bearer", "fetch_token"]

SandboxFactory = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """A running sandbox with the demo client, all scopes, 3600 s tokens."""
    async with run_sandbox(SandboxConfig()) as sbx:
        yield sbx


@pytest.fixture
async def sandbox_factory() -> AsyncIterator[SandboxFactory]:
    """``await sandbox_factory(config)`` starts a sandbox; all are closed at teardown."""
    async with AsyncExitStack() as stack:

        async def start(
            config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
        ) -> Sandbox:
            return await stack.enter_async_context(run_sandbox(config, host=host, port=port))

        yield start


@pytest.fixture
async def sandbox_http() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session closed at teardown (warnings are errors, so leaks fail tests)."""
    async with aiohttp.ClientSession() as session:
        yield session


async def fetch_token(
    session: aiohttp.ClientSession,
    sbx: Sandbox,
    *,
    client_id: str = DEMO_CLIENT_ID,
    client_secret: str = DEMO_CLIENT_SECRET,
    scope: str | None = None,
) -> str:
    """Client-credentials grant with body authentication; returns the access token."""
    form = {"grant_type": "client_credentials", "client_id": client_id}
    form["client_secret"] = client_secret
    if scope is not None:
        form["scope"] = scope
    async with session.post(f"{sbx.url}/oauth/token", data=form) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    token = body["access_token"]
    assert isinstance(token, str)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
