"""One GET to the Stripe API: rate, auth headers, relative paths, and failures told apart, never quoting the key.

Two callers share it: `fanout reconcile` pages `GET /v1/events` (bus/stripe_events.py:
it retries with backoff, then stops with StripeApiError), and handlers' `ctx.stripe`
(workers/stripe_api.py: it maps a failure to RetryLater or PermanentFailure). Each
caller decides what to retry; this module only sends one request and says what came
back: the JSON object, or an `ApiFailure` of a kind the caller can act on.

The key goes into the Authorization header and nowhere else: no message built here
holds it, transport errors are reduced to their class name (their text may quote the
request), and Stripe's own message is dropped on 401/403 (it quotes part of the key).
Only relative paths are fetched, so the key is never sent to another host.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx
import orjson

from bus import defaults
from bus.settings import Secret

Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """At most `rate_per_s` requests in any one-second window; waiters go in turn (FIFO).

    Stripe counts requests per second, so this is a sliding window, not a token bucket:
    a bucket of `rate_per_s` tokens refilled at `rate_per_s` lets a full burst follow a
    second of steady traffic, up to twice the rate in one second, which Stripe answers
    with 429s. A window still lets an idle process send a burst of `rate_per_s` at once
    (handlers fetching concurrently), and whatever this sends, any token bucket or
    per-second counter of the same rate accepts. A rate under 1/s spaces requests
    1/rate apart.
    """

    def __init__(self, rate_per_s: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.rate_per_s = rate_per_s
        self.burst = max(1, int(rate_per_s))
        self._window_s = self.burst / rate_per_s
        self._sent: deque[float] = deque(maxlen=self.burst)  # the last `burst` send times
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()  # one waiter at a time: FIFO, and no two take one slot

    async def wait(self) -> None:
        """Return when one more request stays within the rate (and count it as sent)."""
        async with self._lock:
            now = self._clock()
            if len(self._sent) == self.burst:
                free_at = self._sent[0] + self._window_s
                if free_at > now:
                    await self._sleep(free_at - now)
                    now = max(self._clock(), free_at)
            self._sent.append(now)


class Failure(Enum):
    """What kind of failure an answer is: each caller decides what to do with each kind."""

    THROTTLED = "throttled"      # 429: wait its Retry-After
    UNAVAILABLE = "unavailable"  # 5xx, 408, 409, a timeout or a transport error: try again later
    REFUSED = "refused"          # 401/403: the key is wrong or may not read this
    REJECTED = "rejected"        # any other 4xx: asking again will not help
    MALFORMED = "malformed"      # 2xx whose body is not a JSON object


@dataclass(frozen=True)
class ApiFailure:
    """A request that did not return an object; `message` never holds the API key."""

    kind: Failure
    message: str
    status: int | None = None
    retry_after_s: float | None = None  # a 429's Retry-After in seconds, uncapped


Answer = dict[str, Any] | ApiFailure


class StripeHttp:
    """GETs relative API paths with one key, one client and an optional rate limiter.

    :param client: the httpx client; it should not follow redirects (the key would go along).
    :param api_key: the secret or restricted key, sent as a Bearer token.
    :param base_url: the API address, `STRIPE_API_BASE` (tests, proxies).
    :param limiter: waited on before every request sent, retries included.
    :param stripe_version: the `Stripe-Version` header; None uses the account's default version.
    """

    def __init__(self, client: httpx.AsyncClient, api_key: Secret, *,
                 base_url: str = defaults.STRIPE_API_BASE, limiter: RateLimiter | None = None,
                 stripe_version: str | None = None) -> None:
        self._client = client
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        self._stripe_version = stripe_version

    async def get(self, path: str, *, params: Sequence[tuple[str, str]] = (),
                  context: str | None = None, account: str | None = None,
                  event_id: str | None = None) -> Answer:
        """One GET of `path` (`/v1/customers/cus_1`): the parsed JSON object, or what went wrong.

        `context` is sent as Stripe-Context (thin events), else `account` as Stripe-Account;
        `event_id` as Stripe-Request-Trigger, as the SDK does for a fetch an event caused.
        """
        if not path.startswith("/") or path.startswith("//"):
            return ApiFailure(Failure.REJECTED,
                              f"not a Stripe API path: {path[:100]!r} (expected '/v1/...' or '/v2/...')")
        what = f"Stripe API GET {path}"
        if self.limiter is not None:
            await self.limiter.wait()
        try:
            response = await self._client.get(self.base_url + path, params=tuple(params),
                                              headers=self._headers(context, account, event_id))
        except httpx.TimeoutException:
            return ApiFailure(Failure.UNAVAILABLE, f"{what}: timed out")
        except httpx.HTTPError as err:  # never chained nor quoted: its text may hold the request
            return ApiFailure(Failure.UNAVAILABLE, f"{what}: {type(err).__name__}")
        return _answer(what, response)

    def _headers(self, context: str | None, account: str | None, event_id: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._api_key.reveal()}", "User-Agent": "stripe-fanout"}
        if self._stripe_version:
            headers["Stripe-Version"] = self._stripe_version
        if context:
            headers["Stripe-Context"] = context
        elif account:
            headers["Stripe-Account"] = account
        if event_id:
            headers["Stripe-Request-Trigger"] = f"event={event_id}"
        return headers


def retry_after_s(response: httpx.Response) -> float:
    """Retry-After in seconds (Stripe sends a number); the backoff base when absent or not a number."""
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return defaults.STRIPE_API_BACKOFF_BASE_S


def _answer(what: str, response: httpx.Response) -> Answer:
    status = response.status_code
    try:
        body: Any = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if 200 <= status < 300:
        if isinstance(body, dict):
            return body
        return ApiFailure(Failure.MALFORMED, f"{what} answered {status} with a body that is not a JSON object",
                          status)
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    if status == 429:
        return ApiFailure(Failure.THROTTLED, f"{what} answered 429 (rate limited)", status,
                          retry_after_s(response))
    if status in (401, 403):
        # Stripe's message for a bad key quotes part of it: say only what to check.
        return ApiFailure(Failure.REFUSED,
                          f"{what} answered {status}: STRIPE_API_KEY was refused "
                          f"({error.get('type') or 'no detail'}; check it is a secret or restricted "
                          "key with read access)", status)
    detail = str(error.get("message") or error.get("code") or "")[:300]
    message = f"{what} answered {status}{': ' + detail if detail else ''}"
    if status >= 500 or status in (408, 409):
        return ApiFailure(Failure.UNAVAILABLE, message, status)
    return ApiFailure(Failure.REJECTED, message, status)
