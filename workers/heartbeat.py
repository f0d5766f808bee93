"""Which consumers of a pool are alive: each worker process refreshes its own heartbeat.

Group membership cannot tell: a consumer stays in the group while it holds
pending entries (and until pruned, an hour later), and a killed one never
leaves. So each `Consumer.run` (workers/engine/consumer.py) keeps one member of a sorted set per pool, the
consumer's name scored with the last time it was seen (ms), refreshed every
HEARTBEAT_INTERVAL_S. Members not seen for HEARTBEAT_STALE_S are not counted
and are pruned by the next beat of any live peer. A consumer that stops
normally removes itself at once; a killed one drops out within HEARTBEAT_STALE_S.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from bus import defaults

log = structlog.get_logger("fanout.worker")


async def beat(redis: aioredis.Redis, key: str, consumer: str, now_ms: int,
               stale_ms: int = int(defaults.HEARTBEAT_STALE_S * 1000)) -> None:
    """Mark `consumer` seen now and prune members that have not been seen for `stale_ms`."""
    pipe = redis.pipeline(transaction=False)
    pipe.zadd(key, {consumer: now_ms})
    pipe.zremrangebyscore(key, "-inf", now_ms - stale_ms)
    # A pool whose every worker was killed leaves no key behind for long.
    pipe.pexpire(key, stale_ms * 2)
    await pipe.execute()


async def leave(redis: aioredis.Redis, key: str, consumer: str) -> None:
    """A consumer that stops normally stops being counted at once."""
    try:
        await redis.zrem(key, consumer)
    except RedisError as err:  # it then drops out within HEARTBEAT_STALE_S
        log.warning("pool.leave_failed", consumer=consumer, error=f"{type(err).__name__}: {err}")


async def live_count(redis: aioredis.Redis, key: str, now_ms: int,
                     stale_ms: int = int(defaults.HEARTBEAT_STALE_S * 1000)) -> int:
    """How many consumers were seen within `stale_ms` of `now_ms`."""
    return int(await redis.zcount(key, now_ms - stale_ms, "+inf"))


async def keep_beating(redis: aioredis.Redis, key: str, consumer: str, clock: Callable[[], float],
                       stopping: Callable[[], bool], interval_s: float = defaults.HEARTBEAT_INTERVAL_S) -> None:
    """Beat every `interval_s` until the consumer is stopping; a Redis error is logged and the next beat tried.

    It ends on `stopping`, not only when cancelled: redis-py can turn the cancellation of a beat in
    flight into a ConnectionError (or swallow it), and a loop that then slept and beat on would
    hold the consumer's shutdown forever (seen: a SIGTERMed worker that never exited).
    """
    while True:
        try:
            await beat(redis, key, consumer, int(clock() * 1000))
        except RedisError as err:
            if not stopping():
                log.warning("pool.heartbeat_failed", consumer=consumer, error=f"{type(err).__name__}: {err}")
        if stopping():
            return
        await asyncio.sleep(interval_s)
