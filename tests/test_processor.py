"""What one event does, against the sandbox over real HTTP and a real ledger: void before
invoice, credit notes, crash reconciliation, duplicate references, unknown SKUs, scopes."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from worker.api import AccountingApi
from worker.auth import build_auth
from worker.errors import (
    ApiUnavailable,
    InsufficientScope,
    NoOriginalInvoice,
    ReferenceConflict,
    UnknownSku,
    UnmappableOrder,
)
from worker.ledger import ClaimStatus, Ledger, LedgerKey, open_ledger
from worker.mapping import LedgerKey as PlanKey
from worker.mapping import idempotency_key
from worker.processor import EventProcessor
from worker.sandbox import ClientSpec, FaultRule, Faults, Sandbox, SandboxConfig
from worker.settings import LedgerSettings, Settings

EXAMPLES = Path(__file__).resolve().parents[1] / "config" / "examples"


@dataclass
class Rec:
    value: bytes
    key: bytes | None
    topic: str = "orders"
    partition: int = 0
    offset: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


def _event(name: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    data.update(changes)
    return data


def _rec(event: dict[str, Any]) -> Rec:
    return Rec(json.dumps(event).encode(), event["order_id"].encode())


Make = Callable[..., Awaitable[tuple[EventProcessor, Ledger]]]


@pytest.fixture
async def make_processor(tmp_path: Path) -> AsyncIterator[Make]:
    opened: list[Any] = []

    async def make(
        sandbox: Sandbox, *, client: tuple[str, str] | None = None, **mapping: Any
    ) -> tuple[EventProcessor, Ledger]:
        base = Settings()
        oauth = {"token_url": f"{sandbox.url}/oauth/token"}
        if client:
            oauth |= {"client_id": client[0], "client_secret": SecretStr(client[1])}
        settings = base.model_copy(
            update={
                "api": base.api.model_copy(update={"base_url": sandbox.url}),
                "oauth": base.oauth.model_copy(update=oauth),
                "ledger": LedgerSettings(url=f"sqlite:///{tmp_path}/ledger-{len(opened)}.db"),
                "mapping": base.mapping.model_copy(update=mapping),
            }
        )
        ledger = open_ledger(settings.ledger)
        await ledger.start()
        auth = build_auth(settings)
        await auth.start()
        api = AccountingApi(settings.api, auth=auth)
        await api.start()
        opened.extend([api, auth, ledger])
        return EventProcessor(api=api, ledger=ledger, settings=settings), ledger

    yield make
    for thing in opened:
        await thing.close()


class TestDocuments:
    async def test_paid_creates_one_invoice_and_a_redelivery_is_a_duplicate(
        self, sandbox: Sandbox, make_processor: Make
    ) -> None:
        """order.paid creates the invoice; the same event again is skipped as a duplicate."""
        processor, _ = await make_processor(sandbox)
        paid = _rec(_event("order.paid.business-b2b.json"))
        assert (await processor.handle(paid)).outcome == "created"
        assert (await processor.handle(paid)).outcome == "duplicate"
        stats = sandbox.stats()
        assert (stats["invoices"], stats["references"]) == (1, ["ORD-1001"])

    async def test_refund_and_cancellation_credit_the_invoice(
        self, sandbox: Sandbox, make_processor: Make
    ) -> None:
        """A refund credits its lines; a cancellation mirrors the invoice; both reference it."""
        processor, _ = await make_processor(sandbox)
        await processor.handle(_rec(_event("order.paid.business-b2b.json")))
        assert (await processor.handle(_rec(_event("order.refunded.json")))).outcome == "created"
        cancel = _event("order.cancelled.json", order_id="ORD-1001")
        assert (await processor.handle(_rec(cancel))).outcome == "created"
        notes = [n.to_json() for n in sandbox.state.ledger.credit_notes.values()]
        invoice = next(iter(sandbox.state.ledger.invoices.values())).to_json()
        assert sorted(n["reference"] for n in notes) == ["ORD-1001-CN-RF-77", "ORD-1001-CN-cancel"]
        assert all(n["parent_id"] == invoice["id"] for n in notes)
        # The cancellation credits exactly what the refund left of the invoice.
        credited = sum(Decimal(n["total"]) for n in notes)
        assert abs(credited - Decimal(invoice["total"])) <= Decimal("0.01")

    async def test_cancelled_before_paid_is_never_invoiced(
        self, sandbox: Sandbox, make_processor: Make
    ) -> None:
        """A cancellation with no invoice records that; the late paid event creates nothing."""
        processor, _ = await make_processor(sandbox)
        cancel = _event("order.cancelled.json", order_id="ORD-1001")
        assert (await processor.handle(_rec(cancel))).outcome == "void"
        paid = _rec(_event("order.paid.business-b2b.json"))
        assert (await processor.handle(paid)).outcome == "void"
        assert sandbox.stats()["invoices"] == 0
        assert sandbox.stats()["credit_notes"] == 0

    async def test_refund_without_invoice_is_no_original_invoice(
        self, sandbox: Sandbox, make_processor: Make
    ) -> None:
        """A refund for an order never invoiced is a permanent no_original_invoice."""
        processor, _ = await make_processor(sandbox)
        with pytest.raises(NoOriginalInvoice) as info:
            await processor.handle(_rec(_event("order.refunded.json")))
        assert info.value.details["event_type"] == "order.refunded"


def _refund(refund_id: str, quantity: str, event_id: str) -> Rec:
    data = _event("order.refunded.json", event_id=event_id)
    data["refund"] = {**data["refund"], "refund_id": refund_id}
    data["refund"]["lines"] = [{"line_id": "1", "quantity": quantity}]
    return _rec(data)


class TestOverCredit:
    async def test_refunds_up_to_the_line_pass_and_one_more_is_refused(
        self, sandbox: Sandbox, make_processor: Make
    ) -> None:
        """Four one-unit refunds of a four-unit line are credited; a fifth is unmappable."""
        processor, ledger = await make_processor(sandbox)
        await processor.handle(_rec(_event("order.paid.business-b2b.json")))
        for i in range(1, 5):
            result = await processor.handle(_refund(f"RF-{i}", "1", f"evt-rf-{i}"))
            assert result.outcome == "created"
        with pytest.raises(UnmappableOrder, match="more than is left of invoice ORD-1001") as info:
            await processor.handle(_refund("RF-5", "1", "evt-rf-5"))
        assert Decimal(str(info.value.details["excess"])) > Decimal("100")  # one unit, 208.69
        assert sandbox.stats()["credit_notes"] == 4
        entry = await ledger.get(LedgerKey("store-1001", "credit_note", "ORD-1001", "RF-5"))
        assert entry is not None
        assert (entry.state, entry.last_error) == ("dead_lettered", "unmappable_order")

    async def test_refund_after_the_cancellation_credited_everything_is_refused(
        self, sandbox: Sandbox, make_processor: Make
    ) -> None:
        """A cancellation credits the whole invoice; a later refund would credit it twice."""
        processor, _ = await make_processor(sandbox)
        await processor.handle(_rec(_event("order.paid.business-b2b.json")))
        cancel = _event("order.cancelled.json", order_id="ORD-1001")
        assert (await processor.handle(_rec(cancel))).outcome == "created"
        with pytest.raises(UnmappableOrder, match="after 1 earlier credit note"):
            await processor.handle(_refund("RF-9", "1", "evt-rf-9"))
        assert sandbox.stats()["credit_notes"] == 1


class TestReconciliation:
    async def test_claim_left_by_a_crash_is_reconciled_by_lookup(
        self, sandbox: Sandbox, make_processor: Make
    ) -> None:
        """Invoice created, then a crash before complete(): the retry records it, creates none."""
        processor, _ = await make_processor(sandbox)
        event = _event("order.paid.business-b2b.json")
        await processor.handle(_rec(event))
        # Rebuild the crashed state: a fresh ledger whose row is still "claimed".
        processor2, ledger2 = await make_processor(sandbox)
        key = LedgerKey("store-1001", "invoice", "ORD-1001")
        idem = idempotency_key(PlanKey("store-1001", "invoice", "ORD-1001", None))
        claim = await ledger2.claim(
            key, idempotency_key=idem, reference="ORD-1001", event_id="evt-0001"
        )
        assert claim.status is ClaimStatus.NEW
        assert (await processor2.handle(_rec(event))).outcome == "reconciled"
        entry = await ledger2.get(key)
        assert entry is not None
        assert entry.state == "done"
        assert entry.document_id is not None
        assert sandbox.stats()["invoices"] == 1

    async def test_reference_taken_in_the_api_is_recorded_not_dead_lettered(
        self, sandbox: Sandbox, make_processor: Make
    ) -> None:
        """A ledger that lost its rows meets 'reference taken': it looks it up and records it."""
        first, _ = await make_processor(sandbox)
        event = _event("order.paid.business-b2b.json")
        await first.handle(_rec(event))
        changed = copy.deepcopy(event)
        changed["event_id"] = "evt-other"
        changed["order"]["lines"][0]["name"] = "Ceramic mug (renamed)"  # a different body
        second, ledger = await make_processor(sandbox)
        assert (await second.handle(_rec(changed))).outcome == "reconciled"
        assert sandbox.stats()["invoices"] == 1
        assert (await ledger.get(LedgerKey("store-1001", "invoice", "ORD-1001"))) is not None


def _without_the_tea(event: dict[str, Any]) -> None:
    """The B2B example without its second line: 923.47 instead of 941.79."""
    event["order"]["lines"] = event["order"]["lines"][:1]
    event["order"]["totals"]["total"] = "923.47"


def _another_buyer(event: dict[str, Any]) -> None:
    """The same order bought by another business (same total)."""
    event["order"]["customer"].update(
        external_id="cust-9",
        name="Another Trading Co.",
        email="other@example.com",
        phone="+966500000009",
        vat_number="399999999900003",
    )


class TestReferenceConflicts:
    """Two stores' orders with one id meet at the API's reference: never adopt the other's."""

    @staticmethod
    def _other_store(event: dict[str, Any], store: str = "store-2002") -> dict[str, Any]:
        other = _event("order.paid.individual-arabic.json")  # another buyer, another total
        return {
            **other,
            "order_id": event["order_id"],
            "event_id": "evt-s2",
            "source": {**other["source"], "store_id": store},
        }

    async def test_other_stores_invoice_is_not_recorded_as_ours(
        self, sandbox: Sandbox, make_processor: Make
    ) -> None:
        """'Reference taken' by another store's invoice: reference_conflict, no adoption."""
        processor, ledger = await make_processor(sandbox)
        event = _event("order.paid.business-b2b.json")
        assert (await processor.handle(_rec(event))).outcome == "created"
        with pytest.raises(ReferenceConflict) as caught:
            await processor.handle(_rec(self._other_store(event)))
        assert caught.value.reason == "reference_conflict"
        assert caught.value.details["differs"] == "contact,total"
        assert caught.value.details["reference"] == "ORD-1001"
        entry = await ledger.get(LedgerKey("store-2002", "invoice", "ORD-1001"))
        assert entry is not None
        assert (entry.state, entry.last_error) == ("dead_lettered", "reference_conflict")
        assert sandbox.stats()["invoices"] == 1

    @pytest.mark.parametrize(
        ("change", "differs"), [(_without_the_tea, "total"), (_another_buyer, "contact")]
    )
    async def test_other_order_under_our_reference_is_refused_after_a_crash(
        self,
        sandbox: Sandbox,
        make_processor: Make,
        change: Callable[[dict[str, Any]], None],
        differs: str,
    ) -> None:
        """A claim left by a crash finds the reference taken by another store's order whose
        total, or (same total) whose buyer, differs: refused, not adopted."""
        processor, ledger = await make_processor(sandbox)
        event = _event("order.paid.business-b2b.json")
        await processor.handle(_rec(event))
        other = copy.deepcopy(event)
        other["event_id"] = "evt-s2"
        other["source"]["store_id"] = "store-2002"
        change(other)
        key = LedgerKey("store-2002", "invoice", "ORD-1001")
        idem = idempotency_key(PlanKey("store-2002", "invoice", "ORD-1001", None))
        await ledger.claim(key, idempotency_key=idem, reference="ORD-1001", event_id="evt-s2")
        with pytest.raises(ReferenceConflict) as caught:
            await processor.handle(_rec(other))
        assert caught.value.details["differs"] == differs
        assert sandbox.stats()["invoices"] == 1

    async def test_cancellation_finds_an_invoice_made_under_the_old_template(
        self, sandbox: Sandbox, make_processor: Make
    ) -> None:
        """After the template changed, a mirroring cancellation fetches its invoice by id."""
        before, old_ledger = await make_processor(sandbox)
        assert (await before.handle(_rec(_event("order.paid.individual-arabic.json")))).outcome
        invoice_key = LedgerKey("store-1001", "invoice", "ORD-1002")
        made = await old_ledger.get(invoice_key)
        assert made is not None
        assert made.document_id
        # A ledger row without the body sent (as for a reconciled invoice): no lines to copy.
        after, ledger = await make_processor(sandbox, reference_template="{store_id}-{order_id}")
        idem = idempotency_key(PlanKey("store-1001", "invoice", "ORD-1002", None))
        await ledger.claim(invoice_key, idempotency_key=idem, reference="ORD-1002", event_id="e")
        await ledger.complete(invoice_key, document_id=made.document_id, payload=None)
        result = await after.handle(_rec(_event("order.cancelled.json")))
        assert result.outcome == "created"
        assert "store-1001-ORD-1002-CN-cancel" in sandbox.state.ledger.references

    async def test_store_in_the_reference_keeps_stores_apart(
        self, sandbox: Sandbox, make_processor: Make
    ) -> None:
        """With {store_id} in the template each store's order gets its own invoice."""
        processor, _ = await make_processor(sandbox, reference_template="{store_id}-{order_id}")
        event = _event("order.paid.business-b2b.json")
        assert (await processor.handle(_rec(event))).outcome == "created"
        assert (await processor.handle(_rec(self._other_store(event)))).outcome == "created"
        refund = _event("order.refunded.json")
        assert (await processor.handle(_rec(refund))).outcome == "created"
        stats = sandbox.stats()
        assert (stats["invoices"], stats["credit_notes"], stats["duplicate_references"]) == (
            2,
            1,
            0,
        )
        references = set(sandbox.state.ledger.references)
        assert {"store-1001-ORD-1001", "store-2002-ORD-1001"} <= references
        assert "store-1001-ORD-1001-CN-RF-77" in references


