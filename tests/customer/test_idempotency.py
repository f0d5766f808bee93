"""Every customer-pool handler that routing.yaml names, run twice per event: one row, one email."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from bus.routing import load_routing
from fanout.samples import SAMPLES
from tests.conftest import REPO
from tests.customer.conftest import ContextFactory
from tests.customer.helpers import checkout_ids, make_event, resolve_handler
from workers.customer.handlers import orders, profiles
from workers.customer.store.base import Store

pytestmark = pytest.mark.anyio
T0 = 1_780_000_000


def customer_routes() -> list[tuple[str, tuple[str, ...]]]:
    table = load_routing(REPO / "routing.yaml")
    routes = []
    for event_type in sorted(SAMPLES):
        for pool, handlers in table.match(event_type).targets:
            if pool == "customer":
                routes.append((event_type, tuple(handlers)))
    return routes


def eml_count(directory: Path) -> int:
    return len(list(directory.glob("*.eml"))) if directory.exists() else 0


async def test_every_routed_customer_handler_run_twice_leaves_one_row_and_one_email(
        store: Store, make_ctx: ContextFactory, mail_dir: Path) -> None:
    routes = customer_routes()
    assert {"checkout.session.completed", "customer.created"} <= {t for t, _ in routes}
    ids = checkout_ids()
    ctx = await make_ctx()
    # The order exists first, as it does once Stripe's events have all arrived.
    await orders.create_from_checkout(
        make_event("checkout.session.completed", ids=ids, created=T0), ctx)
    for offset, (event_type, handlers) in enumerate(routes, start=1):
        event = make_event(event_type, ids=ids, created=T0 + offset)
        for _ in range(2):
            for name in handlers:
                await resolve_handler(name)(event, await make_ctx(handler=name))
        if "analytics.track" in handlers:
            assert len(await store.customer_events(event.id)) == 1
    assert await asyncio.to_thread(eml_count, mail_dir) == 1
    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "paid"  # succeeded beats the failures


async def test_concurrent_profile_events_in_any_order_end_with_the_newest(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    events = [make_event("customer.updated", ids=ids, created=T0 + i, name=f"v{i}")
              for i in range(12)]
    random.Random(4).shuffle(events)
    ctx = await make_ctx()

    await asyncio.gather(*(profiles.upsert(e, ctx) for e in events))

    customer = await store.get_customer(ids["customer"])
    assert customer is not None and customer.name == "v11"
