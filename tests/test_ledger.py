"""The idempotency ledger on both backends: claims, completion, voids, deliveries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from worker.ledger import ClaimStatus, Ledger, LedgerKey, open_ledger
from worker.settings import LedgerSettings

KEY = LedgerKey("store-1", "invoice", "order-1")


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/ledger.db"
    else:
        url = request.getfixturevalue("postgres_url")
    async with open_ledger(LedgerSettings(url=url)) as led:
        # Each test uses its own rows on the shared per-run PostgreSQL database.
        yield led


def _key(request: pytest.FixtureRequest, kind: str = "invoice", sub: str = "") -> LedgerKey:
    return LedgerKey("store-1", kind, request.node.name, sub)


class TestClaims:
    async def test_first_claim_is_new_then_resume(
        self, ledger: Ledger, request: pytest.FixtureRequest
    ) -> None:
        """A fresh key is NEW; claiming it again before completion is RESUME (look up first)."""
        key = _key(request)
        first = await ledger.claim(key, idempotency_key="k", reference="r", event_id="e1")
        assert first.status is ClaimStatus.NEW
        again = await ledger.claim(key, idempotency_key="k", reference="r", event_id="e2")
        assert again.status is ClaimStatus.RESUME
        assert again.attempts == 2

    async def test_completed_key_is_done_with_document_id(
        self, ledger: Ledger, request: pytest.FixtureRequest
    ) -> None:
        """After complete(), a claim reports DONE and the document id."""
        key = _key(request)
        await ledger.claim(key, idempotency_key="k", reference="r", event_id="e1")
        await ledger.complete(key, document_id="42", payload='{"a": 1}')
        claim = await ledger.claim(key, idempotency_key="k", reference="r", event_id="e2")
        assert (claim.status, claim.document_id) == (ClaimStatus.DONE, "42")
        entry = await ledger.get(key)
        assert entry is not None
        assert (entry.state, entry.payload, entry.idempotency_key) == ("done", '{"a": 1}', "k")

    async def test_refund_payloads_with_and_without_the_cancellation(
        self, ledger: Ledger, request: pytest.FixtureRequest
    ) -> None:
        """Done refund bodies, in order; the cancellation's only when asked for."""
        for sub, body in (("RF-1", '{"n": 1}'), ("RF-2", '{"n": 2}'), ("cancel", '{"n": 3}')):
            key = _key(request, "credit_note", sub)
            await ledger.claim(key, idempotency_key=sub, reference=sub, event_id=sub)
            await ledger.complete(key, document_id=sub, payload=body)
        pending = _key(request, "credit_note", "RF-3")  # claimed, never completed
        await ledger.claim(pending, idempotency_key="p", reference="p", event_id="p")
        order = request.node.name
        assert await ledger.refund_payloads("store-1", order) == ['{"n": 1}', '{"n": 2}']
        assert await ledger.refund_payloads("store-1", order, with_cancellation=True) == [
            '{"n": 1}',
            '{"n": 2}',
            '{"n": 3}',
        ]

    async def test_void_blocks_a_later_invoice(
        self, ledger: Ledger, request: pytest.FixtureRequest
    ) -> None:
        """An order cancelled before invoicing is VOID for a late paid event."""
        key = _key(request)
        assert await ledger.void(key, event_id="cancel-1") is True
        claim = await ledger.claim(key, idempotency_key="k", reference="r", event_id="paid-1")
        assert claim.status is ClaimStatus.VOID

    async def test_void_refused_when_invoice_exists(
        self, ledger: Ledger, request: pytest.FixtureRequest
    ) -> None:
        """void() does nothing when the invoice was already claimed."""
        key = _key(request)
        await ledger.claim(key, idempotency_key="k", reference="r", event_id="e1")
        assert await ledger.void(key, event_id="cancel-1") is False

    async def test_dead_lettered_row_can_be_claimed_again(
        self, ledger: Ledger, request: pytest.FixtureRequest
    ) -> None:
        """A replay after a fix resumes a dead-lettered row; the last error is kept meanwhile."""
        key = _key(request)
        await ledger.claim(key, idempotency_key="k", reference="r", event_id="e1")
        await ledger.record_error(key, reason="total_mismatch", dead_lettered=True)
        entry = await ledger.get(key)
        assert entry is not None
        assert (entry.state, entry.last_error) == ("dead_lettered", "total_mismatch")
        claim = await ledger.claim(key, idempotency_key="k", reference="r", event_id="e2")
        assert claim.status is ClaimStatus.RESUME

    async def test_deliveries_are_remembered(
        self, ledger: Ledger, request: pytest.FixtureRequest
    ) -> None:
        """A platform delivery id is unseen until recorded, then seen."""
        delivery = request.node.name
        assert await ledger.delivery_seen("shopify", delivery) is False
        await ledger.record_delivery("shopify", delivery)
        await ledger.record_delivery("shopify", delivery)
        assert await ledger.delivery_seen("shopify", delivery) is True

    async def test_dead_letters_are_remembered_by_coordinates_and_bytes(
        self, ledger: Ledger, request: pytest.FixtureRequest
    ) -> None:
        """A written letter is found by topic, partition, offset and digest; nothing else is."""
        topic = request.node.name[:100]
        assert await ledger.dead_letter_written(topic, 3, 2**40, "d1") is False
        await ledger.record_dead_letter(topic, 3, 2**40, "d1", reason="total_mismatch")
        await ledger.record_dead_letter(topic, 3, 2**40, "d1", reason="total_mismatch")
        assert await ledger.dead_letter_written(topic, 3, 2**40, "d1") is True
        assert await ledger.dead_letter_written(topic, 3, 2**40, "d2") is False  # other bytes
        assert await ledger.dead_letter_written(topic, 2, 2**40, "d1") is False
        assert await ledger.dead_letter_written(topic, 3, 2**40 + 1, "d1") is False


