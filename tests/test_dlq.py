"""The dead-letter topic: headers written, read back, inspected and replayed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.plugins.kafka import TopicFactory
from worker.dlq import DeadLetterWriter, read_dead_letters, replay_dlq
from worker.errors import InvalidBuyerVat, TotalMismatch
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def _settings(bootstrap: str, topic: str) -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(
                update={"bootstrap_servers": bootstrap, "topics": [topic]}
            )
        }
    )


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
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=5000)
            records = [r for rs in batch.values() for r in rs]
        finally:
            await consumer.stop()
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
