"""What a handler receives besides the event: where it runs, which attempt, and shared resources."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

import redis.asyncio as aioredis
import structlog

from bus.envelope import Event
from bus.errors import ConfigError
from bus.settings import Settings
from workers.newest import Newest
from workers.resources import Resources

if TYPE_CHECKING:
    from workers.stripe_api import StripeFetcher

class Handler(Protocol):
    """`async def handler(event, ctx) -> None`. Raise to retry; raise PermanentFailure to dead-letter."""

    def __call__(self, event: Event, ctx: Context, /) -> Awaitable[None] | None: ...


class Context:
    """Given to each handler call with the event: `pool`, `handler`, `attempt`, `log`, `redis`, ...

    `log_fields`, when given, are bound to `log` on first use rather than for every call: a
    structlog bind costs about as much as the rest of a no-op handler's run, and most runs never log.
    """

    def __init__(self, pool: str, handler: str, attempt: int, log: structlog.typing.FilteringBoundLogger,
                 redis: aioredis.Redis, settings: Settings, resources: Resources, slots: int = 0,
                 newest: Newest | None = None, *, log_fields: dict[str, Any] | None = None) -> None:
        self.pool = pool
        self.handler = handler
        self.attempt = attempt
        self.redis = redis
        self.settings = settings
        self.resources = resources
        # Entries this process runs at once for the pool (0: unknown, e.g. one RQ job per process);
        # forward: sizes a destination's default concurrency limit from it.
        self.slots = slots
        # Where the pool's stale guard keeps this event's object (None: the pool has no skip_stale).
        self.newest = newest
        self._log = log
        self._log_fields = log_fields

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """The handler's logger, bound to the pool, event, handler and attempt."""
        if self._log_fields is not None:
            self._log, self._log_fields = self._log.bind(**self._log_fields), None
        return self._log

    def __repr__(self) -> str:
        return f"Context(pool={self.pool!r}, handler={self.handler!r}, attempt={self.attempt})"

    async def newer_completed(self) -> bool:
        """Whether an event of this object and family, created after this one, has completed here.

        Asked now, so a long handler may ask again before it writes. Only a pool with
        `skip_stale: true` keeps that record (workers/newest.py has the family rule).
        """
        if self.newest is None:
            raise ConfigError(f"pool {self.pool!r} does not record completed events: set skip_stale: true "
                              "in routing.yaml to use ctx.newer_completed()")
        return await self.newest.newer_completed(self.redis)

    @property
    def stripe(self) -> StripeFetcher:
        """The Stripe API, for what a thin event only refers to (see workers/stripe_api.py).

        `await ctx.stripe.fetch_related_object(event)` is the object as it is now;
        `await ctx.stripe.fetch_event(event)` the full event. STRIPE_API_KEY gives the
        key; requests are rate-bounded per process and 429s retried.
        """
        from workers.stripe_api import StripeFetcher

        return StripeFetcher(self.settings, self.resources)
