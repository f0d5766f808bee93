"""Claim pending entries that are due for another run.

An entry stays pending after a failed run. It is due once its idle time passes
the backoff for its delivery count (workers/engine/retry.py), and once the
retry time its failed attempt recorded has passed. The consumer that owns it
claims it back then. A peer's entry is claimed only once idle past the pool's
timeout plus its backoff plus a margin: its owner is then presumed dead
(SIGKILL, lost machine), and this is how its work is taken over.

XCLAIM increments the delivery count, so the count is the number of runs
started, the first included. Runs that ended Paused (workers/engine/outcomes.py
keeps their number per entry) are not attempts: the backoff and max_attempts
count the others.
An entry that is pending but no longer in the stream (trimmed anyway) is
dropped from the pending list by XCLAIM and dead-lettered here with a reason.

Everything here takes one stream: a pool with several streams loops over them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis

from bus.keys import Keys
from bus.routing import PoolConfig
from workers.engine.executor import Entry, Executor
from workers.engine.outcomes import Outcomes
from workers.engine.pending import pending_pages
from workers.engine.retry import peer_claim_idle_ms, pool_backoff_ms
from workers.engine.slots import Slots
from workers.stream_ops import text

# (entry id, times delivered, the idle time it needed in ms)
Due = tuple[str, int, int]


class Claimer(Protocol):
    """What a reclaim pass needs from its consumer."""

    redis: aioredis.Redis
    keys: Keys
    name: str
    group: str
    consumer: str
    claim_margin_s: float
    # An ordered pool claims only its own entries here.
    own_entries_only: bool
    outcomes: Outcomes
    slots: Slots

    @property
    def config(self) -> PoolConfig: ...

    def now_ms(self) -> int: ...

    def busy(self, stream: str, entry_id: str) -> bool: ...

    def start(self, entry: Entry) -> None: ...


async def reclaim_pass(view: Claimer, executor: Executor, stream: str, stopping: Callable[[], bool]) -> int:
    """Claim and start the due entries of `stream`, as many as there are free slots; how many started.

    The slots are reserved before the first await, so the reader cannot take them meanwhile;
    when the reader holds them all in a blocking read, the pass waits for them first.
    """
    await view.slots.take_from_reader(stopping)
    if stopping():
        return 0
    taken = view.slots.reserve(view.slots.free())
    if taken <= 0:
        return 0
    try:
        return await executor.reclaim(stream, taken)
    finally:
        view.slots.release(taken)


async def streams_to_sweep(view: Claimer, streams: list[str], executor_kind: str) -> list[str]:
    """The streams where a reclaim pass may find work, so a sweep over many partitions skips the rest.

    With the async executor, a pass claims only entries pending past min_idle_ms: a stream with
    none is skipped, found with one XPENDING per stream in one pipeline (per node on a cluster)
    rather than a pass each (which may first wait for the reader's blocking read to give its
    slots back). An RQ pass also looks after its jobs: every stream gets one.
    """
    if executor_kind != "async" or len(streams) < 2:
        return streams
    pipe = view.redis.pipeline(transaction=False)
    for stream in streams:
        pipe.xpending_range(stream, view.group, min="-", max="+", count=1, idle=min_idle_ms(view.config))
    found = await pipe.execute(raise_on_error=False)
    return [stream for stream, rows in zip(streams, found, strict=True) if rows]  # an error: the pass reports it


def min_idle_ms(config: PoolConfig) -> int:
    """No entry is due before half the base backoff: XPENDING's IDLE filter skips the rest."""
    return max(1, int(config.backoff_base_s * 1000 / 2))


def needed_idle_ms(view: Claimer, row: Any, *, peer_wait: bool, paused_runs: int = 0) -> int:
    """The idle time after which a pending row is due: its backoff, or a peer's takeover time.

    The backoff leaves the entry's paused runs out. Never under min_idle_ms (a paused entry's
    backoff is 0): XCLAIM's min idle must stay above that of an entry another consumer just claimed.
    """
    entry_id, attempts_done = text(row["message_id"]), int(row["times_delivered"]) - paused_runs
    if peer_wait and text(row["consumer"]) != view.consumer:
        needed = peer_claim_idle_ms(view.config, attempts_done, entry_id, view.claim_margin_s)
    else:
        needed = pool_backoff_ms(view.config, attempts_done, entry_id)
    return max(needed, min_idle_ms(view.config))


