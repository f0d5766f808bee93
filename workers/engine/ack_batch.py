"""The acks, counts and stale-guard writes of the consumer's successes: one round trip per loop tick.

Written for workers/engine/outcomes.py (the ack of one entry there is ACK_SCRIPT;
here many entries share one round trip). Clearing an entry's retry time also
clears its paused-run count, as ACK_SCRIPT does. Each entry's counters, retry
time and paused runs are those of its stream's partition. The acks and counts go
as ack_script.py's script: one call per flush on a single Redis, one per partition
on a Redis Cluster.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError, RedisError

from bus.connection import is_cluster
from bus.keys import Keys
from bus.partitions import stream_partition
from workers.engine.ack_script import ACKS_SCRIPT, ACKS_SHA, Block, Packer, acks_call
from workers.engine.resp import Packed, exchange
from workers.newest import Newest, merge_writes, queue_writes

log = structlog.get_logger("fanout.worker")

FLUSH_RETRY_S = 0.2
# Over many streams, a flush waits for about two entries per stream it would touch (the cost of
# a flush is mostly per stream: ack_script.py), but never longer than this after it was woken.
GATHER_PER_STREAM = 2
GATHER_MAX_S = 0.01


class AckBatch:
    """The acks and counter increments of one loop tick, sent to Redis in one round trip.

    Entry tasks only append here; a single flusher task sends what has gathered since its last
    pass. Under load that is one round trip for many entries, which is most of the difference
    between a transaction per entry and this. An entry finished but not yet acked is listed in
    `unacked`, so the reclaimer never runs it a second time while its ack is on its way.
    Counters and retry times go to the partition of the stream they came from.
    """

    def __init__(self, redis: aioredis.Redis, keys: Keys, pool: str) -> None:
        self.redis = redis
        self.cluster = is_cluster(redis)
        self.prefix = keys.prefix
        self.pool = pool
        self.group = keys.group(pool)
        # Counts with no stream (none today in the engine) go to the pool's first partition.
        self.default_stream = keys.stream(pool)
        self.unacked: set[tuple[str, str]] = set()
        # All by stream (a string: cheap to hash once per entry); its partition is found at flush.
        self._acks: dict[str, list[str]] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._redelivered: dict[str, list[tuple[str, str]]] = {}
        # Stale-guard writes, {bucket: {object id: newest created}}: sent before the acks.
        self._newest: dict[str, dict[str, int]] = {}
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False
        self._packer = Packer(pool, self.group, ACKS_SHA)

    def complete(self, stream: str, entry_id: str, counter: str, ledger_key: str | None,
                 newest: Newest | None = None) -> None:
        if newest is not None:
            merge_writes(self._newest, {newest.current: {newest.object_key: newest.created}})
        self._acks.setdefault(stream, []).append(entry_id)
        self.unacked.add((stream, entry_id))
        self._counts[(stream, counter)] += 1
        if ledger_key is not None:
            self._redelivered.setdefault(stream, []).append((entry_id, ledger_key))
        self._dirty.set()

    def count(self, counter: str, n: int = 1, stream: str | None = None) -> None:
        self._counts[(stream or self.default_stream, counter)] += n
        self._dirty.set()

    def _empty(self) -> bool:
        return not (self._acks or self._counts or self._redelivered or self._newest)

    async def run(self) -> None:
        """The flusher task: returns once `close()` was called and everything is sent."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._gather()
            try:
                await self.flush()
            except Exception as err:  # a flusher that died would leave every later entry unacked
                log.error("pool.flush_failed", group=self.group, error=f"{type(err).__name__}: {err}",
                          exc_info=not isinstance(err, RedisError))
                await asyncio.sleep(FLUSH_RETRY_S)
                self._dirty.set()
                continue
            if self._closing and self._empty():
                return

    async def _gather(self) -> None:
        """Over several streams, wait (up to GATHER_MAX_S) for more entries to share the flush.

        With one stream (one partition) this returns at once: a flush per loop tick, as before.
        Finished entries waiting here are `unacked`, so nothing runs them again meanwhile. The
        loop wakes once per finished entry, so its test is O(1) (`unacked` counts what gathered:
        nothing else is being sent while the flusher gathers) and one timer covers the whole wait.
        """
        try:
            async with asyncio.timeout(GATHER_MAX_S):
                while (not self._closing and len(self._acks) > 1
                       and len(self.unacked) < GATHER_PER_STREAM * len(self._acks)):
                    self._dirty.clear()
                    await self._dirty.wait()
        except TimeoutError:
            return

    def close(self) -> None:
        """Ask the flusher to send what is left and return."""
        self._closing = True
        self._dirty.set()

    def _blocks(self) -> list[Block]:
        """What has gathered, one block per stream (split where a stream has many), and forget it."""
        blocks: dict[str, Block] = {}

        def block(stream: str) -> Block:
            if stream not in blocks:
                blocks[stream] = Block(stream, stream_partition(self.prefix, stream))
            return blocks[stream]

        for stream, ids in self._acks.items():
            block(stream).ids = ids
        for (stream, counter), n in self._counts.items():
            block(stream).counts[counter] = n
        for stream, redelivered in self._redelivered.items():
            block(stream).redelivered = redelivered
        self._acks, self._counts, self._redelivered = {}, Counter(), {}
        return [chunk for b in blocks.values() for chunk in b.chunks()]

    def _keep(self, block: Block) -> None:
        """A block that was not written: gathered again, ahead of what came since, for the next pass."""
        self._acks[block.stream] = block.ids + self._acks.get(block.stream, [])
        self._counts.update({(block.stream, c): n for c, n in block.counts.items()})
        self._redelivered[block.stream] = block.redelivered + self._redelivered.get(block.stream, [])
        for mapping in (self._acks, self._redelivered):
            if not mapping[block.stream]:
                del mapping[block.stream]

    async def flush(self) -> None:
        """Send what has gathered in one round trip; what was not written is kept for the next pass."""
        async with self._lock:
            if self._empty():
                return
            blocks = self._blocks()
            newest, self._newest = self._newest, {}
            # One call for all on a single Redis; on a cluster one per block (one slot each).
            calls = [[b] for b in blocks] if self.cluster else [blocks] if blocks else []
            try:
                results = await (self._send_cluster(newest, calls) if self.cluster else self._send(newest, blocks))
            except Exception as err:  # the client's own errors too: nothing is lost, all is kept
                results = [err] * (len(newest) + len(calls))
            failed = [r for r in results if isinstance(r, Exception)]
            if any(isinstance(r, Exception) for r in results[:len(newest)]):
                merge_writes(self._newest, newest)  # idempotent: the newest `created` is kept
            for call, result in zip(calls, results[len(newest):], strict=True):
                for block in call:
                    if isinstance(result, Exception):
                        self._keep(block)
                    else:
                        self.unacked.difference_update((block.stream, e) for e in block.ids)
            if failed:
                raise failed[0]

    async def _send_cluster(self, newest: dict[str, dict[str, int]], calls: list[list[Block]]) -> list[Any]:
        """The stale-guard writes, then one script per partition: the cluster pipeline sends each node its own."""
        pipe = self.redis.pipeline(transaction=False)
        queue_writes(pipe, newest)  # before the acks (workers/newest.py)
        for call in calls:
            pipe.execute_command("EVALSHA", ACKS_SHA, *acks_call(self.pool, self.group, call))
        results = list(await pipe.execute(raise_on_error=False))
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:  # a node restarted, failed over, or never saw the script: the call did not run there
            again = self.redis.pipeline(transaction=False)
            for i in missing:
                again.eval(ACKS_SCRIPT, *acks_call(self.pool, self.group, calls[i - len(newest)]))
            for i, result in zip(missing, await again.execute(raise_on_error=False), strict=True):
                results[i] = result
        return results

    async def _send(self, newest: dict[str, dict[str, int]], blocks: list[Block]) -> list[Any]:
        """The stale-guard writes, then one EVALSHA for every block, as one write on one connection."""
        packed = Packed()
        queue_writes(packed, newest)  # before the acks (workers/newest.py)
        commands = packed.commands + ([self._packer.pack(blocks)] if blocks else [])
        results = await exchange(self.redis, commands)
        if blocks and isinstance(results[-1], NoScriptError):
            # Redis restarted or its script cache was flushed: the call did not run. Load, send again.
            await self.redis.script_load(ACKS_SCRIPT)
            results[-1:] = await exchange(self.redis, commands[-1:])
        return results
