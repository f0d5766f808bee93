"""A consumer's life, from its start to the last ack: what runs beside the reader, and in what order it stops.

Start: claim the partition layout (bus/partitions.py; a process started with another
FANOUT_PARTITIONS stops here), then the flusher of acks and counts, the reclaim and trim
passes, the layout check (a resize is followed within LAYOUT_CHECK_S), the heartbeat, the
routing watcher and, in an ordered pool, the lease keeper.

Stop (request_stop, the end of a burst, or an error in the reader): the background tasks
are cancelled first, so nothing new is claimed; in-flight entries finish within the grace
period (workers/engine/drain.py); then the flusher sends the last acks, the leases are
given up, and the consumer leaves its group and the heartbeats. The order matters: the
consumer leaves its group only when it holds no pending entry (retention.leave_group),
so the acks go first or it would stay listed, as a consumer that still owns work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from bus import defaults
from bus.keys import Keys
from bus.reload import RoutingHolder
from workers import heartbeat
from workers.engine import layout_watch, retention
from workers.engine.drain import drain
from workers.engine.executor import Executor
from workers.engine.follow import follow_routing
from workers.engine.ordering import Ordering
from workers.engine.outcomes import Outcomes
from workers.engine.periodic import every
from workers.engine.reader import StreamReader
from workers.handlers import HandlerSet
from workers.resources import Resources


class Lifecycle(layout_watch.LayoutFollower, Protocol):
    """What the lifecycle needs of a consumer (workers/engine/consumer.py)."""

    keys: Keys
    consumer: str
    clock: Callable[[], float]
    holder: RoutingHolder
    handlers: HandlerSet
    executor_kind: str
    executor: Executor
    outcomes: Outcomes
    ordering: Ordering | None
    reader: StreamReader
    resources: Resources
    inflight: dict[tuple[str, str], asyncio.Task[None]]
    trim_interval_s: float
    watch_routing: bool
    shutdown_grace_s: float
    threads: ThreadPoolExecutor | None
    burst: bool

    @property
    def concurrency(self) -> int: ...

    @property
    def stopping(self) -> bool: ...

    def mark_stopping(self) -> None: ...

    def reclaim_interval_s(self) -> float: ...

    async def reclaim(self) -> None: ...

    async def trim(self) -> None: ...

    async def read_loop(self) -> None: ...


async def run(c: Lifecycle) -> None:
    await layout_watch.claim_streams(c, lambda: c.stopping)  # PartitionMismatch: another count
    c.log.info("pool.started", concurrency=c.concurrency, burst=c.burst)
    flusher = asyncio.create_task(c.outcomes.batch.run(), name="flusher")
    background = _start_background(c)
    try:
        await c.read_loop()
    finally:
        c.mark_stopping()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await drain(lambda: list(c.inflight.values()), c.shutdown_grace_s, c.log)
        c.outcomes.batch.close()
        await flusher
        await _leave(c)
        c.log.info("pool.stopped")


def _start_background(c: Lifecycle) -> list[asyncio.Task[Any]]:
    def stopping() -> bool:
        return c.stopping

    def task(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return asyncio.create_task(coro, name=name)

    async def check_layout() -> None:  # named: every() logs a failing action by its name
        await layout_watch.check_layout(c)

    tasks = [
        task(every(c.reclaim_interval_s, c.reclaim, stopping, c.log), "reclaim"),
        task(every(lambda: c.trim_interval_s, c.trim, stopping, c.log), "trim"),
        task(every(lambda: defaults.LAYOUT_CHECK_S, check_layout, stopping, c.log), "layout-check"),
        task(heartbeat.keep_beating(c.redis, c.keys.heartbeats(c.name), c.consumer, c.clock, stopping), "heartbeat"),
    ]
    if c.watch_routing:
        tasks.append(task(follow_routing(c.holder, c.name, c.executor_kind, c.handlers, c.log), "routing-watch"))
    if c.ordering is not None:
        tasks.append(task(c.ordering.run(stopping), "leases"))
    return tasks


async def _leave(c: Lifecycle) -> None:
    """Give up what this consumer holds in Redis and in the process, once its acks are sent."""
    if c.ordering is not None:
        await c.ordering.close()
    await c.reader.close()
    await retention.leave_groups(c.redis, c.streams, c.group, c.consumer)
    await heartbeat.leave(c.redis, c.keys.heartbeats(c.name), c.consumer)
    if c.threads is not None:
        c.threads.shutdown(wait=False)
    c.executor.close()
    await c.resources.aclose()
