"""The stream consumer of an `executor: rq` pool: enqueue entries as RQ jobs, retry failed ones.

It is the same consumer as for the async executor (workers/pool.py: reading,
acks, dead letters, trimming, routing reloads); only three steps differ, and
they live here:

* an entry it owns is enqueued as the RQ job of its current delivery attempt
  (workers/rq/queue.py) instead of being run here; an RQ worker runs it and
  acks it (workers/rq/job.py);
* a reclaim pass looks at the job of each pending entry's current attempt:
  queued, or started by a live RQ worker, it leaves the entry alone however long
  it waits; started by a worker that is gone (its heartbeat key expired, or the
  job is past its RQ timeout plus RQ_ABANDONED_MARGIN_S: RQ itself notices only
  every 10 minutes), it counts as failed; failed,
  once the retry time the job recorded has passed, it claims the entry (which
  counts the delivery) and enqueues the next attempt, or dead-letters it past
  `max_attempts`; missing (its consumer died before enqueueing), it takes the
  entry without counting a delivery and enqueues that attempt's job; finished
  but still pending (the ack was lost), it acks it. Entries waiting in RQ can be
  many, so a pass reads the whole pending list only every
  RQ_FULL_SCAN_INTERVAL_S (those last cases, and jobs killed before recording a
  failure); failed attempts, which record their retry time, are looked up from
  the retry-time hash on every pass;
* in burst mode the consumer is done once nothing is new and every pending
  entry's job is waiting in RQ's queue; a started job must end, or be found
  abandoned and retried, first.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from bus import defaults
from bus.connection import sync_redis
from bus.envelope import Event
from workers.deadletter import REASON_MALFORMED, REASON_MAX_ATTEMPTS, REASON_TRIMMED, Failure
from workers.reclaim import Due, not_deferred
from workers.retry import peer_claim_idle_ms, pool_backoff_ms
from workers.rq.queue import (
    ACK_SCRIPT,
    FINISHED,
    LIVE_STATES,
    STARTED,
    abandoned_jobs,
    ack_script_args,
    cleanup_started,
    enqueue,
    entry_payload,
    job_id,
    job_kwargs,
    job_states,
    rq_queue,
)
from workers.streams import Fields, text

if TYPE_CHECKING:
    from workers.pool import Pool

log = structlog.get_logger("fanout.worker")

# The state `_select` gives a started job whose worker is gone: failed, for the reclaimer.
ABANDONED = "abandoned"


class RqBridge:
    """The RQ half of one pool consumer; built by Pool when the pool's executor is `rq`."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.prefix = pool.settings.key_prefix
        self.client = sync_redis(pool.settings.redis_url)
        self.queue = rq_queue(self.client, self.prefix, pool.name)
        self._next_full_scan_s = 0.0

    def close(self) -> None:
        self.client.close()

    def job_id(self, entry_id: str, attempt: int) -> str:
        return job_id(self.prefix, self.pool.name, entry_id, attempt)

    # --- one entry -------------------------------------------------------------------------------

    async def submit(self, entry_id: str, fields: Fields, attempt: int) -> None:
        """Enqueue the job of this attempt (once), or dead-letter the entry if it cannot run again."""
        pool, config = self.pool, self.pool.config
        try:
            event = Event.from_entry(fields)
            entry = entry_payload(fields)
        except (ValueError, KeyError) as err:  # UnicodeDecodeError is a ValueError
            failure = Failure("", f"{type(err).__name__}: {err}", "", permanent=True)
            await pool.dead(entry_id, fields, REASON_MALFORMED, [failure], attempt)
            return
        if attempt > config.max_attempts:
            ledger_key = pool.keys.ledger(pool.name, event.id)
            members: Any = await pool.redis.smembers(ledger_key)
            done = {text(h) for h in members}
            failures = [Failure(h, f"attempt {attempt - 1} did not finish: its RQ job failed without "
                                   "recording a result, or its consumer stopped", "")
                        for h in event.handlers if h not in done]
            await pool.dead(entry_id, fields, REASON_MAX_ATTEMPTS, failures, attempt - 1, ledger_key)
            return
        kwargs = job_kwargs(self.prefix, pool.name, entry_id, attempt, config, entry)
        loop = asyncio.get_running_loop()
        added = await loop.run_in_executor(pool.thread_pool(), enqueue, self.queue, kwargs, config)
        if not added:
            log.info("entry.already_enqueued", pool=pool.name, entry_id=entry_id, attempt=attempt,
                     event_id=event.id, event_type=event.type)

    # --- reclaim ---------------------------------------------------------------------------------

    async def reclaim_once(self) -> int:
        """One reclaim pass; returns how many entries were enqueued again.

        The slots are reserved before the first await, as the async reclaimer does, so the
        reader cannot take them meanwhile and find its own reply cut short.
        """
        pool = self.pool
        if pool.stopping:
            return 0
        free = pool.reserve(pool.free_slots())
        if free <= 0:
            return 0
        try:
            started = await self._reclaim_with(free)
        finally:
            pool.release(free)
        if started:
            pool.acks.count("retried", started)
        return started

    async def _reclaim_with(self, free: int) -> int:
        pool = self.pool
        # Every pass looks at the entries whose job recorded a failure (the retry-time hash);
        # the whole pending list, where entries waiting in RQ can be many, only now and then.
        now_s = time.monotonic()
        if pool.burst or now_s >= self._next_full_scan_s:
            self._next_full_scan_s = now_s + defaults.RQ_FULL_SCAN_INTERVAL_S
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(pool.thread_pool(), cleanup_started, self.queue)
            due, states = await self._due(free)
        else:
            due, states = await self._due_retries(free)
        due = await not_deferred(pool, due)
        for entry_id, _, _ in (d for d in due if states[d[0]] == FINISHED):
            await self._ack_finished(entry_id)
        failed = [d for d in due if states[d[0]] not in (None, FINISHED)]
        lost = [d for d in due if states[d[0]] is None]
        return await self._claim(failed, next_attempt=True) + await self._claim(lost, next_attempt=False)

    async def _due(self, limit: int) -> tuple[list[Due], dict[str, str | None]]:
        """Up to `limit` pending entries whose job is not queued or running, and are due; with job states.

        A job that ended (failed, stopped, finished) is nobody's to wait for: its entry is due
        after its backoff, whichever consumer holds it (and, for a failure, once the retry time
        the job recorded has passed). A missing job may be a live consumer's enqueue in progress,
        so a peer waits for it as long as for a takeover.
        """
        pool = self.pool
        min_idle_ms = max(1, int(pool.config.backoff_base_s * 1000 / 2))
        due: list[Due] = []
        states: dict[str, str | None] = {}
        start = "-"
        while len(due) < limit:
            rows: Any = await pool.redis.xpending_range(pool.stream, pool.group, min=start, max="+",
                                                        count=defaults.RECLAIM_PAGE_SIZE, idle=min_idle_ms)
            await self._select(rows, limit, due, states)
            if len(rows) < defaults.RECLAIM_PAGE_SIZE:
                break
            start = "(" + text(rows[-1]["message_id"])
        return due, states

    async def _due_retries(self, limit: int) -> tuple[list[Due], dict[str, str | None]]:
        """As `_due`, among the entries whose retry time has passed only."""
        pool = self.pool
        retry_at: Any = await pool.redis.hgetall(pool.keys.retry_at(pool.name))
        now_ms = pool.now_ms()
        ready = [text(e) for e, at in retry_at.items() if int(at) <= now_ms]
        due: list[Due] = []
        states: dict[str, str | None] = {}
        if ready:
            pipe = pool.redis.pipeline(transaction=False)
            for entry_id in ready:
                pipe.xpending_range(pool.stream, pool.group, min=entry_id, max=entry_id, count=1)
            found: list[Any] = await pipe.execute()
            gone = [entry_id for entry_id, rows in zip(ready, found, strict=True) if not rows]
            if gone:  # acked or dead-lettered without its retry time being removed
                await pool.redis.hdel(pool.keys.retry_at(pool.name), *gone)
            await self._select([row for rows in found for row in rows], limit, due, states)
        return due, states

    async def _select(self, rows: Any, limit: int, due: list[Due], states: dict[str, str | None]) -> None:
        """Add the XPENDING rows that are due (see `_due`) to `due`, up to `limit`, and their job states."""
        pool, config = self.pool, self.pool.config
        page = [(text(r["message_id"]), int(r["times_delivered"]), int(r["time_since_delivered"]),
                 text(r["consumer"]) != pool.consumer) for r in rows]
        page = [p for p in page if p[0] not in pool.inflight and p[0] not in pool.acks.unacked]
        found = await job_states(pool.redis, [self.job_id(e, d) for e, d, _, _ in page])
        abandoned = await self._abandoned([self.job_id(e, d) for (e, d, _, _), state in zip(page, found, strict=True)
                                           if state == STARTED])
        for (entry_id, delivered, idle_ms, peer), state in zip(page, found, strict=True):
            if state == STARTED and self.job_id(entry_id, delivered) in abandoned:
                # Its worker died mid-job: a failed attempt, retried like one.
                log.warning("entry.job_abandoned", pool=pool.name, entry_id=entry_id, attempt=delivered,
                            job_id=self.job_id(entry_id, delivered))
                state = ABANDONED
            if state in LIVE_STATES or len(due) >= limit:
                continue
            needed = pool_backoff_ms(config, delivered, entry_id)
            if state is None and peer:
                needed = peer_claim_idle_ms(config, delivered, entry_id, pool.claim_margin_s)
            if idle_ms >= needed:
                due.append((entry_id, delivered, needed))
                states[entry_id] = state

    async def _abandoned(self, job_ids: list[str]) -> set[str]:
        return await abandoned_jobs(self.pool.redis, self.queue.name, job_ids, time.time())

    async def _claim(self, due: list[Due], *, next_attempt: bool) -> int:
        """Claim and submit; XCLAIM counts a delivery, unless JUSTID (an attempt whose job was lost)."""
        if not due:
            return 0
        pool = self.pool
        ids: list[Any] = [entry_id for entry_id, _, _ in due]
        min_idle = min(n for _, _, n in due)
        fields_by_id: dict[str, Any] = {}
        if next_attempt:
            claimed: Any = await pool.redis.xclaim(pool.stream, pool.group, pool.consumer,
                                                   min_idle_time=min_idle, message_ids=ids)
            fields_by_id = {text(e): f for e, f in claimed if f is not None}
        else:
            claimed = await pool.redis.xclaim(pool.stream, pool.group, pool.consumer,
                                              min_idle_time=min_idle, message_ids=ids, justid=True)
            for entry_id in claimed:
                rows: Any = await pool.redis.xrange(pool.stream, min=entry_id, max=entry_id)
                if rows:
                    fields_by_id[text(entry_id)] = rows[0][1]
        started = 0
        for entry_id, delivered, _ in due:
            fields = fields_by_id.get(entry_id)
            if fields is not None:
                pool.start(entry_id, fields, attempt=delivered + 1 if next_attempt else delivered)
                started += 1
            elif not await pool.redis.xrange(pool.stream, min=entry_id, max=entry_id):
                failure = Failure("", f"entry {entry_id} was pending but is no longer in {pool.stream}", "")
                await pool.dead(entry_id, {b"dlq_missing_entry": entry_id.encode()}, REASON_TRIMMED,
                                [failure], delivered)
        return started

    async def _ack_finished(self, entry_id: str) -> None:
        """A job that finished while its entry stayed pending (its callback's ack was lost): ack it now."""
        pool = self.pool
        keys, argv = ack_script_args(pool.keys, pool.name, entry_id, None)
        if await pool.redis.eval(ACK_SCRIPT, len(keys), *keys, *argv):
            log.warning("entry.acked_after_finish", pool=pool.name, entry_id=entry_id)

    # --- burst -----------------------------------------------------------------------------------

    async def drained(self) -> bool:
        """Burst mode's exit test: nothing new, and every pending entry's job is waiting in RQ.

        A started job is not done: its worker may have died, and the entry must then be retried
        by a consumer (this one, once the job counts as abandoned).
        """
        pool = self.pool
        groups: Any = await pool.redis.xinfo_groups(pool.stream)
        ours = next((g for g in groups if text(g["name"]) == pool.group), None)
        if ours is None:
            return True
        lag = ours.get("lag")
        if lag is not None and int(lag) != 0:
            return False
        start = "-"
        while True:
            rows: Any = await pool.redis.xpending_range(pool.stream, pool.group, min=start, max="+",
                                                        count=500)
            found = await job_states(pool.redis, [self.job_id(text(r["message_id"]), int(r["times_delivered"]))
                                                  for r in rows])
            if any(state not in LIVE_STATES or state == STARTED for state in found):
                return False
            if len(rows) < 500:
                return True
            start = "(" + text(rows[-1]["message_id"])
