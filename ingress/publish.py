"""Dedupe and fan-out as one Redis script, so a crash can never leave half a publish.

KEYS: the event's dedupe hashes (its sub-bucket in the current time slice, then in each
earlier slice that may still hold a live record: bus/dedupe.py), its partition's ingress
counters hash, then one stream per routed pool (all in the event's partition, so one
Redis Cluster slot).
ARGV: the number of dedupe hashes, the record's field (a digest of the event id) and
value (the CRC-32 of its partition key, so `fanout partitions resize` can find the
record's partition in a new layout), the current slice's expiry (Unix s), the values of
envelope.SHARED_FIELDS in order, then per stream the consumer group name and the
handler list for that pool.

A stream that does not exist yet is created together with its consumer group at
id 0, so a pool whose workers have never run still receives every event.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from bus import defaults
from bus.connection import is_cluster
from bus.dedupe import DIGEST_BYTES, expires_at_s, lookback_slices, seen_record, slice_of
from bus.envelope import (
    F_HANDLERS,
    HANDLER_SEPARATOR,
    SHARED_FIELDS,
    RoutingFields,
    shared_values,
)
from bus.errors import StoreUnavailable
from bus.keys import Keys
from bus.partitions import partition_key, partition_of
from bus.routing import RouteMatch
from ingress.wire import ClusterWire, bulk, command, run_single

_SHARED = len(SHARED_FIELDS)
# ARGV index of the first shared value: after the dedupe count, field, value and expiry.
_FIRST_SHARED = 5
# The field names are written into the script, so each call sends only the values.
_FIELD_LIST = ", ".join(f"'{name}', ARGV[{i + _FIRST_SHARED}]" for i, name in enumerate(SHARED_FIELDS))

PUBLISH_LUA = f"""
local k = tonumber(ARGV[1])
local stats = KEYS[k + 1]
for i = 1, k do
  if redis.call('HEXISTS', KEYS[i], ARGV[2]) == 1 then
    -- This write also makes a WAIT after a duplicate cover the original's write.
    redis.call('HINCRBY', stats, 'duplicates', 1)
    return 0
  end
end
local base = {_SHARED + _FIRST_SHARED - 1}
local n = #KEYS - k - 1
-- Check every target before writing anything: Redis does not undo a script
-- that fails halfway, and a half publish must never be marked as seen.
local missing = {{}}
for i = 1, n do
  local kind = redis.call('TYPE', KEYS[k + 1 + i])['ok']
  if kind == 'none' then
    missing[i] = true
  elseif kind ~= 'stream' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k + 1 + i] .. ' is a ' .. kind .. ', not a stream')
  end
end
for i = 1, n do
  local stream = KEYS[k + 1 + i]
  if missing[i] then
    redis.call('XGROUP', 'CREATE', stream, ARGV[base + 2 * i - 1], '0', 'MKSTREAM')
  end
  redis.call('XADD', stream, '*', '{F_HANDLERS}', ARGV[base + 2 * i], {_FIELD_LIST})
