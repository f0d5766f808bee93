"""The partitions an operator command looks at: those of the recorded layout, draining ones included."""

from __future__ import annotations

import redis.asyncio as aioredis

from bus.keys import Keys
from bus.partitions import Layout, Partition, partitions_to_read, read_layout


async def pool_partitions(redis: aioredis.Redis, keys: Keys, pool: str) -> list[Partition]:
    """Every partition of `pool` that may hold entries or dead letters (`keys.partitions` if none recorded)."""
    layout = await read_layout(redis, keys.prefix) or Layout(keys.partitions)
    return partitions_to_read(layout, keys.prefix, pool)


def id_order(entry_id: str) -> tuple[int, int]:
    """Sort key of a stream id, to merge the entries of several streams oldest first."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
