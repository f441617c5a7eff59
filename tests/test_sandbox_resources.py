"""The sandbox's accounting resources: auth checks, validation, totals, idempotency."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import aiohttp
import pytest

from tests.plugins.sandbox import SandboxFactory, bearer, fetch_token
from worker.sandbox import ClientSpec, Sandbox, SandboxConfig
from worker.sandbox.server import freeze_stored

Http = aiohttp.ClientSession
VAT = "300000000000003"


class Api:
    """A tiny authenticated client for the tests: returns ``(status, body)``."""

    def __init__(self, http: Http, sbx: Sandbox, token: str) -> None:
        self.http, self.url, self.headers = http, sbx.url, bearer(token)

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        async with self.http.get(self.url + path, params=params, headers=self.headers) as r:
            return r.status, await r.json()

    async def post(self, path: str, body: Any, *, key: str | None = None) -> tuple[int, Any]:
        headers = dict(self.headers, **({"Idempotency-Key": key} if key else {}))
        async with self.http.post(self.url + path, json=body, headers=headers) as r:
            return r.status, await r.json()


@pytest.fixture
async def api(sandbox: Sandbox, sandbox_http: Http) -> Api:
    return Api(sandbox_http, sandbox, await fetch_token(sandbox_http, sandbox))


def _line(**overrides: Any) -> dict[str, Any]:
    line = {
        "product_id": 1,
        "description": "Widget",
        "quantity": "1",
        "unit_price": "100",
        "discount": "0",
        "discount_type": "amount",
        "tax_percent": "15",
        "is_inclusive": False,
    }
    return {**line, **overrides}


def _invoice(reference: str = "INV-1", *lines: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    invoice = {
        "contact_id": 1,
        "reference": reference,
        "issue_date": "2024-05-01",
        "due_date": "2024-05-31",
        "status": "Approved",
        "inventory_id": 1,
        "line_items": list(lines) or [_line()],
    }
    return {"invoice": {**invoice, **overrides}}


def _credit(parent_id: int, reference: str = "CN-1", *lines: dict[str, Any]) -> dict[str, Any]:
    note = {
        "contact_id": 1,
        "reference": reference,
        "issue_date": "2024-06-01",
        "parent_id": parent_id,
        "reason": "returned goods",
        "status": "Approved",
        "inventory_id": 1,
        "line_items": list(lines) or [_line()],
    }
    return {"credit_note": note}


@pytest.fixture
async def seeded(api: Api) -> Api:
    """A contact (id 1) and a product (id 1) exist."""
    status, _ = await api.post("/2.0/customers", {"contact": {"name": "Buyer", "tax_number": VAT}})
    assert status == 201
    product = {"sku": "W-1", "name": "Widget", "type": "Product", "selling_price": "100"}
    status, _ = await api.post("/2.0/products", {"product": product})
    assert status == 201
    return api


class TestBearerChecks:
    async def test_missing_token_is_401_with_bearer_challenge(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """No Authorization header is 401 with a plain Bearer realm challenge."""
        async with sandbox_http.get(f"{sandbox.url}/2.0/invoices") as response:
            assert response.status == 401
            challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer realm=")
        assert "error=" not in challenge

    async def test_unknown_token_is_invalid_token(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """An unknown bearer token is 401 error="invalid_token"."""
        async with sandbox_http.get(
            f"{sandbox.url}/2.0/invoices", headers=bearer("sbx_at_forged")
        ) as response:
            assert response.status == 401
            assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]

    async def test_missing_scope_is_403_insufficient_scope(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """A valid token without the endpoint's scope is 403 naming the scope."""
        token = await fetch_token(sandbox_http, sandbox, scope="invoices.read")
        async with sandbox_http.post(
            f"{sandbox.url}/2.0/invoices", json=_invoice(), headers=bearer(token)
        ) as response:
            assert response.status == 403
            challenge = response.headers["WWW-Authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="invoices.write"' in challenge

    async def test_credit_note_search_needs_invoices_read(
        self, sandbox: Sandbox, sandbox_http: Http
    ) -> None:
        """GET credit_notes is guarded by invoices.read, POST by credit_notes.write."""
        token = await fetch_token(sandbox_http, sandbox, scope="credit_notes.write")
        api = Api(sandbox_http, sandbox, token)
        status, _ = await api.get("/2.0/credit_notes")
        assert status == 403
        status, _ = await api.post("/2.0/credit_notes", _credit(1))
        assert status == 422

    async def test_api_key_header_is_accepted(
        self, sandbox_factory: SandboxFactory, sandbox_http: Http
    ) -> None:
        """A configured API-KEY works with its scopes; an unknown one is 401."""
        sbx = await sandbox_factory(SandboxConfig(api_keys={"k-1": frozenset({"invoices.read"})}))
        async with sandbox_http.get(f"{sbx.url}/2.0/invoices", headers={"API-KEY": "k-1"}) as r:
            assert r.status == 404
        async with sandbox_http.get(f"{sbx.url}/2.0/customers", headers={"API-KEY": "k-1"}) as r:
            assert r.status == 403
        async with sandbox_http.get(f"{sbx.url}/2.0/invoices", headers={"API-KEY": "x"}) as r:
            assert r.status == 401
        assert "k-1" in sbx.issued_secrets()


class TestCustomersAndProducts:
    async def test_search_with_no_match_is_404(self, api: Api) -> None:
        """An empty search answers 404 with a message, as Qoyod does."""
        status, body = await api.get("/2.0/customers", **{"q[tax_number_eq]": VAT})
        assert status == 404
        assert "message" in body

    async def test_created_contact_is_found_by_tax_number_and_email(self, api: Api) -> None:
        """A created contact gets an id and is found by tax number or email."""
        contact = {
            "name": "Buyer",
            "email": "b@example.com",
            "tax_number": VAT,
            "billing_address": {"street": "King Fahd", "city": "Riyadh", "country": "SA"},
        }
        status, body = await api.post("/2.0/customers", {"contact": contact})
        assert status == 201
        assert isinstance(body["contact"]["id"], int)
        status, found = await api.get("/2.0/customers", **{"q[tax_number_eq]": VAT})
        assert (status, found["contacts"]) == (200, [body["contact"]])
        status, found = await api.get("/2.0/customers", **{"q[email_eq]": "b@example.com"})
        assert found["contacts"][0]["billing_address"]["city"] == "Riyadh"

    async def test_invalid_contact_is_422(self, api: Api) -> None:
        """A contact without a name or with a malformed VAT number is rejected."""
        status, body = await api.post("/2.0/customers", {"contact": {"tax_number": "123"}})
        assert status == 422
        assert set(body["errors"]) == {"name", "tax_number"}

    async def test_unknown_filter_is_400(self, api: Api) -> None:
        """A filter the endpoint does not support is rejected rather than ignored."""
        status, _ = await api.get("/2.0/customers", **{"q[city_eq]": "Riyadh"})
        assert status == 400

    async def test_product_sku_is_unique(self, api: Api) -> None:
        """A second product with the same sku is 422 has already been taken."""
        product = {"sku": "A", "name": "A", "type": "Service", "selling_price": "5"}
        assert (await api.post("/2.0/products", {"product": product}))[0] == 201
        status, body = await api.post("/2.0/products", {"product": product})
        assert (status, body["errors"]["sku"]) == (422, ["has already been taken"])
        status, found = await api.get("/2.0/products", **{"q[sku_eq]": "A"})
        assert (status, len(found["products"])) == (200, 1)
        assert (await api.get("/2.0/products", **{"q[sku_eq]": "B"}))[0] == 404


class TestInvoiceTotals:
    async def test_net_price_rounds_half_up(self, seeded: Api) -> None:
        """3.5 × 4.55 = 15.925 rounds to 15.93 net; VAT 2.39; total 18.32."""
        line = _line(quantity=3.5, unit_price=4.55)
        status, body = await seeded.post("/2.0/invoices", _invoice("T-1", line))
        assert status == 201, body
        invoice = body["invoice"]
        assert invoice["line_items"][0]["line_total"] == "15.93"
        assert invoice["total_excluding_tax"] == "15.93"
        assert invoice["tax_total"] == "2.39"
        assert invoice["total"] == "18.32"
        assert invoice["remaining_creditable"] == "18.32"

    async def test_inclusive_prices_take_vat_at_document_level(self, seeded: Api) -> None:
        """Two 10.00 VAT-inclusive lines: nets 8.70 each, VAT round(17.40 × 15%) = 2.61."""
        line = _line(unit_price="10", is_inclusive=True)
        status, body = await seeded.post("/2.0/invoices", _invoice("T-2", line, line))
        assert status == 201, body
        invoice = body["invoice"]
        assert [li["line_total"] for li in invoice["line_items"]] == ["8.70", "8.70"]
        assert (invoice["total_excluding_tax"], invoice["tax_total"]) == ("17.40", "2.61")
        assert invoice["total"] == "20.01"

    async def test_percentage_discount_and_tax_groups(self, seeded: Api) -> None:
        """A 10% discount on 3 × 10.00 leaves 27.00; zero-rated lines form their own group."""
        standard = _line(quantity="3", unit_price="10", discount="10", discount_type="percentage")
        zero = _line(unit_price="50", tax_percent="0", tax_exemption_code="VATEX-SA-32")
        status, body = await seeded.post("/2.0/invoices", _invoice("T-3", standard, zero))
        assert status == 201, body
        invoice = body["invoice"]
        groups = {g["tax_category"]: g for g in invoice["tax_breakdown"]}
        assert groups["S"]["taxable_amount"] == "27.00"
        assert groups["S"]["tax_amount"] == "4.05"
        assert groups["Z"]["tax_amount"] == "0.00"
        assert invoice["total"] == "81.05"

    async def test_amount_discount_larger_than_line_is_422(self, seeded: Api) -> None:
        """A discount bigger than the line amount is rejected."""
        status, body = await seeded.post(
            "/2.0/invoices", _invoice("T-4", _line(unit_price="5", discount="6"))
        )
        assert status == 422
        assert "line_items[0].discount" in body["errors"]


class TestInvoiceValidation:
    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"reference": ""}, "reference"),
            ({"issue_date": "01/05/2024"}, "issue_date"),
            ({"due_date": "2024-04-01"}, "due_date"),
            ({"status": "Paid"}, "status"),
            ({"contact_id": 99}, "contact_id"),
            ({"line_items": []}, "line_items"),
            ({"line_items": [_line(quantity="0")]}, "line_items[0].quantity"),
            ({"line_items": [_line(unit_price="-1")]}, "line_items[0].unit_price"),
            ({"line_items": [_line(product_id=42)]}, "line_items[0].product_id"),
            ({"line_items": [_line(tax_category="Z")]}, "line_items[0].tax_category"),
            ({"line_items": [_line(quantity="abc")]}, "line_items[0].quantity"),
        ],
    )
    async def test_invalid_invoice_is_422_naming_the_field(
        self, seeded: Api, overrides: dict[str, Any], field: str
    ) -> None:
        """Each malformed or inconsistent field is reported under its own name."""
        fields = dict(overrides)
        status, body = await seeded.post(
            "/2.0/invoices", _invoice(fields.pop("reference", "V-1"), **fields)
        )
        assert status == 422
        assert field in body["errors"], body
        assert (await seeded.get("/2.0/invoices"))[0] == 404

    async def test_missing_envelope_is_422_and_bad_json_is_400(
        self, seeded: Api, sandbox_http: Http
    ) -> None:
        """A body without the invoice envelope is 422; a body that is not JSON is 400."""
        assert (await seeded.post("/2.0/invoices", {"reference": "x"}))[0] == 422
        async with sandbox_http.post(
            seeded.url + "/2.0/invoices", data=b"{nope", headers=seeded.headers
        ) as response:
            assert response.status == 400

    async def test_reference_is_unique(self, seeded: Api, sandbox: Sandbox) -> None:
        """Re-posting a used reference is 422 and counts as a duplicate attempt."""
        assert (await seeded.post("/2.0/invoices", _invoice("DUP")))[0] == 201
        status, body = await seeded.post("/2.0/invoices", _invoice("DUP"))
        assert status == 422
        assert body == {"errors": {"reference": ["has already been taken"]}}
        stats = sandbox.stats()
        assert stats["invoices"] == 1
        assert stats["duplicate_references"] == 1
        assert stats["reference_counts"] == {"DUP": 2}
        assert stats["references"] == ["DUP"]

    async def test_get_by_id_and_reference(self, seeded: Api) -> None:
        """An invoice is readable by id and by reference; unknown ones are 404."""
        _, created = await seeded.post("/2.0/invoices", _invoice("GET-1"))
        invoice_id = created["invoice"]["id"]
        status, body = await seeded.get(f"/2.0/invoices/{invoice_id}")
        assert (status, body) == (200, created)
        status, body = await seeded.get("/2.0/invoices", **{"q[reference_eq]": "GET-1"})
        assert (status, body["invoices"]) == (200, [created["invoice"]])
        assert (await seeded.get("/2.0/invoices/999"))[0] == 404
        assert (await seeded.get("/2.0/invoices", **{"q[reference_eq]": "nope"}))[0] == 404


