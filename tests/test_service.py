"""The whole worker on the real broker, the sandbox and both ledgers: every reference exactly
once, dead letters with original bytes, a crash mid-stream, and SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.plugins.kafka import TopicFactory
from tests.plugins.worker_process import WorkerFactory, WorkerProcess
from tests.worker_settings import endpoint_settings
from worker.broker import free_port, publish_records
from worker.demo_data import DemoRecord, generate_demo_events
from worker.dlq import read_dead_letters
from worker.sandbox import DEMO_CLIENT_SECRET, FaultRule, Faults, Sandbox
from worker.service import event_loop_factory, run_service, tune_gc
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    return str(request.getfixturevalue("postgres_url"))


def _records(store: str, orders: int) -> list[DemoRecord]:
    """Demo v1 records with a store id of this test's own, so ledger rows never collide."""
    out = []
    # Platform-format records are covered by tests/test_platforms*.py.
    for r in generate_demo_events(orders=orders, broken_each=1, platforms=False):
        value = r.value.replace(b'"store_id": "store-demo"', f'"store_id": "{store}"'.encode())
        assert r.expected.startswith("dlq:") or value != r.value, "store id not replaced"
        out.append(DemoRecord(r.key, value, r.headers, r.expected))
    return out


def _expected_references(records: list[DemoRecord]) -> Counter[str]:
    import json

    refs: Counter[str] = Counter()
    for r in records:
        if r.expected not in ("invoice", "credit_note"):
            continue
        event = json.loads(r.value)
        if r.expected == "invoice":
            refs[event["order_id"]] += 1
        elif event.get("refund"):
            refs[f"{event['order_id']}-CN-{event['refund']['refund_id']}"] += 1
        else:
            refs[f"{event['order_id']}-CN-cancel"] += 1
    return refs


def _settings(bootstrap: str, topic: str, api: str, ledger: str, **pipeline: Any) -> Settings:
    return endpoint_settings(bootstrap, topic, api, ledger, pipeline=pipeline)


def _env(settings: Settings) -> dict[str, str]:
    """The worker subprocess's configuration (the factory adds the HTTP port)."""
    return {
        "INVOICE_SYNC_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "INVOICE_SYNC_KAFKA__TOPICS": f'["{settings.kafka.topics[0]}"]',
        "INVOICE_SYNC_KAFKA__GROUP_ID": settings.kafka.group_id,
        "INVOICE_SYNC_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "INVOICE_SYNC_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "INVOICE_SYNC_API__BASE_URL": settings.api.base_url,
        "INVOICE_SYNC_OAUTH__TOKEN_URL": settings.oauth.token_url,
        "INVOICE_SYNC_LEDGER__URL": settings.ledger.url,
        "INVOICE_SYNC_PIPELINE__COMMIT_INTERVAL_S": "0.2",
    }


