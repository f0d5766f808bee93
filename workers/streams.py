"""Small stream operations the pool, the dead-letter queue and replay share."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bus.envelope import F_ID
from bus.keys import Keys

# Stream entry fields as redis-py returns them (bytes keys and values).
Fields = Mapping[Any, Any]


async def ensure_group(redis: aioredis.Redis, keys: Keys, pool: str) -> None:
    """Create the pool's stream and consumer group at id 0 if missing (the publish script does the same)."""
    try:
        await redis.xgroup_create(keys.stream(pool), keys.group(pool), id="0", mkstream=True)
    except ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


def id_ms(entry_id: bytes | str) -> int:
    """The millisecond timestamp part of a stream entry id."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


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
