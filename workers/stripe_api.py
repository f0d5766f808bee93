"""Fetch what a thin event refers to from the Stripe API: `ctx.stripe` in a handler.

A thin event notification carries only a reference (`related_object`: id,
type, url). A handler that needs the object, or the full event, fetches it:

    async def handler(event: Event, ctx: Context) -> None:
        customer = await ctx.stripe.fetch_related_object(event)  # GET related_object.url
        full = await ctx.stripe.fetch_event(event)               # GET /v2/core/events/{id}

`STRIPE_API_KEY` is the key (a restricted read-only key is enough);
`STRIPE_API_BASE` overrides the address (tests, proxies), and
`STRIPE_API_RATE_PER_S` the request rate, bounded per worker process by one
RateLimiter (default 25/s, Stripe's default limit). The HTTP itself (headers,
rate, Retry-After, errors without the key) is bus/stripe_http.py's; this module
says what a failure means to a handler. A 429 is retried after its
Retry-After, a few times, then the handler is asked to retry later; 5xx,
timeouts and connection errors are retried later; any other 4xx is permanent.
The key is never logged nor put in an error message, and only relative API
paths are fetched, so it is never sent to another host.

Requests carry the installed SDK's `Stripe-Version` (the object comes back in
that version's shape) and, for a thin event with a `context` (Connect), the
`Stripe-Context` header, as the SDK's own fetch methods do.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx

from bus import defaults
from bus.envelope import Event
from bus.errors import PermanentFailure, RetryLater
from bus.settings import Secret, Settings
from bus.stripe_http import ApiFailure, Failure, RateLimiter, Sleep, StripeHttp
from workers.resources import Resources

RESOURCE_NAME = "stripe.api"
RETRY_LATER_S = 5.0


class StripeApi:
    """A read-only Stripe API client shared by a worker process's handlers (ctx.resources).

    :param client: the httpx client (closed by `aclose`).
    :param api_key: STRIPE_API_KEY; None makes every fetch fail permanently, saying what to set.
    :param base_url: STRIPE_API_BASE.
    :param limiter: the process's request rate (STRIPE_API_RATE_PER_S).
    :param retries_429: how many 429s are waited out in place before RetryLater.
    :param max_wait_s: the longest Retry-After waited in place; a longer one is RetryLater at once.
    """

    def __init__(self, client: httpx.AsyncClient, api_key: Secret | None, *, base_url: str,
                 limiter: RateLimiter, retries_429: int = defaults.STRIPE_API_429_RETRIES,
                 max_wait_s: float = defaults.STRIPE_API_MAX_WAIT_S,
                 sleep: Sleep = asyncio.sleep) -> None:
        self._client = client
        # The object comes back in the installed SDK's version, the shape its types expect.
        self._http = (StripeHttp(client, api_key, base_url=base_url, limiter=limiter,
                                 stripe_version=_sdk_api_version())
                      if api_key is not None else None)
        self._retries_429 = retries_429
        self._max_wait_s = max_wait_s
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings) -> StripeApi:
        rate = settings.env.get("STRIPE_API_RATE_PER_S")
        try:
            rate_per_s = float(rate) if rate else defaults.STRIPE_API_RATE_PER_S
        except ValueError:
            raise PermanentFailure(f"STRIPE_API_RATE_PER_S must be a number, got {rate!r}") from None
        if rate_per_s <= 0:
            raise PermanentFailure("STRIPE_API_RATE_PER_S must be positive")
        client = httpx.AsyncClient(timeout=defaults.STRIPE_API_TIMEOUT_S, follow_redirects=False)
        return cls(client, settings.secret("STRIPE_API_KEY"),
                   base_url=settings.env.get("STRIPE_API_BASE") or defaults.STRIPE_API_BASE,
                   limiter=RateLimiter(rate_per_s))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, path: str, *, context: str | None = None, account: str | None = None,
                  event_id: str | None = None) -> dict[str, Any]:
        """GET an API path (`/v1/customers/cus_1`), as the parsed JSON object."""
        if self._http is None:
            raise PermanentFailure(
                "STRIPE_API_KEY is not set: a handler that fetches from the Stripe API needs it "
                "(a restricted key with read access is enough)"
            )
        for attempt in range(self._retries_429 + 1):
            answer = await self._http.get(path, context=context, account=account, event_id=event_id)
            if not isinstance(answer, ApiFailure):
                return answer
            if answer.kind is not Failure.THROTTLED:
                raise _handler_failure(answer)
            wait_s = answer.retry_after_s if answer.retry_after_s is not None else RETRY_LATER_S
            if attempt == self._retries_429 or wait_s > self._max_wait_s:
                raise RetryLater(answer.message, defer_s=wait_s)
            await self._sleep(wait_s)
        raise AssertionError("unreachable")  # pragma: no cover

    async def fetch_related_object(self, event: Event) -> dict[str, Any]:
        """The current state of a thin event's related object (GET related_object.url)."""
        related = event.related_object
        if related is None or not related.url:
            raise PermanentFailure(f"{event.type} ({event.id}) has no related_object to fetch")
        return await self.get(related.url, context=_context(event), event_id=event.id)

    async def fetch_event(self, event: Event) -> dict[str, Any]:
        """The full event: /v2/core/events/{id} for a thin event (as the SDK's fetch_event), else /v1/events/{id}."""
        event_id = quote(event.id, safe="")
        if event.is_thin:
            return await self.get(f"/v2/core/events/{event_id}", context=_context(event),
                                  event_id=event.id)
        return await self.get(f"/v1/events/{event_id}", account=event.account)


class StripeFetcher:
    """`ctx.stripe`: the process's StripeApi, built on first use from the handler's settings."""

    def __init__(self, settings: Settings, resources: Resources) -> None:
        self._settings = settings
        self._resources = resources

    async def api(self) -> StripeApi:
        async def build() -> StripeApi:
            return StripeApi.from_settings(self._settings)

        async def close(api: StripeApi) -> None:
            await api.aclose()

        return await self._resources.get(RESOURCE_NAME, build, close)

    async def get(self, path: str, *, context: str | None = None) -> dict[str, Any]:
        """GET any Stripe API path with the process's key and rate limit."""
        return await (await self.api()).get(path, context=context)

    async def fetch_related_object(self, event: Event) -> dict[str, Any]:
        """A thin event's related object, fetched now (its current state, not a snapshot)."""
        return await (await self.api()).fetch_related_object(event)

    async def fetch_event(self, event: Event) -> dict[str, Any]:
        """The full event from Stripe's Events API."""
        return await (await self.api()).fetch_event(event)


def _context(event: Event) -> str | None:
    # The ingress stores a thin event's `context` where a snapshot event's `account` goes.
    return event.account


def _sdk_api_version() -> str:
    import stripe

    return str(stripe.api_version)


def _handler_failure(failure: ApiFailure) -> RetryLater | PermanentFailure:
    """What the pool does with a request that failed: try the handler again later, or dead-letter it."""
    if failure.kind in (Failure.UNAVAILABLE, Failure.MALFORMED):
        return RetryLater(failure.message, defer_s=RETRY_LATER_S)
    return PermanentFailure(failure.message)
