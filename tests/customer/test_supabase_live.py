"""Opt-in: the store against a real Supabase project.

Runs only when SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are set in the
environment (with supabase/migrations applied to that project); skipped
otherwise. It writes rows with unique test ids and leaves them there: point
it at a development project, never production.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from bus.settings import Secret
from tests.customer.helpers import checkout_ids
from workers.customer.mail import outbox
from workers.customer.store.rows import Customer, CustomerEvent, Order, OutboxRow, StatusChange
from workers.customer.store.supabase_store import SupabaseStore

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.supabase_live,
    pytest.mark.skipif(not (os.environ.get("SUPABASE_URL")
                            and os.environ.get("SUPABASE_SERVICE_ROLE_KEY")),
                       reason="set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY to run against "
                              "a real Supabase project"),
]


@pytest.fixture
async def live_store() -> AsyncIterator[SupabaseStore]:
    store = await SupabaseStore.open(os.environ["SUPABASE_URL"],
                                     Secret(os.environ["SUPABASE_SERVICE_ROLE_KEY"]))
    yield store
    await store.aclose()


async def test_live_supabase_orders_profiles_analytics_and_outbox_round_trip(
        live_store: SupabaseStore) -> None:
    ids = checkout_ids("live")
    order = Order(checkout_session_id=ids["session"], payment_intent_id=ids["payment_intent"],
                  payment_status="unpaid", status="pending", last_event_id="evt_live_1",
                  last_event_created=100, customer_email="live@example.com")
    assert await live_store.upsert_order(order)
    assert await live_store.set_order_status(StatusChange(
        ids["session"], "paid", "paid", "evt_live_2", 200))
    assert not await live_store.upsert_order(order)  # older: ignored
    found = await live_store.find_order(payment_intent_id=ids["payment_intent"])
    assert found is not None and found.status == "paid"

    newer = Customer(id=ids["customer"], name="New", last_event_id="evt_live_3",
                     last_event_created=300)
    older = Customer(id=ids["customer"], name="Old", last_event_id="evt_live_4",
                     last_event_created=250)
    assert await live_store.upsert_customer(newer, ties_win=True)
    assert not await live_store.upsert_customer(older, ties_win=False)
    customer = await live_store.get_customer(ids["customer"])
    assert customer is not None and customer.name == "New"

    event = CustomerEvent(event_id=f"evt_{ids['session']}", kind="order_placed",
                          event_type="checkout.session.completed", event_created=100)
    assert await live_store.track(event)
    assert not await live_store.track(event)

    item = OutboxRow(event_id=event.event_id, template="order_confirmation",
                     recipient="live@example.com", order_id=ids["session"])
    held = await outbox.claim(live_store, item)
    assert isinstance(held, outbox.Claim)
    assert await outbox.mark_sent(live_store, held)
    assert await outbox.claim(live_store, item) == "sent"