class TestLifecycle:
    async def test_second_start_raises_and_close_is_idempotent(self, tmp_path: Path) -> None:
        """A ledger starts once; close() can be called twice."""
        led = open_ledger(LedgerSettings(url=f"sqlite:///{tmp_path}/l.db"))
        await led.start()
        with pytest.raises(RuntimeError):
            await led.start()
        await led.close()
        await led.close()

    async def test_sqlite_state_survives_reopen(self, tmp_path: Path) -> None:
        """Rows are on disk: a new process sees the claim of a crashed one."""
        url = f"sqlite:///{tmp_path}/l.db"
        async with open_ledger(LedgerSettings(url=url)) as led:
            await led.claim(KEY, idempotency_key="k", reference="r", event_id="e1")
        async with open_ledger(LedgerSettings(url=url)) as led:
            claim = await led.claim(KEY, idempotency_key="k", reference="r", event_id="e1")
            assert claim.status is ClaimStatus.RESUME


class TestConcurrency:
    async def test_concurrent_claims_of_one_key_give_one_new(
        self, ledger: Ledger, request: pytest.FixtureRequest
    ) -> None:
        """Fifty simultaneous claims of one key: exactly one NEW, the rest RESUME."""
        import asyncio

        key = _key(request)
        claims = await asyncio.gather(
            *(
                ledger.claim(key, idempotency_key="k", reference="r", event_id=f"e{i}")
                for i in range(50)
            )
        )
        statuses = [c.status for c in claims]
        assert statuses.count(ClaimStatus.NEW) == 1
        assert statuses.count(ClaimStatus.RESUME) == 49

    async def test_many_keys_at_once_each_complete(
        self, ledger: Ledger, request: pytest.FixtureRequest
    ) -> None:
        """Two hundred keys claimed and completed concurrently all end up done."""
        import asyncio

        keys = [_key(request, sub=str(i)) for i in range(200)]

        async def one(k: LedgerKey) -> None:
            await ledger.claim(k, idempotency_key="k", reference="r", event_id="e")
            await ledger.complete(k, document_id=k.sub_id, payload=None)

        await asyncio.gather(*(one(k) for k in keys))
        entries = await asyncio.gather(*(ledger.get(k) for k in keys))
        assert [e.document_id for e in entries if e is not None] == [k.sub_id for k in keys]
        assert all(e is not None and e.state == "done" for e in entries)


