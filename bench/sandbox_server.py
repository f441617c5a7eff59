"""The sandbox as the benchmark runs it: its own process, plus creation timestamps.

``python -m bench.sandbox_server`` takes every option of ``python -m worker.sandbox``
(``--latency-ms``, ``--token-lifetime``...) and serves the same app, built with the public
:func:`worker.sandbox.server.build_app`, so what the worker talks to is the real sandbox.
Two read-only routes are added for the benchmark, because ``/_sandbox/stats`` has neither
per-invoice creation times nor a cheap "how many so far" (it returns every reference, which
would load the server being measured when polled every few milliseconds):

* ``GET /_bench/progress``: invoice count, first and last creation time, token requests,
  401s; a few bytes, cheap enough to poll at 20 Hz.
* ``GET /_bench/created``: every invoice reference with its wall-clock creation time
  (``time.time()``, comparable with ``occurred_at`` stamped by another process on this
  machine), token request times on the same clock, and ``/_sandbox/stats`` minus its lists.

Creation times come from a :class:`~worker.sandbox.ledger.Ledger` subclass that stamps
each recorded reference; the sandbox package itself is unchanged. It runs in its own
process so the server never shares an event loop (or a GIL) with the worker, the
ceiling client or the benchmark's polling.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from dataclasses import dataclass, field

from aiohttp import web

from worker.sandbox.cli import add_arguments, config_from_args
from worker.sandbox.ledger import Ledger
from worker.sandbox.server import build_app
from worker.sandbox.state import SandboxState

__all__ = ["BANNER", "TimedLedger", "main"]

BANNER = "sandbox listening on "


@dataclass
class TimedLedger(Ledger):
    """A ledger that also notes when each reference was recorded (parallel to ``references``)."""

    created_at: list[float] = field(default_factory=list)

    def _record_ref(self, reference: str) -> None:
        super()._record_ref(reference)
        self.created_at.append(time.time())


def _clock_offset() -> float:
    """Add to a ``time.monotonic()`` reading of this process to get wall-clock seconds."""
    return time.time() - time.monotonic()


def _routes(state: SandboxState, ledger: TimedLedger) -> list[web.RouteDef]:
    async def progress(request: web.Request) -> web.Response:
        times = ledger.created_at
        return web.json_response(
            {
                "invoices": len(ledger.invoices),
                "first": times[0] if times else None,
                "last": times[-1] if times else None,
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
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox_server")
    add_arguments(parser)
    args = parser.parse_args()
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
