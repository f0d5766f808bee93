"""The flush of many partitions' acks as one script (ack_script.py, ack_batch.py), on the single Redis and the cluster."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError

from bus.connection import async_redis
from bus.keys import Keys
from bus.partitions import Partition
from tests.redis_cluster import LocalCluster
from workers.engine import ack_batch, ack_script
from workers.engine.ack_batch import AckBatch
from workers.engine.ack_script import ACKS_SCRIPT, Block, Packer, acks_call
from workers.engine.resp import stream_entries
from workers.stream_ops import ensure_groups

pytestmark = pytest.mark.anyio

POOL = "p"


async def delivered(redis: Any, keys: Keys, partitions: range, per_stream: int) -> dict[str, list[str]]:
    """`per_stream` entries added to and read by consumer "c" on each partition's stream: {stream: ids}."""
    streams = [keys.stream(POOL, p) for p in partitions]
    await ensure_groups(redis, streams, keys.group(POOL))
    out: dict[str, list[str]] = {}
    for stream in streams:
        out[stream] = [(await redis.xadd(stream, {"id": f"evt_{n}"})).decode() for n in range(per_stream)]
        await redis.xreadgroup(keys.group(POOL), "c", {stream: ">"}, count=per_stream)
    return out


async def pending_ids(redis: Any, keys: Keys, stream: str) -> list[str]:
    rows = await redis.xpending_range(stream, keys.group(POOL), min="-", max="+", count=10_000)
    return [r["message_id"].decode() for r in rows]


