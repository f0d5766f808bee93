"""What a consumer does once per stream, for many partitions at once: groups, leaving, the reclaim sweep."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bus.keys import Keys
from bus.routing import PoolConfig
from workers.engine import reclaim
from workers.engine.retention import leave_groups
from workers.stream_ops import ensure_groups

pytestmark = pytest.mark.anyio

POOL = "p"


async def test_groups_are_created_once_on_every_stream_and_a_wrong_key_is_reported(
    aredis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix, 4)
    streams = list(keys.streams(POOL))
    await ensure_groups(aredis, streams[:2], keys.group(POOL))
    await ensure_groups(aredis, streams, keys.group(POOL))  # BUSYGROUP on the first two is fine
    for stream in streams:
        assert [g["name"] for g in await aredis.xinfo_groups(stream)] == [keys.group(POOL).encode()]
    await aredis.set(keys.stream("other", 1), "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await ensure_groups(aredis, list(keys.streams("other")), keys.group("other"))


async def test_a_stopping_consumer_leaves_the_groups_where_it_holds_nothing(aredis: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix, 3)
    streams = list(keys.streams(POOL))
    group = keys.group(POOL)
    await ensure_groups(aredis, streams, group)
    for stream in streams:
        await aredis.xadd(stream, {"id": "evt"})
        await aredis.xreadgroup(group, "me", {stream: ">"}, count=1)
        await aredis.xreadgroup(group, "peer", {stream: "0"}, count=1)  # the peer exists, holds nothing
    rows: Any = await aredis.xpending_range(streams[1], group, min="-", max="+", count=1)
    await aredis.xack(streams[1], group, rows[0]["message_id"])
    await leave_groups(aredis, streams, group, "me")
    names = [sorted(c["name"] for c in await aredis.xinfo_consumers(s, group)) for s in streams]
    assert names == [[b"me", b"peer"], [b"peer"], [b"me", b"peer"]], "kept where it still holds an entry"


async def test_a_reclaim_sweep_passes_over_streams_with_nothing_pending_past_the_min_idle(
    aredis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix, 4)
    streams = list(keys.streams(POOL))
    group = keys.group(POOL)
    await ensure_groups(aredis, streams, group)
    for stream in streams[1:]:
        await aredis.xadd(stream, {"id": "evt"})
    await aredis.xreadgroup(group, "c", {streams[1]: ">", streams[2]: ">"}, count=1)  # stream 3: undelivered
    config = PoolConfig(POOL, backoff_base_s=0.02)
    view: Any = SimpleNamespace(redis=aredis, group=group, config=config)
    await asyncio.sleep(3 * reclaim.min_idle_ms(config) / 1000)
    await aredis.xadd(streams[0], {"id": "late"})
    await aredis.xreadgroup(group, "c", {streams[0]: ">"}, count=1)  # pending, but not idle long enough
    assert await reclaim.streams_to_sweep(view, streams, "async") == streams[1:3]
    assert await reclaim.streams_to_sweep(view, streams, "rq") == streams, "an RQ pass looks after its jobs"
    assert await reclaim.streams_to_sweep(view, streams[:1], "async") == streams[:1], "one stream: no extra look"


async def test_a_waiter_whose_cancelled_xread_comes_back_as_a_connection_error_still_ends_on_close() -> None:
    # redis-py may answer the cancellation of a blocked XREAD with ConnectionError while it drops the
    # connection; the waiter must not take that for a failed read and wait for its next turn forever.
    from redis.exceptions import ConnectionError as RedisConnectionError

    from workers.engine.reader import StreamReader

    class BlockedRedis:
        async def xread(self, *args: object, **kwargs: object) -> object:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise RedisConnectionError("Connection closed by server.") from None
            return None

    reader = StreamReader(BlockedRedis(), "g", "c", ["s"], block_ms=1000)  # type: ignore[arg-type]
    reader._arm("s")
    await asyncio.sleep(0.05)
    [waiter] = reader._waiters.values()
    await reader.close()
    assert waiter.done()