async def _wait_for(
    cond: Any, *, limit_s: float, what: str, worker: WorkerProcess | None = None
) -> None:
    """Wait on a condition; the bound only turns a hang into a failure with the worker log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not cond():
        if loop.time() > deadline:
            log = f"\nworker log:\n{worker.tail()}" if worker else ""
            raise AssertionError(f"timed out waiting for {what}{log}")
        await asyncio.sleep(0.1)


class TestEndToEnd:
    async def test_every_reference_exactly_once_and_dead_letters_keep_bytes(
        self,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        sandbox: Sandbox,
        ledger_url: str,
        request: pytest.FixtureRequest,
    ) -> None:
        """Demo input: one document per expected reference; broken events in the DLQ as sent."""
        topic = await topic_factory("e2e", partitions=3)
        records = _records(f"store-{topic}", orders=120)
        await publish_records(kafka_bootstrap, topic, records)
        settings = _settings(kafka_bootstrap, topic, sandbox.url, ledger_url)
        assert await asyncio.wait_for(run_service(settings), 120) == 0
        stats = sandbox.stats()
        assert Counter(stats["references"]) == _expected_references(records)
        assert stats["duplicate_references"] == 0
        letters = await read_dead_letters(settings)
        broken = {
            (r.key, r.value): r.expected.split(":", 1)[1]
            for r in records
            if r.expected.startswith("dlq:")
        }
        assert {(d.key, d.value): d.reason for d in letters} == broken
        for d in letters:
            assert d.info["original-topic"] == topic
            assert int(d.info["attempts"]) >= 1

    async def test_restart_is_idempotent(
        self,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        sandbox: Sandbox,
        ledger_url: str,
    ) -> None:
        """Running the worker again over the same input creates nothing new, not even a
        second dead letter for a record already dead-lettered."""
        topic = await topic_factory("again", partitions=2)
        records = _records(f"store-{topic}", orders=40)
        await publish_records(kafka_bootstrap, topic, records)
        settings = _settings(kafka_bootstrap, topic, sandbox.url, ledger_url)
        assert await asyncio.wait_for(run_service(settings), 120) == 0
        first = sandbox.stats()
        # A new group id reads everything again, as after a lost offset commit.
        again = settings.model_copy(
            update={"kafka": settings.kafka.model_copy(update={"group_id": f"g2-{topic}"})}
        )
        assert await asyncio.wait_for(run_service(again), 120) == 0
        second = sandbox.stats()
        assert (second["invoices"], second["credit_notes"]) == (
            first["invoices"],
            first["credit_notes"],
        )
        assert second["duplicate_references"] == 0
        broken = sorted((r.key, r.value) for r in records if r.expected.startswith("dlq:"))
        assert broken, "the input has broken records"
        letters = await read_dead_letters(settings)
        assert sorted((d.key, d.value) for d in letters) == broken


class TestApiOutage:
    async def test_outage_longer_than_the_retry_budget_pauses_and_loses_nothing(
        self,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        sandbox: Sandbox,
        tmp_path: Path,
        worker_factory: WorkerFactory,
    ) -> None:
        """Every API request fails for many retry budgets: paused, not ready, no dead letter.

        Each event may try 3 times with backoffs of 0.1 s at most, so without the outage
        pause every one of them would be dead-lettered as retries_exhausted in a fraction of
        a second; the worker must instead wait, say why on /readyz, and resume by itself.
        """
        topic = await topic_factory("outage", partitions=2)
        records = [r for r in _records(f"store-{topic}", orders=40) if r.expected == "invoice"]
        sandbox.set_faults(
            Faults(rules=(FaultRule(target="resources", error_rates={503: 0.7, 429: 0.3}),))
        )
        await publish_records(kafka_bootstrap, topic, records)
        settings = _settings(kafka_bootstrap, topic, sandbox.url, f"sqlite:///{tmp_path}/l.db")
        env = _env(settings) | {
            "INVOICE_SYNC_PIPELINE__MAX_ATTEMPTS": "3",
            "INVOICE_SYNC_PIPELINE__BACKOFF_BASE_S": "0.05",
            "INVOICE_SYNC_PIPELINE__BACKOFF_MAX_S": "0.1",
            "INVOICE_SYNC_PIPELINE__CONFIG_FAULT_BACKOFF_MAX_S": "0.5",
            "INVOICE_SYNC_API__OUTAGE_AFTER_S": "0",
            "INVOICE_SYNC_API__OUTAGE_AFTER_FAILURES": "2",  # below MAX_ATTEMPTS, as required
        }
        worker = worker_factory(env)
        await _wait_for_readiness(
            worker, lambda status, b: "api_outage" in b["problems"], limit_s=60
        )
        live = await worker.get("/healthz")
        assert live is not None
        assert live[0] == 200, live  # alive: a restart would not bring the API back
        await asyncio.sleep(2)  # the outage outlasts every event's retry budget many times
        paused = worker.logged("pipeline.paused_by_fault")
        assert [e["reason"] for e in paused] == ["api_outage"], worker.tail()
        sandbox.set_faults(Faults())
        await _wait_for(
            lambda: len(set(sandbox.stats()["references"])) >= len(records),
            limit_s=120,
            what="every invoice after the outage",
            worker=worker,
        )
        await _wait_for_readiness(worker, lambda status, b: status == 200, limit_s=60)
        assert worker.logged("pipeline.resumed_after_fault")
        assert await worker.terminate() == 0
        assert await read_dead_letters(settings) == []
        assert sandbox.stats()["duplicate_references"] == 0


class TestCrashAndSignals:
    async def test_sigkill_mid_stream_then_restart(
        self,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        sandbox: Sandbox,
        ledger_url: str,
        worker_factory: WorkerFactory,
    ) -> None:
        """Killed without shutdown mid-stream and restarted: every reference once, none missing."""
        topic = await topic_factory("crash", partitions=3)
        records = _records(f"store-{topic}", orders=250)
        expected = _expected_references(records)
        await publish_records(kafka_bootstrap, topic, records)
        # Slow enough that the kill lands mid-stream on a loaded machine too.
        sandbox.set_faults(Faults(rules=(FaultRule(target="resources", latency_ms=40),)))
        settings = _settings(kafka_bootstrap, topic, sandbox.url, ledger_url)
        env = _env(settings) | {"INVOICE_SYNC_PIPELINE__MAX_IN_FLIGHT": "8"}
        first = worker_factory(env, name="first")
        await _wait_for(
            lambda: sandbox.stats()["invoices"] >= 60,
            limit_s=90,
            what="some invoices before the crash",
            worker=first,
        )
        first.kill()
        assert sandbox.stats()["invoices"] < sum(1 for r in records if r.expected == "invoice"), (
            "crash came too late to matter"
        )
        sandbox.set_faults(Faults())
        second = worker_factory(env, name="second")
        await _wait_for(
            lambda: sum(Counter(sandbox.stats()["references"]).values()) >= sum(expected.values()),
            limit_s=120,
            what="all documents after the restart",
        )
        assert await second.terminate() == 0
        stats = sandbox.stats()
        assert Counter(stats["references"]) == expected
        assert stats["duplicate_references"] == 0

    async def test_sigterm_drains_and_commits_only_finished_work(
        self,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        sandbox: Sandbox,
        tmp_path: Path,
        worker_factory: WorkerFactory,
    ) -> None:
        """SIGTERM exits 0 and every event below the committed offsets has its document."""
        import json

        topic = await topic_factory("term", partitions=2)
        records = [r for r in _records(f"store-{topic}", orders=200) if r.expected == "invoice"]
        await publish_records(kafka_bootstrap, topic, records)
        # Slow API, few in flight: SIGTERM lands with work running and work still queued.
        sandbox.set_faults(Faults(rules=(FaultRule(target="resources", latency_ms=100),)))
        settings = _settings(kafka_bootstrap, topic, sandbox.url, f"sqlite:///{tmp_path}/ledger.db")
        worker = worker_factory(_env(settings) | {"INVOICE_SYNC_PIPELINE__MAX_IN_FLIGHT": "4"})
        await _wait_for(
            lambda: sandbox.stats()["invoices"] >= 30, limit_s=90, what="work in flight"
        )
        assert await worker.terminate() == 0
        assert worker.logged("worker.stopped")
        # `run` drains on uvloop by default (pipeline.event_loop=auto, uvloop installed).
        assert [e["event_loop"] for e in worker.logged("worker.started")] == ["uvloop"]
        created = set(sandbox.stats()["references"])
        assert len(created) < len(records), "SIGTERM came after everything was done"
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap,
            group_id=settings.kafka.group_id,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            committed = {
                p: await consumer.committed(TopicPartition(topic, p)) or 0 for p in range(2)
            }
        finally:
            await consumer.stop()
        # Which partition/offset each record landed on: read the topic back.
        reader = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await reader.start()
        try:
            seen: list[Any] = []
            while len(seen) < len(records):
                batch = await reader.getmany(timeout_ms=2000)
                seen.extend(r for rs in batch.values() for r in rs)
        finally:
            await reader.stop()
        below = [r for r in seen if r.offset < committed[r.partition]]
        assert below, "nothing was committed"
        missing = [
            json.loads(r.value)["order_id"]
            for r in below
            if json.loads(r.value)["order_id"] not in created
        ]
        assert missing == []

    async def test_sigterm_during_the_first_group_join_exits_0_within_the_shutdown_timeout(
        self,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        sandbox: Sandbox,
        worker_factory: WorkerFactory,
    ) -> None:
        """A join held up by a dead member is abandoned on SIGTERM: exit 0, not after the join."""
        topic = await topic_factory("join", partitions=1)
        settings = _settings(kafka_bootstrap, topic, sandbox.url, "sqlite:///ledger.db")
        shutdown_timeout_s = 5
        env = _env(settings) | {
            # The group waits this long for a member that vanished without leaving.
            "INVOICE_SYNC_KAFKA__SESSION_TIMEOUT_MS": "45000",
            "INVOICE_SYNC_PIPELINE__SHUTDOWN_TIMEOUT_S": str(shutdown_timeout_s),
        }
        dead = worker_factory(env, name="dead")
        await dead.wait_logged("partitions.assigned", 90, nonempty="partitions")
        dead.kill()  # still a member of the group until its session expires
        joining = worker_factory(env, name="joining")
        await joining.wait_logged("worker.joining_group", 60)
        await asyncio.sleep(1)  # well inside the join, which lasts until the session expires
        assert joining.running
        joining.proc.send_signal(signal.SIGTERM)
        # Generous, yet far below the 45 s the join would otherwise have taken.
        code = await joining.wait(shutdown_timeout_s + 10)
        assert code == 0, joining.tail()
        assert not joining.logged("worker.started")
        assert [e.get("during") for e in joining.logged("worker.stopped")] == ["start-up"]

    def test_sigterm_before_the_event_loop_exists_exits_0(self) -> None:
        """A SIGTERM while settings load (no loop yet) stops the worker before it opens anything."""
        script = (
            "import os, signal, sys\n"
            "import worker.cli as cli\n"
            "load = cli.load_settings\n"
            "def slow_load():\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return load()\n"
            "cli.load_settings = slow_load\n"
            "sys.exit(cli.main(['run']))\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICE_SYNC_")}
        # Nothing listens there: the worker must stop before it tries to connect.
        env["INVOICE_SYNC_KAFKA__BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"
        env["INVOICE_SYNC_HTTP__PORT"] = "0"
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        events = [json.loads(line)["event"] for line in result.stdout.splitlines()]
        assert events == ["worker.stopping", "worker.stopped"]


def test_demo_client_secret_is_the_default() -> None:
    """The default settings talk to the sandbox's documented demo client."""
    assert Settings().oauth.client_secret.get_secret_value() == DEMO_CLIENT_SECRET


