"""Page through a consumer group's pending list (XPENDING), RECLAIM_PAGE_SIZE rows at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from bus import defaults
from workers.stream_ops import text


async def pending_pages(
    redis: aioredis.Redis, stream: str, group: str, *, idle_ms: int | None = None,
    page_size: int = defaults.RECLAIM_PAGE_SIZE,
) -> AsyncIterator[list[Any]]:
    """Each page of the pending list, oldest first; with `idle_ms`, only entries idle that long.

    The caller stops iterating once it has what it wants; nothing is read past that page.
    """
    start = "-"
    while True:
        rows: Any = await redis.xpending_range(stream, group, min=start, max="+", count=page_size,
                                               idle=idle_ms)
        if rows:
            yield rows
        if len(rows) < page_size:
            return
        start = "(" + text(rows[-1]["message_id"])
