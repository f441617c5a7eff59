"""The consume loop on the real broker, with scripted handlers: ordering, commits, pauses,
retries, dead letters, configuration faults and draining."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tests.plugins.kafka import TopicFactory
from worker.dlq import DeadLetterWriter, read_dead_letters
from worker.errors import (
    ApiOutage,
    ApiRejected,
    ApiUnavailable,
    AuthConfigurationFault,
    InvoiceSyncError,
    MalformedEvent,
    RateLimited,
)
from worker.kafka import consumer_options, producer_options
from worker.pipeline import EVENTS_PER_API_SLOT, HandleResult, OffsetTracker, Pipeline
from worker.settings import Settings

Record = ConsumerRecord[bytes, bytes]


class TestOffsetTracker:
    def test_out_of_order_completion_never_passes_unfinished(self) -> None:
        """The committable offset stops below the lowest unfinished offset."""
        t = OffsetTracker()
        for offset in range(10, 16):
            t.add(offset)
        for offset in (12, 13, 15):
            t.finish(offset)
        assert t.committable is None  # 10 is unfinished
        t.finish(10)
        assert t.committable == 11  # 11 still unfinished
        t.finish(11)
        assert t.committable == 14  # 14 unfinished, 15 done
        t.finish(14)
        assert t.committable == 16
        assert t.unfinished == 0

    def test_random_completion_order(self) -> None:
        """Whatever the completion order, committable = one past the finished prefix."""
        rng = random.Random(3)
        t = OffsetTracker()
        offsets = list(range(200))
        for o in offsets:
            t.add(o)
        order = offsets[:]
        rng.shuffle(order)
        finished: set[int] = set()
        for o in order:
            t.finish(o)
            finished.add(o)
            prefix = 0
            while prefix in finished:
                prefix += 1
            assert t.committable == (prefix if prefix else None)


@dataclass
class Health:
    """Records what the pipeline reports (the HealthSink protocol)."""

    faults: list[str | None] = field(default_factory=list)
    token: list[bool] = field(default_factory=list)
    outages: list[str | None] = field(default_factory=list)
    progress: int = 0

    def mark_progress(self) -> None:
        self.progress += 1

    def set_idle(self, idle: bool) -> None:
        pass

    def set_assignment(self, partitions: int, *, waiting: bool) -> None:
        pass

    def set_lag(self, total: int) -> None:
        pass

    def set_config_fault(self, reason: str | None) -> None:
        if not self.faults or self.faults[-1] != reason:
            self.faults.append(reason)

    def set_token_obtainable(self, ok: bool) -> None:
        self.token.append(ok)

    def set_outage(self, reason: str | None) -> None:
        if not self.outages or self.outages[-1] != reason:
            self.outages.append(reason)


class ScriptedHandler:
    """Calls ``script(record)`` for each record and records what ran, when, concurrently."""

    def __init__(self, script: Callable[[Record], Awaitable[None]]) -> None:
        self.script = script
        self.seen: dict[bytes | None, list[int]] = defaultdict(list)
        self.done: list[tuple[int, int]] = []
        self.running = 0
        self.max_running = 0
        self.calls = 0

    async def handle(self, record: Record) -> HandleResult:
        self.calls += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            self.seen[record.key].append(record.offset)
            await self.script(record)
        finally:
            self.running -= 1
        self.done.append((record.partition, record.offset))
        return HandleResult("order.paid", "created")


@dataclass
class Dlq:
    """A dead-letter sink that can be told to fail."""

    letters: list[tuple[Record, InvoiceSyncError]] = field(default_factory=list)
    fail_first: int = 0
    calls: int = 0

    async def __call__(self, record: Record, *, error: InvoiceSyncError, **_: Any) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ConnectionError("broker unavailable")
        self.letters.append((record, error))


def _settings(bootstrap: str, topic: str, **pipeline: Any) -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(
                update={
                    "bootstrap_servers": bootstrap,
                    "topics": [topic],
                    "group_id": f"g-{topic}",
                    "fetch_max_records": pipeline.pop("fetch_max_records", 500),
                    "session_timeout_ms": 6000,
                    "heartbeat_interval_ms": 1000,
                }
            ),
            "pipeline": base.pipeline.model_copy(
                update={
                    "commit_interval_s": 0.1,
                    "backoff_base_s": 0.01,
                    "backoff_max_s": 0.05,
                    "config_fault_backoff_max_s": 0.05,
                    **pipeline,
                }
            ),
        }
    )


async def _produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in items:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def _wait_for(cond: Callable[[], bool], limit_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


@dataclass
class Running:
    pipeline: Pipeline
    consumer: AIOKafkaConsumer
    task: asyncio.Task[None]
    health: Health

    async def committed(self, topic: str, partitions: int) -> dict[int, int | None]:
        return {
            p: await self.consumer.committed(TopicPartition(topic, p)) for p in range(partitions)
        }


@pytest.fixture
async def run_pipeline(
    kafka_bootstrap: str,
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    started: list[Running] = []

    async def start(settings: Settings, handler: Any, dlq: Any) -> Running:
        consumer = AIOKafkaConsumer(**consumer_options(settings.kafka))
        health = Health()
        pipeline = Pipeline(
            consumer=consumer,
            handler=handler,
            dead_letters=dlq,
            settings=settings,
            health=health,
            rng=random.Random(1),
        )
        consumer.subscribe(settings.kafka.topics, listener=pipeline.listener)
        await consumer.start()
        task = asyncio.create_task(pipeline.run())
        running = Running(pipeline, consumer, task, health)
        started.append(running)
        return running

    yield start
    for r in started:
        r.pipeline.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(r.task, 30)
        await r.consumer.stop()


class TestOrderingAndCommits:
    async def test_same_key_in_order_while_64_keys_run_concurrently(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """Each key's events run strictly in offset order; many keys run at once."""
        topic = await topic_factory("order", partitions=4)
        rng = random.Random(7)
        items = [(f"k{rng.randrange(64)}".encode(), f"v{i}".encode()) for i in range(1200)]
        await _produce(kafka_bootstrap, topic, items)
        current: dict[bytes | None, int] = {}
        overlaps: list[bytes | None] = []

        async def script(record: Record) -> None:
            if record.key in current:
                overlaps.append(record.key)  # two events of one key at once: a violation
            current[record.key] = record.offset
            await asyncio.sleep(rng.uniform(0, 0.004))
            del current[record.key]

        handler = ScriptedHandler(script)
        settings = _settings(kafka_bootstrap, topic, max_in_flight=64)
        await run_pipeline(settings, handler, Dlq())
        await _wait_for(lambda: len(handler.done) == len(items))
        assert overlaps == []
        for key, offsets in handler.seen.items():
            assert offsets == sorted(offsets), key
        assert sum(len(v) for v in handler.seen.values()) == len(items)
        assert 1 < handler.max_running <= EVENTS_PER_API_SLOT * 64

    async def test_commit_never_passes_an_unfinished_event(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """With offset 5 stuck and later offsets done, the commit stays at 5 until it ends."""
        topic = await topic_factory("commit", partitions=1)
        await _produce(kafka_bootstrap, topic, [(f"k{i}".encode(), b"v") for i in range(20)])
        gate = asyncio.Event()

        async def script(record: Record) -> None:
            if record.offset == 5:
                await gate.wait()

        handler = ScriptedHandler(script)
        running = await run_pipeline(_settings(kafka_bootstrap, topic), handler, Dlq())
        await _wait_for(lambda: len(handler.done) == 19)
        await asyncio.sleep(0.3)  # several commit intervals pass while offset 5 is stuck
        assert (await running.committed(topic, 1))[0] == 5
        gate.set()
        await _wait_for(lambda: len(handler.done) == 20)
        await _wait_for(lambda: running.pipeline.in_flight == 0)
        deadline = asyncio.get_running_loop().time() + 10
        while (await running.committed(topic, 1))[0] != 20:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)

    async def test_backlog_with_slow_handler_pauses_and_stays_bounded(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """A slow API with a large backlog pauses partitions; buffered events stay bounded."""
        topic = await topic_factory("backlog", partitions=2)
        await _produce(kafka_bootstrap, topic, [(f"k{i}".encode(), b"v" * 200) for i in range(600)])
        paused_seen: list[int] = []
        buffered_seen: list[int] = []
        holder: dict[str, Pipeline] = {}

        async def script(record: Record) -> None:
            p = holder["p"]
            paused_seen.append(len(p._paused))
            buffered_seen.append(p.in_flight)
            await asyncio.sleep(0.01)

        handler = ScriptedHandler(script)
        settings = _settings(
            kafka_bootstrap, topic, max_in_flight=8, max_buffered=40, fetch_max_records=20
        )
        running = await run_pipeline(settings, handler, Dlq())
        holder["p"] = running.pipeline
        await _wait_for(lambda: len(handler.done) == 600, limit_s=60)
        assert max(paused_seen) > 0, "partitions were never paused"
        assert max(buffered_seen) <= 40 + 20  # max_buffered + one fetch batch
        assert paused_seen[-1] == 0 or running.pipeline.in_flight < 40


class TestFailures:
    async def test_transient_errors_retry_then_succeed(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """Two 503s and a 429 are retried; the event succeeds; nothing is dead-lettered."""
        topic = await topic_factory("transient")
        await _produce(kafka_bootstrap, topic, [(b"k", b"v")])
        errors = [
            ApiUnavailable("503"),
            RateLimited("429", retry_after=0.01),
            ApiUnavailable("503"),
        ]

        async def script(record: Record) -> None:
            if errors:
                raise errors.pop(0)

        handler = ScriptedHandler(script)
        dlq = Dlq()
        await run_pipeline(_settings(kafka_bootstrap, topic), handler, dlq)
        await _wait_for(lambda: len(handler.done) == 1)
        assert handler.calls == 4
        assert dlq.letters == []

    async def test_retries_are_bounded_then_dead_lettered(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """A transient failure that never ends stops after max_attempts and goes to the DLQ."""
        topic = await topic_factory("bounded")
        await _produce(kafka_bootstrap, topic, [(b"k", b"poison"), (b"k", b"fine")])

        async def script(record: Record) -> None:
            if record.value == b"poison":
                raise ApiUnavailable("always down", event_type="order.paid")

        handler = ScriptedHandler(script)
        dlq = Dlq()
        await run_pipeline(_settings(kafka_bootstrap, topic, max_attempts=4), handler, dlq)
        await _wait_for(lambda: len(handler.done) == 1 and len(dlq.letters) == 1)
        assert handler.seen[b"k"].count(0) == 4
        record, error = dlq.letters[0]
        assert (record.value, error.reason) == (b"poison", "retries_exhausted")
        # Counted under the event's type, not "other" (a type outside the contract).
        assert error.details["event_type"] == "order.paid"

    async def test_permanent_error_goes_to_dlq_once_and_partition_moves_on(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """A rejected event is dead-lettered once and the events after it are processed."""
        topic = await topic_factory("permanent")
        await _produce(kafka_bootstrap, topic, [(b"a", b"1"), (b"a", b"bad"), (b"a", b"3")])

        async def script(record: Record) -> None:
            if record.value == b"bad":
                raise ApiRejected("422 missing field")

        handler = ScriptedHandler(script)
        dlq = Dlq()
        running = await run_pipeline(_settings(kafka_bootstrap, topic), handler, dlq)
        await _wait_for(lambda: len(handler.done) == 2 and len(dlq.letters) == 1)
        assert handler.seen[b"a"] == [0, 1, 2]
        assert dlq.letters[0][0].value == b"bad"
        await _wait_for(lambda: running.pipeline.in_flight == 0)
        deadline = asyncio.get_running_loop().time() + 10
        while (await running.committed(topic, 1))[0] != 3:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)

    async def test_failed_dlq_write_holds_the_offset(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """While the DLQ write fails the source offset is not committed; then it is."""
        topic = await topic_factory("dlqfail")
        await _produce(kafka_bootstrap, topic, [(b"a", b"bad")])

        async def script(record: Record) -> None:
            raise ApiRejected("nope")

        dlq = Dlq(fail_first=3)
        settings = _settings(kafka_bootstrap, topic)
        settings = settings.model_copy(
            update={
                "pipeline": settings.pipeline.model_copy(update={"config_fault_backoff_max_s": 0.3})
            }
        )
        running = await run_pipeline(settings, ScriptedHandler(script), dlq)
        await _wait_for(lambda: dlq.calls >= 2)
        assert (await running.committed(topic, 1))[0] in (None, 0)
        await _wait_for(lambda: len(dlq.letters) == 1)
        deadline = asyncio.get_running_loop().time() + 10
        while (await running.committed(topic, 1))[0] != 1:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)

    async def test_record_too_large_for_the_dlq_is_dead_lettered_and_the_partition_moves_on(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """Over the DLQ producer's limit: a dead letter without the value, then the next event."""
        topic = await topic_factory("toolarge")
        big = b"{" + b" " * 20_000
        await _produce(kafka_bootstrap, topic, [(b"a", b"1"), (b"a", big), (b"a", b"3")])

        async def script(record: Record) -> None:
            if record.value == big:
                raise MalformedEvent("not JSON")

        settings = _settings(kafka_bootstrap, topic)
        settings = settings.model_copy(
            update={"kafka": settings.kafka.model_copy(update={"dlq_max_request_size": 4096})}
        )
        handler = ScriptedHandler(script)
        producer = AIOKafkaProducer(**producer_options(settings.kafka))
        await producer.start()
        try:
            writer = DeadLetterWriter(producer, settings=settings)
            running = await run_pipeline(settings, handler, writer.send)
            await _wait_for(lambda: len(handler.done) == 2)
            assert handler.seen[b"a"] == [0, 1, 2]
            deadline = asyncio.get_running_loop().time() + 10
            while (await running.committed(topic, 1))[0] != 3:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            running.pipeline.stop()
            await asyncio.wait_for(running.task, 30)
        finally:
            await producer.stop()
        [letter] = await read_dead_letters(settings)
        assert (letter.key, letter.value, letter.omitted) == (b"a", b"", ("value",))
        info = letter.info
        assert info["reason"] == "malformed_event"
        assert (info["original-offset"], info["original-value-size"]) == ("1", str(len(big)))

    async def test_configuration_fault_pauses_without_dead_lettering(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """invalid_client pauses consumption and reports the fault; it clears by itself."""
        topic = await topic_factory("fault", partitions=2)
        await _produce(kafka_bootstrap, topic, [(f"k{i}".encode(), b"v") for i in range(10)])
        failures = {"left": 12}

        async def script(record: Record) -> None:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise AuthConfigurationFault("invalid_client", error="invalid_client")

        handler = ScriptedHandler(script)
        dlq = Dlq()
        running = await run_pipeline(
            _settings(kafka_bootstrap, topic, max_attempts=2), handler, dlq
        )
        await _wait_for(lambda: len(handler.done) == 10)
        assert dlq.letters == []  # attempts of a configuration fault are not the event's
        assert running.health.faults[0] == "auth_configuration"
        assert running.health.faults[-1] is None


class TestOutage:
    async def test_fault_ended_by_a_dead_letter_does_not_leave_the_worker_paused(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """The one event waiting out an outage is then rejected: consumption still resumes."""
        topic = await topic_factory("outage-end", partitions=1)
        await _produce(kafka_bootstrap, topic, [(b"a", b"first")])
        outage = {"left": 3}

        async def script(record: Record) -> None:
            if record.value == b"first":
                if outage["left"] > 0:
                    outage["left"] -= 1
                    raise ApiOutage("every request fails")
                raise ApiRejected("contact_id: can't be blank", status=422)

        handler = ScriptedHandler(script)
        dlq = Dlq()
        running = await run_pipeline(_settings(kafka_bootstrap, topic), handler, dlq)
        await _wait_for(lambda: len(dlq.letters) == 1)
        assert running.health.outages[0] == "api_outage"
        # Published after the pause: fetched only if the partition was resumed.
        await _produce(kafka_bootstrap, topic, [(b"b", b"second")])
        await _wait_for(lambda: handler.done == [(0, 1)])
        assert running.health.outages[-1] is None

    async def test_time_paused_does_not_count_against_the_retry_budget(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """An outage longer than max_retry_s, then one ordinary 503: retried, not dead-lettered."""
        topic = await topic_factory("outage-budget", partitions=1)
        await _produce(kafka_bootstrap, topic, [(b"a", b"v")])
        loop = asyncio.get_running_loop()
        outage_until: list[float] = []
        calls = {"after": 0}

        async def script(record: Record) -> None:
            if not outage_until:  # from the first attempt: the group join takes a while
                outage_until.append(loop.time() + 0.6)  # three times the budget below
            if loop.time() < outage_until[0]:
                raise ApiOutage("every request fails")
            calls["after"] += 1
            if calls["after"] == 1:
                raise ApiUnavailable("503 in the catch-up burst")

        handler = ScriptedHandler(script)
        dlq = Dlq()
        await run_pipeline(_settings(kafka_bootstrap, topic, max_retry_s=0.2), handler, dlq)
        await _wait_for(lambda: len(handler.done) == 1 or len(dlq.letters) == 1)
        assert dlq.letters == []
        assert handler.done == [(0, 0)]

    async def test_an_outage_that_comes_and_goes_does_not_wear_the_budget_down(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """Each bad spell costs attempts before it is recognised; a pause restores them."""
        topic = await topic_factory("outage-flap", partitions=1)
        await _produce(kafka_bootstrap, topic, [(b"a", b"v")])
        spells = {"left": 4, "calls": 0}

        async def script(record: Record) -> None:
            # Four spells of: two 503s (attempts spent), then recognised as an outage.
            if spells["left"] > 0:
                spells["calls"] += 1
                if spells["calls"] % 3:
                    raise ApiUnavailable("503 before the outage is recognised")
                spells["left"] -= 1
                raise ApiOutage("every request fails")

        handler = ScriptedHandler(script)
        dlq = Dlq()
        await run_pipeline(_settings(kafka_bootstrap, topic, max_attempts=4), handler, dlq)
        await _wait_for(lambda: len(handler.done) == 1 or len(dlq.letters) == 1)
        assert dlq.letters == []  # eight 503s in all, against a budget of four attempts
        assert handler.calls == 13

    async def test_an_event_that_needs_no_api_does_not_end_an_outage(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """A skipped type finishing during an outage leaves the pause (and /readyz) alone."""
        topic = await topic_factory("outage-skip", partitions=1)
        await _produce(kafka_bootstrap, topic, [(b"a", b"api"), (b"b", b"skip")])
        down = {"on": True}
        health: list[Health] = []

        async def script(record: Record) -> None:
            if record.value == b"skip":
                # Buffered before the pause, it finishes while the outage holds.
                await _wait_for(lambda: bool(health and health[0].outages))
                return
            if down["on"]:
                raise ApiOutage("every request fails")

        class Skipping(ScriptedHandler):
            async def handle(self, record: Record) -> HandleResult:
                result = await super().handle(record)
                if record.value == b"skip":
                    return HandleResult("order.shipped", "skipped")
                return result

        handler = Skipping(script)
        dlq = Dlq()
        running = await run_pipeline(_settings(kafka_bootstrap, topic), handler, dlq)
        health.append(running.health)
        await _wait_for(lambda: (0, 1) in handler.done)
        assert running.health.outages == ["api_outage"]
        down["on"] = False
        await _wait_for(lambda: running.health.outages == ["api_outage", None])
        assert dlq.letters == []


class TestShutdown:
    async def test_stop_drains_running_work_and_commits_only_finished(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """On stop, running events finish, queued ones are left, and the commit is exact."""
        topic = await topic_factory("drain", partitions=1)
        # One key: strictly sequential, so the queue behind the running event is visible.
        await _produce(kafka_bootstrap, topic, [(b"same", f"{i}".encode()) for i in range(10)])
        started = asyncio.Event()
        release = asyncio.Event()

        async def script(record: Record) -> None:
            if record.offset == 3:
                started.set()
                await release.wait()

        handler = ScriptedHandler(script)
        settings = _settings(kafka_bootstrap, topic, shutdown_timeout_s=5.0)
        running = await run_pipeline(settings, handler, Dlq())
        await asyncio.wait_for(started.wait(), 30)
        running.pipeline.stop()
        await asyncio.sleep(0.1)
        release.set()  # the running event finishes inside the drain budget
        await asyncio.wait_for(running.task, 30)
        assert [o for _, o in handler.done] == [0, 1, 2, 3]
        assert (await running.committed(topic, 1))[0] == 4

    async def test_drain_deadline_abandons_stuck_work_uncommitted(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """Work still running at the shutdown deadline is cancelled and not committed."""
        topic = await topic_factory("stuck", partitions=1)
        await _produce(kafka_bootstrap, topic, [(f"k{i}".encode(), b"v") for i in range(3)])

        async def script(record: Record) -> None:
            if record.offset == 1:
                await asyncio.Event().wait()  # never finishes

        handler = ScriptedHandler(script)
        settings = _settings(kafka_bootstrap, topic, shutdown_timeout_s=0.5)
        running = await run_pipeline(settings, handler, Dlq())
        await _wait_for(lambda: len(handler.done) == 2)
        running.pipeline.stop()
        await asyncio.wait_for(running.task, 30)
        assert (await running.committed(topic, 1))[0] == 1

    async def test_stop_does_not_start_events_waiting_for_a_slot(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, run_pipeline: Any
    ) -> None:
        """Distinct keys queued behind the event slots do not start once a stop is requested."""
        topic = await topic_factory("slots", partitions=1)
        await _produce(kafka_bootstrap, topic, [(f"k{i}".encode(), b"v") for i in range(20)])
        running_now = asyncio.Event()
        release = asyncio.Event()

        slots = EVENTS_PER_API_SLOT * 2

        async def script(record: Record) -> None:
            if record.offset < slots:
                if record.offset == slots - 1:
                    running_now.set()
                await release.wait()

        handler = ScriptedHandler(script)
        settings = _settings(kafka_bootstrap, topic, max_in_flight=2, shutdown_timeout_s=5.0)
        running = await run_pipeline(settings, handler, Dlq())
        await asyncio.wait_for(running_now.wait(), 30)
        running.pipeline.stop()
        await asyncio.sleep(0.1)
        release.set()
        await asyncio.wait_for(running.task, 30)
        assert sorted(o for _, o in handler.done) == list(range(slots))
        assert (await running.committed(topic, 1))[0] == slots
