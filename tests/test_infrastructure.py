"""The real parts the suite stands on: a record through the broker, a row through PostgreSQL."""

from __future__ import annotations

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.plugins.kafka import TopicFactory


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
