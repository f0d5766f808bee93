"""Through the real ingress and Redis to the customer-pool handlers.

Until the worker pool runtime lands, `drain_once` (helpers.py) stands in for
a burst customer pool: it reads the pool's stream and runs each entry's
handlers in order. The assertions are the ones the pool-based test will make.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from fanout.samples import sample_event
from tests.conftest import make_settings
from tests.customer_pool.conftest import ContextFactory
from tests.customer_pool.helpers import checkout_ids, drain_once
from tests.customer_pool.smtp_inbox import Inbox, smtp_inbox
from tests.ingress_client import running, signed
from workers.store.base import Store

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, str]]:
    with smtp_inbox() as served:
        yield served


async def test_checkout_completed_through_ingress_gives_one_order_and_one_email(
        store: Store, store_env: dict[str, str], prefix: str, keys: Keys,
        aredis: aioredis.Redis, inbox: tuple[Inbox, str]) -> None:
    server, url = inbox
    settings = make_settings(prefix, **store_env, SMTP_URL=url, SMTP_FROM="Shop <o@shop.test>")
    ctx_for = ContextFactory(settings, store)
    ids = checkout_ids()
    body, headers = signed(sample_event("checkout.session.completed", ids=ids))

    async with running(settings) as (_, client):
        first = await client.post("/webhooks/stripe", content=body, headers=headers)
        again = await client.post("/webhooks/stripe", content=body, headers=headers)
    assert first.status_code == 200 and again.json()["duplicate"] is True

    [event] = await drain_once(aredis, keys.stream("customer"), ctx_for)
    await drain_once(aredis, keys.stream("customer"), ctx_for)  # a redelivery of the stream

    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "paid"
    assert len(server.messages) == 1
    assert server.messages[0].rcpt_tos == ["jenny.rosen@example.com"]
    assert len(await store.customer_events(event.id)) == 1


async def test_customer_created_then_updated_through_ingress_gives_the_newest_profile(
        store: Store, make_ctx: ContextFactory, keys: Keys,
        aredis: aioredis.Redis, mail_dir: Path) -> None:
    ids = checkout_ids()
    created = sample_event("customer.created", ids=ids, created=1_780_000_000)
    updated = sample_event("customer.updated", ids=ids, created=1_780_000_030)
    updated["data"]["object"]["name"] = "Jenny Rosen-Smith"

    async with running(make_ctx.settings) as (_, client):
        for payload in (created, updated):
            body, headers = signed(payload)
            assert (await client.post("/webhooks/stripe", content=body,
                                      headers=headers)).status_code == 200

    await drain_once(aredis, keys.stream("customer"), make_ctx)

    customer = await store.get_customer(ids["customer"])
    assert customer is not None and customer.name == "Jenny Rosen-Smith"
