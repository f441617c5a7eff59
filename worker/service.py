"""``invoice-sync run``: wire the parts together and run until SIGTERM.

Everything with a lifecycle (ledger, token provider, API session, DLQ producer, consumer,
health server) is an async context manager composed in one ``AsyncExitStack``, so every exit
path, a crash included, closes what was opened in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker.api import AccountingApi
from worker.auth import Auth, BearerAuth, build_auth
from worker.dlq import DeadLetterWriter
from worker.errors import ConfigurationFault, InvoiceSyncError
from worker.health import HealthServer, HealthState
from worker.kafka import consumer_options, producer_options
from worker.ledger import open_ledger
from worker.logs import get_logger
from worker.pipeline import Pipeline
from worker.processor import EventProcessor
from worker.settings import Settings

__all__ = ["event_loop_factory", "run_service", "tune_gc"]

log = get_logger(__name__)

_WATCH_INTERVAL_S = 1.0


async def run_service(settings: Settings, *, ready: asyncio.Event | None = None) -> int:
    """Run the worker until SIGTERM/SIGINT (or idle, when configured); return an exit code."""
    health = HealthState(stall_timeout_s=settings.http.stall_timeout_s)
    loop = asyncio.get_running_loop()
    stopping = _Stopping()
    async with contextlib.AsyncExitStack() as stack:
        # Handlers first: a SIGTERM during start-up (group join takes seconds) still ends in
        # an orderly exit instead of the default kill.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.signal, sig)
            stack.callback(loop.remove_signal_handler, sig)
        server = await stack.enter_async_context(HealthServer(settings.http, health))
        ledger = await stack.enter_async_context(open_ledger(settings.ledger))
        auth = build_auth(settings)
        await stack.enter_async_context(auth)
        api = await stack.enter_async_context(
            AccountingApi(settings.api, auth=auth, max_connections=settings.pipeline.max_in_flight)
        )
        watcher = asyncio.create_task(_watch_credentials(auth, health), name="auth-watch")
        stack.push_async_callback(_cancel, watcher)
        producer = AIOKafkaProducer(**producer_options(settings.kafka))
        stack.push_async_callback(producer.stop)  # also closes a producer whose start failed
        await producer.start()
        writer = DeadLetterWriter(producer, settings=settings)
        consumer = AIOKafkaConsumer(**consumer_options(settings.kafka))
        pipeline = Pipeline(
            consumer=consumer,
            handler=EventProcessor(api=api, ledger=ledger, settings=settings),
            dead_letters=writer.send,
            settings=settings,
            health=health,
        )
        consumer.subscribe(settings.kafka.topics, listener=pipeline.listener)
        # Stopping the consumer leaves the group, so partitions move at once on shutdown.
        stack.push_async_callback(consumer.stop)
        await consumer.start()
        stopping.pipeline = pipeline
        health.set_started(True)
        health.set_assignment(0, waiting=True)
        log.info(
            "worker.started",
            topics=settings.kafka.topics,
            group=settings.kafka.group_id,
            metrics_port=server.port,
            max_in_flight=settings.pipeline.max_in_flight,
            event_loop=type(loop).__module__.partition(".")[0],
        )
        if ready is not None:
            ready.set()
        if stopping.requested:
            pipeline.stop()
        try:
            await pipeline.run()
        except ConfigurationFault as exc:
            log.error("worker.configuration_fault", reason=exc.reason, message=exc.message)
            return 2
        except InvoiceSyncError as exc:
            log.error("worker.failed", reason=exc.reason, message=exc.message)
            return 1
    log.info("worker.stopped")
    return 0


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop ``run`` uses for ``pipeline.event_loop``; ``None`` means asyncio's own.

    uvloop runs the loop, sockets and transports in C (libuv), which is where the worker
    spends much of its time between events: aiohttp's and aiokafka's reads and writes.
    Measured in 14 S1 worker runs alternating the two loops: 0.656 -> 0.595 CPU-ms per
    invoice on average, peak RSS unchanged (docs/benchmark.md).

    Raises:
        RuntimeError: ``uvloop`` was asked for and is not installed.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError(
                "pipeline.event_loop is uvloop but uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the objects that live as long as the process.

    Called by the CLI once everything is imported. What exists by then (modules, pydantic
    validators, settings) is never garbage; ``gc.freeze`` moves it out of the collector's
    generations, so the collections that the per-event allocations trigger no longer walk
    it. Measured in a 60,000-event run (docs/benchmark.md): 1.01 -> 0.86 CPU-s per 1,000
    invoices, peak RSS unchanged. Collecting the youngest generation less often as well
    (every 10,000 allocations instead of 700) saved more CPU but let RSS climb from about
    90 to 125 MB over the run, against the memory target, so the thresholds stay at
    CPython's defaults.
    """
    gc.freeze()


async def _watch_credentials(auth: Auth, health: HealthState) -> None:
    """Readiness follows the credential even when no event is flowing to notice a fault."""
    reported = False  # whether the fault on /readyz is the one this watcher set
    if isinstance(auth, BearerAuth):
        # Fetch the first token now: bad credentials show on /readyz before any event.
        with contextlib.suppress(InvoiceSyncError):
            await auth.provider.token()
    while True:
        health.set_token_obtainable(auth.token_obtainable)
        if auth.fault is not None:
            health.set_config_fault(auth.fault.reason)
            reported = True
        elif reported:
            health.set_config_fault(None)
            reported = False
        await asyncio.sleep(_WATCH_INTERVAL_S)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _Stopping:
    """Remembers a stop signal until the pipeline exists, then forwards it."""

    def __init__(self) -> None:
        self.requested = False
        self.pipeline: Pipeline | None = None

    def signal(self, sig: signal.Signals) -> None:
        log.info("worker.stopping", signal=sig.name)
        self.requested = True
        if self.pipeline is not None:
            self.pipeline.stop()
