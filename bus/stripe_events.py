"""Stripe's Events API (`GET /v1/events`), page by page, within a request rate, honouring 429s.

Stripe keeps events for 30 days. Each page holds up to `limit` events; the next
page starts after the last event id of this one (`starting_after`), until
`has_more` is false. Requests go through bus/stripe_http.py (its RateLimiter
keeps them under Stripe's per-second count); a 429 waits for its `Retry-After`,
and a 5xx or a transport error is retried with backoff, up to `max_retries`
times, then the listing stops with StripeApiError.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from bus import defaults
from bus.errors import FanoutError
from bus.settings import Secret
from bus.stripe_http import ApiFailure, Failure, RateLimiter, Sleep, StripeHttp

EVENTS_PATH = "/v1/events"
_RETRIED = (Failure.THROTTLED, Failure.UNAVAILABLE)


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
    # No Stripe-Version: events are listed in the account's version, as its webhooks send them.
    _http: StripeHttp = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._http = StripeHttp(self.client, self.api_key, base_url=self.base_url, limiter=self.limiter)

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
        for attempt in range(self.max_retries + 1):
            self.requests += 1
            answer = await self._http.get(EVENTS_PATH, params=params)
            if not isinstance(answer, ApiFailure):
                return answer
            if answer.kind not in _RETRIED:
                raise StripeApiError(answer.message)
            if attempt == self.max_retries:
                raise StripeApiError(f"{answer.message}; gave up after {self.max_retries + 1} tries")
            await self.sleep(_wait_s(answer, attempt))
        raise AssertionError("unreachable: the last try returns or raises")


def _wait_s(failure: ApiFailure, attempt: int) -> float:
    if failure.retry_after_s is not None:
        return min(failure.retry_after_s, defaults.STRIPE_API_RETRY_AFTER_MAX_S)
    return float(min(defaults.STRIPE_API_BACKOFF_MAX_S, defaults.STRIPE_API_BACKOFF_BASE_S * 2 ** attempt))
