"""The RQ executor of an `executor: rq` pool: enqueue entries as RQ jobs, retry failed ones.

It is the executor of the same consumer engine as for the async executor
(workers/engine/: reading, slots, acks, dead letters, trimming, routing
reloads); only three steps differ, and they live here:

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
from typing import Any

import structlog

from bus import defaults
from bus.connection import is_cluster, sync_redis
from bus.envelope import Event
from bus.errors import ConfigError
from workers.engine import reclaim
from workers.engine.executor import Entry, Owner
from workers.engine.failures import REASON_MALFORMED, Failure
from workers.engine.pending import pending_pages
from workers.engine.reclaim import Due
from workers.newest import Newest
from workers.rq.queue import (
    FINISHED,
    LIVE_STATES,
    STARTED,
    abandoned_jobs,
    cleanup_started,
    enqueue,
    entry_payload,
    job_id,
    job_kwargs,
    job_states,
    rq_queue,
)
from workers.stream_ops import text

log = structlog.get_logger("fanout.worker")

# The state `_select` gives a started job whose worker is gone: failed, for the reclaimer.
ABANDONED = "abandoned"


class RqExecutor:
    """The RQ half of one pool consumer; the engine builds it when the pool's executor is `rq`."""

    def __init__(self, owner: Owner) -> None:
        if is_cluster(owner.redis):
            # RQ's own keys (queues, jobs, registries) carry no hash tag and its worker talks to one
            # node, and a job records its outcome on the queue's connection: it cannot run here.
            raise ConfigError(f"pool {owner.name!r} has executor: rq, which needs a Redis that is not a "
                              "cluster (RQ keeps its queues and jobs under keys of many slots). Use "
                              "executor: async for this pool, or run it on a deployment with a single Redis")
        self.owner = owner
        self.prefix = owner.settings.key_prefix
        self.client = sync_redis(owner.settings.redis_url)
        self.queue = rq_queue(self.client, self.prefix, owner.name)
        self._next_full_scan_s = 0.0

    def close(self) -> None:
        self.client.close()

    def job_id(self, entry_id: str, attempt: int) -> str:
        return job_id(self.prefix, self.owner.name, entry_id, attempt)

    def lost_attempt_error(self, attempt: int) -> str:
        return f"attempt {attempt} did not finish: its RQ job failed without recording a result, or its consumer stopped"

    # --- one entry -------------------------------------------------------------------------------

    async def run(self, entry: Entry, event: Event, newest: Newest | None) -> None:
        """Enqueue the job of this attempt (once); the job finds its own `newest` where it runs."""
        owner, config = self.owner, self.owner.config
        try:
            payload = entry_payload(entry.fields)
        except ValueError as err:  # UnicodeDecodeError: the JSON serializer takes text only
            failure = Failure("", f"{type(err).__name__}: {err}", "", permanent=True)
            await owner.outcomes.dead_letter(entry.stream, entry.entry_id, entry.fields, reason=REASON_MALFORMED,
                                             failures=[failure], attempts=entry.attempt)
            return
        kwargs = job_kwargs(self.prefix, owner.name, entry.entry_id, entry.attempt, config, payload,
                            stream=entry.stream)
        loop = asyncio.get_running_loop()
        added = await loop.run_in_executor(owner.thread_pool(), enqueue, self.queue, kwargs, config)
        if not added:
            log.info("entry.already_enqueued", pool=owner.name, entry_id=entry.entry_id, attempt=entry.attempt,
                     event_id=event.id, event_type=event.type)

    # --- reclaim ---------------------------------------------------------------------------------

    async def reclaim(self, stream: str, limit: int) -> int:
        """One reclaim pass (the engine holds `limit` slots); returns how many entries were enqueued again."""
        owner = self.owner
        # Every pass looks at the entries whose job recorded a failure (the retry-time hash);
        # the whole pending list, where entries waiting in RQ can be many, only now and then.
        now_s = time.monotonic()
        if owner.burst or now_s >= self._next_full_scan_s:
            self._next_full_scan_s = now_s + defaults.RQ_FULL_SCAN_INTERVAL_S
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(owner.thread_pool(), cleanup_started, self.queue)
            due, states = await self._due(stream, limit)
        else:
            due, states = await self._due_retries(stream, limit)
        due = await reclaim.not_deferred(owner, stream, due)
        for entry_id, _, _ in (d for d in due if states[d[0]] == FINISHED):
            # Its job finished while the entry stayed pending (the job's ack was lost): ack it now.
            if await owner.outcomes.ack(stream, entry_id):
                log.warning("entry.acked_after_finish", pool=owner.name, entry_id=entry_id)
        failed = [d for d in due if states[d[0]] not in (None, FINISHED)]
        lost = [d for d in due if states[d[0]] is None]
        return (await reclaim.claim(owner, stream, failed, next_attempt=True)
                + await reclaim.claim(owner, stream, lost, next_attempt=False))

    async def _due(self, stream: str, limit: int) -> tuple[list[Due], dict[str, str | None]]:
        """Up to `limit` pending entries whose job is not queued or running, and are due; with job states.

        A job that ended (failed, stopped, finished) is nobody's to wait for: its entry is due
        after its backoff, whichever consumer holds it (and, for a failure, once the retry time
        the job recorded has passed). A missing job may be a live consumer's enqueue in progress,
        so a peer waits for it as long as for a takeover.
        """
        due: list[Due] = []
        states: dict[str, str | None] = {}
        async for rows in pending_pages(self.owner.redis, stream, self.owner.group,
                                        idle_ms=reclaim.min_idle_ms(self.owner.config)):
            await self._select(stream, rows, limit, due, states)
            if len(due) >= limit:
                break
        return due, states

    async def _due_retries(self, stream: str, limit: int) -> tuple[list[Due], dict[str, str | None]]:
        """As `_due`, among the entries whose retry time has passed only."""
        owner = self.owner
        retry_key = owner.outcomes.part(stream).retry_at(owner.name)
        retry_at: Any = await owner.redis.hgetall(retry_key)
        now_ms = owner.now_ms()
        ready = [text(e) for e, at in retry_at.items() if int(at) <= now_ms]
        due: list[Due] = []
        states: dict[str, str | None] = {}
        if ready:
            pipe = owner.redis.pipeline(transaction=False)
            for entry_id in ready:
                pipe.xpending_range(stream, owner.group, min=entry_id, max=entry_id, count=1)
            found: list[Any] = await pipe.execute()
            gone = [entry_id for entry_id, rows in zip(ready, found, strict=True) if not rows]
            if gone:  # acked or dead-lettered without its retry time being removed
                await owner.redis.hdel(retry_key, *gone)
            await self._select(stream, [row for rows in found for row in rows], limit, due, states)
        return due, states

    async def _select(self, stream: str, rows: Any, limit: int, due: list[Due],
                      states: dict[str, str | None]) -> None:
        """Add the XPENDING rows that are due (see `_due`) to `due`, up to `limit`, and their job states."""
        owner = self.owner
        rows = [r for r in rows if not owner.busy(stream, text(r["message_id"]))]
        ids = [self.job_id(text(r["message_id"]), int(r["times_delivered"])) for r in rows]
        found = await job_states(owner.redis, ids)
        abandoned = await abandoned_jobs(owner.redis, self.queue.name,
                                         [jid for jid, state in zip(ids, found, strict=True) if state == STARTED],
                                         time.time())
        paused = await reclaim.paused_runs(owner, stream, rows)
        for row, jid, state, paused_runs in zip(rows, ids, found, paused, strict=True):
            entry_id, delivered = text(row["message_id"]), int(row["times_delivered"])
            if state == STARTED and jid in abandoned:
                # Its worker died mid-job: a failed attempt, retried like one.
                log.warning("entry.job_abandoned", pool=owner.name, entry_id=entry_id, attempt=delivered,
                            job_id=jid)
                state = ABANDONED
            if state in LIVE_STATES or len(due) >= limit:
                continue
            needed = reclaim.needed_idle_ms(owner, row, peer_wait=state is None, paused_runs=paused_runs)
            if int(row["time_since_delivered"]) >= needed:
                due.append((entry_id, delivered, needed))
                states[entry_id] = state

    # --- burst -----------------------------------------------------------------------------------

    async def drained(self, stream: str) -> bool:
        """Burst mode's exit test: nothing new, and every pending entry's job is waiting in RQ.

        A started job is not done: its worker may have died, and the entry must then be retried
        by a consumer (this one, once the job counts as abandoned).
        """
        owner = self.owner
        groups: Any = await owner.redis.xinfo_groups(stream)
        ours = next((g for g in groups if text(g["name"]) == owner.group), None)
        if ours is None:
            return True
        lag = ours.get("lag")
        if lag is not None and int(lag) != 0:
            return False
        async for rows in pending_pages(owner.redis, stream, owner.group):
            found = await job_states(owner.redis, [self.job_id(text(r["message_id"]), int(r["times_delivered"]))
                                                   for r in rows])
            if any(state not in LIVE_STATES or state == STARTED for state in found):
                return False
        return True
