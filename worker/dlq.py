"""The dead-letter topic: what could not become a document, with the original bytes and why.

A dead letter keeps the source record's key, value and headers untouched and adds ``x-dlq-*``
headers: reason code (from :mod:`worker.errors`), a secret-free message, attempts, original
topic/partition/offset, first and last failure time and the worker version. The worker
writes one letter per source record: the ledger remembers what was written, so a record
read again after a restart or a rebalance (its offset not committed yet) is not written twice.

A record too large to be dead-lettered whole (over ``kafka.dlq_max_request_size``, or refused
by the broker as too large) is written without its value (an empty value, never a tombstone):
``x-dlq-omitted: value`` and ``x-dlq-original-value-size`` say so, and the original
topic/partition/offset headers say where to fetch it. Should even that be too large, the key
and the original headers are left out too (``x-dlq-omitted: value,key,headers``). A size
error is permanent for that record, so the writer never hands it back for a retry.

``invoice-sync dlq inspect`` lists the dead letters, read up to the end of the topic as it
was at the start. ``invoice-sync dlq replay [--reason R]`` re-publishes them to their source
topic after a fix (the ledger makes a replay of something already done a no-op) and commits
what it replayed in a consumer group (``kafka.dlq_replay_group_id``, one per ``--reason``
filter), so the next replay sends only dead letters that arrived since.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

from worker import __version__
from worker.errors import InvoiceSyncError
from worker.kafka import consumer_options, producer_options
from worker.logs import get_logger
from worker.metrics import DEAD_LETTERS, DEAD_LETTERS_VALUE_OMITTED
from worker.settings import Settings

__all__ = [
    "DLQ_HEADER_PREFIX",
    "DeadLetter",
    "DeadLetterRead",
    "DeadLetterWriter",
    "PartitionRead",
    "SourceRecord",
    "WrittenLetters",
    "inspect_dlq",
    "read_dead_letters",
    "replay_dlq",
    "scan_dead_letters",
]

DLQ_HEADER_PREFIX = "x-dlq-"
_MAX_MESSAGE = 500
#: What a dead letter leaves out, tried in this order until the broker takes one.
_REDUCTIONS: tuple[tuple[str, ...], ...] = ((), ("value",), ("value", "key", "headers"))
#: The producer's own check and the broker's answer: both mean "this record never fits".
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
#: A read of the DLQ gives up (and says so) after this long without any progress.
_IDLE_TIMEOUT_S = 30.0
_POLL_MS = 200

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


class WrittenLetters(Protocol):
    """Where the writer remembers what it dead-lettered (:class:`worker.ledger.Ledger`)."""

    async def dead_letter_written(
        self, topic: str, partition: int, offset: int, digest: str
    ) -> bool: ...

    async def record_dead_letter(
        self, topic: str, partition: int, offset: int, digest: str, *, reason: str
    ) -> None: ...


class DeadLetterWriter:
    """Writes dead letters with a producer the caller owns (acks=all).

    With ``written`` (the ledger), a source record is dead-lettered once: a record read again
    before its offset was committed (after a restart or a rebalance) finds its letter
    recorded and is not written twice, which would replay it twice and count it twice.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        settings: Settings,
        written: WrittenLetters | None = None,
    ) -> None:
        self._producer = producer
        self._kafka = settings.kafka
        self._written = written

    async def send(
        self,
        record: SourceRecord,
        *,
        error: InvoiceSyncError,
        attempts: int,
        first_failure: float,
        last_failure: float,
    ) -> bool:
        """Publish ``record`` to its DLQ topic and wait for the broker's acknowledgement.

        Returns False, writing nothing, when this record's letter was written before.

        A record too large for the producer or the broker is written without its value (see
        the module docstring), logged as ``dlq.value_omitted`` and counted.

        Raises:
            aiokafka errors: when the write fails for another reason (broker down, no
                leader, not authorised), or even the smallest form is too large; the caller
                then must not commit the source offset.
        """
        # The DLQ topic is part of it: deployments that share a ledger and a source topic
        # but dead-letter to topics of their own each write their letter.
        digest = _digest(self._kafka.dlq_for(record.topic), record)
        where = (record.topic, record.partition, record.offset, digest)
        if self._written is not None:
            try:
                seen = await self._written.dead_letter_written(*where)
            except Exception as exc:  # the ledger is down: a second letter beats a stuck partition
                log.warning("dlq.dedupe_unavailable", step="check", error_type=type(exc).__name__)
                seen = False
            if seen:
                log.info("dlq.already_written", reason=error.reason, attempts=attempts)
                return False
        await self._write(
            record, error=error, attempts=attempts, first=first_failure, last=last_failure
        )
        if self._written is not None:
            # After the broker's acknowledgement. If the ledger fails here the letter stands
            # (never raise: the caller would write it again); a redelivery may then write it
            # a second time, as after a crash between the two.
            try:
                await self._written.record_dead_letter(*where, reason=error.reason)
            except Exception as exc:
                log.warning("dlq.dedupe_unavailable", step="record", error_type=type(exc).__name__)
        return True

    async def _write(
        self,
        record: SourceRecord,
        *,
        error: InvoiceSyncError,
        attempts: int,
        first: float,
        last: float,
    ) -> None:
        original = [
            (k, v) for k, v in (record.headers or ()) if not k.startswith(DLQ_HEADER_PREFIX)
        ]
        extra: dict[str, str] = {
            "reason": error.reason,
            "message": error.message[:_MAX_MESSAGE],
            "attempts": str(attempts),
            "original-topic": record.topic,
            "original-partition": str(record.partition),
            "original-offset": str(record.offset),
            "first-failure": _iso(first),
            "last-failure": _iso(last),
            "worker-version": __version__,
        }
        for name, value in error.details.items():
            if isinstance(value, str | int | float) and name.isidentifier():
                extra[f"detail-{name.replace('_', '-')}"] = str(value)[:_MAX_MESSAGE]
        own = [(DLQ_HEADER_PREFIX + k, v.encode()) for k, v in extra.items()]
        topic = self._kafka.dlq_for(record.topic)
        too_large: Exception | None = None
        for omit in _REDUCTIONS:
            headers = [*([] if "headers" in omit else original), *own, *_omitted(record, omit)]
            try:
                await self._producer.send_and_wait(
                    topic,
                    b"" if "value" in omit else record.value,
                    key=None if "key" in omit else record.key,
                    headers=headers,
                )
            except _TOO_LARGE as exc:
                too_large = exc
                continue
            if omit:
                log.warning(
                    "dlq.value_omitted",
                    reason=error.reason,
                    omitted=",".join(omit),
                    value_size=len(record.value or b""),
                    max_request_size=self._kafka.dlq_max_request_size,
                    error_type=type(too_large).__name__,
                )
                DEAD_LETTERS_VALUE_OMITTED.labels(error.reason).inc()
            DEAD_LETTERS.labels(error.reason).inc()
            return
        assert too_large is not None
        raise too_large


