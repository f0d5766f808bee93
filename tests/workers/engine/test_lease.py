"""The lease of an ordered pool's stream: one holder, reads fenced in Redis, starts fenced locally."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from bus.connection import async_redis
from bus.keys import Keys
from tests.redis_cluster import LocalCluster
from workers.engine.lease import START_SLACK_S, StreamLease
from workers.newest import NEWEST_SCRIPT

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_only_the_holder_reads_and_a_peer_takes_the_lease_once_it_is_let_go(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    stream = keys.stream("ordered")
    await aredis.xgroup_create(stream, "ordered", id="0", mkstream=True)
    await aredis.xadd(stream, {"id": "evt_1"})
    first = StreamLease(aredis, stream, "ordered", "a", ttl_s=10)
    second = StreamLease(aredis, stream, "ordered", "b", ttl_s=10)
    assert await first.keep() and not await second.keep()
    second.held = True  # even a consumer that wrongly believes it holds the lease reads nothing
    assert await second.read("ordered", "b", 10) == []
    second.held = False
    [(name, entries)] = await first.read("ordered", "a", 10)
    assert name == stream.encode() and [f[b"id"] for _, f in entries] == [b"evt_1"]
    assert await first.keep()  # renewed
    await first.release()
    assert await second.keep() and not await first.keep()


async def test_the_holder_stops_starting_before_its_lease_could_expire_in_redis(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    clock = Clock()
    lease = StreamLease(aredis, keys.stream("ordered"), "ordered", "a", ttl_s=7, clock=clock)
    assert await lease.keep()
    assert 0 < await aredis.pttl(lease.key) <= 7000
    timeout_s = 2.0
    assert lease.may_start(timeout_s)
    # A run started now must end (timeout_s) with START_SLACK_S to spare before the expiry.
    clock.now += 7 - timeout_s - START_SLACK_S - 0.01
    assert lease.may_start(timeout_s)
    clock.now += 0.02
    assert not lease.may_start(timeout_s)


async def test_on_the_cluster_each_partitions_lease_read_and_stale_bucket_stay_in_its_streams_slot(
    redis_cluster: LocalCluster,
) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}", 16)
    client = async_redis(redis_cluster.url)
    try:
        for p, stream in enumerate(keys.streams("ordered")):
            await client.xgroup_create(stream, "ordered", id="0", mkstream=True)
            await client.xadd(stream, {"id": f"evt_{p}"})
            lease = StreamLease(client, stream, "ordered", "a", ttl_s=10)
            bucket = keys.newest(stream, "ordered", "customer", 1)
            assert key_slot(lease.key.encode()) == key_slot(stream.encode()) == key_slot(bucket.encode())
            assert await lease.keep()
            [(_, entries)] = await lease.read("ordered", "a", 10)
            assert [f[b"id"] for _, f in entries] == [f"evt_{p}".encode()]
            assert await client.eval(NEWEST_SCRIPT, 1, bucket, 60, 10, "cus_1", 5) == 1
            await lease.release()
    finally:
        await client.aclose()
