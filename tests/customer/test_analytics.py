"""analytics.track: one customer_events row per (event, kind)."""

from __future__ import annotations

import pytest

from tests.customer.conftest import ContextFactory
from tests.customer.helpers import checkout_ids, make_event
from workers.customer.handlers import analytics
from workers.customer.store.base import Store

pytestmark = pytest.mark.anyio


async def test_track_twice_records_one_row(store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    event = make_event("checkout.session.completed", ids=ids)
    ctx = await make_ctx()

    await analytics.track(event, ctx)
    await analytics.track(event, ctx)

    rows = await store.customer_events(event.id)
    assert len(rows) == 1
    row = rows[0]
    assert (row.kind, row.event_type) == ("order_placed", "checkout.session.completed")
    assert (row.customer_id, row.object_id) == (ids["customer"], ids["session"])
    assert (row.amount, row.currency, row.event_created) == (4999, "usd", event.created)


async def test_track_names_the_customer_of_a_customer_event(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    event = make_event("customer.created", ids=ids)
    await analytics.track(event, await make_ctx())
    [row] = await store.customer_events(event.id)
    assert (row.kind, row.customer_id) == ("customer_signed_up", ids["customer"])
