"""A topic mixing v1, Salla, Zid and Shopify records through the real worker, broker and
sandbox: one invoice per paid order, one credit note per cancellation or refund, repeated
deliveries skipped, bad signatures and the Shopify fixture's tax quirk dead-lettered."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import SecretStr

from tests.corpus import corpus_file
from tests.plugins.kafka import TopicFactory
from tests.worker_settings import endpoint_settings
from worker.broker import publish_records
from worker.demo_data import (
    DEMO_WEBHOOK_SECRETS,
    DemoRecord,
    generate_demo_events,
    generate_platform_events,
)
from worker.dlq import read_dead_letters
from worker.platforms.signatures import sign
from worker.sandbox import Sandbox
from worker.service import run_service
from worker.settings import Settings


def _corpus(*parts: str) -> Path:
    return corpus_file("platforms", *parts)


def _settings(bootstrap: str, topic: str, api: str, ledger: str) -> Settings:
    base = Settings()
    return endpoint_settings(
        bootstrap,
        topic,
        api,
        ledger,
        kafka={"topic_formats": {topic: "auto"}},
        platforms=base.platforms.model_copy(
            update={
                f"{name}_webhook_secret": SecretStr(secret.decode())
                for name, secret in DEMO_WEBHOOK_SECRETS.items()
            }
        ),
    )


def _mixed_records() -> tuple[list[DemoRecord], list[DemoRecord]]:
    """(records to publish, the ones that must be dead-lettered)."""
    v1 = generate_demo_events(orders=12, broken_each=0, platforms=False)
    platform = [r for batch in generate_platform_events() for r in batch]
    # A Shopify webhook whose body was altered after signing.
    paid = next(r for r in platform if dict(r.headers).get("X-Shopify-Topic") == b"orders/paid")
    forged = DemoRecord(
        b"5500000099",
        paid.value.replace(b"5500000001", b"5500000099"),
        paid.headers,
        "dlq:bad_signature",
    )
    # Shopify's own fixture, validly signed: a USD order, which a SAR ledger cannot book.
    fixture = _corpus("shopify", "orders-paid.json").read_bytes()
    foreign = _shopify_record(
        fixture.replace(b"450789469", b"450789470"), b"450789470", "dlq:unmappable_order"
    )
    # The same fixture in SAR: its published tax does not add up (SOURCES.md).
    in_sar = fixture.replace(b'currency": "USD"', b'currency": "SAR"')
    quirk = _shopify_record(in_sar, b"450789469", "dlq:total_mismatch")
    records = [*v1[:10], *platform[:6], forged, *v1[10:], *platform[6:], quirk, foreign]
    return records, [forged, quirk, foreign]


def _shopify_record(body: bytes, key: bytes, expected: str) -> DemoRecord:
    """A validly signed orders/paid webhook record."""
    return DemoRecord(
        key,
        body,
        [
            ("x-event-source", b"shopify"),
            ("X-Shopify-Topic", b"orders/paid"),
            ("X-Shopify-Event-Id", b"fixture-" + key),
            (
                "X-Shopify-Hmac-Sha256",
                sign("shopify", body, DEMO_WEBHOOK_SECRETS["shopify"]).encode(),
            ),
        ],
        expected,
    )


class TestMixedTopic:
    async def test_four_formats_one_document_each(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, sandbox: Sandbox, tmp_path: Path
    ) -> None:
        """Each paid order is invoiced once, each cancel/refund credited once, repeats skipped."""
        topic = await topic_factory("mixed", partitions=3)
        records, broken = _mixed_records()
        await publish_records(kafka_bootstrap, topic, records)
        settings = _settings(kafka_bootstrap, topic, sandbox.url, f"sqlite:///{tmp_path}/l.db")

        assert await run_service(settings) == 0

        wanted = Counter(r.expected for r in records)
        stats = sandbox.stats()
        assert stats["invoices"] == wanted["invoice"]
        assert stats["credit_notes"] == wanted["credit_note"]
        assert stats["duplicate_references"] == 0
        references = Counter(stats["references"])
        for ref in ("8100001", "8100002", "8100002-CN-cancel", "27400001", "27400001-CN-cancel"):
            assert references[ref] == 1, ref
        assert references["5500000001"] == 1  # delivered twice, invoiced once
        assert references["5500000001-CN-930000001"] == 1
        assert references["5500000002-CN-cancel"] == 1
        assert "27400002" not in references  # unpaid Zid order

        letters = await read_dead_letters(settings)
        assert sorted((d.key, d.reason) for d in letters) == sorted(
            (r.key, r.expected.removeprefix("dlq:")) for r in broken
        )
        quirk = next(d for d in letters if d.reason == "total_mismatch")
        assert quirk.info["detail-computed"] == "622.22"
        assert quirk.info["detail-declared"] == "598.94"
        foreign = next(d for d in letters if d.reason == "unmappable_order")
        assert foreign.info["detail-currency"] == "USD"

    async def test_replayed_topic_creates_nothing_new(
        self, kafka_bootstrap: str, topic_factory: TopicFactory, sandbox: Sandbox, tmp_path: Path
    ) -> None:
        """Publishing the platform webhooks again (redeliveries) adds no document."""
        topic = await topic_factory("replay", partitions=2)
        platform = [r for batch in generate_platform_events() for r in batch]
        settings = _settings(kafka_bootstrap, topic, sandbox.url, f"sqlite:///{tmp_path}/l.db")
        await publish_records(kafka_bootstrap, topic, platform)
        assert await run_service(settings) == 0
        first = sandbox.stats()
        await publish_records(kafka_bootstrap, topic, platform)
        assert await run_service(settings) == 0
        second = sandbox.stats()
        assert (second["invoices"], second["credit_notes"]) == (
            first["invoices"],
            first["credit_notes"],
        )
        assert second["duplicate_references"] == 0
        assert await read_dead_letters(settings) == []
