"""Trimming by age never removes an entry that is pending or not yet delivered."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from bus.reload import RoutingHolder
from tests.conftest import make_settings
from tests.support import H, write_routing
from workers.engine import retention
from workers.engine.consumer import Consumer
from workers.engine.retention import trim_bound
from workers.ops.deadletter import list_dead

ROUTING = f"""
pools:
  keep: {{concurrency: 4, max_attempts: 3, timeout_s: 1, backoff_base_s: 0.05, retention_s: 60}}
routes:
  test.x: {{keep: ["{H}record"]}}
"""


def test_trim_bound_is_the_lowest_of_age_oldest_pending_and_first_undelivered() -> None:
    assert trim_bound(100_000, 60, None, None) == "40000-0"
    assert trim_bound(100_000, 60, "30000-5", "90000-0") == "30000-5"
    assert trim_bound(100_000, 60, None, "20000-3") == "20000-4"


@pytest.mark.anyio
async def test_trim_by_age_keeps_pending_and_undelivered_entries(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    stream = keys.stream("keep")
    await aredis.xgroup_create(stream, "keep", id="0", mkstream=True)
    for ms in (1000, 2000, 3000, 4000, 5000):
        await aredis.xadd(stream, {"id": f"evt_{ms}", "handlers": H + "record", "body": "{}"}, id=f"{ms}-0")
    # 1000 and 2000 are acked, 3000 is pending with a consumer, 4000 and 5000 were never delivered.
    await aredis.xreadgroup("keep", "gone", {stream: ">"}, count=3)
    await aredis.xack(stream, "keep", "1000-0", "2000-0")
    clock_s = 10_000.0  # every entry is far older than retention_s
    pool = Consumer(make_settings(prefix, routing_file=routing), "keep", redis=aredis,
                holder=RoutingHolder.load(routing), clock=lambda: clock_s)
    assert await retention.trim_once(aredis, stream, pool.group, retention_s=pool.config.retention_s,
                                     now_ms=pool.now_ms()) == 2
    remaining = [e[0].decode() for e in await aredis.xrange(stream)]
    assert remaining == ["3000-0", "4000-0", "5000-0"]


@pytest.mark.anyio
async def test_pending_entry_deleted_anyway_is_dead_lettered_with_a_reason(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    stream = keys.stream("keep")
    await aredis.xgroup_create(stream, "keep", id="0", mkstream=True)
    await aredis.xadd(stream, {"id": "evt_1", "handlers": H + "record", "body": "{}"}, id="1000-0")
    await aredis.xreadgroup("keep", "gone", {stream: ">"}, count=1)
    # Its consumer is long gone (idle for an hour), and someone trimmed it by hand.
    await aredis.xclaim(stream, "keep", "gone", min_idle_time=0, message_ids=["1000-0"],
                        idle=3_600_000, justid=True)
    await aredis.xdel(stream, "1000-0")
    pool = Consumer(make_settings(prefix, routing_file=routing), "keep", redis=aredis,
                holder=RoutingHolder.load(routing))
    assert await pool.reclaim_once(stream) == 0
    await pool.outcomes.batch.flush()
    [dead] = await list_dead(aredis, keys, "keep")
    assert dead.reason == "entry trimmed from the stream while pending"
    assert int((await aredis.xpending(stream, "keep"))["pending"]) == 0
