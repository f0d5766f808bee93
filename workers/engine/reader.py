"""Read new entries from every stream of a pool (one per partition) for one consumer.

On a single Redis, one XREADGROUP names every stream: it returns at once when any
of them has entries, and otherwise blocks until one does, so a partition adds no
latency and no round trip.

On a Redis Cluster a command may only name keys of one slot, and every partition
is its own slot. A read is then one non-blocking XREADGROUP per stream, sent in
one pipeline (redis-py's cluster pipeline sends each node its commands at once).
A stream whose read comes back empty is *clean*: one waiter task keeps an
`XREAD BLOCK ... STREAMS s <last id>` pending on it, which delivers nothing to
the group (so cancelling or losing it loses nothing) and returns as soon as an
entry newer than `<last id>` is added; the stream is then *dirty* again and the
reader wakes. The last id is read with XREVRANGE just *before* the XREADGROUP in
the same pipeline: whatever arrives after it is either returned by that
XREADGROUP or wakes the waiter, so no entry waits for the block timeout. Each
sweep reads only the dirty streams: under a trickle, one stream, not all.

Every cluster command here names its node (`target_nodes`), found from the
stream's slot in the client's slot map. XREAD and XREADGROUP take their keys
after a STREAMS keyword, so redis-py cannot find them from the command table: it
asks the server (`COMMAND GETKEYS`), one awaited round trip before each command.
A profile of a 16-partition drain spent 66% of the consumer's time there. A
command that meets a moved slot is answered MOVED and redis-py sends it again
by its slot, as without a target.

COUNT applies per stream, so each stream is asked for its share of the free
slots (at least one; two when the share would be one of as many free slots as
there are streams): a read may return more entries than there are free slots
(at most max(free, streams - free) more); the consumer keeps those for its next
free slots (Consumer.backlog).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from workers.engine.executor import Entry
from workers.engine.resp import command, exchange, stream_entries
from workers.stream_ops import text

log = structlog.get_logger("fanout.worker")

# (stream name, [(entry id, fields), ...]) as XREADGROUP returns them, names as text.
Batch = list[tuple[str, list[tuple[Any, Any]]]]

WAITER_RETRY_S = 0.2
WAITER_CLOSE_S = 1.0


def is_cluster(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)


def per_stream_count(free: int, streams: int) -> int:
    """Each stream's share of `free` slots, rounded up (so one stream with work still fills them).

    When there are at least as many free slots as streams, but not twice as many, the share would
    be 1: each is asked for 2 instead. A read's cost is mostly per stream named (on Redis's side as
    on ours), so with many partitions this halves the reads; the surplus waits in Consumer.backlog
    (as a few entries may with any share) and is at most `free` entries, for about one batch.
    """
    share = max(1, -(-free // max(1, streams)))
    return 2 if share == 1 and streams > 1 and free >= streams else share


def new_entries(batch: Batch, counted: Callable[[int], None]) -> list[Entry]:
    """The entries of a read, as first attempts; `counted` is told each stream's batch size."""
    out: list[Entry] = []
    for stream, entries in batch:
        counted(len(entries))
        out.extend(Entry(text(stream), text(entry_id), fields, 1) for entry_id, fields in entries)
    return out


