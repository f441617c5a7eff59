"""No secret in any log line or metric: a full pipeline run with every logger at DEBUG."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Callable

from tests.plugins.kafka import TopicFactory
from tests.plugins.worker_process import WorkerFactory
from worker.broker import publish_records
from worker.demo_data import DemoRecord, generate_demo_events
from worker.sandbox import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, Sandbox, SandboxConfig

_TOKEN_SHAPE = re.compile(r"sbx_(?:at|rt)_[A-Za-z0-9_\-]{8,}")


class TestNoLeaks:
    async def test_debug_logs_and_metrics_carry_no_secret(
        self,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        sandbox_factory: object,
        worker_factory: WorkerFactory,
    ) -> None:
        """Short-lived tokens, a forced 401 renewal, DEBUG everywhere: zero secrets leak."""
        sbx: Sandbox = await sandbox_factory(SandboxConfig(token_lifetime=6.0))  # type: ignore[operator]
        topic = await topic_factory("leak", partitions=2)
        records = generate_demo_events(orders=80, broken_each=1, platforms=False)
        keys = list(dict.fromkeys(r.key for r in records))
        first_keys = set(keys[: len(keys) // 2])
        first = [r for r in records if r.key in first_keys]
        second = [r for r in records if r.key not in first_keys]

        def documents() -> int:
            stats = sbx.stats()
            return int(stats["invoices"]) + int(stats["credit_notes"])

        def wanted(batch: list[DemoRecord]) -> int:
            return sum(1 for r in batch if r.expected in ("invoice", "credit_note"))

        async def wait_for(cond: Callable[[], bool]) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 120
            while not cond():
                assert loop.time() < deadline, worker.tail()
                await asyncio.sleep(0.05)

        await publish_records(kafka_bootstrap, topic, first)
        worker = worker_factory(
            {
                "INVOICE_SYNC_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
                "INVOICE_SYNC_KAFKA__TOPICS": f'["{topic}"]',
                "INVOICE_SYNC_KAFKA__GROUP_ID": f"g-{topic}",
                "INVOICE_SYNC_API__BASE_URL": sbx.url,
                "INVOICE_SYNC_OAUTH__TOKEN_URL": f"{sbx.url}/oauth/token",
                "INVOICE_SYNC_OAUTH__REVOKE_URL": f"{sbx.url}/oauth/revoke",
                "INVOICE_SYNC_OAUTH__REVOKE_ON_SHUTDOWN": "true",
                "INVOICE_SYNC_LEDGER__URL": "sqlite:///ledger.db",
                "INVOICE_SYNC_LOGGING__LEVEL": "DEBUG",
            }
        )
        await wait_for(lambda: documents() >= wanted(first))
        # Wait for a background refresh (every 3 s with a 6 s token), then revoke every token
        # right after it: the next request carries a revoked token, gets 401 and renews.
        fetched = sbx.stats()["token_requests"].get("client_credentials", 0)
        await wait_for(lambda: sbx.stats()["token_requests"].get("client_credentials", 0) > fetched)
        sbx.revoke_all()
        await publish_records(kafka_bootstrap, topic, second)
        await wait_for(lambda: documents() >= wanted(first) + wanted(second))
        metrics = await worker.metrics()
        assert await worker.terminate() == 0
        log = worker.log_text()

        # The run exercised what could leak: several token fetches, a 401 renewal, and
        # DEBUG output from our code and from the libraries.
        assert sbx.stats()["token_requests"].get("client_credentials", 0) >= 2
        assert "invoice_sync_token_renewals_after_401_total 1.0" in metrics or re.search(
            r"invoice_sync_token_renewals_after_401_total [1-9]", metrics
        )
        levels = {(e.get("logger", ""), e.get("level")) for e in worker.log_events()}
        assert any(lg.startswith("aiokafka") and lv == "debug" for lg, lv in levels)
        assert any(lg.startswith("worker") and lv == "debug" for lg, lv in levels)

        secrets = set(sbx.issued_secrets()) | {DEMO_CLIENT_SECRET}
        basic = base64.b64encode(f"{DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET}".encode()).decode()
        secrets.add(basic)
        assert len(secrets) > 3
        for text, where in ((log, "worker log"), (metrics, "/metrics")):
            # Name a hit by a hash, so the failure message itself leaks nothing.
            hits = sorted(hashlib.sha256(s.encode()).hexdigest()[:8] for s in secrets if s in text)
            assert hits == [], f"secrets found in {where} (sha256 prefixes): {hits}"
            assert _TOKEN_SHAPE.search(text) is None, f"token-shaped value in {where}"
