"""The concurrency slots of one consumer: a bounded counter whose bound may change on reload.

Three parties take slots: the reader (one per entry XREADGROUP may return), the
reclaimer (one per entry it may claim) and every running entry. A slot is
*reserved* before awaiting Redis, so that what the reply brings can start at
once without going over the bound; it is *occupied* while an entry runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Slots:
    def __init__(self, capacity: Callable[[], int]) -> None:
        # A callable: the pool's concurrency follows routing.yaml, so the bound is read at each use.
        self._capacity = capacity
        self.running = 0
        self.reserved = 0
        self._freed = asyncio.Event()
        # Cleared while the reclaimer waits for the slots the reader holds in a blocking read, so
        # the reader does not take them straight back. What the reader's read returned still
        # starts first: under a backlog, a due retry waits behind that batch (a delay, bounded).
        self._reader_may_reserve = asyncio.Event()
        self._reader_may_reserve.set()

    @property
    def capacity(self) -> int:
        return self._capacity()

    def free(self) -> int:
        return self.capacity - self.running - self.reserved

    def reserve(self, wanted: int) -> int:
        """Take up to `wanted` free slots before awaiting Redis; give them back with `release`."""
        taken = max(0, min(wanted, self.free()))
        self.reserved += taken
        return taken

    def release(self, taken: int) -> None:
        """Give back reserved slots; the caller starts what it got right after, before awaiting."""
        self.reserved -= taken
        if taken:
            self._freed.set()

    def occupy(self) -> None:
        """An entry starts running."""
        self.running += 1

    def vacate(self) -> None:
        """An entry is done (or given up): its slot is free again."""
        self.running -= 1
        self._freed.set()

    def wake(self) -> None:
        """Wake whoever waits for a slot (the consumer is stopping)."""
        self._freed.set()

    async def wait_freed(self) -> None:
        """Until a slot is vacated or released (or `wake` is called)."""
        self._freed.clear()
        await self._freed.wait()

    async def reader_turn(self) -> None:
        """The reader waits here while the reclaimer is taking the slots over."""
        await self._reader_may_reserve.wait()

    async def take_from_reader(self, stopping: Callable[[], bool]) -> None:
        """When the reader holds every free slot in a blocking read, wait until it gives them back."""
        if self.free() > 0 or not self.reserved:
            return
        self._reader_may_reserve.clear()
        try:
            while self.free() <= 0 and self.reserved and not stopping():
                await self.wait_freed()
        finally:
            self._reader_may_reserve.set()
