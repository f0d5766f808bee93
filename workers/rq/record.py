"""What an RQ job leaves in Redis: written by workers/engine/outcomes.py, run on the job's sync client."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from bus.envelope import Event
from bus.errors import FanoutError
from bus.partitions import Partition
from bus.routing import PoolConfig
from workers.engine import outcomes
from workers.engine.failures import Failure, credential_patterns_only
from workers.newest import Newest, queue_writes

log = structlog.get_logger("fanout.worker")


class AttemptFailed(FanoutError):
    """Raised by the job so RQ records it as failed; the entry stays pending (or was dead-lettered)."""


@dataclass(frozen=True)
class Where:
    """The entry a job runs: its pool, stream and id, and the keys of the stream's partition."""

    keys: Partition
    pool: str
    stream: str
    entry_id: str


def counted_attempt(client: redis.Redis, where: Where, delivery: int) -> int:
    """The attempt number of the entry's `delivery`-th run: the runs that ended Paused are not attempts."""
    if delivery <= 1:
        return delivery
    paused: Any = client.hget(where.keys.uncounted(where.pool), where.entry_id)
    return delivery - int(paused or 0)


def record_failure(client: redis.Redis, where: Where, config: PoolConfig, entry: dict[str, str],
                   event: Event, attempt: int, succeeded: list[str], failures: list[Failure],
                   ledger_ttl_s: int, redact: Callable[[str], str] = credential_patterns_only) -> None:
    """What a failed attempt leaves behind (workers/engine/outcomes.py): counts, ledger, retry time; or the dead letter.

    `attempt` is the counted attempt (counted_attempt), not the delivery.
    """
    ledger_key = where.keys.ledger(where.pool, event.id)
    reason = outcomes.dead_reason(failures, attempt, config.max_attempts)
    if reason is not None:
        dead(client, where, entry, reason, failures, attempt, ledger_key, failed=len(failures), redact=redact)
        return
    pipe = client.pipeline(transaction=True)
    # Backoff from the end of this attempt, not from when the entry was enqueued.
    outcomes.record_failure(pipe, where.keys, config, where.entry_id, ledger_key, succeeded, failures, attempt,
                            int(time.time() * 1000), ledger_ttl_s)
    pipe.execute()


# In the result of a job that ran nothing because its attempt is no longer the entry's current one.
SKIPPED = "skipped"


def times_delivered(client: redis.Redis, where: Where) -> int | None:
    """How often the pending entry was delivered (its current attempt); None when it is not pending."""
    rows: Any = client.xpending_range(where.stream, where.keys.group(where.pool), min=where.entry_id,
                                      max=where.entry_id, count=1)
    return int(rows[0]["times_delivered"]) if rows else None


def ack_done(client: redis.Redis, where: Where, event: Event, attempt: int, ledger_key: str,
              ledger_ttl_s: int, newest: Newest | None = None) -> None:
    """Ack the entry and count it processed, inside the job, right after its handlers succeeded.

    Not in RQ's success callback alone: RQ runs that before it saves the job as finished, and
    marks the job failed if it raises, so a lost ack there meant a next attempt with no ledger,
    running every handler again. If this ack fails, every handler is recorded as done in the
    completion ledger (and the entry made due at once) before the job fails: the next attempt
    runs nothing and acks. `newest`: the stale guard's record of this completion, sent with the
    ack in one pipeline, before it (workers/newest.py).
    """
    call = outcomes.ack_call(where.keys, where.pool, where.stream, where.entry_id,
                             event.id if attempt > 1 else None)
    try:
        if newest is None:
            call.run(client)
        else:
            pipe = client.pipeline(transaction=False)
            queue_writes(pipe, {newest.current: {newest.object_key: newest.created}})
            pipe.eval(call.script, len(call.keys), *call.keys, *call.args)
            pipe.execute()
    except redis.RedisError as err:
        log.error("entry.ack_failed", pool=where.pool, executor="rq", entry_id=where.entry_id, attempt=attempt,
                  event_id=event.id, event_type=event.type, error=f"{type(err).__name__}: {err}")
        pipe = client.pipeline(transaction=True)
        pipe.sadd(ledger_key, *event.handlers)
        pipe.expire(ledger_key, ledger_ttl_s)
        pipe.hset(where.keys.retry_at(where.pool), where.entry_id, str(int(time.time() * 1000)))
        pipe.execute()
        raise AttemptFailed(f"attempt {attempt} of entry {where.entry_id} ({event.type} {event.id}): every "
                            f"handler succeeded but the ack failed ({type(err).__name__}: {err}); "
                            "the next attempt only acks") from err


def dead(client: redis.Redis, where: Where, entry: dict[str, str], reason: str, failures: list[Failure],
         attempts: int, ledger_key: str | None, *, failed: int = 0,
         redact: Callable[[str], str] = credential_patterns_only) -> None:
    """Dead-letter the entry, ack it, count it (and `failed` handler failures) in one script.

    One step, so a failure (or RQ's alarm) cannot leave a dead letter without the ack, which
    would dead-letter the entry a second time and run its succeeded handlers again; a repeat
    finds the entry no longer pending and writes nothing.
    """
    call = outcomes.dead_call(where.keys, where.pool, where.stream, where.entry_id, entry, reason=reason,
                              failures=failures, attempts=attempts, ledger_key=ledger_key, failed=failed,
                              now_ms=int(time.time() * 1000), redact=redact)
    if not call.run(client):
        log.info("entry.already_done", pool=where.pool, executor="rq", entry_id=where.entry_id, attempt=attempts)
        return
    log.error("entry.dead_lettered", pool=where.pool, executor="rq", entry_id=where.entry_id,
              attempt=attempts, event_id=entry.get("id", ""), event_type=entry.get("type", ""),
              **outcomes.dead_log_fields(reason, failures, redact))