async def test_one_flush_acks_exactly_the_given_ids_on_every_stream_and_counts_each_partition(
    aredis: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(prefix, 4)
    ids = await delivered(aredis, keys, range(4), 3)
    for p in range(4):  # a ledger, retry time and paused runs left by an earlier attempt of entry 0
        await aredis.sadd(keys.ledger(POOL, f"evt_{p}", p), "h")
        await aredis.hset(keys.retry_at(POOL, p), mapping={ids[keys.stream(POOL, p)][0]: 1, "other": 1})
        await aredis.hset(keys.uncounted(POOL, p), ids[keys.stream(POOL, p)][0], 1)
    batch = AckBatch(aredis, keys, POOL)
    for p in range(3):  # partition 3 gets nothing: its entries stay pending
        stream = keys.stream(POOL, p)
        batch.complete(stream, ids[stream][0], "processed", keys.ledger(POOL, f"evt_{p}", p))
        for entry_id in ids[stream][1:1 + p]:
            batch.complete(stream, entry_id, "stale" if p == 2 else "processed", None)
    batch.count("failed", 5, keys.stream(POOL, 1))
    sent: list[list[bytes]] = []
    real_exchange = ack_batch.exchange

    async def counting(redis: Any, commands: list[bytes]) -> list[Any]:
        sent.append(commands)
        return await real_exchange(redis, commands)

    monkeypatch.setattr(ack_batch, "exchange", counting)
    await batch.flush()
    assert len(sent[-1]) == 1 and sent[-1][0].startswith(b"*"), "the 3 streams' acks and counts: one command"
    for p in range(4):
        stream = keys.stream(POOL, p)
        acked = [] if p == 3 else ids[stream][:1 + p]
        assert await pending_ids(aredis, keys, stream) == [i for i in ids[stream] if i not in acked]
        assert await aredis.exists(keys.ledger(POOL, f"evt_{p}", p)) == (p == 3)
        assert await aredis.hkeys(keys.retry_at(POOL, p)) == ([ids[stream][0].encode()] if p == 3 else []) + [b"other"]
        assert await aredis.hlen(keys.uncounted(POOL, p)) == (p == 3)
    stats = [await aredis.hgetall(keys.pool_stats(POOL, p)) for p in range(4)]
    assert stats == [{b"processed": b"1"}, {b"processed": b"2", b"failed": b"5"},
                     {b"processed": b"1", b"stale": b"2"}, {}]
    assert not batch.unacked


async def test_a_failed_flush_writes_nothing_keeps_everything_pending_and_the_next_one_counts_once(
    aredis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix, 3)
    ids = await delivered(aredis, keys, range(3), 2)
    await aredis.set(keys.pool_stats(POOL, 2), "not a hash")  # the last partition's counters are broken
    batch = AckBatch(aredis, keys, POOL)
    for stream, entry_ids in ids.items():
        for entry_id in entry_ids:
            batch.complete(stream, entry_id, "processed", None)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await batch.flush()
    for stream, entry_ids in ids.items():
        assert await pending_ids(aredis, keys, stream) == entry_ids, "no stream acked, not even the first"
        assert all((stream, e) in batch.unacked for e in entry_ids), "still known as finished, ack on its way"
    assert [await aredis.exists(keys.pool_stats(POOL, p)) for p in range(2)] == [0, 0], "nothing counted"
    await aredis.delete(keys.pool_stats(POOL, 2))
    await batch.flush()
    for stream in ids:
        assert await pending_ids(aredis, keys, stream) == []
    assert [await aredis.hget(keys.pool_stats(POOL, p), "processed") for p in range(3)] == [b"2"] * 3
    assert not batch.unacked


async def test_a_script_missing_from_the_cache_is_loaded_and_a_stream_with_many_ids_is_split(
    aredis: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(prefix)
    monkeypatch.setattr(ack_script, "BLOCK_IDS", 7)  # so 20 ids make 3 blocks of one stream
    # A script this server has never seen (SCRIPT FLUSH would empty the shared server's cache).
    unseen = ACKS_SCRIPT + f"-- {uuid.uuid4().hex}\n"
    monkeypatch.setattr(ack_batch, "ACKS_SCRIPT", unseen)
    sha = hashlib.sha1(unseen.encode()).hexdigest()
    monkeypatch.setattr(ack_batch, "ACKS_SHA", sha)
    stream = keys.stream(POOL)
    ids = (await delivered(aredis, keys, range(1), 20))[stream]
    assert await aredis.script_exists(sha) == [False]
    batch = AckBatch(aredis, keys, POOL)
    for entry_id in ids:
        batch.complete(stream, entry_id, "processed", keys.ledger(POOL, entry_id))
    await batch.flush()
    assert await pending_ids(aredis, keys, stream) == []
    assert await aredis.hget(keys.pool_stats(POOL), "processed") == b"20", "counted once, not per block"
    assert await aredis.script_exists(sha) == [True]


async def test_the_packed_call_is_the_one_redis_py_would_send(prefix: str) -> None:
    keys = Keys(prefix, 2)
    blocks = [Block(keys.stream(POOL, 0), _part(keys, 0),
                    ids=["1-0", "2-0"], counts={"processed": 2}, redelivered=[("1-0", keys.ledger(POOL, "e", 0))]),
              Block(keys.stream(POOL, 1), _part(keys, 1), counts={"failed": 3})]
    expected = b"".join(Connection().pack_command("EVALSHA", "f" * 40, *acks_call(POOL, "g", blocks)))
    assert Packer(POOL, "g", "f" * 40).pack(blocks) == expected


def _part(keys: Keys, p: int) -> Partition:
    return Partition(keys, p)


def test_stream_replies_read_the_same_in_resp2_and_resp3() -> None:
    entries = [[b"1-0", [b"a", b"1", b"b", b"2"]]]
    want = [(b"s", [(b"1-0", {b"a": b"1", b"b": b"2"})])]
    assert stream_entries([[b"s", entries]]) == want
    assert stream_entries({b"s": entries}) == want
    assert stream_entries(None) == []


def _completed(batch: AckBatch, ids: dict[str, list[str]]) -> AckBatch:
    for stream, entry_ids in ids.items():
        for entry_id in entry_ids:
            batch.complete(stream, entry_id, "processed", None)
    return batch


async def _drop_cluster_keys(client: Any, keys: Keys) -> None:
    for p in range(keys.partitions):
        for key in (keys.stream(POOL, p), keys.pool_stats(POOL, p)):
            await client.delete(key)
    await client.aclose()


@pytest.mark.cluster
async def test_on_the_cluster_each_partition_is_its_own_script_and_only_a_failed_one_is_kept(
    redis_cluster: LocalCluster,
) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}", 16)
    client = async_redis(redis_cluster.url)
    try:
        ids = await delivered(client, keys, range(16), 2)
        await client.set(keys.pool_stats(POOL, 5), "not a hash")
        batch = _completed(AckBatch(client, keys, POOL), ids)
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await batch.flush()
        for p, (stream, entry_ids) in enumerate(ids.items()):
            assert await pending_ids(client, keys, stream) == (entry_ids if p == 5 else [])
        assert batch.unacked == {(keys.stream(POOL, 5), e) for e in ids[keys.stream(POOL, 5)]}
        await client.delete(keys.pool_stats(POOL, 5))
        await batch.flush()
        assert [await client.hget(keys.pool_stats(POOL, p), "processed") for p in range(16)] == [b"2"] * 16
    finally:
        await _drop_cluster_keys(client, keys)


@pytest.mark.cluster
async def test_on_the_cluster_a_master_without_the_script_is_sent_it_and_still_acks(
    redis_cluster: LocalCluster,
) -> None:
    # The flush sends EVALSHA; a promoted replica (or a restarted master) has an empty script cache.
    keys = Keys(f"t{uuid.uuid4().hex[:8]}", 16)
    client = async_redis(redis_cluster.url)
    try:
        ids = await delivered(client, keys, range(16), 2)
        for port in redis_cluster.masters():
            with redis_cluster.client(port) as node:
                node.script_flush()
        batch = _completed(AckBatch(client, keys, POOL), ids)
        await batch.flush()
        assert batch.unacked == set()
        for stream in ids:
            assert await pending_ids(client, keys, stream) == []
        assert [await client.hget(keys.pool_stats(POOL, p), "processed") for p in range(16)] == [b"2"] * 16
    finally:
        await _drop_cluster_keys(client, keys)


async def test_a_stream_of_another_type_fails_the_call_before_anything_is_counted(
    aredis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix, 2)
    ids = await delivered(aredis, keys, range(1), 1)
    await aredis.set(keys.stream(POOL, 1), "x")
    blocks = [Block(keys.stream(POOL, 0), _part(keys, 0), ids=ids[keys.stream(POOL, 0)], counts={"processed": 1}),
              Block(keys.stream(POOL, 1), _part(keys, 1), ids=["1-0"], counts={"processed": 1})]
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await aredis.eval(ACKS_SCRIPT, *acks_call(POOL, keys.group(POOL), blocks))
    assert await aredis.exists(keys.pool_stats(POOL, 0)) == 0, "acked (which a repeat does not redo), not counted"
    await aredis.delete(keys.stream(POOL, 1))
    assert await aredis.eval(ACKS_SCRIPT, *acks_call(POOL, keys.group(POOL), blocks)) == 0
    assert await aredis.hget(keys.pool_stats(POOL, 0), "processed") == b"1"


def test_each_stream_is_asked_for_two_when_its_share_would_be_one_of_as_many_slots() -> None:
    from workers.engine.reader import per_stream_count

    assert [per_stream_count(64, n) for n in (1, 4, 16, 64)] == [64, 16, 4, 2]
    assert per_stream_count(63, 64) == 1, "fewer free slots than streams: the surplus stays under the streams"
    assert per_stream_count(1, 1) == 1 and per_stream_count(0, 8) == 1


async def test_over_many_streams_the_flusher_gathers_more_entries_before_it_flushes(
    aredis: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(prefix, 4)
    ids = await delivered(aredis, keys, range(4), 2)
    monkeypatch.setattr(ack_batch, "GATHER_MAX_S", 60.0)  # only enough entries end the wait here
    batch = AckBatch(aredis, keys, POOL)
    flusher = asyncio.create_task(batch.run())
    try:
        for stream, entry_ids in ids.items():
            batch.complete(stream, entry_ids[0], "processed", None)
        for _ in range(20):
            await asyncio.sleep(0)
        assert all([await pending_ids(aredis, keys, s) == e for s, e in ids.items()]), "1 per stream: still waiting"
        for stream, entry_ids in ids.items():
            batch.complete(stream, entry_ids[1], "processed", None)
        await asyncio.wait_for(wait_for_empty(batch), 10)
        assert all([await pending_ids(aredis, keys, s) == [] for s in ids])
    finally:
        batch.close()
        await asyncio.wait_for(flusher, 10)


async def wait_for_empty(batch: AckBatch) -> None:
    while batch.unacked:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
