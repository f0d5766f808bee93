"""The acks, counts and stale-guard writes of the consumer's successes: one pipeline per loop tick.

Written for workers/engine/outcomes.py (the ack of one entry there is ACK_SCRIPT;
here many entries share one round trip). Clearing an entry's retry time also
clears its paused-run count, as ACK_SCRIPT does. Each entry's counters, retry
time and paused runs are those of its stream's partition.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from bus.keys import Keys
from bus.partitions import Partition, stream_partition
from workers.newest import Newest, merge_writes, queue_writes

log = structlog.get_logger("fanout.worker")

FLUSH_RETRY_S = 0.2


def by_tag(keys: list[str]) -> list[list[str]]:
    """Keys grouped by their hash tag (one slot each), in first-seen order."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key[:key.find("}") + 1], []).append(key)
    return list(groups.values())


class AckBatch:
    """The acks and counter increments of one loop tick, sent to Redis as one pipeline.

    Entry tasks only append here; a single flusher task sends what has gathered since its last
    pass. Under load that is one round trip for many entries, which is most of the difference
    between a transaction per entry and this. An entry finished but not yet acked is listed in
    `unacked`, so the reclaimer never runs it a second time while its ack is on its way.
    Counters and retry times go to the partition of the stream they came from (on a cluster
    the pipeline sends each partition's commands to its node).
    """

    def __init__(self, redis: aioredis.Redis, keys: Keys, pool: str) -> None:
        self.redis = redis
        self.prefix = keys.prefix
        self.pool = pool
        self.group = keys.group(pool)
        # Counts with no stream (none today in the engine) go to the pool's first partition.
        self.default_stream = keys.stream(pool)
        self.unacked: set[tuple[str, str]] = set()
        self._acks: dict[str, list[str]] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._ledger_deletes: list[str] = []
        self._retry_at_deletes: dict[Partition, list[str]] = {}
        # Stale-guard writes, {bucket: {object id: newest created}}: sent before the acks.
        self._newest: dict[str, dict[str, int]] = {}
        self._stats_keys: dict[Partition, str] = {}
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False

    def _part(self, stream: str) -> Partition:
        return stream_partition(self.prefix, stream)

    def _stats(self, part: Partition) -> str:
        """The partition's counters hash (built once per partition: this runs once per entry)."""
        key = self._stats_keys.get(part)
        if key is None:
            key = self._stats_keys[part] = part.pool_stats(self.pool)
        return key

    def complete(self, stream: str, entry_id: str, counter: str, ledger_key: str | None,
                 newest: Newest | None = None) -> None:
        if newest is not None:
            merge_writes(self._newest, {newest.current: {newest.object_key: newest.created}})
        self._acks.setdefault(stream, []).append(entry_id)
        self.unacked.add((stream, entry_id))
        part = self._part(stream)
        self._counts[(self._stats(part), counter)] += 1
        if ledger_key is not None:
            self._ledger_deletes.append(ledger_key)
            self._retry_at_deletes.setdefault(part, []).append(entry_id)
        self._dirty.set()

    def count(self, counter: str, n: int = 1, stream: str | None = None) -> None:
        self._counts[(self._stats(self._part(stream or self.default_stream)), counter)] += n
        self._dirty.set()

    def _empty(self) -> bool:
        return not (self._acks or self._counts or self._ledger_deletes)

    async def run(self) -> None:
        """The flusher task: returns once `close()` was called and everything is sent."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.flush()
            except RedisError as err:
                log.error("pool.flush_failed", group=self.group, error=f"{type(err).__name__}: {err}")
                await asyncio.sleep(FLUSH_RETRY_S)
                self._dirty.set()
                continue
            if self._closing and self._empty():
                return

    def close(self) -> None:
        """Ask the flusher to send what is left and return."""
        self._closing = True
        self._dirty.set()

    async def flush(self) -> None:
        """Send what has gathered as one pipeline; on error it is kept for the next pass."""
        async with self._lock:
            if self._empty():
                return
            acks, self._acks = self._acks, {}
            counts, self._counts = self._counts, Counter()
            ledgers, self._ledger_deletes = self._ledger_deletes, []
            retry_ats, self._retry_at_deletes = self._retry_at_deletes, {}
            newest, self._newest = self._newest, {}
            pipe = self.redis.pipeline(transaction=False)
            queue_writes(pipe, newest)
            for stream, ids in acks.items():
                pipe.xack(stream, self.group, *ids)
            for (stats_key, counter), n in counts.items():
                pipe.hincrby(stats_key, counter, n)
            for same_slot in by_tag(ledgers):  # on a cluster, one DEL may not span two partitions
                pipe.delete(*same_slot)
            for part, ids in retry_ats.items():
                pipe.hdel(part.retry_at(self.pool), *ids)
                pipe.hdel(part.uncounted(self.pool), *ids)
            try:
                await pipe.execute()
            except RedisError:
                for stream, ids in acks.items():
                    self._acks[stream] = ids + self._acks.get(stream, [])
                self._counts.update(counts)
                self._ledger_deletes = ledgers + self._ledger_deletes
                for part, ids in retry_ats.items():
                    self._retry_at_deletes[part] = ids + self._retry_at_deletes.get(part, [])
                merge_writes(self._newest, newest)
                raise
            self.unacked.difference_update((s, e) for s, ids in acks.items() for e in ids)
