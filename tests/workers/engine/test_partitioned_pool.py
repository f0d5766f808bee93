"""A pool with FANOUT_PARTITIONS=4 on the single Redis: every partition read, its own keys, resize and drain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from bus.partitions import Layout, claim_layout, event_partition, read_layout
from bus.reload import RoutingHolder
from bus.resize import resize
from ingress.parse import routing_fields
from tests.conftest import make_settings
from tests.support import (
    FAST_POOL,
    H,
    event_body,
    load,
    publish_many,
    runs,
    wait_for,
    write_routing,
)
from workers.engine.consumer import Consumer
from workers.ops.deadletter import list_dead
from workers.ops.replay import replay_dead_entries, replay_stream
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.retry: {{alpha: ["{H}fail_twice", "{H}record"]}}
  test.permanent: {{alpha: ["{H}permanent", "{H}record"]}}
  test.defer: {{alpha: ["{H}defer_once"]}}
  test.many: {{alpha: ["{H}record"]}}
"""


@pytest.fixture
def routing(tmp_path: Path) -> Path:
    return write_routing(tmp_path, ROUTING)


def partition(event_id: str, partitions: int, event_type: str = "test.many") -> int:
    return event_partition(routing_fields(event_body(event_id, event_type)), partitions)


async def pending_by_partition(redis: aioredis.Redis, keys: Keys, pool: str) -> list[int]:
    out = []
    for stream in keys.streams(pool):
        summary = await redis.xpending(stream, keys.group(pool))
        out.append(int(summary["pending"]))
    return out


