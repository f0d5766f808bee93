"""The shop's handlers, tested with fanout.testing: one by one, then through a real pool."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
from shop.fulfilment import record_order, request_shipment

from bus.errors import PermanentFailure, RetryLater
from fanout.testing import Harness, context, event, sample
from workers.resources import Resources

HERE = Path(__file__).parent
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def orders(db: Path) -> list[tuple[str, int, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("select session_id, amount_total, event_created from orders").fetchall()


def test_record_order_is_idempotent_and_ignores_an_older_event(tmp_path: Path) -> None:
    db = tmp_path / "shop.sqlite3"
    ctx = context(env={"SHOP_DB": str(db)})
    ids = {"session": "cs_test_1"}
    newer = event(sample("checkout.session.completed", ids=ids, created=2_000, amount_total=5000))
    older = event(sample("checkout.session.completed", ids=ids, created=1_000, amount_total=4000))

    record_order(newer, ctx)
    record_order(newer, ctx)  # delivered twice: still one row
    record_order(older, ctx)  # arrived late: changes nothing
    assert orders(db) == [("cs_test_1", 5000, 2_000)]


async def fake_warehouse(answers: list[httpx.Response], seen: list[httpx.Request]) -> Resources:
    """Resources holding an HTTP client whose requests never leave the process."""
    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    async def build() -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url="http://warehouse.test", transport=httpx.MockTransport(reply))

    async def close(client: httpx.AsyncClient) -> None:
        await client.aclose()

    resources = Resources()
    await resources.get("shop.warehouse", build, close)
    return resources


@pytest.mark.parametrize(("answer", "raised"), [
    (httpx.Response(429, headers={"Retry-After": "7"}), RetryLater),
    (httpx.Response(422), PermanentFailure),
    (httpx.Response(503), httpx.HTTPStatusError),
])
async def test_request_shipment_says_what_to_do_with_each_answer(
        answer: httpx.Response, raised: type[Exception]) -> None:
    resources = await fake_warehouse([answer], [])
    ctx = context(env={"WAREHOUSE_URL": "http://warehouse.test"}, resources=resources)
    with pytest.raises(raised) as failed:
        await request_shipment(event(sample("checkout.session.completed")), ctx)
    if raised is RetryLater:
        assert isinstance(failed.value, RetryLater) and failed.value.defer_s == 7.0
    await resources.aclose()


async def test_a_paid_checkout_is_recorded_and_shipped_once_through_the_pool(tmp_path: Path) -> None:
    db = tmp_path / "shop.sqlite3"
    seen: list[httpx.Request] = []
    env = {"SHOP_DB": str(db), "WAREHOUSE_URL": "http://warehouse.test"}
    async with Harness.start(HERE / "routing.yaml", env=env) as shop:
        checkout = sample("checkout.session.completed", ids={"session": "cs_test_pool"})
        assert await shop.publish(checkout) == ("shop",)
        assert await shop.publish(checkout) == ()  # Stripe delivered it twice: deduplicated
        # The warehouse fails once (retried with backoff), then accepts.
        resources = await fake_warehouse([httpx.Response(502), httpx.Response(201)], seen)
        await shop.drain("shop", resources=resources)
        assert await shop.dead_letters("shop") == []
    assert [row[0] for row in orders(db)] == ["cs_test_pool"]
    assert [r.headers["Idempotency-Key"] for r in seen] == ["ship-cs_test_pool"] * 2
