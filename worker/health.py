"""Health for Kubernetes and Prometheus: ``/healthz``, ``/readyz`` and ``/metrics``.

:class:`HealthState` is plain state that the pipeline updates as it runs; it does no I/O, and
its clock is injectable so tests step time instead of sleeping. :class:`HealthServer` serves
it over HTTP next to the Prometheus exposition. :func:`check_health` is ``invoice-sync check``.

Liveness (``/healthz``) answers "should Kubernetes restart this pod?":

* the answer itself proves the event loop runs (the handler runs on it);
* the consume loop must have made progress (finished events, or polled and found nothing)
  within ``stall_timeout_s``, unless it has nothing to do (idle, no lag). A consumer stuck
  while lag grows turns unhealthy, and a restart is the cure;
* a configuration fault never makes the pod unhealthy: a restart cannot fix credentials, so it
  shows on readiness and on the ``invoice_sync_configuration_fault`` metric instead; nor
  does a dependency outage (every API request failing, or the ledger unreachable: the
  pipeline pauses), which a restart cannot end either.

Readiness (``/readyz``) answers "is this worker doing its job?": started, partitions assigned
(or waiting for the first assignment), an access token obtainable, and not paused by a
configuration fault or a dependency outage. Both answer JSON with the reasons, 200 when fine and
503 when not.
"""

from __future__ import annotations

import enum
import json
import sys
import time
from collections.abc import Callable
from typing import Final

import aiohttp
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from worker import metrics
from worker.lifecycle import Lifecycle
from worker.settings import HttpServerSettings, Settings

__all__ = ["CONFIG_FAULT_REASONS", "HealthServer", "HealthState", "check_health"]

#: The closed label set of ``invoice_sync_configuration_fault`` (see worker/errors.py).
CONFIG_FAULT_REASONS: Final = ("auth_configuration", "insufficient_scope")

_CHECK_TIMEOUT_S: Final = 3.0
_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})