async def summed_stats(redis: aioredis.Redis, keys: Keys, pool: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for p in range(keys.partitions):
        for k, v in (await redis.hgetall(keys.pool_stats(pool, p))).items():
            total[k.decode()] = total.get(k.decode(), 0) + int(v)
    return total


async def test_retries_and_dead_letters_use_the_keys_of_each_entry_s_partition(
    aredis: aioredis.Redis, prefix: str, routing: Path
) -> None:
    keys = Keys(prefix, 4)
    settings = make_settings(prefix, routing_file=routing, FANOUT_PARTITIONS="4")
    table = load(routing)
    retry_ids = [f"evt_r{i}" for i in range(12)]
    dead_ids = [f"evt_d{i}" for i in range(8)]
    await publish_many(aredis, keys, table, "test.retry", retry_ids)
    await publish_many(aredis, keys, table, "test.permanent", dead_ids)
    used = {partition(e, 4, "test.retry") for e in retry_ids} | {partition(e, 4, "test.permanent") for e in dead_ids}
    assert used == {0, 1, 2, 3}, "the events must cover every partition for this test to mean anything"

    await run_pool(settings, "alpha", redis=aredis, burst=True)

    assert await runs(aredis, prefix, "fail_twice") == dict.fromkeys(retry_ids, 3)
    assert await runs(aredis, prefix, "record") == dict.fromkeys(retry_ids + dead_ids, 1)
    assert await pending_by_partition(aredis, keys, "alpha") == [0, 0, 0, 0]
    assert await summed_stats(aredis, keys, "alpha") == {"processed": 12, "failed": 24 + 8, "retried": 24,
                                                         "dead": 8}
    # Each dead letter is in its event's partition, with the counters of that partition.
    for p in range(4):
        dead_here = [f.decode() for _, f in
                     [(i, fl[b"id"]) for i, fl in await aredis.xrange(keys.dead("alpha", p))]]
        assert sorted(dead_here) == sorted(e for e in dead_ids if partition(e, 4, "test.permanent") == p)
        assert not await aredis.exists(Keys(prefix).retry_at("alpha"))  # nothing under the {prefix} tag
    dead = await list_dead(aredis, keys, "alpha")
    assert sorted(d.event_id for d in dead) == sorted(dead_ids)
    assert [d.id for d in dead] == sorted((d.id for d in dead),
                                          key=lambda i: tuple(int(x) for x in i.split("-")))

    # Replay puts every dead letter back in its own partition's stream; the handler that
    # succeeded (record) stays done.
    result = await replay_dead_entries(aredis, keys, "alpha")
    assert len(result.added) == 8 and result.missing == []
    for p in range(4):
        assert await aredis.xlen(keys.dead("alpha", p)) == 0
        tail = await aredis.xrange(keys.stream("alpha", p), min="-", max="+")
        replayed = {f[b"id"].decode() for _, f in tail if f.get(b"replay_of")}
        assert replayed == {e for e in dead_ids if partition(e, 4, "test.permanent") == p}


async def test_a_deferred_retry_waits_on_the_retry_time_of_its_partition(
    aredis: aioredis.Redis, prefix: str, routing: Path
) -> None:
    keys = Keys(prefix, 4)
    settings = make_settings(prefix, routing_file=routing, FANOUT_PARTITIONS="4")
    ids = [f"evt_defer{i}" for i in range(8)]
    await publish_many(aredis, keys, load(routing), "test.defer", ids)
    pool = Consumer(settings, "alpha", redis=aredis, holder=RoutingHolder.load(routing), block_ms=50)
    task = asyncio.create_task(pool.run())
    try:
        async def all_deferred() -> bool:
            return sum([await aredis.hlen(keys.retry_at("alpha", p)) for p in range(4)]) == len(ids)

        await asyncio.wait_for(wait_for(all_deferred, poll_s=0.01), 5)
        for p in range(4):  # each retry time is in the hash of its entry's partition
            assert await aredis.hlen(keys.retry_at("alpha", p)) == sum(partition(e, 4, "test.defer") == p
                                                                         for e in ids)

        async def done() -> bool:
            return await runs(aredis, prefix, "defer_once") == dict.fromkeys(ids, 2)

        await asyncio.wait_for(wait_for(done), 10)
    finally:
        pool.request_stop()
        await asyncio.wait_for(task, 10)
    assert await pending_by_partition(aredis, keys, "alpha") == [0, 0, 0, 0]
    assert [await aredis.hlen(keys.retry_at("alpha", p)) for p in range(4)] == [0, 0, 0, 0]


async def test_replay_since_covers_every_partition(aredis: aioredis.Redis, prefix: str, routing: Path) -> None:
    keys = Keys(prefix, 4)
    ids = [f"evt_rp{i}" for i in range(20)]
    await publish_many(aredis, keys, load(routing), "test.many", ids)
    from datetime import UTC, datetime

    result = await replay_stream(aredis, keys, "alpha", since=datetime.fromtimestamp(0, UTC))
    assert len(result.added) == 20
    copies = 0
    for p in range(4):
        entries = await aredis.xrange(keys.stream("alpha", p))
        originals = [f[b"id"].decode() for _, f in entries if not f.get(b"replay_of")]
        assert all(partition(e, 4) == p for e in originals)
        copies += sum(1 for _, f in entries if f.get(b"replay_of"))
    assert copies == 20


@pytest.mark.parametrize("after", [8, 2])
async def test_a_resize_with_entries_pending_processes_every_event_and_drops_the_old_layout(
    aredis: aioredis.Redis, prefix: str, routing: Path, after: int
) -> None:
    """4 -> 8 shares partitions 0-3 (nothing to drain); 4 -> 2 drains partitions 2 and 3 first."""
    table = load(routing)
    await claim_layout(aredis, prefix, 4)
    before = [f"evt_old{i}" for i in range(60)]
    await publish_many(aredis, Keys(prefix, 4), table, "test.many", before)
    # Half of them were read (pending, unacked) by a consumer that died.
    for stream in Keys(prefix, 4).streams("alpha"):
        await aredis.xreadgroup("alpha", "dead-consumer", {stream: ">"}, count=8)
    await resize(aredis, prefix, after)
    newer = [f"evt_new{i}" for i in range(40)]
    await publish_many(aredis, Keys(prefix, after), table, "test.many", newer)

    settings = make_settings(prefix, routing_file=routing, FANOUT_PARTITIONS=str(after))
    pool = Consumer(settings, "alpha", redis=aredis, holder=RoutingHolder.load(routing), block_ms=50,
                    claim_margin_s=0.0, trim_interval_s=0.1)
    task = asyncio.create_task(pool.run())
    try:
        async def done() -> bool:
            layout = await read_layout(aredis, prefix)
            return (await runs(aredis, prefix, "record") == dict.fromkeys(before + newer, 1)
                    and layout == Layout(after))

        await asyncio.wait_for(wait_for(done), 20)
        assert pool.streams == list(Keys(prefix, after).streams("alpha"))  # the drained streams are no longer read
    finally:
        pool.request_stop()
        await asyncio.wait_for(task, 10)
    for stream in {*Keys(prefix, 4).streams("alpha"), *Keys(prefix, after).streams("alpha")}:
        summary = await aredis.xpending(stream, "alpha")
        assert int(summary["pending"]) == 0, stream


async def test_a_running_consumer_follows_a_resize_before_its_next_trim_pass(
    aredis: aioredis.Redis, prefix: str, routing: Path
) -> None:
    """The layout check (LAYOUT_CHECK_S), not the trim pass, makes a consumer read the new streams."""
    settings = make_settings(prefix, routing_file=routing, FANOUT_PARTITIONS="4")
    pool = Consumer(settings, "alpha", redis=aredis, holder=RoutingHolder.load(routing), block_ms=50,
                    trim_interval_s=3600)
    task = asyncio.create_task(pool.run())
    try:
        async def reads(partitions: int) -> bool:
            return pool.streams == list(Keys(prefix, partitions).streams("alpha"))

        await asyncio.wait_for(wait_for(lambda: reads(4)), 5)
        await resize(aredis, prefix, 8)  # what `fanout partitions resize 8` runs
        newer = [f"evt_grown{i}" for i in range(40)]
        assert {partition(e, 8) for e in newer} >= {4, 5, 6, 7}, "some events must land in the new partitions"
        await publish_many(aredis, Keys(prefix, 8), load(routing), "test.many", newer)

        async def followed() -> bool:
            return await reads(8) and await runs(aredis, prefix, "record") == dict.fromkeys(newer, 1)

        await asyncio.wait_for(wait_for(followed), 10)
    finally:
        pool.request_stop()
        await asyncio.wait_for(task, 10)
