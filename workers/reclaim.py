"""Claim pending entries that are due for another run.

An entry stays pending after a failed run. It is due once its idle time passes
the backoff for its delivery count (workers/retry.py). The consumer that owns
it claims it back then. A peer's entry is claimed only once idle past the
pool's timeout plus its backoff plus a margin: its owner is then presumed
dead (SIGKILL, lost machine), and this is how its work is taken over.

XCLAIM increments the delivery count, so the count is the number of runs
started, the first included, which is exactly what max_attempts counts.
An entry that is pending but no longer in the stream (trimmed anyway) is
dropped from the pending list by XCLAIM and dead-lettered here with a reason.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bus import defaults
from workers.deadletter import REASON_TRIMMED, Failure
from workers.retry import peer_claim_idle_ms, pool_backoff_ms
from workers.streams import text

if TYPE_CHECKING:
    from workers.pool import Pool


Due = tuple[str, int, int]


async def due_entries(pool: Pool, limit: int) -> list[Due]:
    """Up to `limit` pending entries due for a run: (entry id, times delivered, idle needed in ms)."""
    config = pool.config
    min_idle_ms = max(1, int(config.backoff_base_s * 1000 / 2))
    due: list[Due] = []
    start = "-"
    while len(due) < limit:
        rows: Any = await pool.redis.xpending_range(
            pool.stream, pool.group, min=start, max="+", count=defaults.RECLAIM_PAGE_SIZE, idle=min_idle_ms
        )
        for row in rows:
            entry_id = text(row["message_id"])
            if entry_id in pool.inflight or entry_id in pool.acks.unacked:
                continue
            delivered = int(row["times_delivered"])
            if text(row["consumer"]) == pool.consumer:
                needed = pool_backoff_ms(config, delivered, entry_id)
            else:
                needed = peer_claim_idle_ms(config, delivered, entry_id, pool.claim_margin_s)
            if int(row["time_since_delivered"]) >= needed:
                due.append((entry_id, delivered, needed))
                if len(due) >= limit:
                    break
        if len(rows) < defaults.RECLAIM_PAGE_SIZE:
            break
        start = "(" + text(rows[-1]["message_id"])
    return due


async def not_deferred(pool: Pool, due: list[Due]) -> list[Due]:
    """Drop entries whose handler asked, with RetryLater(defer_s), to wait longer than the backoff."""
    key = pool.keys.retry_at(pool.name)
    if not due or not await pool.redis.exists(key):
        return due
    retry_at: Any = await pool.redis.hmget(key, [entry_id for entry_id, _, _ in due])
    now_ms = pool.now_ms()
    return [d for d, at in zip(due, retry_at, strict=True) if at is None or int(at) <= now_ms]


async def not_running_in_rq(pool: Pool, due: list[Due]) -> list[Due]:
    """Drop entries whose current attempt is running as an RQ job in a live worker.

    Only after a pool switched from `executor: rq` to async: an RQ worker may still be running
    an entry's job, and taking the entry over would run it twice at once. A job still queued
    needs no such care (it runs nothing once the entry was taken over: workers/rq/job.py),
    nor one whose worker is gone (workers/rq/queue.abandoned_jobs). One round trip per pass
    that found due entries.
    """
    from workers.rq.queue import STARTED, abandoned_jobs, job_id, job_states, queue_name

    if not due:
        return due
    prefix = pool.settings.key_prefix
    ids = [job_id(prefix, pool.name, entry_id, delivered) for entry_id, delivered, _ in due]
    states = await job_states(pool.redis, ids)
    started = [jid for jid, state in zip(ids, states, strict=True) if state == STARTED]
    if not started:
        return due
    abandoned = await abandoned_jobs(pool.redis, queue_name(prefix, pool.name), started, time.time())
    running = set(started) - abandoned
    return [d for d, jid in zip(due, ids, strict=True) if jid not in running]


async def reclaim_once(pool: Pool) -> int:
    """Claim and start the due entries, as many as there are free slots; return how many started.

    The slots are reserved before the first await, so the reader cannot take them meanwhile.
    """
    if pool.stopping:
        return 0
    taken = pool.reserve(pool.free_slots())
    if taken <= 0:
        return 0
    try:
        due = await not_running_in_rq(pool, await not_deferred(pool, await due_entries(pool, taken)))
        if not due:
            return 0
        ids: list[Any] = [entry_id for entry_id, _, _ in due]
        # The smallest idle any of them needed: an entry another consumer claimed meanwhile
        # has an idle time near zero, so it is not taken twice.
        claimed: Any = await pool.redis.xclaim(
            pool.stream, pool.group, pool.consumer, min_idle_time=min(n for _, _, n in due), message_ids=ids
        )
    finally:
        pool.release(taken)
    fields_by_id = {text(entry_id): fields for entry_id, fields in claimed if fields is not None}
    started = 0
    # Start every claimed entry before any further await: XCLAIM counted a delivery for each,
    # and the reader must not take their slots in between.
    for entry_id, delivered, _ in due:
        fields = fields_by_id.get(entry_id)
        if fields is not None:
            if pool.free_slots() <= 0:
                continue  # concurrency was lowered meanwhile: it stays pending, claimed again later
            pool.start(entry_id, fields, attempt=delivered + 1)
            started += 1
    for entry_id, delivered, _ in due:
        if entry_id in fields_by_id:
            continue
        if not await pool.redis.xrange(pool.stream, min=entry_id, max=entry_id):
            # Pending, yet gone from the stream: say so in the dead-letter stream rather than lose it.
            failure = Failure("", f"entry {entry_id} was pending but is no longer in {pool.stream}", "")
            await pool.dead(entry_id, {b"dlq_missing_entry": entry_id.encode()}, REASON_TRIMMED,
                            [failure], delivered)
    if started:
        pool.acks.count("retried", started)
    return started
