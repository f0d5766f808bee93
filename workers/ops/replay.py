"""Replay: publish again the entries still in a pool's stream (`fanout replay`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from bus.envelope import F_ID
from bus.keys import Keys
from workers.stream_ops import ensure_group, text


async def replay_entries(
    redis: aioredis.Redis, keys: Keys, pool: str, *, since: datetime | None = None,
    event_id: str | None = None, page_size: int = 1000,
) -> list[str]:
    """Publish again, with a fresh attempt count, the entries still in the pool's stream.

    `since` selects entries received at or after that time; `event_id` selects one
    Stripe event (the stream is scanned, so this is linear in its length).
    """
    if (since is None) == (event_id is None):
        raise ValueError("give exactly one of since or event_id")
    await ensure_group(redis, keys, pool)
    stream = keys.stream(pool)
    start = f"{int(since.timestamp() * 1000)}-0" if since is not None else "-"
    # Stop at the current end, so the copies we add are not read back and copied again.
    last: Any = await redis.xrevrange(stream, count=1)
    if not last:
        return []
    end = text(last[0][0])
    added: list[str] = []
    while True:
        page: Any = await redis.xrange(stream, min=start, max=end, count=page_size)
        for _, fields in page:
            if event_id is not None and text(fields.get(F_ID.encode())) != event_id:
                continue
            added.append(text(await redis.xadd(stream, dict(fields))))
        if len(page) < page_size:
            return added
        start = "(" + text(page[-1][0])
