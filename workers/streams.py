"""Small stream operations the pool, the dead-letter queue and replay share."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

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
    """Publish events of the pool's stream again, each once; the new ids. See workers/replay.py."""
    from workers.replay import replay_stream  # it builds on this module

    result = await replay_stream(redis, keys, pool, since=since, event_id=event_id, page_size=page_size)
    return result.added
