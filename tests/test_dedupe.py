"""Dedupe records in time-sliced, digest-bucketed hashes (bus/dedupe.py), through the real publish script."""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from bus import defaults
from bus.dedupe import DIGEST_BYTES, expires_at_s, lookback_slices, seen_record, slice_of
from bus.errors import ConfigError
from bus.keys import Keys
from bus.routing import parse_routing
from bus.settings import Settings
from fanout.samples import sample_event
from ingress.parse import routing_fields
from ingress.publish import Publisher

pytestmark = pytest.mark.anyio

TABLE = parse_routing("pools: {customer: {}}\nroutes:\n  '*': {customer: [noop]}\n")
HOUR_S = 3600


class FakeClock:
    """Unix seconds that a test moves by hand; starts at a slice boundary just ahead of real time."""

    def __init__(self, slice_s: int) -> None:
        # Redis expires the hashes on its own clock: stay near it, so nothing expires under the test.
        self.now = float((int(time.time()) // slice_s + 1) * slice_s)

    def __call__(self) -> float:
        return self.now


_BODIES: dict[str, bytes] = {}


def _body(event_id: str) -> bytes:
    """The event's body; a redelivery is the same bytes (so the same object, the same partition)."""
    if event_id not in _BODIES:
        _BODIES[event_id] = orjson.dumps(sample_event("charge.refunded", event_id=event_id),
                                         option=orjson.OPT_INDENT_2)
    return _BODIES[event_id]


async def _publish(publisher: Publisher, event_ids: list[str]) -> list[bool]:
    """Publish each id (once per call); the duplicate flag of each."""
    bodies = [_body(event_id) for event_id in event_ids]
    results = await asyncio.gather(*(
        publisher.publish(routing_fields(body), TABLE.match("charge.refunded"), "v1", body) for body in bodies))
    return [r.duplicate for r in results]


def _publisher(aredis: aioredis.Redis, keys: Keys, clock: FakeClock, *, retention_s: int = 2 * HOUR_S,
               buckets: int = 16) -> Publisher:
    return Publisher(aredis, keys, retention_s, budget_s=5.0, seen_buckets=buckets, seen_slice_s=HOUR_S,
                     clock=clock)


# --- the record ----------------------------------------------------------------------------------


def test_a_record_is_a_fixed_size_digest_field_holding_the_crc_of_its_partition_key() -> None:
    short, long = seen_record("evt_1", "ch_1", 64), seen_record("evt_" + "x" * 200, "ch_1", 64)
    assert len(short.field) == len(long.field) == DIGEST_BYTES
    assert short.value == long.value == zlib.crc32(b"ch_1").to_bytes(4, "big")
    assert short.crc == zlib.crc32(b"ch_1")
    assert seen_record("evt_1", "ch_1", 64) == short, "deterministic: every ingress finds the same record"
    assert {seen_record(f"evt_{i}", "k", 64).bucket for i in range(2000)} == set(range(64))


def test_a_lookup_reads_every_slice_that_can_still_hold_a_record_younger_than_the_retention() -> None:
    assert lookback_slices(7 * 24 * HOUR_S, 24 * HOUR_S) == 8
    assert lookback_slices(2 * HOUR_S, HOUR_S) == 3
    assert lookback_slices(90 * 60, HOUR_S) == 3
    assert slice_of(HOUR_S * 1000 * 5 + 999, HOUR_S) == 5
    assert expires_at_s(5, HOUR_S, 2 * HOUR_S) == 8 * HOUR_S, "retention_s after the slice ends"


# --- through the publish script ------------------------------------------------------------------


async def test_an_event_seen_just_before_a_slice_boundary_is_still_a_duplicate_after_it(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    clock = FakeClock(HOUR_S)
    publisher = _publisher(aredis, keys, clock)
    clock.now -= 0.001
    assert await _publish(publisher, ["evt_edge"]) == [False]
    clock.now += 0.002  # the next slice
    assert await _publish(publisher, ["evt_edge"]) == [True]
    clock.now += 2 * HOUR_S - 1  # just under the retention later, two slices on
    assert await _publish(publisher, ["evt_edge"]) == [True]
    assert await _publish(publisher, ["evt_new"]) == [False]


async def test_an_event_older_than_the_retention_and_its_slice_is_published_again(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    clock = FakeClock(HOUR_S)
    publisher = _publisher(aredis, keys, clock)
    assert await _publish(publisher, ["evt_old"]) == [False]
    slice_index = slice_of(int(clock.now * 1000), HOUR_S)
    [name] = [k async for k in aredis.scan_iter(match=keys.seen("*", "*"))]
    assert await aredis.expiretime(name) == expires_at_s(slice_index, HOUR_S, 2 * HOUR_S)
    clock.now += HOUR_S + 2 * HOUR_S - 1  # the end of its slice plus the retention, less a second
    assert await _publish(publisher, ["evt_old"]) == [True]
    clock.now += 1  # its slice's hashes have expired: a lookup no longer reads them
    assert await _publish(publisher, ["evt_old"]) == [False]
    assert await aredis.xlen(keys.stream("customer")) == 2


async def _listpack_limit(aredis: aioredis.Redis) -> int:
    """The server's hash-max-listpack-entries (128 by Redis's default; read, never changed here)."""
    reply: Any = await aredis.config_get("hash-max-listpack-entries")
    return int(reply["hash-max-listpack-entries"])


async def test_records_past_the_compact_size_of_a_sub_bucket_still_dedupe_exactly(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    clock = FakeClock(HOUR_S)
    publisher = _publisher(aredis, keys, clock, buckets=1)
    count = await _listpack_limit(aredis) + 50
    ids = [f"evt_many{i:04d}" for i in range(count)]
    assert await _publish(publisher, ids) == [False] * count
    [name] = [k async for k in aredis.scan_iter(match=keys.seen("*", "*"))]
    assert await aredis.hlen(name) == count
    assert await aredis.object("encoding", name) == b"hashtable", "past the listpack limit"
    assert await _publish(publisher, ids) == [True] * count
    assert await _publish(publisher, [f"evt_other{i:04d}" for i in range(100)]) == [False] * 100
    assert await aredis.xlen(keys.stream("customer")) == count + 100


async def test_sub_buckets_sized_for_the_traffic_stay_listpacks(aredis: aioredis.Redis, keys: Keys) -> None:
    clock = FakeClock(HOUR_S)
    publisher = _publisher(aredis, keys, clock, buckets=8)
    count = 4 * await _listpack_limit(aredis)  # half the compact size per sub-bucket, on average
    assert await _publish(publisher, [f"evt_few{i:04d}" for i in range(count)]) == [False] * count
    names = [k async for k in aredis.scan_iter(match=keys.seen("*", "*"))]
    assert len(names) == 8
    assert {await aredis.object("encoding", name) for name in names} == {b"listpack"}


async def test_each_partition_keeps_its_records_in_its_own_slot(aredis: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix, 4)
    clock = FakeClock(HOUR_S)
    publisher = _publisher(aredis, keys, clock)
    ids = [f"evt_p{i:03d}" for i in range(80)]
    await _publish(publisher, ids)
    by_partition: dict[int, Any] = {}
    for p in range(4):
        names = [k async for k in aredis.scan_iter(match=keys.seen("*", "*", p))]
        by_partition[p] = sum([await aredis.hlen(name) for name in names])
    assert sum(by_partition.values()) == 80 and all(by_partition.values())
    assert await _publish(publisher, ids) == [True] * 80


def test_seen_buckets_is_read_once_from_the_environment_and_must_be_positive() -> None:
    assert Settings.from_env({}).seen_buckets == defaults.SEEN_BUCKETS
    assert Settings.from_env({"SEEN_BUCKETS": "64"}).seen_buckets == 64
    with pytest.raises(ConfigError, match="SEEN_BUCKETS must be positive"):
        Settings.from_env({"SEEN_BUCKETS": "0"})
