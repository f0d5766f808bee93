"""`fanout send` into a running ingress, then the real customer pool in burst mode.

The ingress is served by uvicorn on a loopback port; events are sent with the
`fanout send` command itself; the pool is `run_pool(..., burst=True)`, the
runtime behind `fanout worker customer --burst`. Every test runs on both
stores (SQLite, and Supabase through the PostgREST test double).
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator

import anyio
import pytest
import redis.asyncio as aioredis

from bus import defaults
from bus.envelope import Event
from bus.keys import Keys
from bus.settings import Settings
from fanout.cli import main
from ingress.app import create_app
from tests.conftest import TEST_SECRET, make_settings
from tests.customer.smtp_inbox import Inbox, smtp_inbox
from tests.live import serve
from workers.customer.store.base import Store
from workers.runner import run_pool
from workers.streams import replay_entries

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, str]]:
    with smtp_inbox() as served:
        yield served


async def fanout_send(url: str, event_type: str, *args: str) -> None:
    """Run `fanout send EVENT_TYPE --url URL ...` (off the event loop: it blocks on HTTP)."""
    argv = ["send", event_type, "--url", url, "--secret", TEST_SECRET, *args]
    assert await anyio.to_thread.run_sync(main, argv) == 0


def answers(out: str) -> list[str]:
    """The lines `fanout send` printed ("200 {...}"); the in-thread server may log to stdout too."""
    return [line for line in out.splitlines() if re.match(r"\d{3} \{", line)]


async def stream_events(redis: aioredis.Redis, keys: Keys, pool: str) -> list[Event]:
    return [Event.from_entry(fields) for _, fields in await redis.xrange(keys.stream(pool))]


def sqlite_count(settings: Settings, table: str) -> int:
    with sqlite3.connect(settings.env["FANOUT_SQLITE_PATH"]) as db:
        count: int = db.execute(f"select count(*) from {table}").fetchone()[0]
    return count


async def test_fanout_send_checkout_completed_into_a_running_ingress_and_a_burst_pool_gives_one_order_and_one_email(
        store: Store, store_kind: str, store_env: dict[str, str], prefix: str, keys: Keys,
        aredis: aioredis.Redis, inbox: tuple[Inbox, str], capsys: pytest.CaptureFixture[str]) -> None:
    server, smtp_url = inbox
    settings = make_settings(prefix, **store_env, SMTP_URL=smtp_url, SMTP_FROM="Shop <o@shop.test>")
    event_id = f"evt_e2e_{uuid.uuid4().hex[:16]}"

    with serve(create_app(settings)) as base:
        url = base + defaults.WEBHOOK_PATH
        await fanout_send(url, "checkout.session.completed", "--id", event_id)
        await fanout_send(url, "checkout.session.completed", "--id", event_id)  # Stripe's retry
    first, again = answers(capsys.readouterr().out)
    assert first.startswith("200 ") and '"pools":["customer","admin"]' in first
    assert '"duplicate":true' in again

    await run_pool(settings, "customer", redis=aredis, burst=True)
    [event] = await stream_events(aredis, keys, "customer")
    assert event.id == event_id
    # A redelivery of the same event (as after a crash before the ack) changes nothing.
    assert len(await replay_entries(aredis, keys, "customer", event_id=event_id)) == 1
    await run_pool(settings, "customer", redis=aredis, burst=True)

    session_id = event.data_object["id"]
    order = await store.find_order(checkout_session_id=session_id)
    assert order is not None and order.status == "paid" and order.last_event_id == event_id
    if store_kind == "sqlite":
        assert sqlite_count(settings, "orders") == 1
    assert len(server.messages) == 1
    assert server.messages[0].rcpt_tos == ["jenny.rosen@example.com"]
    assert session_id in server.messages[0].content.decode()
    assert len(await store.customer_events(event_id)) == 1
    stats = await aredis.hgetall(keys.pool_stats("customer"))
    assert int(stats[b"processed"]) == 2 and int(stats.get(b"dead", 0)) == 0
    pending = await aredis.xpending(keys.stream("customer"), keys.group("customer"))
    assert pending["pending"] == 0


async def test_fanout_send_customer_created_then_updated_into_a_running_ingress_gives_the_newest_profile(
        store: Store, pool_settings: Settings, prefix: str, keys: Keys,
        aredis: aioredis.Redis) -> None:
    customer_id = f"cus_e2e_{uuid.uuid4().hex[:16]}"
    created_id, updated_id = (f"evt_e2e_{uuid.uuid4().hex[:16]}" for _ in range(2))

    with serve(create_app(pool_settings)) as base:
        url = base + defaults.WEBHOOK_PATH
        for event_type, event_id in (("customer.created", created_id), ("customer.updated", updated_id)):
            await fanout_send(url, event_type, "--id", event_id, "--object", f"customer={customer_id}")

    # Both entries are read in one batch and run concurrently, as a busy pool would run them.
    await run_pool(pool_settings, "customer", redis=aredis, burst=True)

    assert [e.id for e in await stream_events(aredis, keys, "customer")] == [created_id, updated_id]
    customer = await store.get_customer(customer_id)
    assert customer is not None and not customer.deleted
    assert customer.last_event_id == updated_id
    assert customer.email == "jenny.rosen@example.com"
    dead = await aredis.xlen(keys.dead("customer"))
    assert dead == 0
