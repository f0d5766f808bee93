"""Partitions on a single Redis: the hash, the key layout, the recorded count, and a resize that loses nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from bus import defaults
from bus.dedupe import seen_record
from bus.envelope import RoutingFields
from bus.keys import Keys
from bus.partitions import (
    Layout,
    PartitionMismatch,
    claim_layout,
    event_partition,
    partition_key,
    partition_of,
    read_layout,
    streams_to_read,
)
from bus.resize import drop_drained, resize, seen_pattern
from bus.routing import parse_routing
from fanout.samples import sample_event
from ingress.parse import routing_fields
from ingress.publish import Publisher

from .conftest import REPO, TEST_REDIS_URL, TEST_SECRET

pytestmark = pytest.mark.anyio

TABLE = parse_routing("pools: {customer: {}, admin: {}}\nroutes:\n"
                      "  charge.refunded: {customer: [noop], admin: [noop]}\n")


# --- the hash ------------------------------------------------------------------------------------


def test_the_partition_is_crc32_of_the_utf8_key_mod_n() -> None:
    # "123456789" is CRC-32's published check input: 0xCBF43926.
    assert 0xCBF43926 % 16 == 6
    assert partition_of("123456789", 16) == 6
    assert [partition_of("cus_NffrFeUfNV2Hib", n) for n in (1, 4, 8, 16, 64)] == [0, 2, 2, 2, 34]
    assert [partition_of("ch_3MmlLrLkdIwHu7ix0snN0B15", n) for n in (4, 16, 64)] == [1, 9, 57]
    assert partition_of("cus_é", 7) == 1596410582 % 7 == 4, "of the UTF-8 bytes (Latin-1 would give 1)"


def test_an_event_is_partitioned_by_its_object_id_else_its_event_id() -> None:
    on_object = RoutingFields("evt_1NG8Du2eZvKYlo2CUI79vXWy", "charge.refunded", 0, False, None,
                              "ch_3MmlLrLkdIwHu7ix0snN0B15")
    assert event_partition(on_object, 64) == 57
    without = RoutingFields("evt_1NG8Du2eZvKYlo2CUI79vXWy", "account.updated", 0, False, None, None)
    assert event_partition(without, 64) == 24


# --- keys ----------------------------------------------------------------------------------------


def test_with_one_partition_every_key_keeps_its_name() -> None:
    keys = Keys("fanout")
    assert keys.stream("customer") == "{fanout}:stream:customer"
    assert keys.streams("customer") == ("{fanout}:stream:customer",)
    assert keys.seen(20423, 17) == "{fanout}:seen:20423:17"
    assert keys.dead("admin") == "{fanout}:dead:admin"
    assert keys.ledger("customer", "evt_1") == "{fanout}:done:customer:evt_1"
    assert keys.retry_at("customer") == "{fanout}:retry_at:customer"
    assert keys.pool_stats("customer") == "{fanout}:stats:pool:customer"
    assert keys.ingress_stats == "{fanout}:stats:ingress"


def test_with_n_partitions_each_event_key_carries_its_partition_tag() -> None:
    keys = Keys("fanout", 4)
    assert keys.streams("customer") == tuple(f"{{fanout:{p}}}:stream:customer" for p in range(4))
    assert keys.seen(20423, 17, 3) == "{fanout:3}:seen:20423:17"
    assert keys.ledger("customer", "evt_1", 2) == "{fanout:2}:done:customer:evt_1"
    assert keys.dead("admin", 1) == "{fanout:1}:dead:admin"
    assert keys.pool_stats("customer", 1) == "{fanout:1}:stats:pool:customer"
    assert keys.ingress_stats_of(3) == "{fanout:3}:stats:ingress"
    assert keys.meta == "{fanout}:meta", "deployment-wide keys keep the plain tag"


def test_the_cleanup_pattern_matches_every_partition_of_the_prefix_only(sredis: redis.Redis, prefix: str) -> None:
    sredis.hset(Keys(prefix).seen(1, 2), "a", 1)
    sredis.hset(Keys(prefix, 8).seen(1, 2, 5), "b", 1)
    sredis.hset("{" + prefix + "x}:seen:1:2", "c", 1)
    try:
        found = sorted(k.decode() for k in sredis.scan_iter(match=Keys(prefix).pattern(), count=1000))
        assert found == sorted([Keys(prefix).seen(1, 2), Keys(prefix, 8).seen(1, 2, 5)])
    finally:
        sredis.delete("{" + prefix + "x}:seen:1:2")


# --- the recorded count --------------------------------------------------------------------------


async def test_the_first_process_records_the_count_and_a_different_one_is_refused(aredis: aioredis.Redis, prefix: str) -> None:
    assert await read_layout(aredis, prefix) is None
    assert await claim_layout(aredis, prefix, 4) == Layout(4)
    assert await claim_layout(aredis, prefix, 4) == Layout(4)
    with pytest.raises(PartitionMismatch) as caught:
        await claim_layout(aredis, prefix, 8)
    assert "FANOUT_PARTITIONS is 8" in str(caught.value) and "uses 4 partitions" in str(caught.value)


def test_fanout_ingress_exits_2_naming_both_counts_when_they_disagree(sredis: redis.Redis, prefix: str) -> None:
    sredis.hset(Keys(prefix).meta, "partitions", "4")
    env = {**os.environ, "REDIS_URL": TEST_REDIS_URL, "STRIPE_WEBHOOK_SECRET": TEST_SECRET, "FANOUT_PREFIX": prefix,
           "ROUTING_FILE": str(REPO / "routing.yaml"), "FANOUT_PARTITIONS": "16"}
    result = subprocess.run([sys.executable, "-m", "fanout.cli", "ingress", "--port", "1"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "FANOUT_PARTITIONS is 16" in result.stderr and "uses 4 partitions" in result.stderr


# --- resize --------------------------------------------------------------------------------------


async def _publish(client: aioredis.Redis, keys: Keys, events: list[dict[str, Any]]) -> list[bool]:
    publisher = Publisher(client, keys, 3600, budget_s=5.0)
    match = TABLE.match("charge.refunded")
    results = await asyncio.gather(*(
        publisher.publish(routing_fields(orjson.dumps(e)), match, "v1", orjson.dumps(e)) for e in events))
    return [r.duplicate for r in results]


def _refund(i: int) -> dict[str, Any]:
    return sample_event("charge.refunded", ids={"charge": f"ch_object{i % 50}"})


async def _ids_by_stream(client: aioredis.Redis, streams: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for stream in streams:
        rows: Any = await client.xrange(stream)
        out[stream] = [fields[b"id"].decode() for _, fields in rows]
    return out


async def test_a_resize_from_4_to_8_partitions_loses_no_event_and_keeps_dedupe(aredis: aioredis.Redis, prefix: str) -> None:
    await claim_layout(aredis, prefix, 4)
    before = [_refund(i) for i in range(200)]
    assert await _publish(aredis, Keys(prefix, 4), before) == [False] * 200

    report = await resize(aredis, prefix, 8)
    # Partitions 0..3 of 4 are the same keys as partitions 0..3 of 8: nothing is left to drain.
    assert report.before == Layout(4) and report.after == Layout(8)
    assert report.copied > 0
    assert await claim_layout(aredis, prefix, 8) == Layout(8)
    with pytest.raises(PartitionMismatch):
        await claim_layout(aredis, prefix, 4)

    after = [_refund(i) for i in range(200)]
    assert await _publish(aredis, Keys(prefix, 8), after) == [False] * 200
    # Stripe redelivers events first seen under 4 partitions: each is still a duplicate.
    assert await _publish(aredis, Keys(prefix, 8), before[:100]) == [True] * 100

    layout = await read_layout(aredis, prefix)
    assert layout is not None
    for pool in ("customer", "admin"):
        streams = streams_to_read(layout, prefix, pool)
        assert set(Keys(prefix, 4).streams(pool)) <= set(streams) and set(Keys(prefix, 8).streams(pool)) <= set(streams)
        placed = await _ids_by_stream(aredis, streams)
        every = [event_id for ids in placed.values() for event_id in ids]
        assert sorted(every) == sorted(e["id"] for e in before + after), "each event once, in a stream read"
        # Entries of one object stay together per layout: one partition under 4, one under 8.
        for e in after:
            p = event_partition(routing_fields(orjson.dumps(e)), 8)
            assert e["id"] in placed[Keys(prefix, 8).stream(pool, p)]


async def test_a_shrink_keeps_the_old_streams_readable_until_they_are_consumed(aredis: aioredis.Redis, prefix: str) -> None:
    await claim_layout(aredis, prefix, 8)
    events = [_refund(i) for i in range(100)]
    await _publish(aredis, Keys(prefix, 8), events)
    report = await resize(aredis, prefix, 2)
    assert report.after == Layout(2, (8,)), "partitions 2..7 still hold entries"
    streams = streams_to_read(report.after, prefix, "customer")
    assert len(streams) == 8
    assert await _publish(aredis, Keys(prefix, 2), events) == [True] * 100, "dedupe records moved to 2 partitions"
    for pool in ("customer", "admin"):
        for stream in Keys(prefix, 8).streams(pool):
            rows: Any = await aredis.xreadgroup(pool, "c1", {stream: ">"})
            ids = [entry_id for _, entries in rows for entry_id, _ in entries]
            if ids:
                await aredis.xack(stream, pool, *ids)
    assert await drop_drained(aredis, prefix) == Layout(2)
    assert streams_to_read(Layout(2), prefix, "customer") == list(Keys(prefix, 2).streams("customer"))


async def test_a_resize_moves_each_record_to_the_partition_of_its_crc_in_the_same_slice_bucket_and_expiry(
    aredis: aioredis.Redis, prefix: str
) -> None:
    await claim_layout(aredis, prefix, 4)
    events = [_refund(i) for i in range(60)]
    await _publish(aredis, Keys(prefix, 4), events)
    old_names = [k.decode() async for k in aredis.scan_iter(match=seen_pattern(prefix))]
    slices = {name.split(":seen:")[1].split(":")[0] for name in old_names}
    expiries = {await aredis.pexpiretime(name) for name in old_names}
    assert len(slices) == 1 and len(expiries) == 1 and next(iter(expiries)) > 0, "one slice, one expiry"

    await resize(aredis, prefix, 8)
    for event in events:
        fields = routing_fields(orjson.dumps(event))
        record = seen_record(event["id"], partition_key(fields), defaults.SEEN_BUCKETS)
        home = Keys(prefix, 8).seen(next(iter(slices)), record.bucket, event_partition(fields, 8))
        assert await aredis.hget(home, record.field) == record.value
        assert await aredis.pexpiretime(home) in expiries, "the copy expires with its slice"


async def test_a_resize_copies_a_record_whose_value_is_not_a_crc_into_every_partition(
    aredis: aioredis.Redis, prefix: str
) -> None:
    await aredis.hset(Keys(prefix).seen(7, 3), b"digest!!", b"?")  # not a 4-byte CRC: its home is unknown
    await aredis.expire(Keys(prefix).seen(7, 3), 600)
    await aredis.set(Keys(prefix).tag() + ":seen:evt_legacy", "1", ex=600)  # a string record of an older version
    report = await resize(aredis, prefix, 4)
    assert report.before == Layout(1) and report.copied == 4, "the string record of an older version is skipped"
    for p in range(4):
        assert await aredis.hget(Keys(prefix, 4).seen(7, 3, p), b"digest!!") == b"?"
        assert 0 < await aredis.ttl(Keys(prefix, 4).seen(7, 3, p)) <= 600


def test_fanout_partitions_shows_and_resizes(prefix: str, tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": TEST_REDIS_URL, "FANOUT_PREFIX": prefix,
           "ROUTING_FILE": str(REPO / "routing.yaml")}

    def fanout(*args: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "fanout.cli", "partitions", *args, "--json"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=30, check=True)
        parsed: dict[str, Any] = orjson.loads(done.stdout)
        return parsed

    shown = fanout()
    assert shown["partitions"] == 1 and shown["recorded"] is False
    assert shown["streams"]["customer"] == [f"{{{prefix}}}:stream:customer"]
    resized = fanout("resize", "4")
    assert resized["before"] == 1 and resized["partitions"] == 4
    assert resized["streams"]["customer"][:4] == [f"{{{prefix}:{p}}}:stream:customer" for p in range(4)]
    assert fanout()["partitions"] == 4
    assert fanout("prune")["draining"] == [], "the old layout's streams are empty: nothing left to drain"


def test_a_worker_refuses_to_start_against_a_partitioned_deployment(sredis: redis.Redis, prefix: str) -> None:
    sredis.hset(Keys(prefix).meta, "partitions", "16")
    env = {**os.environ, "REDIS_URL": TEST_REDIS_URL, "FANOUT_PREFIX": prefix,
           "ROUTING_FILE": str(REPO / "routing.yaml")}
    result = subprocess.run([sys.executable, "-m", "fanout.cli", "worker", "admin", "--burst"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "FANOUT_PARTITIONS is 1" in result.stderr and "uses 16 partitions" in result.stderr


async def test_status_shows_each_partition_and_sums_them_per_pool(aredis: aioredis.Redis, prefix: str) -> None:
    import time

    from workers.ops.status import collect_status

    keys = Keys(prefix, 4)
    events = [_refund(i) for i in range(60)]
    await _publish(aredis, keys, events)
    await _publish(aredis, keys, events[:5])  # redeliveries: counted in their own partitions
    status = await collect_status(aredis, keys, ["customer", "admin"], int(time.time() * 1000))
    customer = status["pools"]["customer"]
    assert set(customer["partitions"]) == {"0", "1", "2", "3"}
    expected = {str(p): 0 for p in range(4)}
    for e in events:
        expected[str(event_partition(routing_fields(orjson.dumps(e)), 4))] += 1
    assert {p: f["length"] for p, f in customer["partitions"].items()} == expected
    assert all(f["lag"] == f["length"] and f["pending"] == 0 for f in customer["partitions"].values())
    assert customer["stream_length"] == customer["lag"] == 60
    assert status["duplicates"] == 5


def test_a_reader_gets_each_stream_once_with_the_keys_that_share_its_slot() -> None:
    from redis.crc import key_slot

    from bus.partitions import partitions_to_read

    parts = partitions_to_read(Layout(2, (8,)), "fanout", "customer")
    assert [part.stream("customer") for part in parts] == [
        "{fanout:0}:stream:customer", "{fanout:1}:stream:customer",
        *(f"{{fanout:{p}}}:stream:customer" for p in range(2, 8))]
    for part in parts:
        slots = {key_slot(k.encode()) for k in (part.stream("customer"), part.keys.ledger("customer", "evt_1", part.p),
                                                part.keys.retry_at("customer", part.p),
                                                part.keys.dead("customer", part.p))}
        assert len(slots) == 1
    assert streams_to_read(Layout(1), "fanout", "customer") == ["{fanout}:stream:customer"]