class TestIdempotency:
    async def test_same_key_same_body_replays_first_response(
        self, seeded: Api, sandbox: Sandbox
    ) -> None:
        """A repeated key with the same body returns the first response and creates nothing."""
        first = await seeded.post("/2.0/invoices", _invoice("IK-1"), key="k1")
        again = await seeded.post("/2.0/invoices", _invoice("IK-1"), key="k1")
        assert first[0] == 201
        assert again == first
        stats = sandbox.stats()
        assert (stats["invoices"], stats["duplicate_references"]) == (1, 0)
        assert stats["idempotent_replays"] == 1

    async def test_same_key_different_body_is_422(self, seeded: Api) -> None:
        """Re-using a key for a different body is 422 on idempotency_key."""
        assert (await seeded.post("/2.0/invoices", _invoice("IK-2"), key="k2"))[0] == 201
        status, body = await seeded.post("/2.0/invoices", _invoice("IK-3"), key="k2")
        assert status == 422
        assert "idempotency_key" in body["errors"]

    async def test_concurrent_same_key_creates_once(self, seeded: Api, sandbox: Sandbox) -> None:
        """Twenty concurrent posts with one key create one invoice and agree on its body."""
        results = await asyncio.gather(
            *(seeded.post("/2.0/invoices", _invoice("IK-4"), key="k4") for _ in range(20))
        )
        assert {json.dumps(r, sort_keys=True) for r in results} == {
            json.dumps(results[0], sort_keys=True)
        }
        assert results[0][0] == 201
        assert sandbox.stats()["invoices"] == 1

    async def test_keys_are_scoped_per_client(
        self, sandbox_factory: SandboxFactory, sandbox_http: Http
    ) -> None:
        """Two clients using the same key do not see each other's responses."""
        other = ClientSpec("other", "o", SandboxConfig().clients[0].scopes)
        sbx = await sandbox_factory(SandboxConfig(clients=[*SandboxConfig().clients, other]))
        a = Api(sandbox_http, sbx, await fetch_token(sandbox_http, sbx))
        b = Api(
            sandbox_http,
            sbx,
            await fetch_token(sandbox_http, sbx, client_id="other", client_secret="o"),
        )
        body = {"contact": {"name": "X"}}
        assert (await a.post("/2.0/customers", body, key="same"))[0] == 201
        assert (await b.post("/2.0/customers", body, key="same"))[0] == 201
        assert sbx.stats()["customers"] == 2


