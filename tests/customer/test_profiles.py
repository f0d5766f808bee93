"""profiles.upsert: newest profile wins whatever order Stripe delivers in."""

from __future__ import annotations

import pytest

from tests.customer.conftest import ContextFactory
from tests.customer.helpers import checkout_ids, make_event
from workers.customer.handlers import profiles
from workers.customer.store.base import Store

pytestmark = pytest.mark.anyio
T0 = 1_780_000_000


async def test_customer_created_stores_the_profile(store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    await profiles.upsert(make_event("customer.created", ids=ids, created=T0), await make_ctx())

    customer = await store.get_customer(ids["customer"])
    assert customer is not None
    assert (customer.email, customer.name, customer.phone) == (
        "jenny.rosen@example.com", "Jenny Rosen", "+18005550100")
    assert customer.address is not None and customer.address["postal_code"] == "64105"
    assert not customer.deleted


async def test_customer_updated_before_customer_created_ends_with_the_newer_profile(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    ctx = await make_ctx()
    updated = make_event("customer.updated", ids=ids, created=T0 + 5, name="Jenny Rosen-Smith",
                         email="jenny@new.example.com")
    created = make_event("customer.created", ids=ids, created=T0)

    await profiles.upsert(updated, ctx)
    await profiles.upsert(created, ctx)

    customer = await store.get_customer(ids["customer"])
    assert customer is not None
    assert (customer.name, customer.email) == ("Jenny Rosen-Smith", "jenny@new.example.com")
    assert customer.last_event_id == updated.id


async def test_customer_created_in_the_same_second_does_not_overwrite_an_update(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    ctx = await make_ctx()
    await profiles.upsert(make_event("customer.updated", ids=ids, created=T0, name="New"), ctx)
    await profiles.upsert(make_event("customer.created", ids=ids, created=T0, name="Old"), ctx)

    customer = await store.get_customer(ids["customer"])
    assert customer is not None and customer.name == "New"


async def test_customer_events_in_order_apply_each_update(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    ctx = await make_ctx()
    await profiles.upsert(make_event("customer.created", ids=ids, created=T0), ctx)
    await profiles.upsert(make_event("customer.updated", ids=ids, created=T0 + 1, name="B"), ctx)
    await profiles.upsert(make_event("customer.updated", ids=ids, created=T0 + 2, name="C"), ctx)

    customer = await store.get_customer(ids["customer"])
    assert customer is not None and customer.name == "C"


async def test_customer_deleted_marks_deleted_and_a_late_update_does_not_revive(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    ctx = await make_ctx()
    await profiles.upsert(make_event("customer.created", ids=ids, created=T0), ctx)
    await profiles.upsert(make_event("customer.deleted", ids=ids, created=T0 + 10), ctx)
    await profiles.upsert(make_event("customer.updated", ids=ids, created=T0 + 10), ctx)

    customer = await store.get_customer(ids["customer"])
    assert customer is not None and customer.deleted


async def test_profile_upsert_twice_leaves_one_profile(store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    ctx = await make_ctx()
    event = make_event("customer.updated", ids=ids, created=T0)
    await profiles.upsert(event, ctx)
    first = await store.get_customer(ids["customer"])
    await profiles.upsert(event, ctx)
    assert await store.get_customer(ids["customer"]) == first
