"""The sandbox as the benchmark runs it: its own process, plus creation timestamps.

``python -m bench.sandbox_server`` takes every option of ``python -m worker.sandbox``
(``--latency-ms``, ``--token-lifetime``...) and serves the same app, built with the public
:func:`worker.sandbox.server.build_app`, so what the worker talks to is the real sandbox.
Two read-only routes are added for the benchmark, because ``/_sandbox/stats`` has neither
per-invoice creation times nor a cheap "how many so far" (it returns every reference, which
would load the server being measured when polled every few milliseconds):

* ``GET /_bench/progress``: invoices answered, first and last answer time, token requests,
  401s; a few bytes, cheap enough to poll at 20 Hz.
* ``GET /_bench/created``: every invoice reference with its wall-clock creation time
  (``time.time()``, comparable with ``occurred_at`` stamped by another process on this
  machine), token request times on the same clock, and ``/_sandbox/stats`` minus its lists.

Creation times come from a :class:`~worker.sandbox.ledger.Ledger` subclass that stamps
each recorded reference, and an outer middleware that moves the stamp to the moment the
answer leaves: the sandbox records a document when the request arrives and holds the
answer back for ``--latency-ms``, and the client learns of its invoice only then. So
"created" below means "answered", and latency figures include the API's latency. The
sandbox package itself is unchanged. It runs in its own
process so the server never shares an event loop (or a GIL) with the worker, the
ceiling client or the benchmark's polling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from worker.sandbox.cli import add_arguments, config_from_args
from worker.sandbox.ledger import Ledger
from worker.sandbox.server import build_app, freeze_stored
from worker.sandbox.state import SandboxState

__all__ = ["BANNER", "TimedLedger", "main"]

BANNER = "sandbox listening on "


#: Indexes into ``TimedLedger.created_at`` recorded by the request being handled.
_RECORDED: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "bench_recorded", default=None
)


@dataclass
class TimedLedger(Ledger):
    """A ledger that also notes when each reference was answered (parallel to ``references``).

    ``first``/``last`` are the first and latest answer times, kept as answers come (in
    clock order) so the progress route does not scan the list.
    """

    created_at: list[float] = field(default_factory=list)
    first: float | None = None
    last: float | None = None
    answered_count: int = 0  # documents whose answer is ready (the bench posts invoices only)

    def _record_ref(self, reference: str) -> None:
        super()._record_ref(reference)
        recorded = _RECORDED.get()
        if recorded is not None:
            recorded.append(len(self.created_at))
        self.created_at.append(time.time())  # replaced by the answer time (answered)

    def answered(self, indexes: list[int]) -> None:
        now = time.time()
        for i in indexes:
            self.created_at[i] = now
        self.answered_count += len(indexes)
        if indexes:
            if self.first is None:
                self.first = now
            self.last = now


def _answered(ledger: TimedLedger) -> Any:
    """Outer middleware: stamp what a request recorded when its answer is ready."""

    @web.middleware
    async def stamp(request: web.Request, handler: Any) -> web.StreamResponse:
        recorded: list[int] = []
        token = _RECORDED.set(recorded)
        try:
            response: web.StreamResponse = await handler(request)
        finally:
            _RECORDED.reset(token)
            ledger.answered(recorded)
        return response

    return stamp


def _clock_offset() -> float:
    """Add to a ``time.monotonic()`` reading of this process to get wall-clock seconds."""
    return time.time() - time.monotonic()


def _routes(state: SandboxState, ledger: TimedLedger) -> list[web.RouteDef]:
    async def progress(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "invoices": ledger.answered_count,
                "first": ledger.first,
                "last": ledger.last,
                "token_requests": sum(state.token_requests.values()),
                "auth_failures": sum(state.auth_failures.values()),
            }
        )

    async def created(request: web.Request) -> web.Response:
        offset = _clock_offset()
        stats = {
            k: v
            for k, v in state.stats().items()
            if k not in ("references", "reference_counts", "token_request_times")
        }
        return web.json_response(
            {
                "references": list(ledger.references),
                "created_at": list(ledger.created_at),
                "token_request_times": [t + offset for t in state.token_request_times],
                "stats": stats,
            }
        )

    return [web.get("/_bench/progress", progress), web.get("/_bench/created", created)]


async def _serve(args: argparse.Namespace) -> None:
    state = SandboxState(config_from_args(args))
    ledger = TimedLedger()
    state.ledger = ledger  # before the first request; nothing calls reset() in the bench
    app = build_app(state)
    app.middlewares.insert(0, _answered(ledger))  # outside the sandbox's own middleware
    app.add_routes(_routes(state, ledger))
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, args.host, args.port, backlog=1024)
        await site.start()
        print(f"{BANNER}http://{args.host}:{runner.addresses[0][1]}", flush=True)
        freezer = asyncio.create_task(freeze_stored(state))  # as `invoice-sync sandbox` does
        await stop.wait()
        freezer.cancel()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox_server")
    add_arguments(parser)
    args = parser.parse_args()
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
