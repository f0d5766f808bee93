"""Per-process concurrency limits of forward destinations, so one slow destination cannot hold a whole pool.

A destination's limit is its `concurrency` option, else half the pool's
concurrency in this process (at least 1). A forward that cannot get a slot
within FORWARD_SLOT_WAIT_S raises Paused: the entry gives its pool slot back
and runs again later, without spending an attempt. A limit changed by a
routing.yaml reload applies to the next forward.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from bus import defaults
from bus.errors import Paused
from bus.routing import Destination

RESOURCE_NAME = "forward.slots"


def destination_limit(destination: Destination, pool_slots: int) -> int | None:
    """How many forwards to `destination` may run at once in this process (None: no limit)."""
    if destination.concurrency is not None:
        return destination.concurrency
    if pool_slots <= 0:
        return None
    return max(1, pool_slots // 2)


class DestinationSlots:
    """Counts the forwards in flight per destination in this process; waits, bounded, for a free one."""

    def __init__(self, wait_s: float = defaults.FORWARD_SLOT_WAIT_S,
                 busy_defer_s: float = defaults.FORWARD_BUSY_DEFER_S) -> None:
        self.wait_s = wait_s
        self.busy_defer_s = busy_defer_s
        self.in_use: dict[str, int] = {}
        self._freed: dict[str, asyncio.Condition] = {}

    @contextlib.asynccontextmanager
    async def slot(self, destination: Destination, pool_slots: int) -> AsyncIterator[None]:
        """Hold one of the destination's slots for the block; raise Paused if none frees up in time."""
        name = destination.name
        limit = destination_limit(destination, pool_slots)
        freed = self._freed.setdefault(name, asyncio.Condition())
        if limit is not None and self.in_use.get(name, 0) >= limit:
            async with freed:
                try:
                    async with asyncio.timeout(self.wait_s):
                        await freed.wait_for(lambda: self.in_use.get(name, 0) < limit)
                except TimeoutError:
                    raise Paused(f"destination {name!r}: its {limit} concurrent forwards are all busy",
                                 defer_s=self.busy_defer_s) from None
                self.in_use[name] = self.in_use.get(name, 0) + 1
        else:
            self.in_use[name] = self.in_use.get(name, 0) + 1
        try:
            yield
        finally:
            self.in_use[name] -= 1
            async with freed:
                freed.notify(1)