class TestTransientErrors:
    async def test_transient_error_names_the_event_type(
        self, sandbox: Sandbox, make_processor: Make
    ) -> None:
        """A 503 carries the event's type, so retries that run out count it under its type."""
        processor, _ = await make_processor(sandbox)
        sandbox.set_faults(Faults(rules=(FaultRule(target="resources", error_rates={503: 1.0}),)))
        with pytest.raises(ApiUnavailable) as caught:
            await processor.handle(_rec(_event("order.paid.business-b2b.json")))
        assert caught.value.details["event_type"] == "order.paid"


class TestSkipped:
    async def test_unknown_type_is_skipped_and_said_once_per_type(
        self, sandbox: Sandbox, make_processor: Make, json_logs: io.StringIO
    ) -> None:
        """order.payed (a typo) and order.shipped: skipped, one INFO line for each type."""
        processor, _ = await make_processor(sandbox)
        paid = _event("order.paid.business-b2b.json")
        for event_type in ("order.payed", "order.payed", "order.shipped", "order.created"):
            result = await processor.handle(_rec({**paid, "event_type": event_type}))
            assert result.outcome == "skipped"
        lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
        said = [ln["event_type"] for ln in lines if ln["event"] == "event.unknown_type_skipped"]
        assert said == ["order.payed", "order.shipped"]  # order.created is a contract type
        assert sandbox.stats()["invoices"] == 0


