"""The dead-letter topic: what could not become a document, with the original bytes and why.

A dead letter keeps the source record's key, value and headers untouched and adds ``x-dlq-*``
headers: reason code (from :mod:`worker.errors`), a secret-free message, attempts, original
topic/partition/offset, first and last failure time and the worker version. ``invoice-sync dlq
inspect`` lists them; ``invoice-sync dlq replay [--reason R]`` re-publishes them to their source
topic after a fix (the ledger makes a replay of something already done a no-op).
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from worker import __version__
from worker.errors import InvoiceSyncError
from worker.kafka import consumer_options, producer_options
from worker.logs import get_logger
from worker.metrics import DEAD_LETTERS
from worker.settings import Settings

__all__ = [
    "DLQ_HEADER_PREFIX",
    "DeadLetter",
    "DeadLetterWriter",
    "SourceRecord",
    "inspect_dlq",
    "read_dead_letters",
    "replay_dlq",
]

DLQ_HEADER_PREFIX = "x-dlq-"
_MAX_MESSAGE = 500

log = get_logger(__name__)


class SourceRecord(Protocol):
    """What the writer needs of a consumed record (aiokafka's ConsumerRecord fits)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class DeadLetterWriter:
    """Writes dead letters with a producer the caller owns (acks=all)."""

    def __init__(self, producer: AIOKafkaProducer, *, settings: Settings) -> None:
        self._producer = producer
        self._kafka = settings.kafka

    async def send(
        self,
        record: SourceRecord,
        *,
        error: InvoiceSyncError,
        attempts: int,
        first_failure: float,
        last_failure: float,
    ) -> None:
        """Publish ``record`` to its DLQ topic and wait for the broker's acknowledgement.

        Raises:
            aiokafka errors: when the write fails; the caller then must not commit the
                source offset.
        """
        headers = [(k, v) for k, v in (record.headers or ()) if not k.startswith(DLQ_HEADER_PREFIX)]
        extra: dict[str, str] = {
            "reason": error.reason,
            "message": error.message[:_MAX_MESSAGE],
            "attempts": str(attempts),
            "original-topic": record.topic,
            "original-partition": str(record.partition),
            "original-offset": str(record.offset),
            "first-failure": _iso(first_failure),
            "last-failure": _iso(last_failure),
            "worker-version": __version__,
        }
        for name, value in error.details.items():
            if isinstance(value, str | int | float) and name.isidentifier():
                extra[f"detail-{name.replace('_', '-')}"] = str(value)[:_MAX_MESSAGE]
        headers.extend((DLQ_HEADER_PREFIX + k, v.encode()) for k, v in extra.items())
        await self._producer.send_and_wait(
            self._kafka.dlq_for(record.topic), record.value, key=record.key, headers=headers
        )
        DEAD_LETTERS.labels(error.reason).inc()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record read back from a dead-letter topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def info(self) -> dict[str, str]:
        """The ``x-dlq-*`` headers without the prefix, decoded."""
        n = len(DLQ_HEADER_PREFIX)
        return {
            k[n:]: v.decode("utf-8", "replace")
            for k, v in self.headers
            if k.startswith(DLQ_HEADER_PREFIX)
        }

    @property
    def reason(self) -> str:
        return self.info.get("reason", "unknown")

    @property
    def original_headers(self) -> list[tuple[str, bytes]]:
        return [(k, v) for k, v in self.headers if not k.startswith(DLQ_HEADER_PREFIX)]


async def read_dead_letters(settings: Settings, *, timeout_s: float = 10.0) -> list[DeadLetter]:
    """Everything currently on the DLQ topic(s), read without joining a consumer group."""
    topics = sorted({settings.kafka.dlq_for(t) for t in settings.kafka.topics})
    consumer = AIOKafkaConsumer(**consumer_options(settings.kafka, group=False))
    try:
        await consumer.start()
        partitions = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or await _partitions(consumer, t))
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[DeadLetter] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    out.append(
                        DeadLetter(
                            r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ())
                        )
                    )
            # end_offsets can undercount on some brokers (see docs): stop on the highwater.
            for tp in list(remaining):
                position = await consumer.position(tp)
                if position >= max(ends[tp], consumer.highwater(tp) or 0):
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


async def inspect_dlq(settings: Settings, *, limit: int, as_json: bool) -> int:
    """Print dead letters with their reasons (``invoice-sync dlq inspect``)."""
    letters = await read_dead_letters(settings)
    for letter in letters[:limit]:
        info = letter.info
        if as_json:
            print(
                json.dumps(
                    {
                        "topic": letter.topic,
                        "partition": letter.partition,
                        "offset": letter.offset,
                        "key": (letter.key or b"").decode("utf-8", "replace"),
                        **info,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            key = (letter.key or b"").decode("utf-8", "replace")
            print(
                f"{info.get('original-topic')}[{info.get('original-partition')}]"
                f"@{info.get('original-offset')} key={key}"
                f" reason={letter.reason} attempts={info.get('attempts')}"
                f" message={info.get('message', '')}"
            )
    print(f"{len(letters)} dead letters", file=sys.stderr)
    return 0


async def replay_dlq(settings: Settings, *, reason: str | None, dry_run: bool) -> int:
    """Re-publish dead letters (optionally only one reason) to their source topic."""
    letters = [d for d in await read_dead_letters(settings) if reason is None or d.reason == reason]
    if dry_run:
        for d in letters:
            target = d.info.get("original-topic")
            print(f"would replay offset {d.offset} reason={d.reason} to {target}")
        return 0
    producer = AIOKafkaProducer(**producer_options(settings.kafka))
    try:
        await producer.start()
        for d in letters:
            target = d.info.get("original-topic") or settings.kafka.topics[0]
            headers = [*d.original_headers, ("x-replayed-from-dlq", str(d.offset).encode())]
            await producer.send_and_wait(target, d.value, key=d.key, headers=headers)
    finally:
        await producer.stop()
    log.info("dlq.replayed", count=len(letters), reason_filter=reason)
    print(f"replayed {len(letters)} dead letters")
    return 0
