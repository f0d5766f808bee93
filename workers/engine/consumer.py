"""The consumer of one pool: read, hold the slots, reclaim, trim, drain, follow routing.yaml.

One process runs one consumer of the pool's group. Its tasks:

* the reader: XREADGROUP with COUNT equal to the free concurrency slots (slots.py);
* one task per in-flight entry, run by the pool's executor (executor.py);
* the flusher: the acks and counts gathered since its last pass (outcomes.py);
* the reclaimer (reclaim.py), the trimmer (retention.py), the routing watcher;
* the heartbeat, from which `fanout status` counts live processes (workers/heartbeat.py).

lifecycle.py starts them and stops them in order; this module is the reader and the
entry tasks.

An entry is acked only once every handler it names has succeeded, or once it
is in the dead-letter stream (one script with the ack). Anything else leaves it
pending, so a crash leaves duplicates, never losses.

A pool has one stream per partition (bus/partitions.py); the consumer reads those of
the layout it claimed at start and of layouts still draining (reader.py, layout_watch.py).
Every entry carries its stream (`Entry.stream`), and so its partition's keys.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from bus import defaults
from bus.errors import ConfigError
from bus.keys import Keys
from bus.partitions import Layout, streams_to_read
from bus.redaction import redact_secrets
from bus.reload import RoutingHolder
from bus.routing import PoolConfig
from bus.settings import Settings
from workers.engine import layout_watch, lifecycle, reclaim, retention
from workers.engine.async_executor import AsyncExecutor
from workers.engine.backlog import Backlog, read_ahead
from workers.engine.entries import run_entry
from workers.engine.executor import Entry, Executor
from workers.engine.follow import vet_reloads
from workers.engine.observer import NoObserver, Observer
from workers.engine.ordering import Ordering
from workers.engine.outcomes import Outcomes
from workers.engine.reader import StreamReader, new_entries
from workers.engine.slots import Slots
from workers.handlers import HandlerSet, pool_handler_names
from workers.resources import Resources
from workers.rq.bridge import RqExecutor
from workers.stream_ops import ensure_groups

log = structlog.get_logger("fanout.worker")

Clock = Callable[[], float]


def consumer_name() -> str:
    """Unique per process, so a restarted worker never inherits a dead one's pending entries by name."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Consumer:
    """One consumer of a pool. Build it, then `await run()`; `request_stop()` drains and returns."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        *,
        redis: aioredis.Redis,
        holder: RoutingHolder,
        clock: Clock = time.time,
        concurrency: int | None = None,
        burst: bool = False,
        consumer: str | None = None,
        block_ms: int = defaults.BLOCK_MS,
        burst_block_ms: int = defaults.BURST_BLOCK_MS,
        shutdown_grace_s: float = defaults.SHUTDOWN_GRACE_S,
        claim_margin_s: float = defaults.CLAIM_MARGIN_S,
        trim_interval_s: float = defaults.TRIM_INTERVAL_S,
        watch_routing: bool = True,
        strict: bool = True,
        resources: Resources | None = None,
        observer: Observer | None = None,
    ) -> None:
        if name not in holder.table.pools:
            known = ", ".join(sorted(holder.table.pools)) or "none"
            raise ConfigError(f"pool {name!r} is not declared in {holder.path} (pools: {known})")
        self.settings = settings
        self.name = name
        self.redis = redis
        self.holder = holder
        self.clock = clock
        self.keys = Keys(settings.key_prefix, settings.partitions)
        # Every stream this consumer reads: one per partition, of the layout claimed in run().
        self.streams = streams_to_read(Layout(settings.partitions), settings.key_prefix, name)
        self.group = self.keys.group(name)
        self.consumer = consumer or consumer_name()
        self.backlog = Backlog()
        self.burst = burst
        self.claim_margin_s = claim_margin_s
        self.trim_interval_s = trim_interval_s
        self.resources = resources or Resources()
        self.observer: Observer = observer or NoObserver()
        self._concurrency = concurrency
        self._block_ms = burst_block_ms if burst else block_ms
        self.shutdown_grace_s = shutdown_grace_s
        self.watch_routing = watch_routing
        self._config_table, self._config = holder.table, holder.table.pools[name]
        self.handlers = HandlerSet()
        self.handlers.load(pool_handler_names(holder.table, name), holder.table, strict=strict)
        if strict:
            vet_reloads(holder, name)
        self.threads: ThreadPoolExecutor | None = None
        self.log = log.bind(pool=name, consumer=self.consumer)
        # Entries being run by this process, by (stream, entry id); read beyond the free slots: backlog.
        self.inflight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.slots = Slots(lambda: self.concurrency)
        self.reader = StreamReader(redis, self.group, self.consumer, self.streams, self._block_ms)
        self._stopping = False
        self._had_work = False  # the last read filled what it asked for: read ahead on the next
        self.read_failures = 0
        self.outcomes = Outcomes(redis, self.keys, name, self.now_ms, redact=lambda value: redact_secrets(
            value, settings, holder.table.secret_env_names()))
        # The executor is fixed for the life of the process: `rq` enqueues jobs, `async` runs here.
        self.executor_kind = self._config.executor
        self.executor: Executor = RqExecutor(self) if self.executor_kind == "rq" else AsyncExecutor(self)
        self.ordering = Ordering(self, self.streams) if self._config.ordering == "object" else None  # fixed too
        self.own_entries_only = self.ordering is not None

    @property
    def config(self) -> PoolConfig:
        """The pool's options from the routing table in use (the last known, if the pool was removed)."""
        table = self.holder.table  # read several times per entry: look the pool up once per table
        if table is not self._config_table:
            self._config_table, self._config = table, table.pools.get(self.name, self._config)
        return self._config

    @property
    def concurrency(self) -> int:
        return self._concurrency or self.config.concurrency

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def busy(self, stream: str, entry_id: str) -> bool:
        """Running here, or finished with its ack on its way: not to be run again meanwhile."""
        return ((stream, entry_id) in self.inflight or self.outcomes.unacked(stream, entry_id)
                or (self.ordering is not None and self.ordering.holds(stream, entry_id))
                or self.backlog.holds(stream, entry_id))

    # --- running ---------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    def request_stop(self) -> None:
        """Stop reading; in-flight entries finish (within the grace period), are acked, and run() returns."""
        self._stopping = True
        self.slots.wake()

    def use_streams(self, streams: list[str]) -> None:
        """Read these streams from now on (the layout changed, or a draining one was dropped)."""
        self.streams = streams
        self.reader.set_streams(streams)

    async def run(self) -> None:
        """Until stopped, or drained in burst mode (workers/engine/lifecycle.py: start and stop order)."""
        await lifecycle.run(self)

    def mark_stopping(self) -> None:
        self._stopping = True

    async def read_loop(self) -> None:
        while not self._stopping:
            await self.slots.reader_turn()
            self._start_held()
            if self.ordering is None:
                free = self.slots.free()
                ahead = read_ahead(self.concurrency, len(self.backlog)) if self._had_work else 0
            else:
                free, ahead = self.ordering.reader_free(), 0
            if free + ahead <= 0 or (self.backlog and not ahead):
                await self.slots.wait_freed()
                continue
            taken = self.slots.reserve(free)
            try:
                batch = await (self.ordering.read(taken) if self.ordering is not None
                               else self.reader.read(taken + ahead))
            except Exception as err:  # a client's own bug must not end the reader either
                # Seen once during a cluster failover: redis-py's cluster client raised RuntimeError
                # while dropping a stale connection (it resets the connection first, so the next
                # read works). Any error here is a failed read, never the end of the consumer.
                self.slots.release(taken)
                self.read_failures += 1
                self.log.error("pool.read_failed", error=f"{type(err).__name__}: {err}",
                               exc_info=not isinstance(err, RedisError))
                await asyncio.sleep(self._block_ms / 1000)
                if "NOGROUP" in str(err):  # the stream was deleted by hand: start it again
                    await ensure_groups(self.redis, self.streams, self.group)
                continue
            except BaseException:
                self.slots.release(taken)
                raise
            self.slots.release(taken)
            entries = new_entries(batch, lambda n: self.observer.read_batch(self.name, n))
            # Read ahead only while the streams have work: an idle pool's read is one blocking wait.
            self._had_work = len(entries) >= taken + ahead > 0
            for entry in entries:
                # Beyond the free slots (read-ahead; COUNT is per stream): started as slots free (backlog.py).
                self.start(entry) if self.slots.free() > 0 else self.backlog.append(entry)
            if not batch and self.burst and await self._drained():
                return

    async def _drained(self) -> bool:
        """Burst mode's exit test: nothing in flight or unflushed, nothing new, nothing pending."""
        if self.inflight or self.backlog:
            return False
        await self.outcomes.batch.flush()
        for stream in self.streams:
            if not await self.executor.drained(stream):
                return False
        return True

    def reclaim_interval_s(self) -> float:
        return max(0.01, min(defaults.RECLAIM_INTERVAL_S, self.config.backoff_base_s / 2))

    async def reclaim(self) -> None:
        streams = self.streams if self.ordering is None else self.ordering.owned()
        for stream in await reclaim.streams_to_sweep(self, streams, self.executor_kind):
            await self.reclaim_once(stream)

    async def reclaim_once(self, stream: str) -> int:
        """One reclaim pass over `stream` (workers/engine/reclaim.py); how many entries started."""
        return await reclaim.reclaim_pass(self, self.executor, stream, lambda: self._stopping)

    async def trim(self) -> None:
        for stream in self.streams:
            await retention.trim_once(self.redis, stream, self.group, retention_s=self.config.retention_s,
                                      now_ms=self.now_ms())
        await layout_watch.follow_layout(self)

    def start(self, entry: Entry) -> None:
        """Run an entry this consumer now owns (read new, or claimed for a retry)."""
        if self.ordering is not None and not self.ordering.admit(entry):
            return  # held back behind its object's head (workers/engine/ordering.py)
        self.slots.occupy()
        run = self._process(entry) if self.ordering is None else self.ordering.then_next(self._process(entry), entry)
        self.inflight[(entry.stream, entry.entry_id)] = asyncio.create_task(run)
        self.observer.entries_in_flight(self.name, len(self.inflight))

    async def _process(self, entry: Entry) -> None:
        try:
            await run_entry(self, self.executor, entry)
        except Exception as err:  # handler errors never get here: call_handler records them
            # Redis, or the client, failed while recording the outcome: the entry stays pending and
            # a reclaim pass runs it again.
            self.log.error("entry.redis_failed", entry_id=entry.entry_id, error=f"{type(err).__name__}: {err}",
                           exc_info=not isinstance(err, RedisError))
        finally:
            del self.inflight[(entry.stream, entry.entry_id)]
            self.slots.vacate()
            self.observer.entries_in_flight(self.name, len(self.inflight))
            if self.backlog:  # also while stopping: the drain runs what this consumer holds (drain.py)
                self._start_held()  # the freed slot takes a held entry now, not after the next read

    def _start_held(self) -> None:
        while self.backlog and self.slots.free() > 0:
            entry = self.backlog.take(self.claim_margin_s / 2)
            if entry is None:
                return
            self.start(entry)

    def thread_pool(self) -> ThreadPoolExecutor:
        """Threads for sync handlers (async executor) and for RQ's blocking enqueue (rq executor)."""
        if self.threads is None:
            self.threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"pool-{self.name}")
        return self.threads
