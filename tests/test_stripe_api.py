"""ctx.stripe: fetching a thin event's object and event from the Stripe API test double, rate-bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import structlog

from bus.envelope import Event, entry_fields
from bus.errors import PermanentFailure, RetryLater
from bus.settings import Settings
from bus.stripe_http import RateLimiter
from fanout.samples import sample_event, thin_event
from ingress.parse import routing_fields
from tests.postgrest_double import serve
from tests.stripe_api_double import StripeApiDouble
from workers.context import Context
from workers.resources import Resources

from .conftest import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def double() -> StripeApiDouble:
    return StripeApiDouble()


@pytest.fixture
def api_url(double: StripeApiDouble) -> Iterator[str]:
    with serve(double) as url:  # type: ignore[arg-type]  # any object with app()
        yield url


def stored(payload: dict[str, Any]) -> Event:
    body = orjson.dumps(payload)
    return Event.from_entry(dict(entry_fields(routing_fields(body), ("h",), "v", body)))


def context(settings: Settings) -> Context:
    return Context(pool="p", handler="h", attempt=1, log=structlog.get_logger(),
                   redis=aioredis.Redis.from_url(settings.redis_url), settings=settings,
                   resources=Resources())


def api_settings(prefix: str, url: str, **env: str) -> Settings:
    return make_settings(prefix, STRIPE_API_KEY="sk_test_double", STRIPE_API_BASE=url, **env)


async def test_a_handler_fetches_a_thin_events_related_object_and_full_event(
        prefix: str, double: StripeApiDouble, api_url: str) -> None:
    event = stored(thin_event("v1.customer.updated", related_id="cus_42", context="acct_1Conn"))
    double.objects["/v1/customers/cus_42"] = {"id": "cus_42", "object": "customer", "name": "Ada"}
    double.objects[f"/v2/core/events/{event.id}"] = {"id": event.id, "object": "v2.core.event",
                                                     "data": {"previous": 1}}
    ctx = context(api_settings(prefix, api_url))
    try:
        customer = await ctx.stripe.fetch_related_object(event)
        full = await ctx.stripe.fetch_event(event)
    finally:
        await ctx.resources.aclose()
        await ctx.redis.aclose()
    assert customer == {"id": "cus_42", "object": "customer", "name": "Ada"}
    assert full["data"] == {"previous": 1}
    first = double.requests[0]
    assert first.headers["authorization"] == "Bearer sk_test_double"
    assert first.headers["stripe-context"] == "acct_1Conn"
    assert first.headers["stripe-version"] and first.headers["stripe-request-trigger"] == f"event={event.id}"


async def test_a_snapshot_event_is_fetched_from_the_v1_events_api(
        prefix: str, double: StripeApiDouble, api_url: str) -> None:
    event = stored({**sample_event("charge.refunded"), "account": "acct_1Snap"})
    double.objects[f"/v1/events/{event.id}"] = {"id": event.id, "object": "event"}
    ctx = context(api_settings(prefix, api_url))
    try:
        assert (await ctx.stripe.fetch_event(event))["object"] == "event"
    finally:
        await ctx.resources.aclose()
        await ctx.redis.aclose()
    assert double.requests[0].headers["stripe-account"] == "acct_1Snap"


async def test_a_429_is_retried_after_its_retry_after(
        prefix: str, double: StripeApiDouble, api_url: str) -> None:
    event = stored(thin_event("v1.customer.created", related_id="cus_rl"))
    double.objects["/v1/customers/cus_rl"] = {"id": "cus_rl"}
    double.rate_limited["/v1/customers/cus_rl"] = 2
    double.retry_after_s = "0.2"
    ctx = context(api_settings(prefix, api_url))
    try:
        assert (await ctx.stripe.fetch_related_object(event)) == {"id": "cus_rl"}
    finally:
        await ctx.resources.aclose()
        await ctx.redis.aclose()
    times = [r.at_s for r in double.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.19 and times[2] - times[1] >= 0.19


async def test_a_429_that_outlasts_the_retries_asks_the_pool_to_retry_later(
        prefix: str, double: StripeApiDouble, api_url: str) -> None:
    event = stored(thin_event("v1.customer.created", related_id="cus_rl2"))
    double.objects["/v1/customers/cus_rl2"] = {"id": "cus_rl2"}
    double.rate_limited["/v1/customers/cus_rl2"] = 100
    double.retry_after_s = "30"  # longer than a handler waits in place
    ctx = context(api_settings(prefix, api_url))
    try:
        with pytest.raises(RetryLater) as caught:
            await ctx.stripe.fetch_related_object(event)
    finally:
        await ctx.resources.aclose()
        await ctx.redis.aclose()
    assert caught.value.defer_s == 30 and len(double.requests) == 1


async def test_the_request_rate_is_bounded_per_process(
        prefix: str, double: StripeApiDouble, api_url: str) -> None:
    for n in range(12):
        double.objects[f"/v1/customers/cus_{n}"] = {"id": f"cus_{n}"}
    ctx = context(api_settings(prefix, api_url, STRIPE_API_RATE_PER_S="20"))
    try:
        await asyncio.gather(*(ctx.stripe.get(f"/v1/customers/cus_{n}") for n in range(12)))
        await asyncio.gather(*(ctx.stripe.get(f"/v1/customers/cus_{n}") for n in range(12)))
    finally:
        await ctx.resources.aclose()
        await ctx.redis.aclose()
    times = sorted(r.at_s for r in double.requests)
    # A burst of 20, then at most 20 in any second: the last 4 of 24 wait for the first to age.
    assert times[-1] - times[0] >= 0.15


async def test_the_rate_limiter_spaces_requests_past_its_burst() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(25.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(75):
        await limiter.wait()
    assert now[0] == pytest.approx(2.0, abs=0.05), "25 at once, then 50 more at 25/s"


@pytest.mark.parametrize(("setup", "expected"), [
    ({"STRIPE_API_KEY": "sk_test_wrong"}, "STRIPE_API_KEY was refused"),
    ({}, "No such object"),
])
async def test_a_refused_key_or_a_missing_object_fails_permanently_without_the_key(
        setup: dict[str, str], expected: str, prefix: str, api_url: str) -> None:
    settings = make_settings(prefix, STRIPE_API_BASE=api_url,
                             **{"STRIPE_API_KEY": "sk_test_double", **setup})
    ctx = context(settings)
    event = stored(thin_event("v1.customer.created", related_id="cus_missing"))
    try:
        with pytest.raises(PermanentFailure) as caught:
            await ctx.stripe.fetch_related_object(event)
    finally:
        await ctx.resources.aclose()
        await ctx.redis.aclose()
    assert expected in str(caught.value) and "sk_test" not in str(caught.value)


async def test_without_a_key_fetching_fails_permanently_and_says_what_to_set(prefix: str) -> None:
    ctx = context(make_settings(prefix))
    try:
        with pytest.raises(PermanentFailure, match="STRIPE_API_KEY is not set"):
            await ctx.stripe.fetch_related_object(stored(thin_event("v1.customer.created")))
    finally:
        await ctx.resources.aclose()
        await ctx.redis.aclose()


async def test_an_unreachable_api_is_retried_later(prefix: str) -> None:
    from tests.postgrest_double import free_port

    ctx = context(api_settings(prefix, f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(RetryLater):
            await ctx.stripe.fetch_related_object(stored(thin_event("v1.customer.created")))
    finally:
        await ctx.resources.aclose()
        await ctx.redis.aclose()


async def test_only_relative_api_paths_are_fetched_so_the_key_stays_with_stripe(
        prefix: str, api_url: str) -> None:
    payload = thin_event("v1.customer.created")
    payload["related_object"]["url"] = "https://evil.example/v1/customers/cus_1"
    ctx = context(api_settings(prefix, api_url))
    try:
        with pytest.raises(PermanentFailure, match="not a Stripe API path"):
            await ctx.stripe.fetch_related_object(stored(payload))
    finally:
        await ctx.resources.aclose()
        await ctx.redis.aclose()

