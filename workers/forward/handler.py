"""`forward:<destination>`: POST the original body to an existing webhook endpoint, re-signed.

The endpoint behind the router verifies with `stripe.Webhook.construct_event`
and its own secret, unchanged. A 2xx is success; a 3xx is permanent (redirects
are not followed: the URL is wrong); 4xx other than 408 and 429 is permanent;
5xx, 408, 429, connection errors and timeouts are retried, and count towards
the destination's circuit breaker (workers/forward/breaker.py). A destination
that is busy (its concurrency or rate limit) or whose breaker is open pauses
the entry: Paused, a retry that does not spend an attempt.

The answer is streamed: at most FORWARD_BODY_READ_BYTES of it are read, for
the error message; the rest is never read (httpcore closes a connection whose
response was not read to its end, rather than drain it).

The secret, the URL and the body never reach a log line, an exception message or a
traceback (which the dead-letter stream keeps and `fanout dlq list` shows):
errors name the destination and the environment variables, never their values,
and library exceptions are not chained, since their text may quote the URL.
What the destination answered is quoted only after bus/redaction.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping

import httpx

from bus import defaults
from bus.envelope import Event
from bus.errors import Paused, PermanentFailure, RetryLater
from bus.keys import Keys
from bus.redaction import redact_secrets
from bus.routing import Destination
from bus.signing import stripe_signature
from workers.context import Context
from workers.forward import slots
from workers.forward.breaker import Admission, Breakers

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
    gate = await ctx.resources.get(slots.RESOURCE_NAME, _slots)
    breakers = await ctx.resources.get(BREAKERS, lambda: _breakers(ctx))
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": stripe_signature(event.body, secret.reveal()),
        # An encoded answer would have to be decoded to be quoted: ask for none.
        "Accept-Encoding": "identity",
    }
    async with gate.slot(destination, ctx.slots):
        admission = await _admit(breakers, destination)
        try:
            status, head = await _post(client, destination, url, event.body, headers)
        except RetryLater:
            await _count_failure(breakers, destination, admission, ctx)
            raise
        except BaseException:
            # A probe that got no answer (the pool's timeout cancelled it, a bad URL) is a failed
            # probe: the breaker opens again now, rather than staying half-open until the lease ends.
            if admission.verdict == "probe":
                await breakers.record(destination, admission, ok=False)
            raise
        if status >= 500 or status in RETRYABLE_4XX:
            await _count_failure(breakers, destination, admission, ctx)
        else:
            await breakers.record(destination, admission, ok=True)
    ctx.log.info("forward.answered", destination=destination.name, status=status)
    if 200 <= status < 300:
        return
    said = _quote(head.body, ctx, destination)
    if 300 <= status < 400:
        raise PermanentFailure(
            f"destination {destination.name!r} answered {status} (a redirect): redirects are not followed; "
            f"set {destination.url_env} to the endpoint's final URL{said}")
    if 400 <= status < 500 and status not in RETRYABLE_4XX:
        raise PermanentFailure(f"destination {destination.name!r} answered {status}{said}")
    raise RetryLater(f"destination {destination.name!r} answered {status}{said}", defer_s=head.retry_after_s)


BREAKERS = "forward.breakers"


async def _slots() -> slots.DestinationSlots:
    return slots.DestinationSlots()


async def _breakers(ctx: Context) -> Breakers:
    return Breakers(ctx.redis, Keys(ctx.settings.key_prefix))


async def _admit(breakers: Breakers, destination: Destination) -> Admission:
    """Wait (bounded) for the rate limit; raise Paused if the breaker is open or the wait would be longer."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + defaults.FORWARD_RATE_WAIT_S
    while True:
        admission = await breakers.admit(destination)
        if admission.allowed:
            return admission
        wait_s = admission.wait_ms / 1000
        if admission.verdict == "rate" and loop.time() + wait_s <= give_up_at:
            await asyncio.sleep(wait_s)
            continue
        why = {"open": "its circuit breaker is open",
               "probing": "its circuit breaker is half-open and a probe is in flight",
               "rate": f"its rate limit ({destination.rate_per_s}/s) is reached"}[admission.verdict]
        if admission.verdict == "probing":  # the probe's lease is a bound; its answer usually comes sooner
            wait_s = min(wait_s, defaults.FORWARD_BUSY_DEFER_S)
        # Back when the breaker may let a probe through, or when the rate token is due.
        raise Paused(f"destination {destination.name!r}: {why}", defer_s=max(wait_s, 0.05))


async def _count_failure(breakers: Breakers, destination: Destination, admission: Admission,
                         ctx: Context) -> None:
    if await breakers.record(destination, admission, ok=False):
        ctx.log.warning("forward.breaker_open", destination=destination.name,
                        open_s=destination.breaker_open_s, probe_failed=admission.verdict == "probe")


class _Head:
    """The part of an answer that was read: the first bytes of the body, and Retry-After."""

    __slots__ = ("body", "retry_after_s")

    def __init__(self, body: bytes, retry_after_s: float | None) -> None:
        self.body, self.retry_after_s = body, retry_after_s


async def _post(client: httpx.AsyncClient, destination: Destination, url: str, body: bytes,
                headers: dict[str, str]) -> tuple[int, _Head]:
    """POST and read at most FORWARD_BODY_READ_BYTES of the answer; the connection is dropped if more was sent."""
    try:
        request = client.build_request("POST", url, content=body, headers=headers, timeout=destination.timeout_s)
        response = await client.send(request, stream=True)
        try:
            read = bytearray()
            # Raw bytes: no decoder, so a small compressed chunk cannot expand in memory.
            async for chunk in response.aiter_raw():
                read += chunk[: defaults.FORWARD_BODY_READ_BYTES - len(read)]
                if len(read) >= defaults.FORWARD_BODY_READ_BYTES:
                    break
        finally:
            await response.aclose()
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
    return response.status_code, _Head(bytes(read), _retry_after_s(response))


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+|\s+")


def _quote(body: bytes, ctx: Context, destination: Destination) -> str:
    """': "<the start of the answer>"', redacted and on one line; '' for an empty answer."""
    if not body:
        return ""
    text = _UNPRINTABLE.sub(" ", body.decode("utf-8", errors="replace")).strip()
    text = redact_secrets(text, ctx.settings, (destination.secret_env,))
    if len(text) > defaults.FORWARD_ERROR_QUOTE_CHARS:
        text = text[: defaults.FORWARD_ERROR_QUOTE_CHARS] + "…"
    return f": {text!r}" if text else ""
