"""The dead-letter topic: headers written, read back, inspected and replayed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from tests.plugins.kafka import TopicFactory
from worker.dlq import (
    DeadLetterWriter,
    WrittenLetters,
    read_dead_letters,
    replay_dlq,
    scan_dead_letters,
)
from worker.errors import (
    DLQ_REASONS,
    InvalidBuyerVat,
    LedgerUnavailable,
    MalformedEvent,
    TotalMismatch,
)
from worker.kafka import producer_options
from worker.ledger import open_ledger
from worker.settings import LedgerSettings, Settings

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def _settings(bootstrap: str, topic: str, **kafka: Any) -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(
                update={"bootstrap_servers": bootstrap, "topics": [topic], **kafka}
            )
        }
    )


def _sample(name: str, reason: str) -> float:
    return REGISTRY.get_sample_value(name, {"reason": reason}) or 0.0


async def _write_one(
    settings: Settings, record: FakeRecord, *, written: WrittenLetters | None = None
) -> bool:
    """Dead-letter ``record`` as malformed_event with the worker's own DLQ producer options
    (a new writer each time, as after a restart: what it remembers is in ``written``);
    whether a letter was written."""
    producer = AIOKafkaProducer(**producer_options(settings.kafka))
    await producer.start()
    try:
        now = time.time()
        return await DeadLetterWriter(producer, settings=settings, written=written).send(
            record,
            error=MalformedEvent("not JSON"),
            attempts=1,
            first_failure=now,
            last_failure=now,
        )
    finally:
        await producer.stop()


async def _source_records(bootstrap: str, topic: str) -> list[Any]:
    """Everything on ``topic`` now (read up to its high watermark)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[Any] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            out.extend(r for rs in batch.values() for r in rs)
            tps = consumer.assignment()
            ends = [consumer.highwater(tp) for tp in tps]
            positions = [await consumer.position(tp) for tp in tps]
            if tps and all(e is not None and p >= e for p, e in zip(positions, ends, strict=True)):
                return out
    finally:
        await consumer.stop()


