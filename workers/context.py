"""What a handler receives besides the event: where it runs, which attempt, and shared resources."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import redis.asyncio as aioredis
import structlog

from bus.envelope import Event
from bus.settings import Settings

if TYPE_CHECKING:
    from workers.stripe_api import StripeFetcher

T = TypeVar("T")


class Handler(Protocol):
    """`async def handler(event, ctx) -> None`. Raise to retry; raise PermanentFailure to dead-letter."""

    def __call__(self, event: Event, ctx: Context, /) -> Awaitable[None] | None: ...


@dataclass
class Resources:
    """Clients a worker process builds once and every handler call shares (HTTP, Supabase, SMTP)."""

    _items: dict[str, Any] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def get(self, name: str, factory: Callable[[], Awaitable[T]],
                  close: Callable[[T], Awaitable[None]] | None = None) -> T:
        """The resource called `name`, built by `factory` on first use."""
        if name in self._items:
            item: T = self._items[name]
            return item
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name not in self._items:
                built = await factory()
                self._items[name] = built
                if close is not None:
                    self._closers.append(lambda: close(built))
        item = self._items[name]
        return item

    async def aclose(self) -> None:
        for closer in reversed(self._closers):
            await closer()
        self._closers.clear()
        self._items.clear()


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
