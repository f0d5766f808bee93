"""Trim a pool's stream by age (XTRIM MINID), never past an entry that is pending or undelivered.

A tight MAXLEN would drop entries no consumer has seen yet when a pool falls
behind. Trimming by age below the oldest pending entry and below the first
undelivered one keeps every entry that still has work to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bus import defaults
from workers.streams import text

if TYPE_CHECKING:
    from workers.pool import Pool


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


async def trim_once(pool: Pool) -> int:
    """Trim the pool's stream by its retention_s; return how many entries were removed."""
    groups: Any = await pool.redis.xinfo_groups(pool.stream)
    ours = next((g for g in groups if text(g["name"]) == pool.group), None)
    last_delivered = text(ours["last-delivered-id"]) if ours else None
    summary: Any = await pool.redis.xpending(pool.stream, pool.group)
    oldest_pending = text(summary["min"]) if summary and summary.get("pending") else None
    bound = trim_bound(pool.now_ms(), pool.config.retention_s, oldest_pending, last_delivered)
    removed = int(await pool.redis.xtrim(pool.stream, minid=bound, approximate=False))
    await prune_consumers(pool)
    return removed


async def prune_consumers(pool: Pool) -> None:
    """Remove consumers that hold nothing and have not been seen for a long time (killed processes)."""
    consumers: Any = await pool.redis.xinfo_consumers(pool.stream, pool.group)
    for consumer in consumers:
        idle_s = int(consumer["idle"]) / 1000
        if int(consumer["pending"]) == 0 and idle_s > defaults.CONSUMER_PRUNE_IDLE_S:
            await pool.redis.xgroup_delconsumer(pool.stream, pool.group, consumer["name"])
