"""What a handler receives besides the event: where it runs, which attempt, and shared resources."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import redis.asyncio as aioredis
import structlog

from bus.envelope import Event
from bus.settings import Settings
from workers.resources import Resources

if TYPE_CHECKING:
    from workers.stripe_api import StripeFetcher

class Handler(Protocol):
    """`async def handler(event, ctx) -> None`. Raise to retry; raise PermanentFailure to dead-letter."""

    def __call__(self, event: Event, ctx: Context, /) -> Awaitable[None] | None: ...


@dataclass
class Context:
    pool: str
    handler: str
    attempt: int
    log: structlog.typing.FilteringBoundLogger
    redis: aioredis.Redis
    settings: Settings
    resources: Resources
    # Entries this process runs at once for the pool (0: unknown, e.g. one RQ job per process);
    # forward: sizes a destination's default concurrency limit from it.
    slots: int = 0

    @property
    def stripe(self) -> StripeFetcher:
        """The Stripe API, for what a thin event only refers to (see workers/stripe_api.py).

        `await ctx.stripe.fetch_related_object(event)` is the object as it is now;
        `await ctx.stripe.fetch_event(event)` the full event. STRIPE_API_KEY gives the
        key; requests are rate-bounded per process and 429s retried.
        """
        from workers.stripe_api import StripeFetcher

        return StripeFetcher(self.settings, self.resources)
