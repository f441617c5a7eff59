"""Fault-injection reliability suite: zero lost and zero duplicated documents.

Each scenario runs the worker as a real subprocess (``python -m worker.cli run``, see
``tests/plugins/worker_process.py``) against the session's broker and an in-process sandbox
API, and judges the outcome from outside: the sandbox's own stats (``references``,
``reference_counts``, ``duplicate_references``), the dead-letter topic, and the offsets the
group committed on the broker; never from the worker's counters. A scenario is over when
the sandbox holds every expected document and the group has committed every partition to
its end ("drained"); the workers are then stopped with SIGTERM (they must exit 0) and
the final stats are judged, so a late duplicate is caught too.

Every scenario ends with the leak scan: its logs, its dead letters and a final ``/metrics``
scrape of each live worker must hold no token the sandbox issued and not the client secret.

Figures and what each scenario proves: ``docs/reliability.md``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.chaos_events import ChaosEvents, ChaosRecord, generate_chaos_events
from tests.plugins.kafka import TopicFactory
from tests.plugins.sandbox import SandboxFactory
from tests.plugins.worker_process import WorkerFactory, WorkerProcess
from worker.dlq import DeadLetter, read_dead_letters
from worker.sandbox import ClientSpec, FaultRule, Faults, Sandbox, SandboxConfig
from worker.settings import KafkaSettings, Settings

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

_PARTITIONS = 6
_SESSION_TIMEOUT_MS = 6000
_HEARTBEAT_MS = 1000
_DONE_TIMEOUT_S = 240.0  # a failure bound only: scenarios finish far sooner
_STEP_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 60.0
_SEED = 20250101


@dataclass(frozen=True, slots=True)
class Published:
    record: ChaosRecord
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the API holds against what the events call for."""

    expected: int
    created: int
    missing: frozenset[str]
    unexpected: frozenset[str]
    duplicated: dict[str, int]
    duplicate_references: int

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.duplicated or self.duplicate_references)

    def __str__(self) -> str:
        return (
            f"expected={self.expected} created={self.created} missing={len(self.missing)}"
            f" {sorted(self.missing)[:10]} unexpected={sorted(self.unexpected)[:10]}"
            f" duplicated={dict(list(self.duplicated.items())[:10])}"
            f" duplicate_references={self.duplicate_references}"
        )


def judge(stats: dict[str, Any], events: ChaosEvents) -> Verdict:
    """missing = expected - created; duplicated = any count > 1 or duplicate_references > 0."""
    created = set(stats["references"])
    counts: dict[str, int] = stats["reference_counts"]
    return Verdict(
        expected=len(events.documents),
        created=len(created),
        missing=frozenset(events.documents - created),
        unexpected=frozenset(created - events.documents),
        duplicated={ref: n for ref, n in counts.items() if n > 1},
        duplicate_references=int(stats["duplicate_references"]),
    )


