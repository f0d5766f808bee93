"""Trim a pool's stream by age (XTRIM MINID), never past a pending or undelivered entry; prune consumers.

A tight MAXLEN would drop entries no consumer has seen yet when a pool falls
behind. Trimming by age below the oldest pending entry and below the first
undelivered one keeps every entry that still has work to do.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from bus import defaults
from workers.stream_ops import text

log = structlog.get_logger("fanout.worker")


def _parse(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def trim_bound(now_ms: int, retention_s: int, oldest_pending: str | None, last_delivered: str | None) -> str:
    """The MINID to trim to: the age bound, lowered to keep pending and undelivered entries."""
    bound = (now_ms - retention_s * 1000, 0)
    if oldest_pending:
        bound = min(bound, _parse(oldest_pending))
    if last_delivered:
        ms, seq = _parse(last_delivered)
        bound = min(bound, (ms, seq + 1))
    return f"{max(bound[0], 0)}-{bound[1]}"


async def trim_once(redis: aioredis.Redis, stream: str, group: str, *, retention_s: int, now_ms: int) -> int:
    """Trim `stream` by `retention_s`; return how many entries were removed."""
    groups: Any = await redis.xinfo_groups(stream)
    ours = next((g for g in groups if text(g["name"]) == group), None)
    last_delivered = text(ours["last-delivered-id"]) if ours else None
    summary: Any = await redis.xpending(stream, group)
    oldest_pending = text(summary["min"]) if summary and summary.get("pending") else None
    bound = trim_bound(now_ms, retention_s, oldest_pending, last_delivered)
    removed = int(await redis.xtrim(stream, minid=bound, approximate=False))
    await prune_consumers(redis, stream, group)
    return removed


async def prune_consumers(redis: aioredis.Redis, stream: str, group: str) -> None:
    """Remove consumers that hold nothing and have not been seen for a long time (killed processes)."""
    consumers: Any = await redis.xinfo_consumers(stream, group)
    for consumer in consumers:
        idle_s = int(consumer["idle"]) / 1000
        if int(consumer["pending"]) == 0 and idle_s > defaults.CONSUMER_PRUNE_IDLE_S:
            await redis.xgroup_delconsumer(stream, group, consumer["name"])


async def leave_groups(redis: aioredis.Redis, streams: list[str], group: str, consumer: str) -> None:
    """Remove a stopping consumer from the group of each stream where it holds nothing (so status counts
    live consumers): two pipelines, rather than two round trips per stream."""
    try:
        pipe = redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xpending_range(stream, group, min="-", max="+", count=1, consumername=consumer)
        held = await pipe.execute(raise_on_error=False)
        pipe = redis.pipeline(transaction=False)
        for stream, rows in zip(streams, held, strict=True):
            if not rows:  # an error is not empty: that stream keeps this consumer
                pipe.xgroup_delconsumer(stream, group, consumer)
        results = [*held, *await pipe.execute(raise_on_error=False)]
    except RedisError as err:
        results = [err]
    for failure in [r for r in results if isinstance(r, Exception)][:1]:
        log.warning("pool.leave_failed", consumer=consumer, error=f"{type(failure).__name__}: {failure}")

