"""Fetch what a thin event refers to from the Stripe API: `ctx.stripe` in a handler.

A thin event notification carries only a reference (`related_object`: id,
type, url). A handler that needs the object, or the full event, fetches it:

    async def handler(event: Event, ctx: Context) -> None:
        customer = await ctx.stripe.fetch_related_object(event)  # GET related_object.url
        full = await ctx.stripe.fetch_event(event)               # GET /v2/core/events/{id}

`STRIPE_API_KEY` is the key (a restricted read-only key is enough);
`STRIPE_API_BASE` overrides the address (tests, proxies), and
`STRIPE_API_RATE_PER_S` the request rate, bounded per worker process by one
token bucket (default 25/s, Stripe's default limit). A 429 is retried after its
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
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from bus import defaults
from bus.envelope import Event
from bus.errors import PermanentFailure, RetryLater
from bus.settings import Secret, Settings
from workers.resources import Resources

RESOURCE_NAME = "stripe.api"
RETRY_LATER_S = 5.0


class TokenBucket:
    """At most `rate_per_s` takes per second on average, bursts up to `burst`; waiters queue FIFO."""

    def __init__(self, rate_per_s: float, burst: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst if burst is not None else max(1.0, rate_per_s)
        self._tokens = self.burst
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate_per_s)
                self._updated = now
                # The epsilon absorbs float rounding: a sleep of exactly the missing time
                # can leave 0.999...; without it, the next sleep would be too small to pass.
                if self._tokens >= 1 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1)
                    return
                await self._sleep((1 - self._tokens) / self.rate_per_s)


class StripeApi:
    """A read-only Stripe API client shared by a worker process's handlers (ctx.resources)."""

    def __init__(self, client: httpx.AsyncClient, api_key: Secret | None, *, base_url: str,
                 bucket: TokenBucket, retries_429: int = defaults.STRIPE_API_429_RETRIES,
                 max_wait_s: float = defaults.STRIPE_API_MAX_WAIT_S,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._client = client
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.bucket = bucket
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
                   bucket=TokenBucket(rate_per_s))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, path: str, *, context: str | None = None, account: str | None = None,
                  event_id: str | None = None) -> dict[str, Any]:
        """GET an API path (`/v1/customers/cus_1`), as the parsed JSON object."""
        if not path.startswith("/") or path.startswith("//"):
            raise PermanentFailure(f"not a Stripe API path: {path[:100]!r} (expected '/v1/...' or '/v2/...')")
        if self._api_key is None:
            raise PermanentFailure(
                "STRIPE_API_KEY is not set: a handler that fetches from the Stripe API needs it "
                "(a restricted key with read access is enough)"
            )
        headers = {"Authorization": f"Bearer {self._api_key.reveal()}",
                   "Stripe-Version": _sdk_api_version(), "User-Agent": "stripe-fanout"}
        if context:
            headers["Stripe-Context"] = context
        elif account:
            headers["Stripe-Account"] = account
        if event_id:
            headers["Stripe-Request-Trigger"] = f"event={event_id}"
        for attempt in range(self._retries_429 + 1):
            await self.bucket.take()
            try:
                response = await self._client.get(self.base_url + path, headers=headers)
            except httpx.TimeoutException:
                raise RetryLater(f"Stripe API GET {path}: timed out", defer_s=RETRY_LATER_S) from None
            except httpx.HTTPError as err:  # never chained: its text may quote the request
                raise RetryLater(f"Stripe API GET {path}: {type(err).__name__}",
                                 defer_s=RETRY_LATER_S) from None
            if response.status_code != 429:
                return _answer(path, response)
            wait_s = _retry_after_s(response)
            if attempt == self._retries_429 or wait_s > self._max_wait_s:
                raise RetryLater(f"Stripe API GET {path}: rate limited (429)", defer_s=wait_s)
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


def _retry_after_s(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return 1.0


def _answer(path: str, response: httpx.Response) -> dict[str, Any]:
    status = response.status_code
    try:
        body: Any = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if 200 <= status < 300 and isinstance(body, dict):
        return body
    if 200 <= status < 300:
        raise RetryLater(f"Stripe API GET {path}: {status} with a body that is not a JSON object",
                         defer_s=RETRY_LATER_S)
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    what = f"Stripe API GET {path} answered {status}"
    if status in (401, 403):
        raise PermanentFailure(f"{what}: STRIPE_API_KEY was refused ({error.get('type') or 'no detail'})")
    detail = str(error.get("message") or error.get("code") or "")[:300]
    if status >= 500 or status == 408 or status == 409:
        raise RetryLater(f"{what}{': ' + detail if detail else ''}", defer_s=RETRY_LATER_S)
    raise PermanentFailure(f"{what}{': ' + detail if detail else ''}")
