"""bus/stripe_http.py: the one Stripe API rate limiter and GET, shared by reconcile and ctx.stripe."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bus.settings import Secret
from bus.stripe_http import ApiFailure, Failure, RateLimiter, StripeHttp

pytestmark = pytest.mark.anyio


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)  # let other waiters run, as a real sleep would


def most_in_one_second(times: list[float]) -> int:
    return max(sum(1 for t in times if start <= t < start + 1.0 - 1e-9) for start in times)


async def test_steady_traffic_then_a_burst_never_exceeds_the_rate_in_any_second() -> None:
    # A token bucket of 25 refilled at 25/s lets 25 more through right after a second of
    # steady 25/s: 49 in one second. Stripe counts per second, so that would be 429s.
    fake = FakeTime()
    limiter = RateLimiter(25, clock=fake.clock, sleep=fake.sleep)
    sent: list[float] = []
    for _ in range(25):  # one request every 0.04 s for a second
        await limiter.wait()
        sent.append(fake.now)
        fake.now += 0.04
    for _ in range(25):  # then everything at once
        await limiter.wait()
        sent.append(fake.now)
    assert most_in_one_second(sent) == 25


async def test_concurrent_waiters_share_the_rate_and_an_idle_limiter_allows_a_burst() -> None:
    fake = FakeTime()
    limiter = RateLimiter(10, clock=fake.clock, sleep=fake.sleep)
    sent: list[float] = []

    async def request() -> None:
        await limiter.wait()
        sent.append(fake.now)

    await asyncio.gather(*(request() for _ in range(30)))
    assert sent[:10] == [0.0] * 10, "an idle process sends its first 10 at once"
    assert most_in_one_second(sent) == 10 and fake.now == pytest.approx(2.0)


async def test_a_rate_under_one_per_second_spaces_requests() -> None:
    fake = FakeTime()
    limiter = RateLimiter(0.5, clock=fake.clock, sleep=fake.sleep)
    for _ in range(3):
        await limiter.wait()
    assert fake.now == pytest.approx(4.0)


@pytest.mark.parametrize(("path", "kind"), [
    ("https://evil.example/v1/customers", Failure.REJECTED),
    ("//evil.example/v1/customers", Failure.REJECTED),
])
async def test_only_relative_paths_are_fetched(path: str, kind: Failure) -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: seen.append(request) or httpx.Response(200, json={}))
    async with httpx.AsyncClient(transport=transport) as client:
        answer = await StripeHttp(client, Secret("sk_test_secret")).get(path)
    assert isinstance(answer, ApiFailure) and answer.kind is kind and not seen


@pytest.mark.parametrize(("response", "kind"), [
    (httpx.Response(429, headers={"retry-after": "3"}), Failure.THROTTLED),
    (httpx.Response(503), Failure.UNAVAILABLE),
    (httpx.Response(401, json={"error": {"type": "invalid_request_error",
                                         "message": "Invalid API Key provided: sk_test_****9xQz"}}),
     Failure.REFUSED),
    (httpx.Response(404, json={"error": {"message": "No such customer"}}), Failure.REJECTED),
    (httpx.Response(200, content=b"[]"), Failure.MALFORMED),
])
async def test_each_failure_has_a_kind_and_a_message_without_the_key(
        response: httpx.Response, kind: Failure) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda _: response)) as client:
        answer = await StripeHttp(client, Secret("sk_test_abc9xQz")).get("/v1/customers/cus_1")
    assert isinstance(answer, ApiFailure) and answer.kind is kind
    assert "sk_test" not in answer.message and "9xQz" not in answer.message
    if kind is Failure.THROTTLED:
        assert answer.retry_after_s == 3.0


async def test_a_transport_error_is_unavailable_and_not_quoted() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect, headers were {request.headers}")

    async with httpx.AsyncClient(transport=httpx.MockTransport(fail)) as client:
        answer = await StripeHttp(client, Secret("sk_test_abc9xQz")).get("/v1/customers/cus_1")
    assert isinstance(answer, ApiFailure) and answer.kind is Failure.UNAVAILABLE
    assert answer.message == "Stripe API GET /v1/customers/cus_1: ConnectError"


async def test_the_headers_carry_the_key_the_version_and_the_connect_context() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: seen.append(request) or httpx.Response(200, json={"id": "x"}))
    async with httpx.AsyncClient(transport=transport) as client:
        http = StripeHttp(client, Secret("sk_test_secret"), base_url="https://api.test/",
                          stripe_version="2026-09-30.clover")
        assert await http.get("/v1/events", params=[("limit", "1")], context="ctx_1",
                              event_id="evt_1") == {"id": "x"}
    request = seen[0]
    assert str(request.url) == "https://api.test/v1/events?limit=1"
    assert request.headers["authorization"] == "Bearer sk_test_secret"
    assert request.headers["stripe-version"] == "2026-09-30.clover"
    assert request.headers["stripe-context"] == "ctx_1" and "stripe-account" not in request.headers
    assert request.headers["stripe-request-trigger"] == "event=evt_1"