end
-- Marked seen last, so nothing before this line can leave an event deduped but unpublished.
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
redis.call('HINCRBY', stats, 'published', 1)
if n == 0 then redis.call('HINCRBY', stats, 'unrouted', 1) end
return 1
"""


@dataclass(frozen=True)
class PublishResult:
    duplicate: bool
    pools: tuple[str, ...]


# One publish: its EVALSHA command already in RESP, its partition, and the caller's future.
Call = tuple[bytes, int, "asyncio.Future[int]"]
Targets = tuple[tuple[str, tuple[str, ...]], ...]


class Publisher:
    """Publishes verified events; the only writer on the ingress's hot path.

    Every publish requested during one event-loop tick goes to Redis in one
    pipeline: one connection checkout, one write and one read for the whole
    batch instead of per request (on a Redis Cluster, one per node). Each
    script call stays atomic on its own.

    :param redis: a `redis.asyncio.Redis`, or a `RedisCluster` (bus.connection.async_redis)
    :param keys: the key layout, with the deployment's partition count
    :param retention_s: how long an event id is remembered for dedupe (at least; bus/dedupe.py)
    :param budget_s: how long one batch may take before its callers get StoreUnavailable
    :param min_replicas: answer only once this many replicas acknowledged the batch (WAIT)
    :param seen_buckets: dedupe sub-buckets per partition and time slice
    :param seen_slice_s: the length of a dedupe time slice
    :param clock: the time in Unix seconds, which picks the current dedupe slice (tests pass a fake one)
    """

    def __init__(self, redis: Any, keys: Keys, retention_s: int, budget_s: float,
                 min_replicas: int = 0, seen_buckets: int = defaults.SEEN_BUCKETS,
                 seen_slice_s: int = defaults.SEEN_SLICE_S, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._keys = keys
        self._partitions = keys.partitions
        self._retention_s = retention_s
        self._buckets = seen_buckets
        self._slice_s = seen_slice_s
        self._lookback = lookback_slices(retention_s, seen_slice_s)
        self._lookback_arg = bulk(self._lookback)
        self._clock = clock
        # Per partition: the slice its dedupe key heads below were built for, those heads (per
        # digit count of the sub-bucket: "$<length>\r\n<key without its sub-bucket>", current
        # slice first) and the slice's expiry; rebuilt when a new slice starts.
        self._slice_parts: list[tuple[int, dict[int, tuple[bytes, ...]], bytes]] = [(-1, {}, b"")] * keys.partitions
        self._budget_s = budget_s
        self._min_replicas = min_replicas
        self._wait = (command("WAIT", min_replicas, min(defaults.REPLICA_WAIT_MS, int(budget_s * 500)))
                      if min_replicas else None)
        self._sha = hashlib.sha1(PUBLISH_LUA.encode()).hexdigest()
        self._cluster = ClusterWire(redis, PUBLISH_LUA) if is_cluster(redis) else None
        # The slot of each partition's hash tag (cluster only; every key of partition p shares it).
        self._slots = ([key_slot(keys.tag(p).encode()) for p in range(keys.partitions)]
                       if self._cluster else [])
        self._pending: list[Call] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._stats = [bulk(keys.ingress_stats_of(p)) for p in range(keys.partitions)]
        # Per partition, the parts of a command fixed by its route, packed once per route.
        self._route_parts: list[dict[Targets, tuple[bytes, bytes, bytes]]] = [{} for _ in range(keys.partitions)]

    async def publish(
        self, event: RoutingFields, match: RouteMatch, table_version: str, body: bytes
    ) -> PublishResult:
        """Store the event once in every routed pool's stream; raise StoreUnavailable if Redis fails."""
        key = partition_key(event)
        record = seen_record(event.id, key, self._buckets)
        p = partition_of(key, self._partitions)
        head, streams, per_pool = self._route_parts[p].get(match.targets) or self._pack_route(match.targets, p)
        slice_index, heads, expiry = self._slice_parts[p]
        if slice_index != (now := slice_of(int(self._clock() * 1000), self._slice_s)):
            slice_index, heads, expiry = self._pack_slice(p, now)
        bucket = b"%d" % record.bucket
        # Every dedupe key ends with the same sub-bucket: one join packs them all.
        tail = bucket + b"\r\n"
        dedupe_keys = tail.join(heads.get(len(bucket)) or self._pack_heads(p, len(bucket))) + tail
        packed = b"".join((
            head, dedupe_keys, self._stats[p], streams, self._lookback_arg,
            b"$%d\r\n%b\r\n$4\r\n%b\r\n" % (DIGEST_BYTES, record.field, record.value), expiry,
            *map(bulk, shared_values(event, table_version, body)), per_pool,
        ))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush_soon)
        self._pending.append((packed, p, future))
        stored = await future
        if stored == 0:
            return PublishResult(duplicate=True, pools=())
        return PublishResult(duplicate=False, pools=match.pools)

    def _pack_slice(self, p: int, slice_index: int) -> tuple[int, dict[int, tuple[bytes, ...]], bytes]:
        """Start partition p's new slice: no key heads yet, and the slice's expiry."""
        parts: tuple[int, dict[int, tuple[bytes, ...]], bytes] = (
            slice_index, {}, bulk(expires_at_s(slice_index, self._slice_s, self._retention_s)))
        self._slice_parts[p] = parts
        return parts

    def _pack_heads(self, p: int, digits: int) -> tuple[bytes, ...]:
        """The RESP heads of partition p's dedupe keys in the current slice, for sub-buckets of `digits`."""
        slice_index, heads, _ = self._slice_parts[p]
        prefixes = [self._keys.seen(slice_index - i, "", p).encode() for i in range(self._lookback)]
        packed = tuple(b"$%d\r\n%b" % (len(prefix) + digits, prefix) for prefix in prefixes)
        heads[digits] = packed
        return packed

    def _pack_route(self, targets: Targets, p: int) -> tuple[bytes, bytes, bytes]:
        """EVALSHA, the key count and the per-pool keys and arguments of one route, in RESP."""
        n_keys = self._lookback + 1 + len(targets)
        n_args = _FIRST_SHARED - 1 + len(SHARED_FIELDS) + 2 * len(targets)
        head = b"*%d\r\n" % (3 + n_keys + n_args) + bulk("EVALSHA") + bulk(self._sha) + bulk(n_keys)
        streams = b"".join(bulk(self._keys.stream(pool, p)) for pool, _ in targets)
        per_pool = b"".join(
            bulk(self._keys.group(pool)) + bulk(HANDLER_SEPARATOR.join(handlers))
            for pool, handlers in targets
        )
        if len(self._route_parts[p]) < 1024:  # routes are few; the bound is only a guard
            self._route_parts[p][targets] = (head, streams, per_pool)
        return head, streams, per_pool

    def _flush_soon(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[Call]) -> None:
        results: list[Any] = []
        try:
            async with asyncio.timeout(self._budget_s):
                if self._cluster is not None:
                    # The cluster wire loads the script on any node that lacks it.
                    results = await self._cluster.run([c for c, _, _ in batch], [self._slots[p] for _, p, _ in batch],
                                                      self._wait, self._min_replicas)
                else:
                    results = await self._run(batch)
                    unloaded = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                    if unloaded:
                        # Redis restarted or its script cache was flushed: load it, then re-run only
                        # the calls that did not run (the others may have stored their event already).
                        await self._redis.script_load(PUBLISH_LUA)
                        retried = await self._run([batch[i] for i in unloaded])
                        for i, result in zip(unloaded, retried, strict=True):
                            results[i] = result
        except (RedisError, RedisClusterException, OSError, TimeoutError) as err:
            results = [err] * len(batch)
        finally:
            # Whatever happened (even cancellation at shutdown), every caller gets an answer.
            for i, (_, _, future) in enumerate(batch):
                if future.done():  # the caller went away already
                    continue
                result = results[i] if i < len(results) else RedisError("publish interrupted")
                if isinstance(result, Exception):
                    failure = StoreUnavailable(f"publish failed: {type(result).__name__}")
                    failure.__cause__ = result
                    future.set_exception(failure)
                else:
                    future.set_result(int(result))

    async def _run(self, batch: list[Call]) -> list[Any]:
        """Send the batch as one write on one connection and read one reply per call."""
        return await run_single(self._redis, [c for c, _, _ in batch], self._wait, self._min_replicas)
