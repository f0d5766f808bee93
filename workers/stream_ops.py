"""Small stream operations the engine, the dead-letter queue and replay share."""

from __future__ import annotations

from collections.abc import Mapping
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


async def ensure_groups(redis: aioredis.Redis, streams: list[str], group: str) -> None:
    """ensure_group for each of a pool's streams (one per partition), in one pipeline (per node on a cluster)."""
    pipe = redis.pipeline(transaction=False)
    for stream in streams:
        pipe.xgroup_create(stream, group, id="0", mkstream=True)
    for result in await pipe.execute(raise_on_error=False):
        if isinstance(result, ResponseError) and "BUSYGROUP" not in str(result):
            raise result


def id_ms(entry_id: bytes | str) -> int:
    """The millisecond timestamp part of a stream entry id."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
