"""The consume loop: ordering per key, bounded concurrency, safe commits, retries, shutdown.

What one event *does* lives in :mod:`worker.processor`; this module owns how events flow:

* **Ordering.** Records with the same Kafka key (the order id) run strictly one after the
  other; different keys run concurrently, across and within partitions: up to
  ``EVENTS_PER_API_SLOT * max_in_flight`` events at once, of which at most ``max_in_flight``
  are calling the API (the API client holds that bound).
* **Commits.** Each partition's committed offset is its lowest unfinished offset
  (:class:`OffsetTracker`), committed with explicit offsets for assigned partitions only,
  every ``commit_interval_s``. A failed commit is logged and counted; the next one covers it.
* **Backpressure.** At most ``max_buffered`` records are held; past that every partition is
  paused until half have finished. A long retry wait pauses its own partition instead of
  blocking the poll loop.
* **Failures.** Transient errors retry under :class:`~worker.retry.RetryPolicy`; permanent ones
  and exhausted retries go to the dead-letter topic and the offset moves on; if the DLQ write
  fails the offset is not committed. Configuration faults (bad credentials, scopes, token
  endpoint down) pause consumption and retry slowly without spending the event's attempts.
* **Rebalance.** On revocation, queued work for the lost partitions is dropped, running work
  gets ``rebalance_timeout_s`` to finish, and only finished offsets are committed. Work
  checks its tracker is still ``active`` before it may count toward a commit.
* **Shutdown.** :meth:`Pipeline.stop` stops fetching; running events get
  ``shutdown_timeout_s``; finished work is committed; the rest is left for redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from worker.errors import (
    ApiOutage,
    ConfigurationFault,
    InvoiceSyncError,
    LedgerUnavailable,
    PermanentEventError,
    TokenUnavailable,
    TransientError,
)
from worker.logs import event_context, get_logger
from worker.metrics import (
    COMMIT_FAILURES,
    CONSUMER_LAG,
    EVENTS_CONSUMED,
    EVENTS_IN_FLIGHT,
    LAST_COMMIT,
    PARTITIONS_PAUSED,
    RETRIES,
    event_type_label,
    labelled,
)
from worker.retry import Backoff, RetryPolicy
from worker.settings import Settings

__all__ = [
    "EVENTS_PER_API_SLOT",
    "HandleResult",
    "Handler",
    "OffsetTracker",
    "Pipeline",
    "RetriesExhausted",
]

log = get_logger(__name__)

#: Events that may run per ``max_in_flight`` API slot (see ``Pipeline.__init__``).
EVENTS_PER_API_SLOT = 2
_POLL_TIMEOUT_MS = 200
_FINAL_COMMIT_TIMEOUT_S = 10.0
_LAG_REFRESH_S = 5.0
_PAUSE_RETRY_LONGER_THAN_S = 1.0
#: Outcomes that went through the token, the API and the ledger, and so end any fault; a
#: skipped type or a duplicate may touch none of them (nothing left waiting ends it too).
_PROVES_DEPENDENCIES = frozenset({"created", "reconciled"})


@dataclass(frozen=True, slots=True)
class HandleResult:
    """What the processor did with one event (labels come from small fixed sets)."""

    event_type: str
    outcome: str  # created | skipped | duplicate | reconciled | void


class Handler(Protocol):
    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> HandleResult: ...


class HealthSink(Protocol):
    """The part of :class:`worker.health.HealthState` the pipeline reports to."""

    def mark_progress(self) -> None: ...
    def set_idle(self, idle: bool) -> None: ...
    def set_assignment(self, partitions: int, *, waiting: bool) -> None: ...
    def set_lag(self, total: int) -> None: ...
    def set_config_fault(self, reason: str | None) -> None: ...
    def set_token_obtainable(self, ok: bool) -> None: ...
    def set_outage(self, reason: str | None) -> None: ...


class RetriesExhausted(PermanentEventError):
    """A transient failure outlived the retry budget; the event goes to the DLQ."""

    reason = "retries_exhausted"


class InternalError(TransientError):
    """An exception nobody classified: retried like a transient one, then dead-lettered."""

    reason = "internal_error"


class OffsetTracker:
    """Finished/unfinished offsets of one partition for one assignment.

    ``committable`` is one past the highest offset below which everything finished, so a
    commit never passes an unfinished event even when completions come back out of order.
    """

    __slots__ = ("_done", "_pending", "accepting", "active", "committable", "committed", "running")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self.committable: int | None = None
        self.committed: int | None = None
        self.active = True  # finished work may still count toward a commit
        self.accepting = True  # queued work may still start
        self.running = 0  # events of this partition being processed right now

    def add(self, offset: int) -> None:
        self._pending.append(offset)

    def finish(self, offset: int) -> None:
        self._done.add(offset)
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            first = pending.popleft()
            done.discard(first)
            self.committable = first + 1

    @property
    def unfinished(self) -> int:
        return len(self._pending)


@dataclass(slots=True)
class _Item:
    record: ConsumerRecord[bytes, bytes]
    tp: TopicPartition
    tracker: OffsetTracker
    chain_key: Any
    done: bool = False


@dataclass(slots=True)
class _Fault:
    reason: str
    since: float
    cleared: asyncio.Event = field(default_factory=asyncio.Event)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._pipeline._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._pipeline._on_assigned(set(assigned))


class Pipeline:
    """Runs ``handler`` over the consumer's records until :meth:`stop`."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        handler: Handler,
        dead_letters: Callable[..., Awaitable[bool | None]],
        settings: Settings,
        health: HealthSink | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._consumer = consumer
        self._handler = handler
        self._dead_letters = dead_letters
        self._settings = settings
        self._p = settings.pipeline
        self._health = health
        self._sleep = sleep
        rng = rng or random.Random()
        self._policy = RetryPolicy(
            max_attempts=self._p.max_attempts,
            max_elapsed_s=self._p.max_retry_s,
            backoff=Backoff(
                self._p.backoff_base_s, self._p.backoff_max_s, self._p.retry_after_cap_s, rng
            ),
        )
        self._fault_backoff = Backoff(
            self._p.backoff_base_s,
            self._p.config_fault_backoff_max_s,
            self._p.config_fault_backoff_max_s,
            rng,
        )
        # A dependency that is down (API, ledger) comes back by itself, often within a
        # minute: probed at the pace of ordinary retries, not of a configuration fault.
        self._outage_backoff = Backoff(
            self._p.backoff_base_s, self._p.backoff_max_s, self._p.backoff_max_s, rng
        )
        # Twice as many events run as API requests may be in flight (the API client holds that
        # bound): while max_in_flight events wait for the API, as many more parse, map and
        # claim their ledger rows, so a slot freed by an answer is taken at once instead of
        # after that work. Measured in S2 of the benchmark: +15 % over one times, and four
        # times was no better than two.
        self._sem = asyncio.Semaphore(EVENTS_PER_API_SLOT * self._p.max_in_flight)
        self._trackers: dict[TopicPartition, OffsetTracker] = {}
        # key -> items waiting for (or being processed by) that key's task; guards ordering.
        self._chains: dict[Any, deque[_Item]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._buffered = 0
        self._pause_reasons: dict[TopicPartition, Counter[str]] = {}
        self._paused: set[TopicPartition] = set()
        self._fault: _Fault | None = None
        self._stopping = asyncio.Event()
        self._draining = False
        self._failure: BaseException | None = None
        self._last_commit = 0.0
        self._last_lag = 0.0
        self._idle_since: float | None = None
        self._initial_committed: dict[TopicPartition, int] = {}
        self.listener = _Listener(self)

    # --- public --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop fetching and drain (safe from a signal handler).

        Nothing new starts from this moment, not only once the poll loop next wakes up.
        """
        self._stopping.set()
        self._draining = True
        if self._fault is not None:
            self._fault.cleared.set()  # wake fault waiters so they notice the drain

    @property
    def in_flight(self) -> int:
        return self._buffered

    async def run(self) -> None:
        """Consume until :meth:`stop`, then drain, commit and return.

        Raises:
            BaseException: a failure stored by a background task (a bug), after draining.
        """
        try:
            while not self._stopping.is_set():
                if self._failure is not None:
                    raise self._failure
                batch = await self._consumer.getmany(
                    timeout_ms=_POLL_TIMEOUT_MS, max_records=self._settings.kafka.fetch_max_records
                )
                for tp, records in batch.items():
                    for record in records:
                        self._dispatch(tp, record)
                if not batch and self._buffered == 0 and self._health is not None:
                    self._health.mark_progress()  # nothing to do is progress too
                if self._fault is not None and self._buffered == 0:
                    # Nobody is left to probe the fault (the waiting events were revoked, or
                    # finished otherwise): resume, and let the next events find out.
                    self._fault_clear()
                now = time.monotonic()
                if now - self._last_commit >= self._p.commit_interval_s:
                    await self._commit()
                if now - self._last_lag >= _LAG_REFRESH_S:
                    await self._refresh_lag()
                self._check_idle(now)
        finally:
            await self._drain(self._p.shutdown_timeout_s)
            # Bounded: a broker that is gone must not hold the exit (the offsets are then
            # simply redelivered, and the ledger absorbs that).
            try:
                await asyncio.wait_for(self._commit(), timeout=_FINAL_COMMIT_TIMEOUT_S)
            except TimeoutError:
                log.warning("offsets.final_commit_timed_out")

    # --- dispatch and per-key chains -----------------------------------------------------

    def _dispatch(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        tracker = self._trackers.get(tp)
        if tracker is None or not tracker.active:
            return  # revoked while the fetch was in flight: the new owner reads it again
        tracker.add(record.offset)
        chain_key = record.key if record.key is not None else (tp, record.offset)
        item = _Item(record, tp, tracker, chain_key)
        self._buffered += 1
        EVENTS_IN_FLIGHT.set(self._buffered)
        chain = self._chains.get(chain_key)
        if chain is not None:
            chain.append(item)
        else:
            self._chains[chain_key] = deque([item])
            task = asyncio.create_task(self._run_chain(chain_key))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        if self._buffered >= self._p.max_buffered:
            for assigned in self._trackers:
                self._pause(assigned, "buffer")

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
            self._stopping.set()

    async def _run_chain(self, chain_key: Any) -> None:
        chain = self._chains[chain_key]
        try:
            while chain and not self._draining:
                item = chain[0]
                async with self._sem:
                    # Checked again once a slot is free: a drain or a revocation may have
                    # begun while this event waited, and then it must not start.
                    if self._draining:
                        break
                    if item.tracker.accepting:
                        item.tracker.running += 1
                        try:
                            await self._process(item)
                        finally:
                            item.tracker.running -= 1
                chain.popleft()
                self._release(item)
        finally:
            if self._chains.get(chain_key) is chain:
                for left in chain:
                    self._release(left, finished=False)
                del self._chains[chain_key]

    def _release(self, item: _Item, *, finished: bool = True) -> None:
        self._buffered -= 1
        EVENTS_IN_FLIGHT.set(self._buffered)
        if finished and item.done and item.tracker.active:
            item.tracker.finish(item.record.offset)
        if self._health is not None:
            self._health.mark_progress()
        if self._buffered <= self._p.max_buffered // 2:
            for tp in list(self._pause_reasons):
                self._unpause(tp, "buffer")

    # --- one event, with retries ---------------------------------------------------------

    async def _process(self, item: _Item) -> None:
        record = item.record
        attempt = 0
        fault_attempt = 0
        started = time.monotonic()
        first_failure: float | None = None
        # The Kafka key is the order id by contract; it rides on every line of this event.
        order = record.key.decode("utf-8", "replace")[:100] if record.key is not None else None
        with event_context(
            topic=record.topic, partition=record.partition, offset=record.offset, order_id=order
        ):
            while True:
                if (attempt or fault_attempt) and not item.tracker.active:
                    return  # revoked while retrying: the new owner reads it again
                attempt += 1
                try:
                    result = await self._handler.handle(record)
                except (ConfigurationFault, TokenUnavailable, LedgerUnavailable, ApiOutage) as exc:
                    # Not the event's fault: wait for the configuration, the token endpoint,
                    # the ledger or the API to work again; the event's attempts are not spent,
                    # nor its retry time (the budget counts from when the pause ended).
                    attempt -= 1
                    fault_attempt += 1
                    if self._draining:
                        return  # unfinished: redelivered after the restart
                    paused_at = time.monotonic()
                    await self._wait_out_fault(exc, fault_attempt)
                    started += time.monotonic() - paused_at
                    # Attempts spent as the outage began (before it was recognised) were not
                    # the event's either: after a pause it starts a fresh budget, so an outage
                    # that comes and goes cannot wear it down spell by spell.
                    attempt = 0
                    continue
                except PermanentEventError as exc:
                    first_failure = first_failure or time.time()
                    await self._to_dlq(item, exc, attempt, first_failure)
                    return
                except TransientError as exc:
                    first_failure = first_failure or time.time()
                    if self._draining:
                        return
                    if not await self._backoff(item, exc, attempt, started):
                        await self._to_dlq(
                            item,
                            RetriesExhausted(
                                f"gave up after {attempt} attempts: {exc.reason}",
                                last_reason=exc.reason,
                                **_event_type_of(exc),
                            ),
                            attempt,
                            first_failure,
                        )
                        return
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("event.unexpected_error", attempt=attempt)
                    first_failure = first_failure or time.time()
                    internal = InternalError(f"unexpected {type(exc).__name__}")
                    if not await self._backoff(item, internal, attempt, started):
                        await self._to_dlq(
                            item,
                            RetriesExhausted(
                                f"gave up after {attempt} attempts: internal_error",
                                last_reason="internal_error",
                            ),
                            attempt,
                            first_failure,
                        )
                        return
                    continue
                if result.outcome in _PROVES_DEPENDENCIES:
                    self._fault_clear()
                labelled(EVENTS_CONSUMED, event_type_label(result.event_type), result.outcome).inc()
                item.done = True
                return

    async def _backoff(
        self, item: _Item, exc: InvoiceSyncError, attempt: int, started: float
    ) -> bool:
        delay = self._policy.next_delay(exc, attempt=attempt, elapsed_s=time.monotonic() - started)
        if delay is None:
            return False
        RETRIES.labels(exc.reason).inc()
        log.warning(
            "event.retry",
            attempt=attempt,
            reason=exc.reason,
            delay_s=round(delay, 3),
            **_safe_details(exc),
        )
        long_wait = delay > _PAUSE_RETRY_LONGER_THAN_S
        if long_wait:
            self._pause(item.tp, "retry")
        try:
            await self._sleep(delay)
        finally:
            if long_wait:
                self._unpause(item.tp, "retry")
        return True

    async def _to_dlq(
        self, item: _Item, exc: InvoiceSyncError, attempts: int, first_failure: float
    ) -> None:
        record = item.record
        if not item.tracker.active:
            # The partition moved while this event was abandoned: its new owner decides.
            log.info("event.dropped_after_revocation", reason=exc.reason)
            return
        write_attempt = 0
        while True:
            try:
                written = await self._dead_letters(
                    record,
                    error=exc,
                    attempts=attempts,
                    first_failure=first_failure,
                    last_failure=time.time(),
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as write_exc:
                write_attempt += 1
                # A record too large for the DLQ never gets here (the writer leaves the value
                # out): what is left is transient (broker down, no leader) and worth waiting.
                log.warning(
                    "dlq.write_failed",
                    attempt=write_attempt,
                    reason=exc.reason,
                    error_type=type(write_exc).__name__,
                )
                if self._draining:
                    return  # not written, not committed: redelivered after restart
                await self._sleep(self._fault_backoff.delay(write_attempt))
        if written is not False:  # False: its letter was written before (dlq.already_written)
            log.info(
                "event.dead_lettered",
                reason=exc.reason,
                attempts=attempts,
                message=exc.message[:300],
                **_safe_details(exc),
            )
        EVENTS_CONSUMED.labels(
            event_type_label(str(exc.details.get("event_type", "other"))), "dead_lettered"
        ).inc()
        item.done = True

    async def _wait_out_fault(self, exc: InvoiceSyncError, fault_attempt: int) -> None:
        outage = isinstance(exc, ApiOutage | LedgerUnavailable)
        fault = self._fault
        if fault is None:
            fault = self._fault = _Fault(exc.reason, time.monotonic())
            log.error(
                "pipeline.paused_by_fault",
                reason=exc.reason,
                message=exc.message,
                **_safe_details(exc),
            )
            for tp in self._trackers:
                self._pause(tp, "fault")
            if self._health is not None:
                if isinstance(exc, TokenUnavailable):
                    self._health.set_token_obtainable(False)
                elif outage:
                    self._health.set_outage(exc.reason)
                else:
                    self._health.set_config_fault(exc.reason)
        delay = (self._outage_backoff if outage else self._fault_backoff).delay(fault_attempt)
        RETRIES.labels(exc.reason).inc()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fault.cleared.wait(), timeout=delay)

    def _fault_clear(self) -> None:
        fault = self._fault
        if fault is None:
            return
        self._fault = None
        fault.cleared.set()
        log.info(
            "pipeline.resumed_after_fault",
            reason=fault.reason,
            paused_s=round(time.monotonic() - fault.since, 1),
        )
        for tp in list(self._pause_reasons):
            self._unpause(tp, "fault")
        if self._health is not None:
            self._health.set_config_fault(None)
            self._health.set_token_obtainable(True)
            self._health.set_outage(None)

    # --- pausing -------------------------------------------------------------------------

    def _pause(self, tp: TopicPartition, reason: str) -> None:
        if tp not in self._trackers:
            return
        self._pause_reasons.setdefault(tp, Counter())[reason] += 1
        if reason in ("buffer", "fault"):
            self._pause_reasons[tp][reason] = 1  # these are flags, not counts
        if tp not in self._paused:
            self._paused.add(tp)
            self._consumer.pause(tp)
            PARTITIONS_PAUSED.set(len(self._paused))
            log.debug("partition.paused", topic=tp.topic, partition=tp.partition, why=reason)

    def _unpause(self, tp: TopicPartition, reason: str) -> None:
        reasons = self._pause_reasons.get(tp)
        if not reasons or reasons[reason] <= 0:
            return
        reasons[reason] -= 1
        if +reasons:
            return
        del self._pause_reasons[tp]
        if tp in self._paused:
            self._paused.discard(tp)
            if tp in self._trackers:
                self._consumer.resume(tp)
            PARTITIONS_PAUSED.set(len(self._paused))
            log.debug("partition.resumed", topic=tp.topic, partition=tp.partition)

    # --- commits, lag, idleness ----------------------------------------------------------

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        self._last_commit = time.monotonic()
        offsets = {
            tp: t.committable
            for tp, t in self._trackers.items()
            if t.active
            and t.committable is not None
            and t.committable != t.committed
            and (only is None or tp in only)
        }
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            COMMIT_FAILURES.inc()
            log.warning(
                "offsets.commit_failed", error_type=type(exc).__name__, partitions=len(offsets)
            )
            return
        for tp, offset in offsets.items():
            self._trackers[tp].committed = offset
        LAST_COMMIT.set(time.time())
        log.debug("offsets.committed", partitions=len(offsets))

    async def _refresh_lag(self) -> None:
        self._last_lag = time.monotonic()
        total = 0
        for tp, tracker in list(self._trackers.items()):
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            committed = tracker.committed
            if committed is None:
                if tp not in self._initial_committed:
                    try:
                        self._initial_committed[tp] = await self._consumer.committed(tp) or 0
                    except Exception:
                        continue
                committed = self._initial_committed[tp]
            lag = max(0, highwater - committed)
            total += lag
            CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)
        if self._health is not None:
            self._health.set_lag(total)

    def _caught_up(self, tp: TopicPartition, tracker: OffsetTracker) -> bool:
        highwater = self._consumer.highwater(tp)
        if highwater is None:
            return False  # not fetched yet: unknown
        committed = tracker.committed
        if committed is None:
            committed = self._initial_committed.get(tp, 0)
        return bool(committed >= highwater)

    def _check_idle(self, now: float) -> None:
        idle = (
            self._buffered == 0
            and bool(self._trackers)
            and all(self._caught_up(tp, t) for tp, t in self._trackers.items())
        )
        if self._health is not None:
            self._health.set_idle(idle)
        limit = self._p.stop_when_idle_s
        if not idle:
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = now
        elif limit is not None and now - self._idle_since >= limit:
            log.info("pipeline.idle_stop", idle_s=round(now - self._idle_since, 1))
            self.stop()

    # --- rebalance and shutdown ----------------------------------------------------------

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            if tp not in self._trackers:
                self._trackers[tp] = OffsetTracker()
                if self._fault is not None:
                    self._pause(tp, "fault")
        log.info(
            "partitions.assigned", partitions=sorted(f"{t.topic}:{t.partition}" for t in assigned)
        )
        if self._health is not None:
            # The rebalance is over, so no longer waiting: an empty assignment means a spare
            # member (more members than partitions), and readiness says so.
            self._health.set_assignment(len(self._trackers), waiting=False)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        lost = {tp: self._trackers[tp] for tp in revoked if tp in self._trackers}
        if not lost:
            return
        deadline = time.monotonic() + self._p.rebalance_timeout_s
        # Queued work of lost partitions does not start; running work gets until the deadline
        # and, if it finishes, counts toward the commit below.
        for tracker in lost.values():
            tracker.accepting = False
        # Polls a counter shared by many chains; a revocation is rare and bounded.
        while any(t.running for t in lost.values()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await self._commit(only=set(lost))
        for tp, tracker in lost.items():
            tracker.active = False
            del self._trackers[tp]
            self._initial_committed.pop(tp, None)
            self._pause_reasons.pop(tp, None)
            self._paused.discard(tp)
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(tp.topic, str(tp.partition))
        PARTITIONS_PAUSED.set(len(self._paused))
        abandoned = sum(t.running for t in lost.values())
        log.info(
            "partitions.revoked",
            partitions=sorted(f"{t.topic}:{t.partition}" for t in lost),
            abandoned=abandoned,
        )
        if self._health is not None:
            # Waiting covers only the first join; a group that cannot form again after a
            # revocation must show as no_partitions_assigned, not as waiting.
            self._health.set_assignment(len(self._trackers), waiting=False)

    async def _drain(self, timeout_s: float) -> None:
        """Let running events finish (bounded); queued ones are left for redelivery."""
        self._draining = True
        if self._fault is not None:
            self._fault.cleared.set()  # wake fault waiters so they notice the drain
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
                log.warning("pipeline.drain_timeout", abandoned=len(pending))


def _event_type_of(exc: InvoiceSyncError) -> dict[str, object]:
    """``{"event_type": ...}`` when the handler said which type failed, else nothing."""
    event_type = exc.details.get("event_type")
    return {"event_type": event_type} if event_type is not None else {}


def _safe_details(exc: InvoiceSyncError) -> dict[str, object]:
    """Error details as log fields (they are non-secret by construction)."""
    return {k: v for k, v in exc.details.items() if isinstance(v, str | int | float | bool)}
