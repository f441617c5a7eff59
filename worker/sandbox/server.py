"""The sandbox server: one aiohttp app, an edge middleware for faults, and its lifecycle.

:func:`run_sandbox` is the only way in: it binds (port 0 picks a free port), yields a
:class:`Sandbox` handle, and tears everything down on exit, including handlers that are
still holding back a "slow success" response.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from worker.sandbox import admin, resources
from worker.sandbox.config import SandboxConfig
from worker.sandbox.faults import Decision, Faults, Target
from worker.sandbox.oauth import REALM, revoke, token
from worker.sandbox.state import STATE_KEY, SandboxState

__all__ = ["FREEZE_EVERY_S", "Sandbox", "build_app", "freeze_stored", "run_sandbox"]

#: How often a sandbox process moves what its store kept out of the collector's reach.
FREEZE_EVERY_S = 1.0

_OUTAGE_HTML = (
    "<html><head><title>{status} Service Unavailable</title></head>"
    "<body><h1>{status}</h1><p>The authorization server is temporarily unavailable."
    "</p></body></html>"
)


def _injected(target: Target, decision: Decision) -> web.Response:
    status = decision.status or 500
    headers = {}
    if decision.retry_after is not None:
        headers["Retry-After"] = str(decision.retry_after)
    if target == "token" and status >= 500:
        # Gateways in front of real token endpoints answer outages with HTML, not JSON.
        return web.Response(
            status=status,
            text=_OUTAGE_HTML.format(status=status),
            content_type="text/html",
            headers=headers,
        )
    return web.json_response(
        {"message": f"injected status {status}"}, status=status, headers=headers
    )


def _drop(request: web.Request) -> web.Response:
    """Close the connection without a response (a "connection reset by peer")."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=499)


@web.middleware
async def _edge(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count, then apply this request's fault decision around the real handler."""
    path = request.path
    target: Target
    if path.startswith("/2.0/"):
        target = "resources"
    elif path.startswith("/oauth/"):
        target = "token"
    else:
        return await handler(request)  # type: ignore[no-any-return]
    state = request.app[STATE_KEY]
    if target == "resources":
        state.resource_requests += 1
    elif path == "/oauth/token":
        state.token_request_times.append(time.monotonic())
    decision = state.faults.decide(target)
    # Latency is the time from the request's arrival to its answer, as a server with
    # parallel workers shows it: the request is handled on arrival and the answer held
    # back for the rest of the delay. (Sleeping first would make every request due at the
    # same moment queue behind the others' handling in this single-threaded server, so
    # "50 ms" would read 65 ms at 64 concurrent requests.)
    answer_at = asyncio.get_running_loop().time() + decision.delay
    if decision.reset or decision.status is not None:
        await _hold_until(answer_at)
        if decision.reset:
            return _drop(request)
        assert decision.status is not None
        state.requests_by_status[decision.status] += 1
        return _injected(target, decision)
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        state.requests_by_status[exc.status] += 1
        if decision.delay > 0:
            await _hold_until(answer_at)
        raise
    state.requests_by_status[response.status] += 1
    if decision.delay > 0:
        await _hold_until(answer_at)
    if decision.slow_delay > 0:
        # The write is committed; the client's timeout fires before it hears so.
        await asyncio.sleep(decision.slow_delay)
    return response


async def _hold_until(when: float) -> None:
    """Sleep until the loop's clock reads ``when`` (at once when it is already past)."""
    delay = when - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


def build_app(state: SandboxState) -> web.Application:
    app = web.Application(middlewares=[_edge], client_max_size=4 * 1024 * 1024)
    app[STATE_KEY] = state
    app.router.add_post("/oauth/token", token)
    app.router.add_post("/oauth/revoke", revoke)
    resources.add_routes(app)
    admin.add_routes(app)
    return app


class Sandbox:
    """A running sandbox: its URL, its state, and the same controls as ``/_sandbox/*``."""

    def __init__(self, url: str, state: SandboxState) -> None:
        self.url = url
        self.state = state

    def __repr__(self) -> str:
        return f"<Sandbox {self.url} realm={REALM!r}>"

    def stats(self) -> dict[str, Any]:
        """The document ``GET /_sandbox/stats`` returns."""
        return self.state.stats()

    def set_faults(self, faults: Faults) -> None:
        """Replace the fault set (reseeding its RNG), like ``POST /_sandbox/faults``."""
        self.state.faults.set(faults)

    @property
    def faults(self) -> Faults:
        return self.state.faults.faults

    def revoke_all(self) -> int:
        """Revoke every live token, like ``POST /_sandbox/revoke-all``."""
        return self.state.tokens.revoke_all()

    def reset(self, *, tokens: bool = False) -> None:
        """Clear data and counters, like ``POST /_sandbox/reset``."""
        self.state.reset(tokens=tokens)

    def issued_secrets(self) -> list[str]:
        """Every token value ever issued plus client secrets, API keys and the JWT secret."""
        return self.state.issued_secrets()


@asynccontextmanager
async def run_sandbox(
    config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Sandbox]:
    """Serve the sandbox on ``host:port`` for the duration of the ``async with`` block."""
    state = SandboxState(config or SandboxConfig())
    runner = web.AppRunner(
        build_app(state), access_log=None, handle_signals=False, shutdown_timeout=0.2
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound_port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        yield Sandbox(f"http://{url_host}:{bound_port}", state)
    finally:
        await runner.cleanup()


async def freeze_stored(state: SandboxState, *, every_s: float = FREEZE_EVERY_S) -> None:
    """Keep the in-memory store out of CPython's full collections; runs until cancelled.

    The sandbox keeps every document it created, so its heap grows for as long as it
    serves, and each full collection walks all of it: at 20,000-30,000 invoices one took
    55-175 ms here, and every answer due meanwhile waited that long. That was the whole
    latency tail the benchmark blamed on the worker (it lined up, pause for pause, with
    the slow events). Stored documents live until the process ends, so once a second,
    when something was stored, the young garbage is collected and everything alive is
    frozen (``gc.freeze``): full collections then walk only what arrived since. Frozen
    objects are still freed by reference counting; only a reference cycle that was alive
    at a freeze and dies later is kept, which the young collection just before keeps rare.

    For a process that is the sandbox (``invoice-sync sandbox``, the benchmark's sandbox
    process): freezing is process-wide, so :func:`run_sandbox` inside another program
    (tests, ``make demo``) does not start it.
    """
    stored = -1
    while True:
        await asyncio.sleep(every_s)
        now = len(state.ledger.references)
        if now == stored:
            continue  # nothing new: an idle sandbox freezes nothing
        stored = now
        gc.collect(1)
        gc.freeze()
