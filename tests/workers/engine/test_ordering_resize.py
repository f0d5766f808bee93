"""An ordered pool follows `fanout partitions resize` without a restart, behind the resize barrier:
every entry published before the resize ends before any published after it starts, so each
object's order holds although its partition changed (workers/engine/barrier.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from bus.partitions import claim_layout, partition_of
from bus.reload import RoutingHolder
from bus.resize import boundary_key, resize
from tests.conftest import make_settings
from tests.handlers_for_tests import ordered_key
from tests.support import load, wait_for, write_routing
from tests.workers.engine.test_ordering import (
    ROUTING,
    assert_no_overlap,
    done_order,
    publish_interleaved,
    times,
)
from workers.engine.consumer import Consumer
from workers.engine.lease import StreamLease

pytestmark = pytest.mark.anyio

PHASE = 8  # events per object before the resize, and after it


async def resize_mid_way(client: Any, prefix: str, tmp_path: Path, before: int, after: int, **env: str) -> None:
    """30 objects x 8 events under `before` partitions, a resize to `after` while an ordered consumer
    started with the old count runs them, 8 more each under `after`: every object in order, and
    nothing newer started before everything older ended."""
    routing = write_routing(tmp_path, ROUTING.replace("ordered_run", "ordered_slow"))
    table = load(routing)
    objects = [f"obj_{i:02d}" for i in range(30)]
    assert any(partition_of(o, before) != partition_of(o, after) for o in objects)
    await claim_layout(client, prefix, before)
    await publish_interleaved(client, Keys(prefix, before), table, objects, PHASE)
    settings = make_settings(prefix, routing_file=routing, FANOUT_PARTITIONS=str(before), **env)
    # Started with the old count: it notices the new layout at its trim pass.
    pool = Consumer(settings, "ordered", redis=client, holder=RoutingHolder.load(routing), trim_interval_s=0.1)
    task = asyncio.create_task(pool.run())
    try:
        await asyncio.wait_for(wait_for(lambda: client.llen(ordered_key(prefix, "times"))), 10)
        await resize(client, prefix, after)
        resized_at = len(await times(client, prefix))
        await publish_interleaved(client, Keys(prefix, after), table, objects, PHASE, first=PHASE)

        async def all_done() -> bool:
            return all([len(await done_order(client, prefix, o)) == 2 * PHASE for o in objects])

        await asyncio.wait_for(wait_for(all_done), 40)
        assert pool.streams[:after] == list(Keys(prefix, after).streams("ordered"))  # followed, no restart
    finally:
        pool.request_stop()
        await asyncio.wait_for(task, 10)
    rows = await times(client, prefix)
    assert resized_at < len([r for r in rows if r[1] < PHASE]), "the resize came mid-way"
    for obj in objects:
        assert await done_order(client, prefix, obj) == list(range(2 * PHASE)), obj
    assert_no_overlap(rows)
    older_end = max(end for _, seq, _, end in rows if seq < PHASE)
    newer_start = min(start for _, seq, start, _ in rows if seq >= PHASE)
    assert newer_start >= older_end
    for stream in {*Keys(prefix, before).streams("ordered"), *Keys(prefix, after).streams("ordered")}:
        assert int((await client.xpending(stream, "ordered"))["pending"]) == 0, stream


@pytest.mark.parametrize("after", [6, 2])
async def test_an_ordered_pool_follows_a_resize_and_starts_nothing_newer_before_everything_older_ended(
    aredis: aioredis.Redis, prefix: str, tmp_path: Path, after: int
) -> None:
    """4 -> 6 moves objects between shared streams and into new ones; 4 -> 2 drains partitions 2 and 3."""
    await resize_mid_way(aredis, prefix, tmp_path, 4, after)


async def test_a_read_stops_at_the_streams_resize_boundary_until_it_is_passed(
    aredis: aioredis.Redis, prefix: str
) -> None:
    stream = Keys(prefix).stream("ordered")
    await aredis.xgroup_create(stream, "ordered", id="0", mkstream=True)
    ids = [await aredis.xadd(stream, {"id": f"evt_{i}"}) for i in range(5)]
    await aredis.set(boundary_key(stream), ids[2])  # as a resize records it
    lease = StreamLease(aredis, stream, "ordered", "a", ttl_s=10)
    assert await lease.keep()

    async def read(count: int, passed: str = "") -> list[bytes]:
        reply = await lease.read("ordered", "a", count, passed)
        return [entry_id for _, entries in reply for entry_id, _ in entries]

    assert await read(2) == ids[:2]
    assert await read(10) == [ids[2]]  # not beyond the boundary
    assert await read(10) == []
    assert await read(10, passed=ids[2].decode()) == ids[3:]
