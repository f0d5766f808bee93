"""Clients a worker process builds once and every handler call shares (`ctx.resources`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


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
