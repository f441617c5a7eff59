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
import time
from collections.abc import Callable
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from worker.api import AccountingApi
from worker.auth import Auth, BearerAuth, build_auth
from worker.dlq import DeadLetterWriter
from worker.errors import ConfigurationFault, InvoiceSyncError, SettingsError
from worker.health import HealthServer, HealthState
from worker.kafka import consumer_options, producer_options
from worker.ledger import open_ledger
from worker.logs import get_logger
from worker.pipeline import Pipeline
from worker.processor import EventProcessor
from worker.settings import ENV_PREFIX, KafkaSettings, Settings

__all__ = ["event_loop_factory", "run_service", "tune_gc"]

log = get_logger(__name__)

_WATCH_INTERVAL_S = 1.0
#: Leaving the group gets at least this long, even when the drain used the whole budget.
_MIN_LEAVE_S = 1.0

_T = TypeVar("_T")


async def run_service(
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    early_signal: Callable[[], signal.Signals | None] | None = None,
) -> int:
    """Run the worker until SIGTERM/SIGINT (or idle, when configured); return an exit code.

    A stop signal at any point of start-up (broker bootstrap, the group join) abandons the
    start-up: what was opened is closed, the consumer leaves the group within
    ``pipeline.shutdown_timeout_s``, and the exit code is 0. ``early_signal`` reports a
    signal that arrived before the event loop existed (the CLI catches those).

    Returns:
        0 after an orderly stop; 1 after a failure; 2 for a configuration error (a source
        topic the cluster does not have, a fault that stops the pipeline).
    """
    health = HealthState(stall_timeout_s=settings.http.stall_timeout_s)
    loop = asyncio.get_running_loop()
    stopping = _Stopping(shutdown_timeout_s=settings.pipeline.shutdown_timeout_s)
    async with contextlib.AsyncExitStack() as stack:
        # Handlers first, and they stay until everything below is closed: a SIGTERM during
        # start-up (the group join takes seconds) still ends in an orderly exit.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.signal, sig)
            stack.callback(loop.remove_signal_handler, sig)
        early = early_signal() if early_signal is not None else None
        if early is not None:  # stopped before the loop existed: open nothing at all
            stopping.signal(early)
            log.info("worker.stopped", during="start-up")
            return 0
        start_up = asyncio.create_task(_start(stack, settings, health, stopping), name="start-up")
        try:
            started = await stopping.unless_requested(start_up)
        except SettingsError as exc:
            log.error("worker.configuration_error", message=exc.message)
            return 2
        except KafkaConnectionError:
            # aiokafka tried every bootstrap server once; the orchestrator's restart backoff
            # is the retry. Said with the setting, not as a bare traceback.
            log.error(
                "worker.kafka_unreachable",
                bootstrap_servers=settings.kafka.bootstrap_servers,
                security_protocol=settings.kafka.security_protocol,
                hint=f"no broker answered; check {ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS, the "
                "network path and the security protocol",
            )
            return 1
        if started is None:
            await stack.aclose()  # closes what start-up opened; the consumer leaves the group
            log.info("worker.stopped", during="start-up")
            return 0
        pipeline, port = started
        stopping.pipeline = pipeline
        health.set_started(True)
        log.info(
            "worker.started",
            topics=settings.kafka.topics,
            group=settings.kafka.group_id,
            metrics_port=port,
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


async def _start(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    health: HealthState,
    stopping: _Stopping,
) -> tuple[Pipeline, int]:
    """Open everything into ``stack`` and join the group; ``(pipeline, metrics port)``.

    Runs as a task that a stop request cancels: whatever it opened is already on the stack
    and closes with it.

    Raises:
        SettingsError: a source topic does not exist on the cluster.
    """
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
    writer = DeadLetterWriter(producer, settings=settings, written=ledger)
    await _require_topics(settings.kafka)
    consumer = AIOKafkaConsumer(**consumer_options(settings.kafka))
    # Stopping the consumer leaves the group, so partitions move at once on shutdown; it is
    # bounded, because a stop during a join would otherwise wait for the join to finish.
    stack.push_async_callback(_stop_consumer, consumer, stopping)
    pipeline = Pipeline(
        consumer=consumer,
        handler=EventProcessor(api=api, ledger=ledger, settings=settings),
        dead_letters=writer.send,
        settings=settings,
        health=health,
    )
    consumer.subscribe(settings.kafka.topics, listener=pipeline.listener)
    # The join takes seconds, longer while the group waits for a member that died: this line
    # tells a start-up hanging here from one hanging on the database or the API.
    log.info("worker.joining_group", group=settings.kafka.group_id, topics=settings.kafka.topics)
    await consumer.start()  # returns once the first rebalance assigned our partitions
    return pipeline, server.port


async def _require_topics(kafka: KafkaSettings) -> None:
    """Refuse to start on a source or dead-letter topic the cluster does not have.

    A missing source topic: aiokafka would ask for its metadata every 100 ms for
    ``request_timeout_ms`` (an error line each time) and then fail with a bare
    ``UnknownTopicOrPartitionError``; or, where the brokers auto-create topics, a misspelt
    name would silently become a new, empty topic. A missing dead-letter topic would be found
    by the first bad event, hours later perhaps: its write fails (``dlq.write_failed``) and
    is retried while its partition stops committing, so the failure is told at start-up.

    Raises:
        SettingsError: naming the variable and the missing topics.
    """
    probe = AIOKafkaConsumer(**consumer_options(kafka, group=False))
    try:
        await probe.start()  # no subscription, no group: only connects
        # Metadata of all topics: asking for one by name would make auto-creating brokers
        # create it.
        known = await probe.topics()
    finally:
        await probe.stop()
    missing = [topic for topic in kafka.topics if topic not in known]
    if missing:
        raise SettingsError(
            f"{ENV_PREFIX}KAFKA__TOPICS: no such topic on the cluster: {', '.join(missing)} "
            "(create it, or correct the name)"
        )
    dead = [t for t in dict.fromkeys(kafka.dlq_for(t) for t in kafka.topics) if t not in known]
    if dead:
        raise SettingsError(
            f"{ENV_PREFIX}KAFKA__DLQ_TOPIC: no such dead-letter topic on the cluster: "
            f"{', '.join(dead)} (create it; by default each source topic's is <topic>.dlq)"
        )


async def _stop_consumer(consumer: AIOKafkaConsumer, stopping: _Stopping) -> None:
    """Stop the consumer (commit nothing, leave the group) within the shutdown budget."""
    budget = stopping.time_left()
    try:
        await asyncio.wait_for(consumer.stop(), timeout=budget)
    except TimeoutError:
        # Mid-join: the group drops us after session_timeout_ms instead.
        log.warning("consumer.stop_timed_out", timeout_s=round(budget, 1))


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
    """A stop request: forwarded to the pipeline once it exists, and raced against start-up."""

    def __init__(self, *, shutdown_timeout_s: float) -> None:
        self.requested = False
        self.pipeline: Pipeline | None = None
        self._shutdown_timeout_s = shutdown_timeout_s
        self._event = asyncio.Event()
        self._deadline: float | None = None

    def signal(self, sig: signal.Signals) -> None:
        log.info("worker.stopping", signal=sig.name)
        if not self.requested:
            self._deadline = time.monotonic() + self._shutdown_timeout_s
        self.requested = True
        self._event.set()
        if self.pipeline is not None:
            self.pipeline.stop()

    def time_left(self) -> float:
        """Seconds left of the shutdown budget (all of it before a stop was requested)."""
        if self._deadline is None:
            return self._shutdown_timeout_s
        return max(_MIN_LEAVE_S, self._deadline - time.monotonic())

    async def unless_requested(self, task: asyncio.Task[_T]) -> _T | None:
        """``task``'s result, or None when a stop request comes first (``task`` is cancelled).

        Raises:
            BaseException: whatever ``task`` raised, when it ended before a stop request.
        """
        stop = asyncio.create_task(self._event.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})  # a cancel of our own still propagates
        if task.cancelled():
            return None
        failure = task.exception()
        if failure is not None and self.requested:
            # Start-up failed while being abandoned: the stop request is what counts.
            log.info("worker.start_abandoned", error_type=type(failure).__name__)
            return None
        return task.result()  # finished first (or together with the stop: the caller sees it)