class TestCreditNotes:
    @pytest.fixture
    async def invoiced(self, seeded: Api) -> tuple[Api, int]:
        """An approved invoice of 100.00 + 15.00 VAT exists."""
        status, body = await seeded.post("/2.0/invoices", _invoice("INV-CN"))
        assert status == 201
        return seeded, body["invoice"]["id"]

    async def test_credit_reduces_remaining_creditable(self, invoiced: tuple[Api, int]) -> None:
        """A partial credit note is accepted and lowers the invoice's remaining amount."""
        api, invoice_id = invoiced
        status, body = await api.post(
            "/2.0/credit_notes", _credit(invoice_id, "CN-1", _line(unit_price="40"))
        )
        assert status == 201, body
        assert body["credit_note"]["total"] == "46.00"
        assert body["credit_note"]["parent_id"] == invoice_id
        _, invoice = await api.get(f"/2.0/invoices/{invoice_id}")
        assert invoice["invoice"]["remaining_creditable"] == "69.00"
        status, found = await api.get("/2.0/credit_notes", **{"q[reference_eq]": "CN-1"})
        assert (status, found["credit_notes"][0]["id"]) == (200, body["credit_note"]["id"])

    async def test_over_crediting_is_422(self, invoiced: tuple[Api, int]) -> None:
        """Credits may not exceed what remains of the invoice, VAT included."""
        api, invoice_id = invoiced
        line = _line(unit_price="60")
        assert (await api.post("/2.0/credit_notes", _credit(invoice_id, "CN-A", line)))[0] == 201
        status, body = await api.post("/2.0/credit_notes", _credit(invoice_id, "CN-B", line))
        assert status == 422
        assert "total" in body["errors"]

    async def test_unknown_parent_is_422(self, seeded: Api) -> None:
        """A credit note must reference an existing invoice."""
        status, body = await seeded.post("/2.0/credit_notes", _credit(404))
        assert (status, body["errors"]["parent_id"]) == (422, ["not found"])

    async def test_reference_unique_among_credit_notes(self, invoiced: tuple[Api, int]) -> None:
        """A credit-note reference can be used once; empty searches are 404."""
        api, invoice_id = invoiced
        line = _line(unit_price="1")
        assert (await api.post("/2.0/credit_notes", _credit(invoice_id, "CN-U", line)))[0] == 201
        status, body = await api.post("/2.0/credit_notes", _credit(invoice_id, "CN-U", line))
        assert (status, body["errors"]["reference"]) == (422, ["has already been taken"])
        assert (await api.get("/2.0/credit_notes", **{"q[reference_eq]": "none"}))[0] == 404


