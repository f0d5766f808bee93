"""`forward:<destination>`: POST the original body to an existing webhook endpoint, re-signed.

The endpoint behind the router verifies with `stripe.Webhook.construct_event`
and its own secret, unchanged. A 2xx is success; 4xx other than 408 and 429 is
permanent; 5xx, 408, 429, connection errors and timeouts are retried. The
secret, the URL and the body never reach a log line, an exception message or a
traceback (which the dead-letter stream keeps and `fanout dlq list` shows):
errors name the destination and the environment variables, never their values,
and library exceptions are not chained, since their text may quote the URL.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from bus.envelope import Event
from bus.errors import PermanentFailure, RetryLater
from bus.routing import Destination
from bus.signing import stripe_signature
from workers.context import Context

HTTP_CLIENT = "forward.httpx"
RETRYABLE_4XX = frozenset({408, 429})


async def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(follow_redirects=False, headers={"User-Agent": "stripe-fanout/forward"})


async def _close(client: httpx.AsyncClient) -> None:
    await client.aclose()


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


async def forward_to(name: str, destinations: Mapping[str, Destination], event: Event, ctx: Context) -> None:
    """`forward:<name>` as resolved for a pool: the destination as routing.yaml declares it now."""
    await forward(destinations[name], event, ctx)


async def forward(destination: Destination, event: Event, ctx: Context) -> None:
    """Deliver `event` to `destination` as Stripe would have."""
    url = ctx.settings.env.get(destination.url_env)
    if not url:
        raise PermanentFailure(
            f"destination {destination.name!r}: environment variable {destination.url_env} "
            "(its URL) is not set"
        )
    secret = ctx.settings.secret(destination.secret_env)
    if secret is None:
        raise PermanentFailure(
            f"destination {destination.name!r}: environment variable {destination.secret_env} "
            "(its signing secret) is not set"
        )
    client = await ctx.resources.get(HTTP_CLIENT, _client, _close)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": stripe_signature(event.body, secret.reveal()),
    }
    try:
        response = await client.post(url, content=event.body, headers=headers, timeout=destination.timeout_s)
    except httpx.TimeoutException as err:
        raise RetryLater(f"destination {destination.name!r}: timed out ({type(err).__name__})") from None
    except httpx.TransportError as err:
        raise RetryLater(f"destination {destination.name!r}: {type(err).__name__}") from None
    except httpx.InvalidURL as err:
        raise PermanentFailure(
            f"destination {destination.name!r}: the URL in {destination.url_env} is invalid ({type(err).__name__})"
        ) from None
    except Exception as err:  # anything else: retried as before, without its text (it may quote the URL)
        raise RetryLater(f"destination {destination.name!r}: {type(err).__name__}") from None
    status = response.status_code
    ctx.log.info("forward.answered", destination=destination.name, status=status)
    if 200 <= status < 300:
        return
    if 400 <= status < 500 and status not in RETRYABLE_4XX:
        raise PermanentFailure(f"destination {destination.name!r} answered {status}")
    raise RetryLater(f"destination {destination.name!r} answered {status}", defer_s=_retry_after_s(response))
