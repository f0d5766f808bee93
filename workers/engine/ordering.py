"""`ordering: object`: one run per object at a time, in stream order, across the pool's consumers.

Within one consumer, per stream, entries are keyed by their object (the partition key: the
`object_id` field, else the event id). The first entry of an object is its head and runs;
later ones are held back in a FIFO (they hold no slot, and stay pending in Redis under this
consumer, so a crash loses nothing). A head that fails stays pending and keeps its place: the
reclaimer runs it again when due, and only once it is acked (done, stale) or dead-lettered
does the next held entry of its object become ready. Ready entries start before anything new
is read, each in a free slot, so `concurrency` still bounds the runs in flight.

Across consumers, each stream is read by the holder of its lease (workers/engine/lease.py has
the fencing). Every consumer writes a heartbeat (its leases and held-back count) in one hash
per pool; each aims for ceil(streams / live consumers) leases: it takes free ones, and lets go
of extras once nothing of theirs runs here. On taking a lease, the holder adopts every pending
entry of the stream (whoever it was delivered to) in stream order before it reads or starts
any: the first per object becomes its head, due again after its backoff like any failed
attempt (one attempt may be counted that never ran); the rest are held back. A consumer that
could not renew in time stops starting the stream's entries, forgets its state there, and
adopts again once it holds the lease.

After `fanout partitions resize` the pool takes leases on the new layout's streams too (when
the consumer's streams change, layout_watch.py), behind the resize barrier (workers/engine/barrier.py has the rule).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from workers.engine.barrier import Barrier
from workers.engine.executor import Entry
from workers.engine.lease import LEASE_RENEW_S, LEASE_SLACK_S, StreamLease
from workers.stream_ops import text

# Readers stop reading while this many entries are held back in one consumer.
MAX_HELD = 10_000
# How long the ordered reader waits when its streams had nothing new (the lease read cannot block).
IDLE_POLL_S = 0.02


def object_of(fields: Any) -> str:
    """An entry's partition key: its object id, else its event id (bus/partitions.partition_key)."""
    return text(fields.get(b"object_id") or fields.get(b"id") or b"")


def heartbeat_key(prefix: str, pool: str) -> str:
    """Hash: consumer -> JSON {seen_ms, streams (leases held), held (entries held back), held_objects}."""
    return "{" + prefix + "}:ordered:" + pool


class StreamOrder:
    """The per-object FIFOs of one stream in this consumer."""

    def __init__(self) -> None:
        self.heads: dict[str, str] = {}  # object -> its head's entry id
        self.held: dict[str, deque[Entry]] = {}
        self.held_ids: set[str] = set()


