"""The seam between the consumer engine and where an entry's handlers run.

The engine (workers/engine/consumer.py) reads, holds the slots, schedules
reclaim passes, trims, drains and reloads routing; an `Executor` runs each
entry the engine owns (async_executor.py: here, on this event loop;
workers/rq/bridge.py: as an RQ job) and says which pending entries are due
again and when a burst is over.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from bus.envelope import Event
from bus.keys import Keys
from bus.reload import RoutingHolder
from bus.routing import PoolConfig
from bus.settings import Settings
from workers.engine.observer import Observer
from workers.engine.outcomes import Outcomes
from workers.engine.slots import Slots
from workers.handlers import HandlerSet
from workers.newest import Newest
from workers.resources import Resources
from workers.stream_ops import Fields


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry this consumer owns, for one delivery (1 for a first read).

    `attempt` is the delivery number (an RQ job's identity); `paused_runs` of those deliveries
    ended Paused and were not attempts (workers/engine/entries.py reads them), so max_attempts
    and the handlers' ctx.attempt count `counted_attempt`.
    """

    stream: str
    entry_id: str
    fields: Fields
    attempt: int
    paused_runs: int = 0

    @property
    def counted_attempt(self) -> int:
        return self.attempt - self.paused_runs


class Owner(Protocol):
    """What an executor needs from the consumer that owns the entries."""

    settings: Settings
    name: str
    redis: aioredis.Redis
    keys: Keys
    group: str
    consumer: str
    holder: RoutingHolder
    handlers: HandlerSet
    resources: Resources
    outcomes: Outcomes
    observer: Observer
    slots: Slots
    log: Any  # the consumer's bound structlog logger
    claim_margin_s: float
    own_entries_only: bool
    burst: bool

    @property
    def config(self) -> PoolConfig: ...

    @property
    def stopping(self) -> bool: ...

    def now_ms(self) -> int: ...

    def busy(self, stream: str, entry_id: str) -> bool: ...

    def start(self, entry: Entry) -> None: ...

    def thread_pool(self) -> ThreadPoolExecutor: ...


class Executor(Protocol):
    """How an `executor:` kind runs the entries a consumer owns."""

    # Said in the dead letter of an entry whose last allowed attempt never finished.
    def lost_attempt_error(self, attempt: int) -> str: ...

    async def run(self, entry: Entry, event: Event, newest: Newest | None) -> None:
        """Run (or hand over) one owned entry; the engine parsed it and checked its attempt count.

        `newest`: the entry's place in its pool's stale guard (None without skip_stale)."""

    async def reclaim(self, stream: str, limit: int) -> int:
        """Claim and start up to `limit` due pending entries of `stream` (slots are reserved); how many."""

    async def drained(self, stream: str) -> bool:
        """Burst mode's exit test for `stream`, once nothing is in flight or unflushed here."""

    def close(self) -> None: ...