class TestUnavailable:
    async def test_locked_sqlite_is_ledger_unavailable(self, tmp_path: Path) -> None:
        """Another process holding the write lock past the timeout is LedgerUnavailable."""
        import sqlite3

        from worker.errors import LedgerUnavailable

        path = tmp_path / "l.db"
        async with open_ledger(LedgerSettings(url=f"sqlite:///{path}", timeout_s=0.2)) as led:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # holds the write lock
            try:
                with pytest.raises(LedgerUnavailable) as info:
                    await led.claim(KEY, idempotency_key="k", reference="r", event_id="e")
                assert info.value.retriable
            finally:
                other.execute("ROLLBACK")
                other.close()
            claim = await led.claim(KEY, idempotency_key="k", reference="r", event_id="e")
            assert claim.status is ClaimStatus.NEW


class TestSqliteOnTheLoop:
    async def test_lock_released_in_time_is_waited_for_off_the_loop(self, tmp_path: Path) -> None:
        """A batch that meets a locked file waits on the ledger thread; the loop runs on."""
        import asyncio
        import sqlite3

        path = tmp_path / "l.db"
        async with open_ledger(LedgerSettings(url=f"sqlite:///{path}", timeout_s=5)) as led:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # holds the write lock
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticker = asyncio.create_task(tick())
            claim = asyncio.create_task(
                led.claim(KEY, idempotency_key="k", reference="r", event_id="e")
            )
            await asyncio.sleep(0.3)
            assert not claim.done()
            other.execute("ROLLBACK")
            other.close()
            assert (await claim).status is ClaimStatus.NEW
            ticker.cancel()
            assert ticks >= 10  # the loop kept running while the batch waited

    async def test_wal_is_checkpointed_while_writing(self, tmp_path: Path) -> None:
        """Automatic checkpoints are off on the loop's connection; the thread's checkpoint
        lets the WAL start over instead of growing without bound.

        Checked with the checkpoint and the writes one after the other: run concurrently,
        how far the WAL grows depends on how fast the disk syncs (it failed one run in
        five or so), which a test must not. RESTART rather than PASSIVE matters only then.
        """
        from worker import ledger as ledger_module

        path = tmp_path / "l.db"
        wal = Path(f"{path}-wal")
        payload = "x" * 4000  # about one page per row
        # No checkpoint while the first 300 rows go in, so `grown` is what 300 rows take
        # (a first checkpoint landing somewhere inside them made it vary by half).
        ledger_module._CHECKPOINT_EVERY_S = float("inf")
        try:
            async with open_ledger(LedgerSettings(url=f"sqlite:///{path}")) as led:

                async def write(start: int) -> None:
                    for i in range(start, start + 300):
                        key = LedgerKey("s", "invoice", f"o{i}", "")
                        await led.claim(key, idempotency_key="k", reference="r", event_id="e")
                        await led.complete(key, document_id=str(i), payload=payload)

                await write(0)
                grown = wal.stat().st_size  # noqa: ASYNC240 - a stat, in a test
                # One batch, then its checkpoint on the ledger's thread, waited for (not
                # for a time): RESTART copies the WAL and the next commit starts it over.
                ledger_module._CHECKPOINT_EVERY_S = 0.0
                await led.delivery_seen("shopify", "none")
                ledger_module._CHECKPOINT_EVERY_S = float("inf")
                checkpoint = led._checkpointing
                assert checkpoint is not None, "the batch started no checkpoint"
                await checkpoint
                await write(300)
                # Appended after the first 300 rows, the WAL would be twice `grown` now.
                assert wal.stat().st_size < grown * 1.2  # noqa: ASYNC240 - a stat, in a test
        finally:
            ledger_module._CHECKPOINT_EVERY_S = 1.0
