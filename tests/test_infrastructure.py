"""The real parts the suite stands on: a record through the broker, a row through PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.plugins.kafka import TopicFactory
from worker import broker as broker_module
from worker.broker import TansuBroker, free_port
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

    async def test_broker_command_refuses_a_port_already_in_use(self, tmp_path: Path) -> None:
        """A second broker on a taken port says so and exits non-zero, never "listening"."""
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker.cli", "broker", "--port", str(port),
                "--workdir", str(tmp_path),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                assert proc.stdout is not None
                assert proc.stderr is not None
                assert await asyncio.wait_for(proc.stdout.readline(), timeout=60) == b""
                err = await asyncio.wait_for(proc.stderr.read(), timeout=60)
                assert await asyncio.wait_for(proc.wait(), timeout=60) == 1
            finally:
                if proc.returncode is None:
                    proc.terminate()  # a broker that did start then stops its Tansu child too
                    await proc.wait()
        finally:
            server.close()
            await server.wait_closed()
        assert f"port {port} on 127.0.0.1 is already in use" in err.decode()


class TestTansuBroker:
    def test_exit_before_ready_raises_with_the_end_of_its_log(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Tansu exiting before it serves fails the start with why, from its log."""
        # The port is taken between the free-port check and Tansu's bind (the check is
        # skipped to make that race certain); bound without listening, it refuses connects,
        # so only Tansu's exit can end the wait.
        monkeypatch.setattr(broker_module, "_check_port_free", lambda port: None)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            with pytest.raises(RuntimeError, match=r"exited with code .* AddrInUse"):
                TansuBroker(port=port, log_path=tmp_path / "tansu.log")


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