class TestConfiguration:
    async def test_unknown_sku_when_products_are_not_created(
        self, sandbox: Sandbox, make_processor: Make
    ) -> None:
        """create_missing_products=false dead-letters an unknown SKU as unknown_sku."""
        processor, ledger = await make_processor(sandbox, create_missing_products=False)
        with pytest.raises(UnknownSku):
            await processor.handle(_rec(_event("order.paid.business-b2b.json")))
        entry = await ledger.get(LedgerKey("store-1001", "invoice", "ORD-1001"))
        assert entry is not None
        assert (entry.state, entry.last_error) == ("dead_lettered", "unknown_sku")
        assert sandbox.stats()["invoices"] == 0

    async def test_missing_scope_is_a_configuration_fault(
        self, sandbox_factory: Any, make_processor: Make
    ) -> None:
        """A client without products.write gets 403 insufficient_scope: a fault, not a DLQ."""
        scopes = frozenset(
            {
                "invoices.read",
                "invoices.write",
                "customers.read",
                "customers.write",
                "products.read",
                "credit_notes.write",
            }
        )
        sbx = await sandbox_factory(
            SandboxConfig(clients=[ClientSpec("narrow", "narrow-secret", scopes)])
        )
        processor, _ = await make_processor(sbx, client=("narrow", "narrow-secret"))
        with pytest.raises(Exception) as info:  # noqa: PT011 - checked below
            await processor.handle(_rec(_event("order.paid.business-b2b.json")))
        # Asking for products.write at the token endpoint is already refused (invalid_scope);
        # either way it is a configuration fault that pauses the pipeline.
        assert info.value.reason in {"auth_configuration", InsufficientScope.reason}
        assert info.value.retriable