class StreamReader:
    """`read(free)` returns the new entries of the pool's streams, waiting up to block_ms for some."""

    def __init__(self, redis: aioredis.Redis, group: str, consumer: str, streams: list[str],
                 block_ms: int) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.block_ms = block_ms
        self.cluster = is_cluster(redis)
        self.streams: list[str] = []
        self._packed: dict[int, bytes] = {}
        self._last_ids: dict[str, Any] = {}
        self._armed: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._closed = False
        self._slots: dict[str, int] = {}
        # Streams that may hold undelivered entries (a cluster's sweep reads only these).
        self._dirty: set[str] = set()
        self.set_streams(streams)

    def set_streams(self, streams: list[str]) -> None:
        """Read these streams from now on (a layout changed, or a draining one was dropped)."""
        for gone in set(self._waiters) - set(streams):
            self._waiters.pop(gone).cancel()
            self._armed.pop(gone, None)
        self.streams = list(streams)
        self._dirty = set(streams)
        self._packed.clear()

    def _xreadgroup(self, count: int) -> bytes:
        """The single Redis's read of every stream, packed once per COUNT (workers/engine/resp.py)."""
        packed = self._packed.get(count)
        if packed is None:
            packed = self._packed[count] = command(
                "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count, "BLOCK", self.block_ms,
                "STREAMS", *self.streams, *[">"] * len(self.streams))
        return packed

    async def read(self, free: int) -> Batch:
        count = per_stream_count(free, len(self.streams))
        if not self.cluster:
            reply = (await exchange(self.redis, [self._xreadgroup(count)]))[0]
            if isinstance(reply, Exception):
                raise reply
            return [(text(s), entries) for s, entries in stream_entries(reply)]
        if not self._dirty:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.block_ms / 1000)
            except TimeoutError:
                self._dirty.update(self.streams)  # a safety net: sweep them all once per block_ms
        return await self._sweep(per_stream_count(free, len(self._dirty) or 1))

    async def _sweep(self, count: int) -> Batch:
        """One non-blocking XREADGROUP per stream that may have entries, pipelined per node.

        A stream whose read came back empty is clean: its waiter watches it from the last id
        read just before. One that returned entries stays dirty (it may hold more).
        """
        streams = [s for s in self.streams if s in self._dirty]
        if not streams:
            return []
        pipe: Any = self.redis.pipeline(transaction=False)
        for stream in streams:
            node = self._node(stream)
            pipe.execute_command("XREVRANGE", stream, "+", "-", "COUNT", 1, **node)
            pipe.execute_command("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count,
                                 "STREAMS", stream, ">", **node)
        replies = await pipe.execute()
        batch: Batch = []
        for i, stream in enumerate(streams):
            newest, read = replies[2 * i], replies[2 * i + 1]
            entries = [e for _, es in read or [] for e in es]
            if entries:
                batch.append((stream, entries))
                continue
            self._last_ids[stream] = newest[0][0] if newest else "0-0"
            self._dirty.discard(stream)
            self._arm(stream)
        return batch

    def _node(self, stream: str) -> dict[str, Any]:
        """`target_nodes=` the master of the stream's slot, or nothing if the map has none (redis-py
        then routes the command itself, and refreshes its map on the way)."""
        slot = self._slots.get(stream)
        if slot is None:
            slot = self._slots[stream] = key_slot(stream.encode())
        try:
            return {"target_nodes": self.redis.nodes_manager.get_node_from_slot(slot)}  # type: ignore[attr-defined]
        except Exception:  # SlotNotCoveredError, or a map being rebuilt after a failover
            return {}

    def _arm(self, stream: str) -> None:
        if stream not in self._waiters or self._waiters[stream].done():
            self._armed[stream] = asyncio.Event()
            self._waiters[stream] = asyncio.create_task(self._waiter(stream), name=f"wake:{stream}")
        self._armed[stream].set()

    async def _waiter(self, stream: str) -> None:
        """Mark `stream` dirty and wake the reader when it gets an entry after the last id the reader saw.

        It also ends once the reader is closed, not only when cancelled: redis-py may turn the
        cancellation of a blocked XREAD into a ConnectionError while it drops the connection, and
        a waiter that took that for a failed read would wait for its next turn forever, holding
        asyncio's shutdown (seen in bench partition_workers).
        """
        armed = self._armed[stream]
        while not self._closed:
            await armed.wait()
            armed.clear()
            while not self._closed:  # one blocking XREAD outstanding while the stream is clean
                try:
                    reply: Any = await self.redis.execute_command(  # type: ignore[no-untyped-call]
                        "XREAD", "COUNT", 1, "BLOCK", self.block_ms, "STREAMS", stream,
                        self._last_ids.get(stream, "$"), **self._node(stream))
                except RedisError as err:
                    if self._closed:
                        return
                    log.warning("pool.wake_failed", stream=stream, error=f"{type(err).__name__}: {err}")
                    await asyncio.sleep(WAITER_RETRY_S)
                    break  # let the reader sweep it: its own read reports the failure, or finds entries
                if reply:
                    break
            self._dirty.add(stream)
            self._wake.set()

    async def close(self) -> None:
        self._closed = True
        for armed in self._armed.values():
            armed.set()  # a waiter between two XREADs sees the flag and returns
        tasks = list(self._waiters.values())
        self._waiters.clear()
        for task in tasks:
            task.cancel()
        if tasks:  # a blocked XREAD holds nothing of ours: do not wait long for its connection to close
            await asyncio.wait(tasks, timeout=WAITER_CLOSE_S)
