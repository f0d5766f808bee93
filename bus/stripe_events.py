"""Stripe's Events API (`GET /v1/events`), page by page, within a request rate, honouring 429s.

Stripe keeps events for 30 days. Each page holds up to `limit` events; the next
page starts after the last event id of this one (`starting_after`), until
`has_more` is false. Requests are spaced to stay under `rate_per_s` (Stripe
allows 25 per second by default); a 429 waits for its `Retry-After`, and a 5xx
or a transport error is retried with backoff, up to `max_retries` times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from bus import defaults
from bus.errors import FanoutError
from bus.settings import Secret

Sleep = Callable[[float], Awaitable[None]]


class StripeApiError(FanoutError):
    """The Events API refused or kept failing; the message never holds the API key."""


@dataclass(frozen=True)
class EventQuery:
    """Which events to list: created in [created_gte, created_lte] (Unix seconds), of these types."""

    created_gte: int
    created_lte: int | None = None
    # Exact event types (Stripe's `types[]`, up to 20); empty means every type.
    types: tuple[str, ...] = ()

    def params(self, limit: int, starting_after: str | None) -> list[tuple[str, str]]:
        out = [("limit", str(limit)), ("created[gte]", str(self.created_gte))]
        if self.created_lte is not None:
            out.append(("created[lte]", str(self.created_lte)))
        out += [("types[]", t) for t in self.types]
        if starting_after:
            out.append(("starting_after", starting_after))
        return out


class RateLimiter:
    """Spaces calls at least 1/rate_per_s apart (no bursts: Stripe counts requests per second)."""

    def __init__(self, rate_per_s: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self._interval_s = 1.0 / rate_per_s
        self._clock = clock
        self._sleep = sleep
        self._next_s: float | None = None

    async def wait(self) -> None:
        now = self._clock()
        if self._next_s is not None and self._next_s > now:
            await self._sleep(self._next_s - now)
            now = self._next_s
        self._next_s = now + self._interval_s


@dataclass
class EventPages:
    """Lists events with one client; `requests` counts the HTTP requests sent (retries included)."""

    client: httpx.AsyncClient
    api_key: Secret
    base_url: str = defaults.STRIPE_API_BASE
    page_limit: int = defaults.STRIPE_EVENTS_PAGE_LIMIT
    limiter: RateLimiter | None = None
    max_retries: int = defaults.STRIPE_API_MAX_RETRIES
    sleep: Sleep = asyncio.sleep
    requests: int = 0

    async def pages(self, query: EventQuery) -> AsyncIterator[list[dict[str, Any]]]:
        """Each page's events, in the order the API lists them (Stripe: newest first)."""
        starting_after: str | None = None
        while True:
            page = await self._get(query.params(self.page_limit, starting_after))
            events = page.get("data")
            if not isinstance(events, list):
                raise StripeApiError("the Events API answered without a 'data' list")
            if events:
                yield events
            if not page.get("has_more") or not events:
                return
            last = events[-1].get("id") if isinstance(events[-1], dict) else None
            if not isinstance(last, str):
                raise StripeApiError("the Events API listed an event without an id")
            starting_after = last

    async def _get(self, params: list[tuple[str, str]]) -> dict[str, Any]:
        url = self.base_url.rstrip("/") + "/v1/events"
        headers = {"Authorization": f"Bearer {self.api_key.reveal()}"}
        for attempt in range(self.max_retries + 1):
            if self.limiter is not None:
                await self.limiter.wait()
            self.requests += 1
            last_try = attempt == self.max_retries
            try:
                response = await self.client.get(url, params=tuple(params), headers=headers)
            except httpx.TransportError as err:
                if last_try:
                    raise StripeApiError(f"GET {url} failed: {type(err).__name__}") from None
                await self.sleep(_backoff_s(attempt))
                continue
            if response.status_code == 429 or response.status_code >= 500:
                if last_try:
                    raise StripeApiError(f"GET {url} answered {response.status_code} "
                                         f"{self.max_retries + 1} times; giving up")
                await self.sleep(_retry_after_s(response) if response.status_code == 429
                                 else _backoff_s(attempt))
                continue
            if response.status_code != 200:
                raise StripeApiError(_refusal(url, response))
            try:
                body: Any = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise StripeApiError(f"GET {url} answered 200 with a body that is not JSON") from None
            if not isinstance(body, dict):
                raise StripeApiError(f"GET {url} answered 200 with a body that is not a JSON object")
            return body
        raise AssertionError("unreachable: the last try returns or raises")


def _backoff_s(attempt: int) -> float:
    return float(min(defaults.STRIPE_API_BACKOFF_MAX_S, defaults.STRIPE_API_BACKOFF_BASE_S * 2 ** attempt))


def _retry_after_s(response: httpx.Response) -> float:
    """Retry-After in seconds (Stripe sends a number), capped; the backoff base when absent."""
    try:
        wanted = float(response.headers.get("retry-after", ""))
    except ValueError:
        return defaults.STRIPE_API_BACKOFF_BASE_S
    return max(0.0, min(wanted, defaults.STRIPE_API_RETRY_AFTER_MAX_S))


def _refusal(url: str, response: httpx.Response) -> str:
    status = response.status_code
    if status in (401, 403):
        # Stripe's message for a bad key quotes part of it: say only what to check.
        return f"GET {url} answered {status}: STRIPE_API_KEY was refused (check it is a secret or restricted key with read access to events)"
    try:
        error: Any = orjson.loads(response.content).get("error", {})
        message = error.get("message") if isinstance(error, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    return f"GET {url} answered {status}" + (f": {message}" if message else "")