class HealthState:
    """What the pipeline tells us about itself; answers liveness and readiness.

    Every setter is cheap and synchronous, so the pipeline can call it on its hot path. All
    calls come from the event loop thread, so no lock is needed.
    """

    def __init__(
        self, *, stall_timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if stall_timeout_s <= 0:
            raise ValueError("stall_timeout_s must be positive")
        self._stall_timeout_s = stall_timeout_s
        self._clock = clock
        # The stall clock starts now, so a start-up that hangs is a stall too.
        self._last_progress = clock()
        self._idle = False
        self._partitions = 0
        self._waiting_for_assignment = True
        self._lag: int | None = None
        self._config_fault: str | None = None
        self._token_obtainable = True  # not known to be unobtainable until a fetch fails
        self._outage: str | None = None
        self._started = False
        for reason in CONFIG_FAULT_REASONS:
            metrics.CONFIG_FAULT.labels(reason).set(0)
        self._publish_ready()

    # -- what the pipeline reports -----------------------------------------------------------

    def mark_progress(self) -> None:
        """The consume loop finished events, or polled and found nothing to do."""
        self._last_progress = self._clock()

    def set_idle(self, idle: bool) -> None:
        """Nothing to do: no lag and nothing in flight (the stall rule does not apply)."""
        self._idle = idle

    def set_assignment(self, partitions: int, *, waiting: bool) -> None:
        """Partitions now assigned; ``waiting`` while the group has not assigned any yet."""
        self._partitions = max(0, partitions)
        self._waiting_for_assignment = waiting
        self._publish_ready()

    def set_lag(self, total: int) -> None:
        """Total lag (high watermark minus committed offset) over the assigned partitions."""
        self._lag = max(0, total)

    def set_config_fault(self, reason: str | None) -> None:
        """Consumption is paused by a configuration fault (``reason``), or no longer (None)."""
        self._config_fault = reason
        for known in {*CONFIG_FAULT_REASONS, *([reason] if reason else [])}:
            metrics.CONFIG_FAULT.labels(known).set(1 if known == reason else 0)
        self._publish_ready()

    def set_token_obtainable(self, ok: bool) -> None:
        """Whether the last attempt to get an access token succeeded."""
        self._token_obtainable = ok
        self._publish_ready()

    def set_outage(self, reason: str | None) -> None:
        """Consumption is paused because a dependency is down (``api_outage``: every API
        request fails; ``ledger_unavailable``: the ledger cannot be reached), or no longer."""
        self._outage = reason
        self._publish_ready()

    def set_started(self, started: bool) -> None:
        """The worker finished starting (True) or began to shut down (False)."""
        self._started = started
        if started:
            self.mark_progress()
        self._publish_ready()

    # -- what Kubernetes asks ----------------------------------------------------------------

    def liveness(self) -> tuple[bool, dict[str, object]]:
        """``(alive, reasons)``: False when the consume loop is stalled with work to do."""
        since = max(0.0, self._clock() - self._last_progress)
        nothing_to_do = self._idle and not self._lag
        if self._config_fault is not None:
            status, alive = "paused_by_configuration_fault", True
        elif self._outage is not None:  # a restart cannot bring the API or database back
            status, alive = f"paused_by_{self._outage}", True
        elif nothing_to_do:
            status, alive = "idle", True
        elif since > self._stall_timeout_s:
            status, alive = "stalled", False
        else:
            status, alive = "progressing", True
        return alive, {
            "status": status,
            "seconds_since_progress": round(since, 3),
            "stall_timeout_s": self._stall_timeout_s,
            "idle": self._idle,
            "lag": self._lag,
        }

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """``(ready, reasons)``; also publishes ``invoice_sync_ready``."""
        problems = self._problems()
        ready = not problems
        metrics.READY.set(1 if ready else 0)
        return ready, {
            "status": "ready" if ready else "not_ready",
            "problems": problems,
            "started": self._started,
            "partitions": self._partitions,
            "waiting_for_assignment": self._waiting_for_assignment,
            "token_obtainable": self._token_obtainable,
            "configuration_fault": self._config_fault,
        }

    def _problems(self) -> list[str]:
        problems: list[str] = []
        if not self._started:
            problems.append("not_started")
        if self._partitions == 0 and not self._waiting_for_assignment:
            problems.append("no_partitions_assigned")
        if not self._token_obtainable:
            problems.append("token_unobtainable")
        if self._outage is not None:
            problems.append(self._outage)
        if self._config_fault is not None:
            problems.append(f"configuration_fault:{self._config_fault}")
        return problems

    def _publish_ready(self) -> None:
        metrics.READY.set(0 if self._problems() else 1)


class _ServerState(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


class HealthServer(Lifecycle):
    """The aiohttp app on ``settings.host:settings.port``; an async context manager.

    ``port`` is the port actually bound, which matters when ``settings.port`` is 0. Starting
    twice raises; stopping is idempotent.
    """

    def __init__(
        self,
        settings: HttpServerSettings,
        state: HealthState,
        *,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._settings = settings
        self._state = state
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self._lifecycle = _ServerState.UNOPENED
        self.port: int = settings.port

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            RuntimeError: when started a second time.
            OSError: when the address cannot be bound.
        """
        if self._lifecycle is not _ServerState.UNOPENED:
            raise RuntimeError("HealthServer can be started once")
        self._lifecycle = _ServerState.OPENED
        metrics.initialise_label_sets()
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        # Probes arrive every few seconds; an access log line for each is noise.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self._settings.host, self._settings.port)
            await site.start()
        except BaseException:
            await self.close()
            raise
        address = runner.addresses[0]
        self.port = int(address[1])

    async def close(self) -> None:
        """Stop serving; safe to call more than once."""
        self._lifecycle = _ServerState.CLOSED
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self._registry), headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, reasons = self._state.liveness()
        return _json(ok, reasons)

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, reasons = self._state.readiness()
        return _json(ok, reasons)


def _json(ok: bool, reasons: dict[str, object]) -> web.Response:
    return web.json_response(reasons, status=200 if ok else 503)


def _default_url(settings: Settings) -> str:
    host = settings.http.host
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http.port}/healthz"


async def check_health(settings: Settings, *, url: str | None = None) -> int:
    """``invoice-sync check``: 0 when ``/healthz`` answers 200, else 1; prints one line."""
    target = url or _default_url(settings)
    timeout = aiohttp.ClientTimeout(total=_CHECK_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(target) as response,
        ):
            body = await response.text()
            status = response.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        print(f"unhealthy: {target} unreachable ({type(exc).__name__})", file=sys.stdout)
        return 1
    detail = _one_line(body)
    if status == 200:
        print(f"healthy: {detail}")
        return 0
    print(f"unhealthy: {target} answered HTTP {status} {detail}")
    return 1


def _one_line(body: str) -> str:
    try:
        return json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return " ".join(body.split())[:200]