def _digest(dlq_topic: str, record: SourceRecord) -> str:
    """SHA-256 of the DLQ topic, the record's key and its value (length-prefixed, so no two
    triples collide)."""
    h = hashlib.sha256()
    for part in (dlq_topic.encode(), record.key, record.value):
        h.update(b"-" if part is None else len(part).to_bytes(8, "big") + part)
    return h.hexdigest()


def _omitted(record: SourceRecord, omit: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """The headers that say what a reduced dead letter left out, and how big it was."""
    if not omit:
        return []
    sizes = {"value": len(record.value or b""), "key": len(record.key or b"")}
    sizes["headers"] = sum(len(k) + len(v or b"") for k, v in (record.headers or ()))
    out = [(f"{DLQ_HEADER_PREFIX}omitted", ",".join(omit).encode())]
    out += [
        (f"{DLQ_HEADER_PREFIX}original-{part}-size", str(sizes[part]).encode()) for part in omit
    ]
    return out


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

    @property
    def omitted(self) -> tuple[str, ...]:
        """What this dead letter left out of the source record (``value``, ``key``, ...)."""
        text = self.info.get("omitted", "")
        return tuple(part for part in text.split(",") if part)


@dataclass(frozen=True, slots=True)
class PartitionRead:
    """How far one DLQ partition was read: offsets ``start`` up to (not including) ``end``."""

    topic: str
    partition: int
    start: int
    end: int
    complete: bool  # reached the end of the partition as it was when the read began


@dataclass(frozen=True, slots=True)
class DeadLetterRead:
    """Dead letters read from the DLQ topic(s), and how far each partition was read."""

    letters: list[DeadLetter]
    partitions: tuple[PartitionRead, ...]

    @property
    def complete(self) -> bool:
        return all(p.complete for p in self.partitions)

    def describe(self) -> list[str]:
        """One line per partition for a person: the offsets read and whether that is all."""
        lines = []
        for p in self.partitions:
            where = f"{p.topic}[{p.partition}]"
            if p.end > p.start:
                line = f"{where}: offsets {p.start} to {p.end - 1} read"
            else:
                line = f"{where}: nothing to read from offset {p.start}"
            if p.complete:
                line += ", up to the end of the partition when the read began"
            else:
                line += "; STOPPED EARLY (no progress for a while): the rest was not read"
            lines.append(line)
        return lines


class _Reader:
    """A consumer over the DLQ partitions, without joining a group.

    With ``group_id`` it starts at that group's committed offsets (the beginning when it has
    none) and :meth:`commit` records how far the caller got, as ``dlq replay`` does.
    """

    def __init__(self, settings: Settings, *, group_id: str | None = None) -> None:
        self._settings = settings
        self._group_id = group_id
        opts = consumer_options(settings.kafka, group=False)
        opts["auto_offset_reset"] = "earliest"  # offsets removed by retention: the oldest left
        if group_id is not None:
            opts["group_id"] = group_id  # offsets storage only: assign() never joins the group
        self._consumer = AIOKafkaConsumer(**opts)

    async def __aenter__(self) -> _Reader:
        try:
            await self._consumer.start()
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._consumer.stop()

    async def read(self, *, idle_timeout_s: float = _IDLE_TIMEOUT_S) -> DeadLetterRead:
        """Every dead letter from the start position up to the end captured when this began.

        The end of a partition is its end offset (ListOffsets) or, when higher, the high
        watermark of its first fetch (some brokers undercount end offsets; see
        docs/reliability.md). Letters that arrive while this reads are left for next time,
        so a replay never chases the letters its own replays produce.
        """
        consumer = self._consumer
        topics = sorted({self._settings.kafka.dlq_for(t) for t in self._settings.kafka.topics})
        partitions = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or await self._partitions(t))
        ]
        if not partitions:
            return DeadLetterRead([], ())
        consumer.assign(partitions)
        starts: dict[TopicPartition, int] = {}
        for tp in partitions:
            committed = await consumer.committed(tp) if self._group_id is not None else None
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
            starts[tp] = await consumer.position(tp)
        ends: dict[TopicPartition, int] = dict(await consumer.end_offsets(partitions))
        fetched: set[TopicPartition] = set()  # partitions whose end took a fetch's highwater
        reached: dict[TopicPartition, int] = dict(starts)
        out: list[DeadLetter] = []
        remaining = set(partitions)
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=_POLL_MS)
            progressed = False
            for tp in list(remaining):
                highwater = consumer.highwater(tp)
                if tp not in fetched and highwater is not None:
                    fetched.add(tp)
                    ends[tp] = max(ends[tp], highwater)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        break
                    out.append(
                        DeadLetter(
                            r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ())
                        )
                    )
                    reached[tp] = r.offset + 1
                    progressed = True
            for tp in list(remaining):
                if tp in fetched and await consumer.position(tp) >= ends[tp]:
                    reached[tp] = ends[tp]  # past gaps (compaction, markers) up to the end
                    remaining.discard(tp)
                    consumer.pause(tp)
                    progressed = True
            if progressed:
                last_progress = loop.time()
            elif loop.time() - last_progress >= idle_timeout_s:
                log.warning(
                    "dlq.read_incomplete",
                    idle_s=idle_timeout_s,
                    partitions=sorted(f"{t.topic}:{t.partition}" for t in remaining),
                    letters=len(out),
                )
                break
        return DeadLetterRead(
            out,
            tuple(
                PartitionRead(tp.topic, tp.partition, starts[tp], reached[tp], tp not in remaining)
                for tp in partitions
            ),
        )

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Record in the group that everything below ``offsets`` was dealt with."""
        if offsets:
            await self._consumer.commit(offsets)

    async def _partitions(self, topic: str) -> set[int]:
        await self._consumer._client.force_metadata_update()
        return self._consumer.partitions_for_topic(topic) or set()


async def scan_dead_letters(
    settings: Settings, *, idle_timeout_s: float = _IDLE_TIMEOUT_S
) -> DeadLetterRead:
    """Every dead letter on the DLQ topic(s) up to the end as it was when this began."""
    async with _Reader(settings) as reader:
        return await reader.read(idle_timeout_s=idle_timeout_s)


async def read_dead_letters(
    settings: Settings, *, idle_timeout_s: float = _IDLE_TIMEOUT_S
) -> list[DeadLetter]:
    """The dead letters of :func:`scan_dead_letters` (a read that stopped early is logged)."""
    return (await scan_dead_letters(settings, idle_timeout_s=idle_timeout_s)).letters


def _print_read(read: DeadLetterRead) -> None:
    for line in read.describe():
        print(line, file=sys.stderr)


async def inspect_dlq(settings: Settings, *, limit: int, as_json: bool) -> int:
    """Print dead letters with their reasons (``invoice-sync dlq inspect``).

    Returns 1 when the read stopped before the end of the topic.
    """
    read = await scan_dead_letters(settings)
    letters = read.letters
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
            omitted = (
                f" omitted={info['omitted']} value_size={info.get('original-value-size')}"
                if letter.omitted
                else ""
            )
            print(
                f"{info.get('original-topic')}[{info.get('original-partition')}]"
                f"@{info.get('original-offset')} key={key}"
                f" reason={letter.reason} attempts={info.get('attempts')}{omitted}"
                f" message={info.get('message', '')}"
            )
    _print_read(read)
    print(
        f"{len(letters)} dead letters" + ("" if read.complete else " (the read stopped early)"),
        file=sys.stderr,
    )
    return 0 if read.complete else 1


async def replay_dlq(settings: Settings, *, reason: str | None, dry_run: bool) -> int:
    """Re-publish the dead letters not replayed before (optionally one reason) to their source.

    What was replayed is committed in the group ``kafka.dlq_replay_group(reason)``, so each
    dead letter is sent once; letters of other reasons are passed over for this filter. A
    letter without its value (too large) cannot be replayed from the DLQ: it is listed with
    the source coordinates to fetch it from. Returns 1 when the read stopped early (what was
    sent is committed all the same).
    """
    group = settings.kafka.dlq_replay_group(reason)
    async with _Reader(settings, group_id=group) as reader:
        read = await reader.read()
        _print_read(read)
        chosen = [d for d in read.letters if reason is None or d.reason == reason]
        if dry_run:
            for d in chosen:
                target = d.info.get("original-topic")
                key = (d.key or b"").decode("utf-8", "replace") or "-"
                print(f"would replay offset {d.offset} key={key} reason={d.reason} to {target}")
            return 0 if read.complete else 1
        sent, skipped = await _replay(settings, reader, read, chosen)
    log.info(
        "dlq.replayed",
        count=sent,
        skipped_value_omitted=skipped,
        reason_filter=reason,
        group=group,
        complete=read.complete,
    )
    print(f"replayed {sent} dead letters" + (f", {skipped} skipped" if skipped else ""))
    return 0 if read.complete else 1


async def _replay(
    settings: Settings,
    reader: _Reader,
    read: DeadLetterRead,
    chosen: Sequence[DeadLetter],
) -> tuple[int, int]:
    """Send ``chosen``; commit, even on failure, everything below the first letter not sent."""
    wanted = {(d.topic, d.partition, d.offset) for d in chosen}
    done: dict[TopicPartition, int] = {}
    sent = skipped = 0
    producer = AIOKafkaProducer(**producer_options(settings.kafka))
    try:
        await producer.start()
        for d in read.letters:
            tp = TopicPartition(d.topic, d.partition)
            if (d.topic, d.partition, d.offset) in wanted:
                info = d.info
                if "value" in d.omitted:
                    skipped += 1
                    print(
                        f"skipped offset {d.offset} reason={d.reason}: value omitted"
                        f" ({info.get('original-value-size')} bytes); fetch it from"
                        f" {info.get('original-topic')}[{info.get('original-partition')}]"
                        f"@{info.get('original-offset')}"
                    )
                else:
                    target = info.get("original-topic") or settings.kafka.topics[0]
                    headers = [*d.original_headers, ("x-replayed-from-dlq", str(d.offset).encode())]
                    await producer.send_and_wait(target, d.value, key=d.key, headers=headers)
                    sent += 1
            done[tp] = d.offset + 1
        for p in read.partitions:
            if p.end > p.start:  # all read up to the end: past gaps and filtered letters
                done[TopicPartition(p.topic, p.partition)] = p.end
    finally:
        try:
            await producer.stop()
        finally:
            await reader.commit(done)
    return sent, skipped