async def paused_runs(view: Claimer, stream: str, rows: list[Any]) -> list[int]:
    """Per XPENDING row, how many of its runs ended Paused (one round trip when there are any)."""
    key = view.outcomes.part(stream).uncounted(view.name)
    if not rows or not await view.redis.exists(key):
        return [0] * len(rows)
    found: Any = await view.redis.hmget(key, [text(r["message_id"]) for r in rows])
    return [int(n or 0) for n in found]


async def due_entries(view: Claimer, stream: str, limit: int) -> list[Due]:
    """Up to `limit` pending entries of `stream` past their backoff (a peer's: past its takeover time)."""
    due: list[Due] = []
    async for rows in pending_pages(view.redis, stream, view.group, idle_ms=min_idle_ms(view.config)):
        for row, paused in zip(rows, await paused_runs(view, stream, rows), strict=True):
            entry_id = text(row["message_id"])
            if view.busy(stream, entry_id) or (view.own_entries_only and text(row["consumer"]) != view.consumer):
                continue  # an ordered pool takes peers' entries over by adopting them (ordering.py)
            needed = needed_idle_ms(view, row, peer_wait=True, paused_runs=paused)
            if int(row["time_since_delivered"]) >= needed:
                due.append((entry_id, int(row["times_delivered"]), needed))
                if len(due) >= limit:
                    return due
    return due


async def not_deferred(view: Claimer, stream: str, due: list[Due]) -> list[Due]:
    """Drop entries whose failed attempt recorded a retry time still in the future."""
    key = view.outcomes.part(stream).retry_at(view.name)
    if not due or not await view.redis.exists(key):
        return due
    retry_at: Any = await view.redis.hmget(key, [entry_id for entry_id, _, _ in due])
    now_ms = view.now_ms()
    return [d for d, at in zip(due, retry_at, strict=True) if at is None or int(at) <= now_ms]


async def claim(view: Claimer, stream: str, due: list[Due], *, next_attempt: bool = True) -> int:
    """Claim the due entries and start them; return how many started.

    `next_attempt`: XCLAIM counts a delivery (the next attempt). Without it (an attempt whose
    RQ job was lost before it was enqueued) JUSTID takes the entry over without counting one.
    The caller holds slots for them (reserved): every claimed entry is started before any
    further await, so the reader cannot take their slots in between.
    """
    if not due:
        return 0
    ids: list[Any] = [entry_id for entry_id, _, _ in due]
    # The smallest idle any of them needed: an entry another consumer claimed meanwhile
    # has an idle time near zero, so it is not taken twice.
    min_idle = min(n for _, _, n in due)
    fields_by_id: dict[str, Any] = {}
    if next_attempt:
        claimed: Any = await view.redis.xclaim(stream, view.group, view.consumer, min_idle_time=min_idle,
                                               message_ids=ids)
        fields_by_id = {text(e): f for e, f in claimed if f is not None}
    else:
        claimed = await view.redis.xclaim(stream, view.group, view.consumer, min_idle_time=min_idle,
                                          message_ids=ids, justid=True)
        for entry_id in claimed:
            rows: Any = await view.redis.xrange(stream, min=entry_id, max=entry_id)
            if rows:
                fields_by_id[text(entry_id)] = rows[0][1]
    started = 0
    for entry_id, delivered, _ in due:
        fields = fields_by_id.get(entry_id)
        if fields is None:
            continue
        if view.slots.running >= view.slots.capacity:
            continue  # concurrency was lowered meanwhile: it stays pending, claimed again later
        view.start(Entry(stream, entry_id, fields, delivered + 1 if next_attempt else delivered))
        started += 1
    for entry_id, delivered, _ in due:
        if entry_id not in fields_by_id and not await view.redis.xrange(stream, min=entry_id, max=entry_id):
            await view.outcomes.trimmed(stream, entry_id, delivered)
    return started
