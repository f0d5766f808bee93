"""The consumer loop of one pool: read, run handlers, ack in batches, retry, dead-letter, drain.

One process runs one consumer of the pool's group. Its tasks:

* the reader: XREADGROUP with COUNT equal to the free concurrency slots;
* one task per in-flight entry (see `_process`);
* the flusher: the acks and counter increments gathered since its last pass,
  sent as one pipeline;
* the reclaimer (workers/reclaim.py) and the trimmer (workers/retention.py);
* the routing watcher, so pool options follow routing.yaml.

An entry is acked only once every handler it names has succeeded, or once it
is in the dead-letter stream. Anything else leaves it pending, so a crash
leaves duplicates, never losses.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from bus import defaults
from bus.envelope import Event
from bus.errors import ConfigError
from bus.keys import Keys
from bus.reload import RoutingHolder
from bus.routing import PoolConfig, RoutingTable
from bus.settings import Settings
from workers import reclaim, retention
from workers.acks import AckBatch
from workers.context import Context, Resources
from workers.deadletter import (
    REASON_MALFORMED,
    REASON_MAX_ATTEMPTS,
    Failure,
    dead_letter,
)
from workers.execute import Finished, HandlerSet, call_handler, pool_handler_names
from workers.rq.bridge import RqBridge
from workers.streams import Fields, ensure_group, text

if TYPE_CHECKING:
    from workers.metrics import WorkerMetrics

log = structlog.get_logger("fanout.worker")

Clock = Callable[[], float]


def consumer_name() -> str:
    """Unique per process, so a restarted worker never inherits a dead one's pending entries by name."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Pool:
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
        observer: WorkerMetrics | None = None,
    ) -> None:
        if name not in holder.table.pools:
            known = ", ".join(sorted(holder.table.pools)) or "none"
            raise ConfigError(f"pool {name!r} is not declared in {holder.path} (pools: {known})")
        self.settings = settings
        self.name = name
        self.redis = redis
        self.holder = holder
        self.clock = clock
        self.keys = Keys(settings.key_prefix)
        self.stream = self.keys.stream(name)
        self.group = self.keys.group(name)
        self.consumer = consumer or consumer_name()
        self.burst = burst
        self.claim_margin_s = claim_margin_s
        self.trim_interval_s = trim_interval_s
        self.resources = resources or Resources()
        self._concurrency = concurrency
        self._block_ms = burst_block_ms if burst else block_ms
        self._shutdown_grace_s = shutdown_grace_s
        self._watch_routing = watch_routing
        self._config = holder.table.pools[name]
        self._handlers = HandlerSet()
        self._handlers.load(pool_handler_names(holder.table, name), holder.table, strict=strict)
        self._executor: ThreadPoolExecutor | None = None
        self._log = log.bind(pool=name, consumer=self.consumer)
        # Entries being run by this process, by stream id.
        self.inflight: dict[str, asyncio.Task[None]] = {}
        # Slots the reader or the reclaimer took before awaiting Redis, not yet started or given back.
        self._reserved = 0
        # Cleared while the reclaimer waits for the slots the reader holds in a blocking read, so
        # the reader does not take them straight back. What the reader's read returned still
        # starts first: under a backlog, a due retry waits behind that batch (a delay, bounded).
        self._reader_may_reserve = asyncio.Event()
        self._reader_may_reserve.set()
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self.read_failures = 0
        # Acks and counters gathered by entry tasks, sent by the flusher as one pipeline.
        self.acks = AckBatch(redis, self.keys, name)
        # The executor is fixed for the life of the process: `rq` enqueues jobs, `async` runs here.
        self.executor = self._config.executor
        self.rq = RqBridge(self) if self.executor == "rq" else None
        # Metrics (workers/metrics.py): told when a read returns, the in-flight count changes and
        # a handler run ends. None (metrics off) costs one test at each of those points.
        self.observer = observer

    # --- configuration ---------------------------------------------------------------------------

    @property
    def config(self) -> PoolConfig:
        """The pool's options from the routing table in use (the last known, if the pool was removed)."""
        current = self.holder.table.pools.get(self.name)
        if current is not None:
            self._config = current
        return self._config

    @property
    def concurrency(self) -> int:
        return self._concurrency or self.config.concurrency

    def free_slots(self) -> int:
        return self.concurrency - len(self.inflight) - self._reserved

    def reserve(self, wanted: int) -> int:
        """Take up to `wanted` free slots before awaiting Redis; give them back with `release`."""
        taken = max(0, min(wanted, self.free_slots()))
        self._reserved += taken
        return taken

    def release(self, taken: int) -> None:
        """Give back reserved slots; the caller starts what it got right after, before awaiting."""
        self._reserved -= taken
        if taken:
            self._slot_freed.set()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def _on_routing_change(self, table: RoutingTable) -> None:
        new = table.pools.get(self.name)
        if new is not None and new.executor != self.executor:
            self._log.warning("pool.executor_changed", executor=self.executor, new_executor=new.executor,
                              action="restart this pool's workers to switch")
        for err in await self._handlers.load_async(pool_handler_names(table, self.name), table):
            self._log.error("handler.unresolved", error=str(err))

    async def _watch_routing_file(self) -> None:
        """Follow routing.yaml: pool options apply at once, new handler names are resolved."""
        while True:
            await asyncio.sleep(defaults.RELOAD_POLL_S)
            if await self.holder.check_async():
                await self._on_routing_change(self.holder.table)

    # --- running ---------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    def request_stop(self) -> None:
        """Stop reading; in-flight entries finish (within the grace period), are acked, and run() returns."""
        self._stopping = True
        self._slot_freed.set()

    async def run(self) -> None:
        await ensure_group(self.redis, self.keys, self.name)
        self._log.info("pool.started", concurrency=self.concurrency, burst=self.burst)
        flusher = asyncio.create_task(self.acks.run(), name="flusher")
        background = [
            asyncio.create_task(self._every(self._reclaim_interval_s, self._reclaim), name="reclaim"),
            asyncio.create_task(self._every(lambda: self.trim_interval_s, self._trim), name="trim"),
        ]
        if self._watch_routing:
            background.append(asyncio.create_task(self._watch_routing_file(), name="routing-watch"))
        try:
            await self._read_loop()
        finally:
            self._stopping = True
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._drain()
            self.acks.close()
            await flusher
            await self._leave_group()
            if self._executor is not None:
                self._executor.shutdown(wait=False)
            if self.rq is not None:
                self.rq.close()
            await self.resources.aclose()
            self._log.info("pool.stopped")

    async def _read_loop(self) -> None:
        while not self._stopping:
            await self._reader_may_reserve.wait()
            free = self.free_slots()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            taken = self.reserve(free)
            try:
                reply: Any = await self.redis.xreadgroup(
                    self.group, self.consumer, {self.stream: ">"}, count=taken, block=self._block_ms
                )
            except RedisError as err:
                self.release(taken)
                self.read_failures += 1
                self._log.error("pool.read_failed", error=f"{type(err).__name__}: {err}")
                await asyncio.sleep(self._block_ms / 1000)
                if "NOGROUP" in str(err):  # the stream was deleted by hand: start it again
                    await ensure_group(self.redis, self.keys, self.name)
                continue
            except BaseException:
                self.release(taken)
                raise
            self.release(taken)
            if reply:
                if self.observer is not None:  # metrics: a read batch returned
                    self.observer.read_batch(self.name, len(reply[0][1]))
                # More than the free slots only if concurrency was lowered meanwhile: the rest stays
                # pending and is reclaimed later, rather than running over the limit.
                for entry_id, fields in reply[0][1][:max(0, self.free_slots())]:
                    self.start(text(entry_id), fields, attempt=1)
            elif self.burst and await self._drained():
                return

    async def _drained(self) -> bool:
        """Burst mode's exit test: nothing in flight or unflushed, nothing new, nothing pending."""
        if self.inflight:
            return False
        await self.acks.flush()
        if self.rq is not None:
            return await self.rq.drained()
        groups: Any = await self.redis.xinfo_groups(self.stream)
        for group in groups:
            if text(group["name"]) == self.group:
                lag = group.get("lag")
                return int(group["pending"]) == 0 and (lag is None or int(lag) == 0)
        return True

    async def _drain(self) -> None:
        """Let in-flight entries finish within the grace period; what is left stays pending."""
        if not self.inflight:
            return
        tasks = list(self.inflight.values())
        self._log.info("pool.draining", inflight=len(tasks), grace_s=self._shutdown_grace_s)
        _, unfinished = await asyncio.wait(tasks, timeout=self._shutdown_grace_s)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)
            self._log.warning("pool.drain_timeout", left_pending=len(unfinished))

    async def _leave_group(self) -> None:
        """Remove this consumer from the group when it holds nothing, so status counts live consumers."""
        try:
            rows = await self.redis.xpending_range(
                self.stream, self.group, min="-", max="+", count=1, consumername=self.consumer
            )
            if not rows:
                await self.redis.xgroup_delconsumer(self.stream, self.group, self.consumer)
        except RedisError as err:
            self._log.warning("pool.leave_failed", error=f"{type(err).__name__}: {err}")

    async def _every(self, interval_s: Callable[[], float], action: Callable[[], Any]) -> None:
        while not self._stopping:
            await asyncio.sleep(interval_s())
            try:
                await action()
            except RedisError as err:
                self._log.error("pool.background_failed", action=action.__name__,
                                error=f"{type(err).__name__}: {err}")
            except Exception as err:  # a bug must not end the task silently: retries would stop
                self._log.error("pool.background_failed", action=action.__name__,
                                error=f"{type(err).__name__}: {err}", exc_info=True)
                await asyncio.sleep(defaults.BACKGROUND_FAILURE_BACKOFF_S)

    def _reclaim_interval_s(self) -> float:
        return max(0.01, min(defaults.RECLAIM_INTERVAL_S, self.config.backoff_base_s / 2))

    async def _reclaim(self) -> None:
        if self.free_slots() <= 0 and self._reserved:
            # The reader holds the free slots in a blocking read: take them when it gives them back.
            self._reader_may_reserve.clear()
            try:
                while self.free_slots() <= 0 and self._reserved and not self._stopping:
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
            finally:
                self._reader_may_reserve.set()
        if self.rq is not None:
            await self.rq.reclaim_once()
        else:
            await reclaim.reclaim_once(self)

    async def _trim(self) -> None:
        await retention.trim_once(self)

    # --- one entry -------------------------------------------------------------------------------

    def start(self, entry_id: str, fields: Fields, attempt: int) -> None:
        """Run an entry this consumer now owns (read new, or claimed for a retry)."""
        self.inflight[entry_id] = asyncio.create_task(self._process(entry_id, fields, attempt))
        if self.observer is not None:  # metrics: the in-flight count changed
            self.observer.entries_in_flight(self.name, len(self.inflight))

    async def _process(self, entry_id: str, fields: Fields, attempt: int) -> None:
        try:
            await self._run_entry(entry_id, fields, attempt)
        except RedisError as err:
            # The entry stays pending; a reclaim pass runs it again.
            self._log.error("entry.redis_failed", entry_id=entry_id, error=f"{type(err).__name__}: {err}")
        finally:
            del self.inflight[entry_id]
            self._slot_freed.set()
            if self.observer is not None:  # metrics: the in-flight count changed
                self.observer.entries_in_flight(self.name, len(self.inflight))

    async def _run_entry(self, entry_id: str, fields: Fields, attempt: int) -> None:
        if self.rq is not None:
            await self.rq.submit(entry_id, fields, attempt)
            return
        config = self.config
        try:
            event = Event.from_entry(fields)
        except (ValueError, KeyError) as err:
            failure = Failure("", f"{type(err).__name__}: {err}", "", permanent=True)
            await self.dead(entry_id, fields, REASON_MALFORMED, [failure], attempt)
            return
        ledger_key = self.keys.ledger(self.name, event.id)
        done: set[str] = set()
        if attempt > 1:
            members: Any = await self.redis.smembers(ledger_key)
            done = {text(h) for h in members}
        todo = [h for h in event.handlers if h not in done]
        if attempt > config.max_attempts:
            # The consumer running the last allowed attempt stopped before it finished.
            failures = [Failure(h, f"a consumer stopped during attempt {attempt - 1}", "") for h in todo]
            await self.dead(entry_id, fields, REASON_MAX_ATTEMPTS, failures, attempt - 1, ledger_key)
            return
        table = self.holder.table
        if not all(self._handlers.known(h) for h in todo):
            # Named by a newer routing table than this worker's: import off the event loop.
            await self._handlers.load_async(todo, table)

        def make_ctx(handler: str) -> Context:
            bound = self._log.bind(event_id=event.id, event_type=event.type, handler=handler, attempt=attempt)
            return Context(pool=self.name, handler=handler, attempt=attempt, log=bound,
                           redis=self.redis, settings=self.settings, resources=self.resources)

        finished = self._handler_finished(last_attempt=attempt >= config.max_attempts)
        calls = [
            call_handler(self._handlers.get(h, table), h, event, make_ctx, config.timeout_s, self.thread_pool,
                         finished=finished)
            for h in todo
        ]
        # One handler (the common case) is awaited directly: gather would wrap it in another task.
        results = [await calls[0]] if len(calls) == 1 else await asyncio.gather(*calls)
        failures = [f for f in results if f is not None]
        if not failures:
            self.acks.complete(entry_id, "processed", ledger_key if attempt > 1 else None)
            return
        self.acks.count("failed", len(failures))
        permanent = [f for f in failures if f.permanent]
        if permanent or attempt >= config.max_attempts:
            reason = permanent[0].reason if permanent else REASON_MAX_ATTEMPTS
            await self.dead(entry_id, fields, reason, failures, attempt, ledger_key if attempt > 1 else None)
            return
        failed = {f.handler for f in failures}
        succeeded = [h for h in todo if h not in failed]
        defer_s = max((f.defer_s for f in failures if f.defer_s is not None), default=None)
        if succeeded or defer_s is not None:
            pipe = self.redis.pipeline(transaction=False)
            if succeeded:
                pipe.sadd(ledger_key, *succeeded)
                pipe.expire(ledger_key, max(config.retention_s, defaults.LEDGER_TTL_S))
            if defer_s is not None:
                pipe.hset(self.keys.retry_at(self.name), entry_id, str(self.now_ms() + int(defer_s * 1000)))
            await pipe.execute()

    def _handler_finished(self, *, last_attempt: bool) -> Finished | None:
        """Metrics: a handler run ended; on the last attempt, a failure dead-letters the entry."""
        observer = self.observer
        if observer is None:
            return None

        def finished(handler: str, outcome: str, duration_s: float) -> None:
            if last_attempt and outcome in ("failed", "retry"):
                outcome = "dead"
            observer.handler_finished(self.name, handler, outcome, duration_s)

        return finished

    async def dead(
        self, entry_id: str, fields: Fields, reason: str, failures: list[Failure], attempts: int,
        ledger_key: str | None = None,
    ) -> None:
        """Dead-letter an entry, then (and only then) queue its ack."""
        await dead_letter(self.redis, self.keys, self.name, entry_id, fields, reason=reason,
                          failures=failures, attempts=attempts, now_ms=self.now_ms())
        self._log.error("entry.dead_lettered", entry_id=entry_id, reason=reason, attempt=attempts,
                        event_id=text(fields.get(b"id")), event_type=text(fields.get(b"type")),
                        handler=",".join(f.handler for f in failures),
                        error=failures[0].error if failures else reason)
        self.acks.complete(entry_id, "dead", ledger_key)

    def thread_pool(self) -> ThreadPoolExecutor:
        """Threads for sync handlers (async executor) and for RQ's blocking enqueue (rq executor)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"pool-{self.name}")
        return self._executor