class Ordering:
    """The ordered dispatch of one consumer; `owner` is the Consumer (start, slots, inflight)."""

    def __init__(self, owner: Any, streams: list[str]) -> None:
        self.owner = owner
        self.streams: list[str] = []
        self.leases: dict[str, StreamLease] = {}
        self.barrier = Barrier(owner.redis, owner.group)
        self.use_streams(streams)
        self.orders: dict[str, StreamOrder] = {}  # streams adopted, ready to read and start
        self.ready: deque[Entry] = deque()
        self.releasing: set[str] = set()
        self.heartbeat = heartbeat_key(owner.settings.key_prefix, owner.name)

    # --- the consumer's hooks ----------------------------------------------------------------

    @property
    def held_count(self) -> int:
        return sum(len(o.held_ids) for o in self.orders.values())

    def reader_free(self) -> int:
        """Start what is ready, then the slots the reader may fill: none while MAX_HELD are held back."""
        self.start_ready()
        return 0 if self.held_count >= MAX_HELD else self.owner.slots.free()

    def use_streams(self, streams: list[str]) -> None:
        """The pool's streams now (a resize): leases for new ones; the lease pass lets dropped ones go."""
        ttl_s = self.owner.config.timeout_s + LEASE_SLACK_S
        for stream in streams:
            if stream not in self.leases:
                self.leases[stream] = StreamLease(self.owner.redis, stream, self.owner.name, self.owner.consumer,
                                                  ttl_s)
        self.streams = list(streams)

    def owns(self, stream: str) -> bool:
        return stream in self.orders and stream not in self.releasing

    def owned(self) -> list[str]:
        return [s for s in self.streams if self.owns(s)]

    async def then_next(self, run: Awaitable[None], entry: Entry) -> None:
        """Run a head (the consumer's `_process`), then see whether its object's next is ready."""
        await run
        await self.finished(entry)

    def holds(self, stream: str, entry_id: str) -> bool:
        """Held back here (or ready): not to be claimed by the reclaimer meanwhile."""
        order = self.orders.get(stream)
        return order is not None and entry_id in order.held_ids

    def admit(self, entry: Entry) -> bool:
        """Whether `entry` may start now; if not it is held back (or, without a valid lease, dropped)."""
        order = self.orders.get(entry.stream)
        if order is None or not self.leases[entry.stream].may_start(self.owner.config.timeout_s):
            self.fence(entry.stream)
            return False
        obj = object_of(entry.fields)
        head = order.heads.get(obj)
        if head is None or head == entry.entry_id:
            order.heads[obj] = entry.entry_id
            order.held_ids.discard(entry.entry_id)
            return True
        if entry.entry_id not in order.held_ids:
            order.held.setdefault(obj, deque()).append(entry)
            order.held_ids.add(entry.entry_id)
        return False

    async def finished(self, entry: Entry) -> None:
        """After a head's run: once it is done (acked or dead-lettered), its object's next is ready."""
        order = self.orders.get(entry.stream)
        obj = object_of(entry.fields)
        if order is None or order.heads.get(obj) != entry.entry_id:
            return
        if not self.owner.outcomes.unacked(entry.stream, entry.entry_id):
            try:
                rows: Any = await self.owner.redis.xpending_range(
                    entry.stream, self.owner.group, min=entry.entry_id, max=entry.entry_id, count=1)
            except RedisError:
                self.fence(entry.stream)  # done or not, Redis will say when the stream is adopted again
                return
            if rows:
                return  # pending for a retry: it keeps its place
        if self.orders.get(entry.stream) is not order:
            return  # fenced meanwhile
        queue = order.held.get(obj)
        if not queue:
            order.heads.pop(obj, None)
            order.held.pop(obj, None)
            return
        nxt = queue.popleft()
        order.heads[obj] = nxt.entry_id
        self.ready.append(nxt)
        self.start_ready()

    def start_ready(self) -> None:
        """Start ready entries while there are free slots (before the reader takes any); none once
        stopping: they stay pending, for the next holder to adopt."""
        while self.ready and self.owner.slots.free() > 0 and not self.owner.stopping:
            self.owner.start(self.ready.popleft())

    async def read(self, count: int) -> Any:
        """New entries of the streams this consumer owns (XREADGROUP fenced by each lease)."""
        reply: list[Any] = []
        for stream in self.streams:
            if self.owns(stream) and count > 0:
                got = await self.leases[stream].read(self.owner.group, self.owner.consumer, count,
                                                     self.barrier.passed_boundary(stream))
                for _, entries in got:
                    count -= len(entries)
                reply += got
        if not reply:
            await asyncio.sleep(IDLE_POLL_S)
        return reply

    # --- leases --------------------------------------------------------------------------------

    def fence(self, stream: str) -> None:
        """Stop starting `stream`'s entries and forget them: adopted again once the lease is ours."""
        if self.orders.pop(stream, None) is not None:
            self.ready = deque(e for e in self.ready if e.stream != stream)
            self.owner.log.warning("ordering.fenced", stream=stream)

    def running_in(self, stream: str) -> int:
        return sum(1 for s, _ in self.owner.inflight if s == stream)

    async def tick(self) -> None:
        """One lease pass: heartbeat, renew or take leases up to the fair share, adopt, let extras go."""
        redis, now_ms = self.owner.redis, self.owner.now_ms()
        if self.owner.streams != self.streams:  # the layout changed (layout_watch.py), or the claim at start
            self.use_streams(self.owner.streams)
        if await self.barrier.refresh(self.streams):
            self.owner.log.info("ordering.barrier_passed", boundaries=len(self.barrier.boundaries))
        await self._let_dropped_go()
        live = await self._beat(redis, now_ms)
        target = math.ceil(len(self.streams) / max(1, live))
        held = [s for s in self.streams if self.leases[s].held and s not in self.releasing]
        ttl_ms = int((self.owner.config.timeout_s + LEASE_SLACK_S) * 1000)  # timeout_s follows reloads
        for stream in self.streams:
            lease = self.leases[stream]
            lease.ttl_ms = ttl_ms
            if stream in self.releasing:  # renewed until what it started here has ended
                if self.running_in(stream) == 0:
                    await lease.release()
                    self.releasing.discard(stream)
                else:
                    await lease.keep()
                continue
            if lease.held or len(held) < target:
                was = lease.held
                if await lease.keep():
                    if not was:
                        held.append(stream)
                elif stream in self.orders:
                    self.fence(stream)
            if lease.held and stream in self.orders and await self._foreign_pending(stream):
                self.fence(stream)  # a stale holder claimed one back: take everything over again
            if (lease.held and stream not in self.orders and self.running_in(stream) == 0
                    and self.barrier.allows(stream)):
                await self.adopt(stream)
        for stream in held[target:]:
            self.releasing.add(stream)
            self.fence(stream)

    async def _let_dropped_go(self) -> None:
        """Release the leases of streams no longer read (a drained layout), once nothing runs there."""
        for stream in [s for s in self.leases if s not in self.streams]:
            self.fence(stream)
            self.releasing.discard(stream)
            if self.running_in(stream) == 0:
                await self.leases.pop(stream).release()

    async def _foreign_pending(self, stream: str) -> bool:
        summary: Any = await self.owner.redis.xpending(stream, self.owner.group)
        return any(text(c["name"]) != self.owner.consumer for c in summary.get("consumers") or [])

    async def _beat(self, redis: aioredis.Redis, now_ms: int) -> int:
        """Write this consumer's heartbeat; how many consumers of the pool are live."""
        held_objects = sum(1 for o in self.orders.values() for q in o.held.values() if q)
        mine = {"seen_ms": now_ms, "streams": self.owned(), "held": self.held_count, "held_objects": held_objects}
        await redis.hset(self.heartbeat, self.owner.consumer, orjson.dumps(mine))
        beats: Any = await redis.hgetall(self.heartbeat)
        horizon = now_ms - int((self.owner.config.timeout_s + LEASE_SLACK_S) * 1000)
        dead = [c for c, raw in beats.items() if orjson.loads(raw)["seen_ms"] < horizon]
        if dead:
            await redis.hdel(self.heartbeat, *dead)
        return len(beats) - len(dead)

    async def adopt(self, stream: str) -> None:
        """Take over every pending entry of `stream`, in stream order, before reading it."""
        owner = self.owner
        pending: list[Any] = []
        start = "-"
        while True:
            rows: Any = await owner.redis.xpending_range(stream, owner.group, min=start, max="+", count=1000)
            pending += rows
            if len(rows) < 1000:
                break
            start = "(" + text(rows[-1]["message_id"])
        order = StreamOrder()
        ids = [text(r["message_id"]) for r in pending]
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            await owner.redis.xclaim(stream, owner.group, owner.consumer, min_idle_time=0, message_ids=chunk,
                                     justid=True)
            rows = await owner.redis.xrange(stream, min=chunk[0], max=chunk[-1])
            wanted = set(chunk)
            for entry_id, fields in rows:
                eid = text(entry_id)
                if eid not in wanted:
                    continue
                obj = object_of(fields)
                if obj not in order.heads:
                    order.heads[obj] = eid  # due again after its backoff, through the reclaimer
                else:
                    order.held.setdefault(obj, deque()).append(Entry(stream, eid, fields, 1))
                    order.held_ids.add(eid)
        self.orders[stream] = order
        owner.log.info("ordering.adopted", stream=stream, pending=len(ids), held=len(order.held_ids))

    async def close(self) -> None:
        """Let every lease go (after the drain) and drop the heartbeat, so peers take over at once."""
        for stream, lease in self.leases.items():
            if self.running_in(stream) == 0:
                await lease.release()
        await self.owner.redis.hdel(self.heartbeat, self.owner.consumer)

    async def run(self, stopping: Callable[[], bool]) -> None:
        """The lease task: a pass at once, then every LEASE_RENEW_S; a failed pass is logged and retried."""
        while not stopping():
            try:
                await self.tick()
            except RedisError as err:
                self.owner.log.error("ordering.lease_failed", error=f"{type(err).__name__}: {err}")
            await asyncio.sleep(LEASE_RENEW_S)