async def _write(settings: Settings, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        writer = DeadLetterWriter(producer, settings=settings)
        now = time.time()
        await writer.send(
            FakeRecord(topic, 2, 41, b"ORD-1", b"\xff\xfe not utf-8", (("x-source", b"v1"),)),
            error=TotalMismatch(
                "computed 10.00, declared 12.00", computed="10.00", declared="12.00"
            ),
            attempts=1,
            first_failure=now,
            last_failure=now,
        )
        await writer.send(
            FakeRecord(topic, 0, 7, b"ORD-2", b'{"order_id": "ORD-2"}', ()),
            error=InvalidBuyerVat("buyer VAT number is not 15 digits starting and ending in 3"),
            attempts=1,
            first_failure=now,
            last_failure=now,
        )
    finally:
        await producer.stop()


class TestDeadLetters:
    async def test_original_bytes_and_reason_headers(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """A dead letter keeps key, value and headers, and adds reason, origin and details."""
        topic = await topic_factory("dlq", partitions=3)
        settings = _settings(kafka_bootstrap, topic)
        await _write(settings, topic)
        letters = await read_dead_letters(settings)
        assert [(d.key, d.value) for d in letters] == [
            (b"ORD-1", b"\xff\xfe not utf-8"),
            (b"ORD-2", b'{"order_id": "ORD-2"}'),
        ]
        first = letters[0]
        assert first.original_headers == [("x-source", b"v1")]
        info = first.info
        assert info["reason"] == "total_mismatch"
        assert (info["original-topic"], info["original-partition"], info["original-offset"]) == (
            topic,
            "2",
            "41",
        )
        assert (info["detail-computed"], info["detail-declared"]) == ("10.00", "12.00")
        assert info["worker-version"]
        assert info["first-failure"].endswith("+00:00")

    async def test_replay_by_reason_republishes_to_source(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """`dlq replay --reason R` re-publishes only those, with their original bytes."""
        topic = await topic_factory("replay", partitions=1)
        settings = _settings(kafka_bootstrap, topic)
        await _write(settings, topic)
        assert await replay_dlq(settings, reason="invalid_buyer_vat", dry_run=False) == 0
        records = await _source_records(kafka_bootstrap, topic)
        assert [(r.key, r.value) for r in records] == [(b"ORD-2", b'{"order_id": "ORD-2"}')]
        assert ("x-replayed-from-dlq", b"1") in list(records[0].headers)

    async def test_inspect_command_lists_reasons(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """`invoice-sync dlq inspect` prints each dead letter with its reason."""
        topic = await topic_factory("inspect", partitions=1)
        settings = _settings(kafka_bootstrap, topic)
        await _write(settings, topic)
        env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICE_SYNC_")}
        env["INVOICE_SYNC_KAFKA__BOOTSTRAP_SERVERS"] = kafka_bootstrap
        env["INVOICE_SYNC_KAFKA__TOPICS"] = f'["{topic}"]'
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "worker.cli", "dlq", "inspect"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 2
        assert "reason=total_mismatch" in lines[0]
        assert "reason=invalid_buyer_vat" in lines[1]
        assert "2 dead letters" in result.stderr


class TestTooLarge:
    async def test_record_over_the_limit_is_written_without_its_value(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """Over dlq_max_request_size: same key and headers, no value, its size and origin."""
        topic = await topic_factory("big", partitions=3)
        settings = _settings(kafka_bootstrap, topic, dlq_max_request_size=4096)
        omitted_before = _sample("invoice_sync_dead_letters_value_omitted_total", "malformed_event")
        letters_before = _sample("invoice_sync_dead_letters_total", "malformed_event")
        big = FakeRecord(topic, 1, 17, b"ORD-BIG", b"x" * 20_000, (("x-source", b"v1"),))
        await _write_one(settings, big)
        [letter] = await read_dead_letters(settings)
        assert (letter.key, letter.value) == (b"ORD-BIG", b"")
        assert letter.original_headers == [("x-source", b"v1")]
        assert letter.omitted == ("value",)
        info = letter.info
        assert info["reason"] == "malformed_event"
        assert info["original-value-size"] == "20000"
        assert (info["original-topic"], info["original-partition"], info["original-offset"]) == (
            topic,
            "1",
            "17",
        )
        assert (
            _sample("invoice_sync_dead_letters_value_omitted_total", "malformed_event")
            == omitted_before + 1
        )
        assert _sample("invoice_sync_dead_letters_total", "malformed_event") == letters_before + 1

    async def test_key_and_headers_too_large_are_left_out_as_well(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """When even the key and headers do not fit, only the x-dlq-* headers are written."""
        topic = await topic_factory("bigkey")
        settings = _settings(kafka_bootstrap, topic, dlq_max_request_size=4096)
        huge = FakeRecord(topic, 0, 3, b"k" * 5000, b"v", (("x-trace", b"t" * 100),))
        await _write_one(settings, huge)
        [letter] = await read_dead_letters(settings)
        assert (letter.key, letter.value, letter.original_headers) == (None, b"", [])
        assert letter.omitted == ("value", "key", "headers")
        info = letter.info
        assert (info["original-key-size"], info["original-value-size"]) == ("5000", "1")
        assert info["original-headers-size"] == str(len("x-trace") + 100)
        assert info["original-offset"] == "3"

    async def test_record_over_one_mib_is_written_whole_by_default(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """The reported 1.5 MB record fits the default limit (aiokafka's own is 1 MiB)."""
        topic = await topic_factory("mib")
        settings = _settings(kafka_bootstrap, topic)
        value = b'{"order_id": "ORD-1", "pad": "' + b"p" * 1_500_000 + b'"'
        await _write_one(settings, FakeRecord(topic, 0, 0, b"ORD-1", value, ()))
        [letter] = await read_dead_letters(settings)
        assert letter.value == value
        assert letter.omitted == ()

    async def test_replay_lists_a_letter_without_value_instead_of_sending_it(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """An empty value is not the event: replay names where to fetch it and sends nothing."""
        topic = await topic_factory("bigreplay")
        settings = _settings(kafka_bootstrap, topic, dlq_max_request_size=4096)
        await _write_one(settings, FakeRecord(topic, 0, 9, b"ORD-9", b"x" * 10_000, ()))
        assert await replay_dlq(settings, reason=None, dry_run=False) == 0
        assert await _source_records(kafka_bootstrap, topic) == []


class TestReplayOnce:
    async def test_two_replays_in_a_row_send_each_letter_once(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """The replay group remembers what was sent: the second replay sends only newcomers."""
        topic = await topic_factory("once", partitions=1)
        settings = _settings(kafka_bootstrap, topic)
        await _write(settings, topic)
        assert await replay_dlq(settings, reason=None, dry_run=False) == 0
        assert len(await _source_records(kafka_bootstrap, topic)) == 2
        assert await replay_dlq(settings, reason=None, dry_run=False) == 0
        assert len(await _source_records(kafka_bootstrap, topic)) == 2
        # The worker dead-letters one replayed event again: only that one goes next time.
        now = time.time()
        producer = AIOKafkaProducer(**producer_options(settings.kafka))
        await producer.start()
        try:
            await DeadLetterWriter(producer, settings=settings).send(
                FakeRecord(topic, 0, 1, b"ORD-2", b'{"order_id": "ORD-2"}', ()),
                error=InvalidBuyerVat("still invalid"),
                attempts=1,
                first_failure=now,
                last_failure=now,
            )
        finally:
            await producer.stop()
        assert await replay_dlq(settings, reason=None, dry_run=False) == 0
        records = await _source_records(kafka_bootstrap, topic)
        assert [r.key for r in records] == [b"ORD-1", b"ORD-2", b"ORD-2"]
        assert ("x-replayed-from-dlq", b"2") in list(records[2].headers)

    async def test_replay_by_reason_keeps_its_own_position(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """A --reason replay passes other reasons over without using them up for theirs."""
        topic = await topic_factory("reasons", partitions=1)
        settings = _settings(kafka_bootstrap, topic)
        await _write(settings, topic)
        assert await replay_dlq(settings, reason="invalid_buyer_vat", dry_run=False) == 0
        assert await replay_dlq(settings, reason="invalid_buyer_vat", dry_run=False) == 0
        assert await replay_dlq(settings, reason="total_mismatch", dry_run=False) == 0
        assert await replay_dlq(settings, reason="total_mismatch", dry_run=False) == 0
        records = await _source_records(kafka_bootstrap, topic)
        assert sorted(r.key for r in records) == [b"ORD-1", b"ORD-2"]

    async def test_unknown_reason_is_refused_before_any_replay(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """`dlq replay --reason <typo>` exits 2 listing the codes, and starts no group."""
        topic = await topic_factory("typo", partitions=1)
        settings = _settings(kafka_bootstrap, topic)
        await _write(settings, topic)
        result = await _dlq_cli(kafka_bootstrap, topic, "replay", "--reason", "nosuchreason")
        assert result.returncode == 2, result.stdout
        assert result.stdout == ""
        assert "nosuchreason" in result.stderr
        assert all(code in result.stderr for code in DLQ_REASONS)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap,
            group_id=settings.kafka.dlq_replay_group("nosuchreason"),
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            dlq = TopicPartition(settings.kafka.dlq_for(topic), 0)
            assert await consumer.committed(dlq) is None
        finally:
            await consumer.stop()

    async def test_dry_run_commits_nothing(
        self,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A dry run lists what would go (with the order key) and leaves it for the replay."""
        topic = await topic_factory("dry", partitions=1)
        settings = _settings(kafka_bootstrap, topic)
        await _write(settings, topic)
        assert await replay_dlq(settings, reason=None, dry_run=True) == 0
        listed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("would")]
        assert [ln.split()[4] for ln in listed] == ["key=ORD-1", "key=ORD-2"], listed
        assert await replay_dlq(settings, reason=None, dry_run=False) == 0
        assert len(await _source_records(kafka_bootstrap, topic)) == 2


class TestInspectCount:
    async def test_count_matches_the_topic_and_says_how_far_it_read(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """10 single letters then a batch of 50: all 60 are read, to the end seen at start."""
        topic = await topic_factory("count", partitions=1)
        settings = _settings(kafka_bootstrap, topic)
        dlq = settings.kafka.dlq_for(topic)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(dlq, b"v", key=f"s{i}".encode())
            futures = [await producer.send(dlq, b"v", key=f"b{i}".encode()) for i in range(50)]
            await producer.flush()
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        read = await scan_dead_letters(settings)
        assert len(read.letters) == 60
        assert read.complete
        assert [(p.start, p.end) for p in read.partitions] == [(0, 60)]
        result = await _dlq_cli(kafka_bootstrap, topic, "inspect", "--limit", "1")
        assert result.returncode == 0, result.stderr
        assert f"{dlq}[0]: offsets 0 to 59 read, up to the end of the partition" in result.stderr
        assert "60 dead letters" in result.stderr


class TestOnce:
    async def test_a_record_read_again_is_not_dead_lettered_twice(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
    ) -> None:
        """A restart re-reads an uncommitted dead letter: the ledger keeps it to one letter."""
        topic = await topic_factory("once", partitions=1)
        settings = _settings(kafka_bootstrap, topic)
        record = FakeRecord(topic, 0, 7, b"ORD-1", b"{broken", ())
        recreated = FakeRecord(topic, 0, 7, b"ORD-9", b"{other bytes", ())
        before = _sample("invoice_sync_dead_letters_total", "malformed_event")
        async with open_ledger(LedgerSettings(url=f"sqlite:///{tmp_path}/l.db")) as ledger:
            wrote = [
                await _write_one(settings, sent, written=ledger)
                for sent in (record, record, record, recreated)
            ]
        assert wrote == [True, False, False, True]
        letters = await read_dead_letters(settings)
        # The recreated topic's record at the same offset has other bytes: its own letter.
        assert [(d.key, d.value) for d in letters] == [
            (b"ORD-1", b"{broken"),
            (b"ORD-9", b"{other bytes"),
        ]
        assert _sample("invoice_sync_dead_letters_total", "malformed_event") == before + 2

    async def test_deployments_with_their_own_dead_letter_topics_each_write_theirs(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
    ) -> None:
        """One ledger, one source record, two DLQ topics: a letter in each, not one in all."""
        topic = await topic_factory("once-two", partitions=1)
        elsewhere = await topic_factory("once-two-dlq", partitions=1)
        ours = _settings(kafka_bootstrap, topic)
        theirs = _settings(kafka_bootstrap, topic, dlq_topic=elsewhere)
        record = FakeRecord(topic, 0, 5, b"ORD-5", b"{broken", ())
        async with open_ledger(LedgerSettings(url=f"sqlite:///{tmp_path}/l.db")) as ledger:
            assert await _write_one(ours, record, written=ledger)
            assert await _write_one(theirs, record, written=ledger)
            assert not await _write_one(theirs, record, written=ledger)
        assert len(await read_dead_letters(ours)) == 1
        assert len(await read_dead_letters(theirs)) == 1

    async def test_a_ledger_that_fails_never_fails_or_repeats_a_written_letter(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """The ledger down at the check: the letter is written; at the record: not raised."""
        topic = await topic_factory("once-down", partitions=1)
        settings = _settings(kafka_bootstrap, topic)

        class DownLedger:
            async def dead_letter_written(self, *where: object) -> bool:
                raise LedgerUnavailable("ledger down")

            async def record_dead_letter(self, *where: object, reason: str) -> None:
                raise LedgerUnavailable("ledger down")

        await _write_one(
            settings, FakeRecord(topic, 0, 3, b"ORD-3", b"{broken", ()), written=DownLedger()
        )
        letters = await read_dead_letters(settings)
        assert [(d.key, d.value) for d in letters] == [(b"ORD-3", b"{broken")]


async def _dlq_cli(bootstrap: str, topic: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``invoice-sync dlq <args>`` in a subprocess for ``topic``, with no other settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICE_SYNC_")}
    env["INVOICE_SYNC_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
    env["INVOICE_SYNC_KAFKA__TOPICS"] = f'["{topic}"]'
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "worker.cli", "dlq", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
