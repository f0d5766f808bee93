"""Per-partition figures of a pool's streams (length, pending, lag), and counters summed over partitions.

`fanout status` shows these per pool; the console and KEDA-style scalers can use them
directly. Every figure is read from Redis, so it holds across processes.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from bus.keys import Keys


def _name(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _figures(redis: Any, stream: str, group: str) -> tuple[dict[str, int | None], Any]:
    """stream_figures, and the group's XINFO GROUPS row (None when the stream or the group is missing)."""
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet
        return {"length": 0, "pending": 0, "lag": 0}, None
    length = int(await redis.xlen(stream))
    ours = next((g for g in groups if _name(g["name"]) == group), None)
    if ours is None:
        return {"length": length, "pending": 0, "lag": length}, None
    lag = ours.get("lag")
    return {"length": length, "pending": int(ours["pending"]), "lag": int(lag) if lag is not None else None}, ours


async def stream_figures(redis: Any, stream: str, group: str) -> dict[str, int | None]:
    """{length, pending, lag} of one stream for one consumer group; zeros for a missing stream.

    `lag` is None when Redis cannot tell (entries were deleted past the group's position).
    """
    figures, _ = await _figures(redis, stream, group)
    return figures


async def group_figures(redis: Any, stream: str, group: str, now_ms: int) -> dict[str, Any]:
    """stream_figures, plus the group's `consumers` and `oldest_pending_s` (None when nothing is pending).

    One partition's figures as the worker metrics and the console show them.
    """
    figures, ours = await _figures(redis, stream, group)
    out: dict[str, Any] = {**figures, "consumers": 0, "oldest_pending_s": None}
    if ours is None:
        return out
    out["consumers"] = int(ours["consumers"])
    if figures["pending"]:
        summary: Any = await redis.xpending(stream, group)
        if summary["min"] is not None:
            oldest_ms = int(_name(summary["min"]).split("-")[0])
            out["oldest_pending_s"] = round(max(0, now_ms - oldest_ms) / 1000, 3)
    return out


async def partition_figures(redis: Any, keys: Keys, pool: str) -> dict[str, dict[str, int | None]]:
    """{"0": {length, pending, lag}, "1": ...} for every partition of the pool's stream."""
    return {str(p): await stream_figures(redis, keys.stream(pool, p), keys.group(pool))
            for p in range(keys.partitions)}


async def summed_counters(redis: Any, hashes: list[str]) -> dict[str, int]:
    """Counter hashes (one per partition) added up field by field."""
    total: dict[str, int] = {}
    for key in hashes:
        values: Any = await redis.hgetall(key)
        for field, value in values.items():
            total[_name(field)] = total.get(_name(field), 0) + int(value)
    return total


def totals(figures: dict[str, dict[str, int | None]]) -> dict[str, int | None]:
    """A pool's stream_length, pending and lag over all its partitions (lag None if any is unknown)."""
    lags = [f["lag"] for f in figures.values()]
    return {
        "stream_length": sum(int(f["length"] or 0) for f in figures.values()),
        "pending": sum(int(f["pending"] or 0) for f in figures.values()),
        "lag": None if any(lag is None for lag in lags) else sum(int(lag or 0) for lag in lags),
    }