@dataclass
class Scenario:
    """One scenario's world: sandbox, topic, consumer group, ledger, and worker processes."""

    name: str
    bootstrap: str
    topic: str
    sandbox: Sandbox
    ledger_url: str
    workers: WorkerFactory
    client_id: str
    client_secret: str = field(repr=False)
    producer: AIOKafkaProducer
    offsets: AIOKafkaConsumer
    group: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex[:10]}")
    published: list[Published] = field(default_factory=list)
    ends: dict[int, int] = field(default_factory=dict)
    live: list[WorkerProcess] = field(default_factory=list)
    scrapes: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    env_overrides: dict[str, str] = field(default_factory=dict)

    # --- workers -------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {
            "INVOICE_SYNC_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "INVOICE_SYNC_KAFKA__TOPICS": json.dumps([self.topic]),
            "INVOICE_SYNC_KAFKA__GROUP_ID": self.group,
            "INVOICE_SYNC_KAFKA__SESSION_TIMEOUT_MS": str(_SESSION_TIMEOUT_MS),
            "INVOICE_SYNC_KAFKA__HEARTBEAT_INTERVAL_MS": str(_HEARTBEAT_MS),
            "INVOICE_SYNC_API__BASE_URL": self.sandbox.url,
            "INVOICE_SYNC_OAUTH__TOKEN_URL": f"{self.sandbox.url}/oauth/token",
            "INVOICE_SYNC_OAUTH__CLIENT_ID": self.client_id,
            "INVOICE_SYNC_OAUTH__CLIENT_SECRET": self.client_secret,
            "INVOICE_SYNC_LEDGER__URL": self.ledger_url,
            "INVOICE_SYNC_LOGGING__FORMAT": "json",
            "INVOICE_SYNC_LOGGING__LEVEL": "INFO",
            "INVOICE_SYNC_PIPELINE__BACKOFF_MAX_S": "5",
        }
        env.update(self.env_overrides)
        return env

    def start_worker(self, name: str) -> WorkerProcess:
        worker = self.workers(self.env(), name=f"{self.name}-{name}")
        self.live.append(worker)
        return worker

    async def sigkill(self, worker: WorkerProcess) -> None:
        """Scrape (for the leak scan), then SIGKILL: no drain, no commit, no leaving."""
        await self.scrape(worker)
        self.live.remove(worker)
        worker.kill()

    async def sigterm(self, worker: WorkerProcess) -> None:
        """Scrape, then SIGTERM; the worker must drain, leave and exit 0 in time."""
        await self.scrape(worker)
        self.live.remove(worker)
        code = await worker.terminate(_STOP_TIMEOUT_S)
        assert code == 0, f"{worker.name} exited with {code} after SIGTERM:\n{worker.tail()}"

    async def scrape(self, worker: WorkerProcess) -> None:
        answer = await worker.get("/metrics")
        if answer is not None and answer[0] == 200:
            self.scrapes.append(answer[1])

    # --- events --------------------------------------------------------------------------

    async def publish(self, records: Iterable[ChaosRecord]) -> None:
        """Send and wait for every acknowledgement; remembers each record's offset."""
        pending = [
            (r, await self.producer.send(self.topic, r.value, key=r.key, headers=r.headers))
            for r in records
        ]
        for record, future in pending:
            meta = await future
            self.published.append(Published(record, meta.partition, meta.offset))
            self.ends[meta.partition] = max(self.ends.get(meta.partition, 0), meta.offset + 1)

    def created(self) -> int:
        stats = self.sandbox.stats()
        return int(stats["invoices"]) + int(stats["credit_notes"])

    async def committed(self) -> dict[int, int]:
        """The group's committed offset per published partition, read from the broker."""
        out = {}
        for partition in self.ends:
            offset = await self.offsets.committed(TopicPartition(self.topic, partition))
            out[partition] = offset or 0
        return out

    async def drained(self) -> bool:
        committed = await self.committed()
        return all(committed[p] >= end for p, end in self.ends.items())

    async def dead_letters(self) -> list[DeadLetter]:
        settings = Settings(
            kafka=KafkaSettings(bootstrap_servers=self.bootstrap, topics=[self.topic])
        )
        return await read_dead_letters(settings)

    # --- waiting -------------------------------------------------------------------------

    async def wait_until(
        self, what: str, check: Callable[[], Awaitable[bool] | bool], timeout_s: float
    ) -> None:
        """Poll ``check`` until true; fail if it is not in time or a live worker died."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = check()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            for worker in self.live:
                assert worker.running, (
                    f"{worker.name} died (rc={worker.proc.returncode}) waiting for {what}:\n"
                    f"{worker.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout_s} s; {self.progress()}")
            await asyncio.sleep(0.25)

    async def wait_done(self) -> None:
        """Drained: the group committed every published partition to its end.

        A commit never passes an unfinished event, so every event then either became a
        document, was skipped, or was dead-lettered; the verdict says which.
        """
        await self.wait_until("offsets committed to the end", self.drained, _DONE_TIMEOUT_S)

    def progress(self) -> str:
        stats = self.sandbox.stats()
        tails = "\n".join(f"--- {w.name}:\n{w.tail(8)}" for w in self.workers.processes[-3:])
        return (
            f"invoices={stats['invoices']} credit_notes={stats['credit_notes']}"
            f" duplicate_references={stats['duplicate_references']}"
            f" faults={stats['faults_injected']}\n{tails}"
        )

    # --- the end -------------------------------------------------------------------------

    async def finish(self, events: ChaosEvents) -> tuple[Verdict, list[DeadLetter]]:
        """SIGTERM every live worker, judge the API and read the DLQ, then scan for leaks."""
        for worker in list(self.live):
            await self.sigterm(worker)
        verdict = judge(self.sandbox.stats(), events)
        letters = await self.dead_letters()
        self.assert_no_leaks(letters)
        elapsed = time.monotonic() - self.started_at
        print(  # figures for docs/reliability.md (shown with -s or on failure)
            f"\n[chaos] {self.name}: {events.summary()} -> {verdict};"
            f" dead_letters={len(letters)}; workers={len(self.workers.processes)};"
            f" faults={self.sandbox.stats()['faults_injected']}; {elapsed:.1f}s"
        )
        return verdict, letters

    def secrets(self) -> list[bytes]:
        basic = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode())
        values = [*self.sandbox.issued_secrets(), self.client_secret]
        return [v.encode() for v in values if v] + [basic]

    def assert_no_leaks(self, letters: list[DeadLetter]) -> None:
        issued = self.sandbox.stats()["tokens_issued"]
        assert issued > 0, "the worker never fetched a token: the leak scan would prove nothing"
        assert self.scrapes, "no /metrics scrape to scan"
        sources: dict[str, bytes] = {}
        for worker in self.workers.processes:
            sources[f"log {worker.log_path.name}"] = worker.log_path.read_bytes()
        for i, letter in enumerate(letters):
            parts = [letter.key or b"", letter.value or b"", *(v for _, v in letter.headers)]
            sources[f"dead letter {i}"] = b"\n".join(parts)
        for i, text in enumerate(self.scrapes):
            sources[f"/metrics scrape {i}"] = text.encode()
        hits = [
            f"{where}: secret #{n} ({len(secret)} bytes)"
            for where, blob in sources.items()
            for n, secret in enumerate(self.secrets())
            if secret in blob
        ]
        assert not hits, f"secrets leaked: {hits}"
        assert sum(len(b) for b in sources.values()) > 0


ScenarioFactory = Callable[..., Awaitable[Scenario]]


@pytest.fixture
async def make_scenario(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    sandbox_factory: SandboxFactory,
    worker_factory: WorkerFactory,
) -> AsyncIterator[ScenarioFactory]:
    """``await make_scenario(ledger_url=..., token_lifetime=..., faults=...)``."""
    opened: list[tuple[AIOKafkaProducer, AIOKafkaConsumer]] = []

    async def make(
        *,
        ledger_url: str,
        token_lifetime: float = 3600.0,
        faults: Faults | None = None,
        env: dict[str, str] | None = None,
    ) -> Scenario:
        client_id = f"chaos-{uuid.uuid4().hex[:8]}"
        client_secret = secrets.token_urlsafe(24)
        sandbox = await sandbox_factory(
            SandboxConfig(
                clients=[ClientSpec(client_id, client_secret)],
                token_lifetime=token_lifetime,
                faults=faults or Faults(),
            )
        )
        topic = await topic_factory("chaos", partitions=_PARTITIONS)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        scenario_group = f"chaos-{uuid.uuid4().hex[:10]}"
        offsets = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, group_id=scenario_group, enable_auto_commit=False
        )
        try:
            await offsets.start()
        except BaseException:
            await producer.stop()
            raise
        opened.append((producer, offsets))
        return Scenario(
            name=request.node.name.replace("[", "-").rstrip("]").replace("test_", ""),
            bootstrap=kafka_bootstrap,
            topic=topic,
            sandbox=sandbox,
            ledger_url=ledger_url,
            workers=worker_factory,
            client_id=client_id,
            client_secret=client_secret,
            producer=producer,
            offsets=offsets,
            group=scenario_group,
            env_overrides=env or {},
        )

    try:
        yield make
    finally:
        worker_factory.close()
        for producer, offsets in opened:
            await offsets.stop()
            await producer.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each ledger backend; on PostgreSQL the scenario's unique store id keeps its rows apart."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _documents_in(records: Sequence[ChaosRecord]) -> int:
    return len({r.reference for r in records if r.reference})


class TestKilledWorker:
    """SIGKILL at random moments neither loses nor duplicates a document."""

    async def test_five_sigkills_mid_stream_leave_exactly_one_document_each(
        self, make_scenario: ScenarioFactory, ledger_url: str
    ) -> None:
        """Killed 5 times while 3,000 events flow, restarted each time: one document per order."""
        events = generate_chaos_events(events=3000, seed=_SEED)
        scenario = await make_scenario(ledger_url=ledger_url)
        await scenario.publish(events.records)
        rng = random.Random(_SEED)
        total = len(events.documents)
        # One kill in each fifth of the run, at a random point of it.
        marks = [int(total * (0.05 + 0.17 * (i + rng.uniform(0.1, 0.9)))) for i in range(5)]
        worker = scenario.start_worker("incarnation-1")
        for i, mark in enumerate(marks, 1):
            await scenario.wait_until(
                f"{mark} documents before kill {i}",
                lambda m=mark: scenario.created() >= m,
                _STEP_TIMEOUT_S,
            )
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await scenario.sigkill(worker)
            worker = scenario.start_worker(f"incarnation-{i + 1}")
        await scenario.wait_done()
        verdict, letters = await scenario.finish(events)
        assert verdict.ok, _explain(verdict, letters)
        assert letters == [], _explain(verdict, letters)
        assert len(scenario.workers.processes) == 6


class TestRebalance:
    """Members joining and leaving mid-stream neither lose nor duplicate a document."""

    async def test_one_then_three_then_two_workers(
        self, make_scenario: ScenarioFactory, ledger_url: str
    ) -> None:
        """1, then 3, then 2 workers in one group while events flow: 0 lost, 0 duplicated."""
        events = generate_chaos_events(events=2400, seed=_SEED + 1)
        scenario = await make_scenario(ledger_url=ledger_url)
        third = len(events.records) // 3
        chunks = [
            events.records[:third],
            events.records[third : 2 * third],
            events.records[2 * third :],
        ]
        first = scenario.start_worker("a")
        await scenario.publish(chunks[0])
        mark = _documents_in(chunks[0]) // 3
        await scenario.wait_until(
            f"{mark} documents by one worker", lambda: scenario.created() >= mark, _STEP_TIMEOUT_S
        )
        joiners = [scenario.start_worker("b"), scenario.start_worker("c")]
        for joiner in joiners:
            await joiner.wait_logged("partitions.assigned", _STEP_TIMEOUT_S, nonempty="partitions")
        await scenario.publish(chunks[1])
        mark = _documents_in(chunks[0]) + _documents_in(chunks[1]) // 2
        await scenario.wait_until(
            f"{mark} documents by three workers",
            lambda: scenario.created() >= mark,
            _STEP_TIMEOUT_S,
        )
        await scenario.sigterm(joiners[0])
        await scenario.publish(chunks[2])
        await scenario.wait_done()
        verdict, letters = await scenario.finish(events)
        assert verdict.ok, _explain(verdict, letters)
        assert letters == [], _explain(verdict, letters)
        assert first.logged("partitions.revoked"), "the first worker never gave partitions up"


class TestApiFaults:
    """A misbehaving API (errors, rate limits, resets, slow successes) costs time, not data."""

    async def test_errors_resets_and_slow_successes(
        self, make_scenario: ScenarioFactory, sqlite_url: str
    ) -> None:
        """10% 503, 5% 429 with Retry-After, 2% resets, 2% slow successes: all once, DLQ empty."""
        rule = FaultRule(
            target="resources",
            error_rates={503: 0.10, 429: 0.05},
            retry_after=1,
            reset_rate=0.02,
            slow_success_rate=0.02,
            slow_success_delay=2.0,
        )
        events = generate_chaos_events(events=1500, seed=_SEED + 2)
        scenario = await make_scenario(
            ledger_url=sqlite_url,
            faults=Faults(rules=(rule,), seed=_SEED),
            env={
                "INVOICE_SYNC_API__TIMEOUT_S": "1",
                # Every retried attempt is a lookup plus a create, each failing ~19% of the
                # time: give the retry budget room so "DLQ empty" is not a dice roll.
                "INVOICE_SYNC_PIPELINE__MAX_ATTEMPTS": "20",
                "INVOICE_SYNC_PIPELINE__BACKOFF_MAX_S": "2",
            },
        )
        scenario.start_worker("a")
        await scenario.publish(events.records)
        await scenario.wait_done()
        verdict, letters = await scenario.finish(events)
        assert verdict.ok, _explain(verdict, letters)
        assert letters == [], _explain(verdict, letters)
        injected = scenario.sandbox.stats()["faults_injected"]
        for kind in ("status_503", "status_429", "reset", "slow_success"):
            assert injected.get(kind, 0) > 0, f"no {kind} was injected: {injected}"


class TestTokenOutage:
    """A token endpoint outage pauses the worker (not ready) without dead-lettering anything."""

    async def test_outage_of_twice_the_token_lifetime(
        self, make_scenario: ScenarioFactory, sqlite_url: str
    ) -> None:
        """Down for 2x the token lifetime: /readyz 503 meanwhile, nothing dead-lettered, resumes."""
        lifetime = 5.0
        events = generate_chaos_events(events=900, seed=_SEED + 3)
        before, during = events.records[:300], events.records[300:]
        scenario = await make_scenario(
            ledger_url=sqlite_url,
            token_lifetime=lifetime,
            env={
                "INVOICE_SYNC_OAUTH__MAX_ATTEMPTS": "3",
                "INVOICE_SYNC_OAUTH__BACKOFF_MAX_S": "1",
                "INVOICE_SYNC_PIPELINE__CONFIG_FAULT_BACKOFF_MAX_S": "2",
            },
        )
        worker = scenario.start_worker("a")
        await scenario.publish(before)
        await scenario.wait_done()
        await scenario.wait_until(
            "ready before the outage", lambda: _status_is(worker, 200), _STEP_TIMEOUT_S
        )
        created_before = scenario.created()

        scenario.sandbox.set_faults(Faults(token_outage=True))
        outage_end = time.monotonic() + 2 * lifetime
        publisher = asyncio.create_task(_trickle(scenario, during, over_s=lifetime))
        statuses: list[int | None] = []
        try:
            while time.monotonic() < outage_end:
                statuses.append(await worker.readyz())
                await asyncio.sleep(0.2)
        finally:
            scenario.sandbox.set_faults(Faults())
            await publisher
        created_during = scenario.created() - created_before
        outage_errors = scenario.sandbox.stats()["faults_injected"].get("token_outage", 0)

        await scenario.wait_done()
        await scenario.wait_until("ready again", lambda: _status_is(worker, 200), _STEP_TIMEOUT_S)
        print(
            f"\n[chaos] /readyz during the outage: {dict(Counter(statuses))}; documents"
            f" created during it: {created_during}; drained {time.monotonic() - outage_end:.1f}"
            " s after it ended"
        )
        verdict, letters = await scenario.finish(events)
        assert 503 in statuses, f"/readyz never said 503 during the outage: {statuses}"
        assert outage_errors > 0, "the worker never asked the token endpoint during the outage"
        assert created_during < _documents_in(during), "the outage did not stop the worker"
        assert verdict.ok, _explain(verdict, letters)
        assert letters == [], _explain(verdict, letters)


class TestPoisonEvents:
    """Poison events, and only they, reach the DLQ with reason and original bytes."""

    async def test_one_percent_poison(
        self, make_scenario: ScenarioFactory, sqlite_url: str
    ) -> None:
        """1% broken bytes, invalid events and total mismatches: exactly those dead-lettered."""
        events = generate_chaos_events(events=2000, seed=_SEED + 4, poison_rate=0.01)
        scenario = await make_scenario(ledger_url=sqlite_url)
        scenario.start_worker("a")
        await scenario.publish(events.records)
        await scenario.wait_done()
        verdict, letters = await scenario.finish(events)
        assert verdict.ok, _explain(verdict, letters)

        poison = {(p.partition, p.offset): p for p in scenario.published if p.record.dlq_reason}
        assert len(poison) == len(events.poison) == 20
        got = {
            (int(d.info["original-partition"]), int(d.info["original-offset"])): d for d in letters
        }
        assert len(got) == len(letters), "a poison event was dead-lettered twice"
        assert set(got) == set(poison)
        for where, published in poison.items():
            letter, record = got[where], published.record
            assert letter.reason == record.dlq_reason, (where, letter.info)
            assert letter.info["original-topic"] == scenario.topic
            assert letter.value == record.value
            assert letter.key == record.key
            assert letter.original_headers == record.headers
            assert letter.info.get("message"), letter.info


def _explain(verdict: Verdict, letters: list[DeadLetter]) -> str:
    reasons = Counter(
        "/".join(filter(None, (d.reason, d.info.get("detail-last-reason")))) for d in letters
    )
    return f"{verdict}; dead letters by reason: {dict(reasons)}"


def _status_is(worker: WorkerProcess, status: int) -> Awaitable[bool]:
    async def check() -> bool:
        return await worker.readyz() == status

    return check()


async def _trickle(scenario: Scenario, records: Sequence[ChaosRecord], *, over_s: float) -> None:
    """Publish ``records`` in ten slices spread over ``over_s`` seconds."""
    size = max(1, len(records) // 10 + 1)
    for start in range(0, len(records), size):
        await scenario.publish(records[start : start + size])
        await asyncio.sleep(over_s / 10)
