"""The PostgREST test double follows PostgREST's documented HTTP semantics (and the store relies on them).

The double stands in for hosted Supabase's REST API in these tests; see
tests/postgrest_double.py.
"""

from __future__ import annotations

import httpx
import pytest

from bus.errors import PermanentFailure
from bus.settings import Secret
from tests.customer.conftest import DoubleServer
from tests.customer.helpers import checkout_ids
from workers.customer.store.base import Store
from workers.customer.store.rows import Order
from workers.customer.store.supabase_store import SupabaseStore

pytestmark = pytest.mark.anyio
HEADERS = {"apikey": "test-service-role-key", "Authorization": "Bearer test-service-role-key"}


def customer_row(customer_id: str, name: str, created: int) -> dict[str, object]:
    return {"id": customer_id, "name": name, "last_event_id": "evt_1",
            "last_event_created": created}


async def test_insert_of_a_duplicate_key_answers_409_with_postgres_error_body(
        postgrest_double: DoubleServer) -> None:
    row = customer_row(checkout_ids()["customer"], "A", 1)
    async with httpx.AsyncClient(base_url=postgrest_double.url, headers=HEADERS) as client:
        first = await client.post("/rest/v1/customers", json=row,
                                  headers={"Prefer": "return=representation"})
        second = await client.post("/rest/v1/customers", json=row)
    assert first.status_code == 201 and first.json()[0]["name"] == "A"
    assert second.status_code == 409
    body = second.json()
    assert set(body) == {"code", "details", "hint", "message"}
    assert body["code"] == "23505"
    assert 'violates unique constraint "customers_pkey"' in body["message"]
    assert body["details"].startswith("Key (id)=")


async def test_merge_duplicates_upsert_updates_and_returns_the_row(
        postgrest_double: DoubleServer) -> None:
    customer_id = checkout_ids()["customer"]
    prefer = {"Prefer": "return=representation,resolution=merge-duplicates"}
    async with httpx.AsyncClient(base_url=postgrest_double.url, headers=HEADERS) as client:
        await client.post("/rest/v1/customers?on_conflict=id", json=customer_row(customer_id, "A", 1),
                          headers=prefer)
        again = await client.post("/rest/v1/customers?on_conflict=id",
                                  json=[customer_row(customer_id, "B", 2)], headers=prefer)
        read = await client.get(f"/rest/v1/customers?select=name,last_event_created&id=eq.{customer_id}")
    assert again.status_code == 201
    assert "resolution=merge-duplicates" in again.headers["Preference-Applied"]
    assert again.json()[0]["name"] == "B"
    assert read.json() == [{"name": "B", "last_event_created": 2}]


async def test_ignore_duplicates_upsert_returns_no_row_for_an_existing_key(
        postgrest_double: DoubleServer) -> None:
    customer_id = checkout_ids()["customer"]
    prefer = {"Prefer": "return=representation,resolution=ignore-duplicates"}
    async with httpx.AsyncClient(base_url=postgrest_double.url, headers=HEADERS) as client:
        first = await client.post("/rest/v1/customers", json=customer_row(customer_id, "A", 1),
                                  headers=prefer)
        second = await client.post("/rest/v1/customers", json=customer_row(customer_id, "B", 2),
                                   headers=prefer)
    assert len(first.json()) == 1 and second.json() == []


async def test_patch_with_filters_updates_only_matching_rows(postgrest_double: DoubleServer) -> None:
    customer_id = checkout_ids()["customer"]
    async with httpx.AsyncClient(base_url=postgrest_double.url, headers=HEADERS) as client:
        await client.post("/rest/v1/customers", json=customer_row(customer_id, "A", 10))
        stale = await client.patch(
            f"/rest/v1/customers?id=eq.{customer_id}&last_event_created=lte.9",
            json={"name": "old"}, headers={"Prefer": "return=representation"})
        fresh = await client.patch(
            f"/rest/v1/customers?id=eq.{customer_id}&last_event_created=lte.11",
            json={"name": "new"}, headers={"Prefer": "return=representation"})
        minimal = await client.patch(f"/rest/v1/customers?id=eq.{customer_id}", json={"phone": "1"})
    assert stale.status_code == 200 and stale.json() == []
    assert [r["name"] for r in fresh.json()] == ["new"]
    assert minimal.status_code == 204


async def test_unknown_table_column_or_missing_apikey_get_postgrest_errors(
        postgrest_double: DoubleServer) -> None:
    async with httpx.AsyncClient(base_url=postgrest_double.url) as client:
        no_key = await client.get("/rest/v1/customers")
        client.headers.update(HEADERS)
        no_table = await client.get("/rest/v1/nope")
        no_column = await client.get("/rest/v1/customers?nope=eq.1")
        bad_filter = await client.get("/rest/v1/customers?id=like.x")
    assert no_key.status_code == 401
    assert (no_table.status_code, no_table.json()["code"]) == (404, "PGRST205")
    assert (no_column.status_code, no_column.json()["code"]) == (400, "42703")
    assert (bad_filter.status_code, bad_filter.json()["code"]) == (400, "PGRST100")


async def test_one_payment_intent_on_two_sessions_is_a_permanent_failure(store: Store) -> None:
    ids, other = checkout_ids("a"), checkout_ids("b")
    order = Order(checkout_session_id=ids["session"], payment_intent_id=ids["payment_intent"],
                  payment_status="paid", status="paid", last_event_id="evt_1",
                  last_event_created=1)
    assert await store.upsert_order(order)
    clash = Order(checkout_session_id=other["session"], payment_intent_id=ids["payment_intent"],
                  payment_status="paid", status="paid", last_event_id="evt_2",
                  last_event_created=2)
    with pytest.raises(PermanentFailure):
        await store.upsert_order(clash)


async def test_supabase_py_reaches_the_double_under_rest_v1(
        postgrest_double: DoubleServer) -> None:
    store = await SupabaseStore.open(postgrest_double.url, Secret("test-service-role-key"))
    before = len(postgrest_double.double.requests)
    try:
        assert await store.get_customer("cus_nobody") is None
    finally:
        await store.aclose()
    method, path = postgrest_double.double.requests[before]
    assert method == "GET" and path.startswith("/rest/v1/customers?")
