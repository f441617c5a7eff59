"""The real parts the suite stands on: a record through the broker, a row through PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.plugins.kafka import TopicFactory
from worker.broker import free_port
from worker.demo_data import generate_demo_events


class TestBroker:
    async def test_record_round_trip_with_key_headers_and_commit(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """A produced record comes back with its key, value and headers; a commit sticks."""
        topic = await topic_factory("infra", partitions=3)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            meta = await producer.send_and_wait(
                topic, b"value-1", key=b"order-1", headers=[("x-test", b"yes")]
            )
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=f"g-{topic}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=10_000)
            while not batch:
                batch = await consumer.getmany(timeout_ms=10_000)
            records = [r for rs in batch.values() for r in rs]
            assert [(r.key, r.value, list(r.headers)) for r in records] == [
                (b"order-1", b"value-1", [("x-test", b"yes")])
            ]
            tp = TopicPartition(topic, meta.partition)
            await consumer.commit({tp: records[0].offset + 1})
            assert await consumer.committed(tp) == records[0].offset + 1
        finally:
            await consumer.stop()


class TestBrokerCommand:
    async def test_broker_command_serves_the_demo_topic_until_sigterm(self, tmp_path: Path) -> None:
        """`invoice-sync broker --demo-events`: one ready line, every demo event on `orders`,
        exit 0 on SIGTERM - what a developer runs beside `sandbox` and `run`."""
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.cli", "broker", "--port", str(port), "--demo-events",
            "--workdir", str(tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=120)
            expected = len(generate_demo_events())
            assert line.decode().strip() == (
                f"broker listening on 127.0.0.1:{port} (topic orders: {expected} demo events)"
            )
            # Counted by reading them: Tansu's end_offsets is wrong for batches (notes/tansu.md).
            consumer = AIOKafkaConsumer(
                bootstrap_servers=f"127.0.0.1:{port}", auto_offset_reset="earliest"
            )
            await consumer.start()
            seen = 0
            try:
                consumer.assign([TopicPartition("orders", p) for p in range(6)])
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while seen < expected and loop.time() < deadline:
                    batch = await consumer.getmany(timeout_ms=1000)
                    seen += sum(len(records) for records in batch.values())
            finally:
                await consumer.stop()
            assert seen == expected
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), timeout=60) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


class TestPostgres:
    async def test_write_then_read(self, postgres_url: str) -> None:
        """A row written to the per-run database reads back the same."""
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS probe (k text primary key, v text)")
            await conn.execute("INSERT INTO probe VALUES ($1, $2)", "k1", "ذهب")
            assert await conn.fetchval("SELECT v FROM probe WHERE k = $1", "k1") == "ذهب"
        finally:
            await conn.close()