class TestReadiness:
    async def test_wrong_client_secret_shows_on_readyz_before_any_event(
        self,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        sandbox: Sandbox,
        worker_factory: WorkerFactory,
    ) -> None:
        """invalid_client is a configuration fault on /readyz (503), with no event needed."""
        topic = await topic_factory("ready", partitions=1)
        settings = _settings(kafka_bootstrap, topic, sandbox.url, "sqlite:///ledger.db")
        env = _env(settings) | {"INVOICE_SYNC_OAUTH__CLIENT_SECRET": "wrong-secret-value"}
        worker = worker_factory(env)
        answer = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while loop.time() < deadline:
            answer = await worker.get("/readyz")
            if answer is not None and "configuration_fault" in answer[1]:
                break
            await asyncio.sleep(0.2)
        assert answer is not None, worker.tail()
        assert answer[0] == 503
        assert "auth_configuration" in answer[1]
        assert "wrong-secret-value" not in answer[1] + worker.log_text()
        assert sandbox.stats()["token_errors"].get("invalid_client", 0) >= 1
        assert await worker.terminate() == 0

    async def test_readyz_reports_the_assigned_partitions(
        self,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        sandbox: Sandbox,
        worker_factory: WorkerFactory,
    ) -> None:
        """The only member of the group is ready and counts every partition of the topic."""
        topic = await topic_factory("count", partitions=3)
        settings = _settings(kafka_bootstrap, topic, sandbox.url, "sqlite:///ledger.db")
        worker = worker_factory(_env(settings))
        await _wait_for_readiness(worker, lambda status, body: body.get("partitions") == 3)
        answer = await worker.get("/readyz")
        assert answer is not None
        assert answer[0] == 200
        assert json.loads(answer[1])["waiting_for_assignment"] is False
        assert await worker.terminate() == 0

    async def test_spare_member_is_not_ready_with_no_partitions_assigned(
        self,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        sandbox: Sandbox,
        worker_factory: WorkerFactory,
    ) -> None:
        """Two members, one partition: once the rebalance is over, one is ready, the spare not."""
        topic = await topic_factory("spare", partitions=1)
        settings = _settings(kafka_bootstrap, topic, sandbox.url, "sqlite:///ledger.db")
        first = worker_factory(_env(settings), name="first")
        await first.wait_logged("partitions.assigned", 90, nonempty="partitions")
        second = worker_factory(_env(settings), name="second")
        # Either member may end up with the partition; the other is the spare.
        expected = [
            (200, [], 1),
            (503, ["no_partitions_assigned"], 0),
        ]
        seen: list[tuple[int, list[str], int]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while loop.time() < deadline:
            seen = []
            for worker in (first, second):
                answer = await worker.get("/readyz")
                if answer is not None:
                    body = json.loads(answer[1])
                    seen.append((answer[0], body["problems"], body["partitions"]))
            if sorted(seen) == expected:
                break
            await asyncio.sleep(0.2)
        assert sorted(seen) == expected, f"{seen}\n{first.tail()}\n{second.tail()}"
        assert await second.terminate() == 0
        assert await first.terminate() == 0

    async def test_missing_topic_is_one_configuration_error(
        self,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        sandbox: Sandbox,
        worker_factory: WorkerFactory,
    ) -> None:
        """A well-formed topic the cluster lacks: exit 2 and one error line naming it, no spam."""
        present = await topic_factory("present", partitions=1)
        missing = f"missing-{present}"
        settings = _settings(kafka_bootstrap, present, sandbox.url, "sqlite:///ledger.db")
        env = _env(settings) | {"INVOICE_SYNC_KAFKA__TOPICS": json.dumps([present, missing])}
        worker = worker_factory(env)
        assert await _configuration_error(worker) == (
            f"INVOICE_SYNC_KAFKA__TOPICS: no such topic on the cluster: {missing}"
            " (create it, or correct the name)"
        )
        assert len(worker.log_text().splitlines()) < 10, worker.tail()
        # Asking for the topic by name would have made an auto-creating broker create it.
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            assert missing not in await admin.list_topics()
        finally:
            await admin.close()

    async def test_missing_dead_letter_topic_is_one_configuration_error(
        self,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        sandbox: Sandbox,
        worker_factory: WorkerFactory,
    ) -> None:
        """A source topic without its `<topic>.dlq`: exit 2 at start-up, not at the first letter."""
        source = await topic_factory("nodlq", partitions=1, with_dlq=False)
        settings = _settings(kafka_bootstrap, source, sandbox.url, "sqlite:///ledger.db")
        worker = worker_factory(_env(settings))
        assert await _configuration_error(worker) == (
            f"INVOICE_SYNC_KAFKA__DLQ_TOPIC: no such dead-letter topic on the cluster: "
            f"{source}.dlq (create it; by default each source topic's is <topic>.dlq)"
        )
        assert not [e for e in worker.log_events() if e["event"] == "worker.joining_group"]

    async def test_unreachable_broker_is_one_line_naming_the_setting(
        self, sandbox: Sandbox, worker_factory: WorkerFactory
    ) -> None:
        """No broker on the bootstrap address: exit 1 with one line that names the variable."""
        nobody = f"127.0.0.1:{free_port()}"
        settings = _settings(nobody, "orders", sandbox.url, "sqlite:///ledger.db")
        worker = worker_factory(_env(settings))
        assert await worker.wait(120) == 1, worker.tail()
        events = worker.log_events()
        ours = [e for e in events if e.get("level") == "error" and e["logger"] != "aiokafka"]
        assert [e["event"] for e in ours] == ["worker.kafka_unreachable"], worker.tail()
        assert ours[0]["bootstrap_servers"] == nobody
        assert "INVOICE_SYNC_KAFKA__BOOTSTRAP_SERVERS" in ours[0]["hint"]


async def _configuration_error(worker: WorkerProcess) -> str:
    """The message of the one error line of a worker that refused to start (exit 2)."""
    assert await worker.wait(60) == 2, worker.tail()
    errors = [e for e in worker.log_events() if e.get("level") == "error"]
    assert [e["event"] for e in errors] == ["worker.configuration_error"], worker.tail()
    return str(errors[0]["message"])


async def _wait_for_readiness(
    worker: WorkerProcess, cond: Any, *, limit_s: float = 120
) -> tuple[int, dict[str, Any]]:
    """Poll ``/readyz`` until ``cond(status, body)``; the bound only turns a hang into a failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    last: tuple[int, dict[str, Any]] | None = None
    while loop.time() < deadline:
        answer = await worker.get("/readyz")
        if answer is not None:
            last = (answer[0], json.loads(answer[1]))
            if cond(*last):
                return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{worker.name}: /readyz never matched; last {last}\n{worker.tail()}")


def test_tune_gc_freezes_start_up_objects_only() -> None:
    """What is alive at start-up leaves the collector's generations; thresholds stay."""
    threshold = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 10_000  # modules, validators, settings...
        assert gc.get_threshold() == threshold
    finally:
        gc.unfreeze()


class TestEventLoop:
    def test_auto_and_uvloop_choose_uvloop_asyncio_chooses_none(self) -> None:
        """``auto`` takes uvloop when installed (a dependency); ``asyncio`` keeps asyncio's."""
        import uvloop

        assert event_loop_factory("auto") is uvloop.new_event_loop
        assert event_loop_factory("uvloop") is uvloop.new_event_loop
        assert event_loop_factory("asyncio") is None

    def test_missing_uvloop_is_an_error_only_when_asked_for(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without uvloop, ``auto`` falls back to asyncio and ``uvloop`` says what is missing."""
        import sys

        monkeypatch.setitem(sys.modules, "uvloop", None)  # import now raises ImportError
        assert event_loop_factory("auto") is None
        with pytest.raises(RuntimeError, match="uvloop is not installed"):
            event_loop_factory("uvloop")

    def test_run_without_asked_for_uvloop_is_a_configuration_error(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`run` says so in one stderr line and exits 2, like every configuration error."""
        import sys

        from worker.cli import EXIT_CONFIG, main
        from worker.logs import reset_logging

        monkeypatch.setitem(sys.modules, "uvloop", None)
        monkeypatch.setenv("INVOICE_SYNC_PIPELINE__EVENT_LOOP", "uvloop")
        try:
            assert main(["run"]) == EXIT_CONFIG
        finally:
            reset_logging()
        err = capsys.readouterr().err
        assert err.strip() == (
            "invoice-sync: pipeline.event_loop is uvloop but uvloop is not installed"
            " (pip install uvloop)"
        )