class TestInspection:
    async def test_reset_clears_data_but_keeps_tokens(self, seeded: Api, sandbox: Sandbox) -> None:
        """POST /_sandbox/reset empties the ledger and counters; tokens keep working."""
        await seeded.post("/2.0/invoices", _invoice("R-1"))
        async with seeded.http.post(f"{sandbox.url}/_sandbox/reset") as response:
            assert response.status == 200
        stats = sandbox.stats()
        assert (stats["invoices"], stats["customers"], stats["references"]) == (0, 0, [])
        assert (await seeded.get("/2.0/invoices"))[0] == 404

    async def test_stats_report_requests_by_status(self, seeded: Api, sandbox: Sandbox) -> None:
        """Stats count resource requests, and statuses of token and resource requests."""
        await seeded.get("/2.0/invoices")
        stats = sandbox.stats()
        assert stats["resource_requests"] == 3
        assert stats["requests_by_status"] == {"200": 1, "201": 2, "404": 1}
        assert (stats["customers"], stats["products"]) == (1, 1)


class TestFreezeStored:
    """The sandbox process keeps its growing store out of full collections (see freeze_stored)."""

    async def test_stored_invoices_are_frozen_and_an_idle_store_is_not(
        self, seeded: Api, sandbox: Sandbox
    ) -> None:
        """After a document is stored the next pass freezes it; with nothing new, none runs."""
        gc.unfreeze()  # this test owns the process's frozen generation for its duration
        freezer = asyncio.create_task(freeze_stored(sandbox.state, every_s=0.02))
        try:
            assert (await seeded.post("/2.0/invoices", _invoice("F-1")))[0] == 201
            invoice = next(reversed(sandbox.state.ledger.invoices.values()))
            for _ in range(200):
                await asyncio.sleep(0.01)
                if gc.get_freeze_count():
                    break
            assert gc.get_freeze_count() > 0
            # The stored invoice is out of the collector's generations, so no pass walks it.
            assert all(invoice is not o for o in gc.get_objects())
            gc.unfreeze()
            await asyncio.sleep(0.1)  # several passes, nothing stored meanwhile
            assert gc.get_freeze_count() == 0
        finally:
            freezer.cancel()
            gc.unfreeze()
