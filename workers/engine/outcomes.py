"""What an attempt leaves in Redis, written by this one module for both executors.

* success: the ack, the `processed` count, the ledger, retry time and paused
  runs forgotten;
* a failed attempt: the `failed` count, the handlers that did succeed in the
  completion ledger, and when the retry is due (`retry_at`: the backoff, or a
  RetryLater's defer_s when that is later, from the end of the attempt);
* a paused run (every failure Paused: no handler tried), which is not an attempt:
  the `paused` count, one more run in the `uncounted` hash (the delivery count
  minus those is the attempt number: workers/engine/entries.py, reclaim.py,
  workers/rq/record.py), and the retry time without a backoff;
* dead letter: the dead-letter entry, the ack, the counts, the ledger, retry
  time and paused runs forgotten, in ONE script (DEAD_SCRIPT), which does nothing when the
  entry is no longer pending: a crash cannot leave a dead letter unacked, and a
  repeat never writes a second one;
* the dead letter of an entry pending but gone from the stream (trimmed anyway).

The scripts are built here as `ScriptCall`s and run by either client: the async
executor's (redis.asyncio) or the RQ job's (sync, inside an RQ worker). The
consumer process acks successes in batches, one pipeline per loop tick (ack_batch.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
import structlog

from bus import defaults
from bus.keys import Keys
from bus.partitions import Partition, stream_partition
from bus.routing import PoolConfig
from workers.engine.ack_batch import AckBatch
from workers.engine.failures import (
    REASON_MAX_ATTEMPTS,
    REASON_TRIMMED,
    Failure,
    credential_patterns_only,
    dead_fields,
    entry_reason,
    paused_run,
)
from workers.engine.retry import pool_backoff_ms
from workers.newest import Newest
from workers.stream_ops import text

log = structlog.get_logger("fanout.worker")

# XACK, and only when it acked something: count the entry once and forget its ledger and
# retry time and paused runs. Both the RQ job's success callback and a reclaim pass may ack the
# same entry. KEYS: stream, stats, ledger (the stats key when there is none), retry times, paused
# runs. ARGV: group, entry id, counter.
ACK_SCRIPT = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
  if KEYS[3] ~= KEYS[2] then redis.call('DEL', KEYS[3]) end
  redis.call('HDEL', KEYS[4], ARGV[2])
  redis.call('HDEL', KEYS[5], ARGV[2])
  return 1
end
return 0
"""

# Dead-letter a pending entry in one step: the dead-letter XADD, the XACK, the counters, the
# ledger DEL and the retry-time and paused-runs HDELs; nothing when the entry is no longer pending
# (a repeat), unless ARGV[4] is "0" (an entry trimmed while pending: XCLAIM already dropped it
# from the pending list). KEYS: stream, stats, ledger (the stats key when there is none), retry
# times, dead-letter stream, paused runs (all under the stream's partition tag: one slot). ARGV: group, entry id, handler failures
# to count, the pending guard, then the dead-letter entry's fields and values. XADD comes
# first: if it fails, nothing else happened.
DEAD_SCRIPT = """
if ARGV[4] == '1' and #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then
  return 0
end
redis.call('XADD', KEYS[5], '*', unpack(ARGV, 5))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBY', KEYS[2], 'failed', ARGV[3]) end
redis.call('HINCRBY', KEYS[2], 'dead', 1)
if KEYS[3] ~= KEYS[2] then redis.call('DEL', KEYS[3]) end
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('HDEL', KEYS[6], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class ScriptCall:
    """One script with its KEYS and ARGV, for a sync or an async client."""

    script: str
    keys: list[str]
    args: list[Any]

    def run(self, client: redis.Redis) -> Any:
        return client.eval(self.script, len(self.keys), *self.keys, *self.args)

    async def run_async(self, client: aioredis.Redis) -> Any:
        return await client.eval(self.script, len(self.keys), *self.keys, *self.args)


def ack_call(keys: Partition, pool: str, stream: str, entry_id: str, event_id: str | None,
             counter: str = "processed") -> ScriptCall:
    """Ack one entry and count it; with no event id there is no ledger to delete."""
    stats = keys.pool_stats(pool)
    ledger = keys.ledger(pool, event_id) if event_id else stats
    return ScriptCall(ACK_SCRIPT, [stream, stats, ledger, keys.retry_at(pool), keys.uncounted(pool)],
                      [keys.group(pool), entry_id, counter])


def dead_call(keys: Partition, pool: str, stream: str, entry_id: str, fields: Mapping[Any, Any], *, reason: str,
              failures: list[Failure], attempts: int, ledger_key: str | None, failed: int, now_ms: int,
              only_if_pending: bool = True, redact: Callable[[str], str] = credential_patterns_only) -> ScriptCall:
    """Dead-letter, ack and count one entry (and `failed` handler failures) in one step."""
    stats = keys.pool_stats(pool)
    dead = dead_fields(entry_id, fields, reason=reason, failures=failures, attempts=attempts, now_ms=now_ms,
                       redact=redact)
    flat: list[Any] = [item for pair in dead.items() for item in pair]
    return ScriptCall(DEAD_SCRIPT,
                      [stream, stats, ledger_key or stats, keys.retry_at(pool), keys.dead(pool),
                       keys.uncounted(pool)],
                      [keys.group(pool), entry_id, str(failed), "1" if only_if_pending else "0", *flat])


def trimmed_call(keys: Partition, pool: str, stream: str, entry_id: str, delivered: int, now_ms: int) -> ScriptCall:
    """The dead letter of an entry that was pending but is no longer in the stream."""
    failure = Failure("", f"entry {entry_id} was pending but is no longer in {stream}", "")
    return dead_call(keys, pool, stream, entry_id, {b"dlq_missing_entry": entry_id.encode()},
                     reason=REASON_TRIMMED, failures=[failure], attempts=delivered, ledger_key=None,
                     failed=0, now_ms=now_ms, only_if_pending=False)


def dead_reason(failures: list[Failure], attempt: int, max_attempts: int) -> str | None:
    """Why a failed attempt dead-letters its entry (a permanent failure, the last attempt), or None.

    A paused run is not an attempt: it never spends the last one.
    """
    permanent = [f for f in failures if f.permanent]
    if permanent:
        return permanent[0].reason
    return REASON_MAX_ATTEMPTS if attempt >= max_attempts and not paused_run(failures) else None


def lost_attempt_failures(handlers: tuple[str, ...], done: set[str], error: str) -> list[Failure]:
    """An attempt past max_attempts: the last allowed one never finished; every handler not done failed."""
    return [Failure(h, error, "") for h in handlers if h not in done]


def dead_log_fields(reason: str, failures: list[Failure], redact: Callable[[str], str]) -> dict[str, str]:
    """The `entry.dead_lettered` line's reason, handlers and error: what the dead letter itself says."""
    said, deciding = entry_reason(reason, failures)
    return {"reason": said, "handler": ",".join(f.handler for f in failures),
            "error": redact(deciding.error) if deciding else reason}


def ledger_ttl_s(config: PoolConfig) -> int:
    return max(config.retention_s, defaults.LEDGER_TTL_S)


def retry_at_ms(config: PoolConfig, attempt: int, entry_id: str, failures: list[Failure], now_ms: int) -> int:
    """When the next attempt is due: the backoff, or longer for RetryLater(defer_s), from now.

    A paused run (not an attempt) has no backoff: only its defer_s.
    """
    defer_ms = max((int(f.defer_s * 1000) for f in failures if f.defer_s is not None), default=0)
    backoff_ms = 0 if paused_run(failures) else pool_backoff_ms(config, attempt, entry_id)
    return now_ms + max(backoff_ms, defer_ms)


def record_failure(pipe: Any, keys: Partition, config: PoolConfig, entry_id: str, ledger_key: str,
                   succeeded: list[str], failures: list[Failure], attempt: int, now_ms: int,
                   ttl_s: int | None = None) -> None:
    """Queue on `pipe` (a sync or async pipeline) what a failed attempt that will be retried leaves.

    `attempt` counts attempts, paused runs left out. A paused run is counted `paused`, not
    `failed`, and adds one to the entry's uncounted runs, in the same transaction.
    """
    pool = config.name
    paused = paused_run(failures)
    pipe.hincrby(keys.pool_stats(pool), "paused" if paused else "failed", len(failures))
    if paused:
        pipe.hincrby(keys.uncounted(pool), entry_id, 1)
        if attempt > 1:  # entries.py counted this run `retried` as it started; a paused run is no attempt
            pipe.hincrby(keys.pool_stats(pool), "retried", -1)
    if succeeded:
        pipe.sadd(ledger_key, *succeeded)
        pipe.expire(ledger_key, ttl_s if ttl_s is not None else ledger_ttl_s(config))
    pipe.hset(keys.retry_at(pool), entry_id, str(retry_at_ms(config, attempt, entry_id, failures, now_ms)))


class Outcomes:
    """The consumer process's side: successes acked in batches; dead letters and failures at once."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, pool: str, now_ms: Callable[[], int],
                 redact: Callable[[str], str] = credential_patterns_only) -> None:
        self.redis = redis
        self.keys = keys
        self.pool = pool
        self.now_ms = now_ms
        # bus/redaction.py with this process's settings: every error text a dead letter or log line keeps.
        self.redact = redact
        self.batch = AckBatch(redis, keys, pool)
        self._log = log.bind(pool=pool)

    def part(self, stream: str) -> Partition:
        """The partition of one of the pool's streams: its entries' ledger, retry time, dead letters."""
        return stream_partition(self.keys.prefix, stream)

    def unacked(self, stream: str, entry_id: str) -> bool:
        """Finished, its ack on its way: never to be run again meanwhile."""
        return (stream, entry_id) in self.batch.unacked

    def succeeded(self, stream: str, entry_id: str, ledger_key: str | None, newest: Newest | None = None) -> None:
        """Queue the ack; `ledger_key` when a previous attempt may have left a ledger or retry time;
        `newest` when the pool's stale guard records this completion (workers/newest.py)."""
        self.batch.complete(stream, entry_id, "processed", ledger_key, newest)

    def stale(self, stream: str, entry_id: str, ledger_key: str | None) -> None:
        """Queue the ack of an entry the stale guard skipped, counted `stale`."""
        self.batch.complete(stream, entry_id, "stale", ledger_key)

    def count(self, counter: str, n: int = 1, stream: str | None = None) -> None:
        self.batch.count(counter, n, stream)

    async def failed(self, config: PoolConfig, entry_id: str, ledger_key: str, succeeded: list[str],
                     failures: list[Failure], attempt: int, stream: str | None = None) -> None:
        """A failed attempt that will be retried: counts, ledger, retry time (one transaction)."""
        pipe = self.redis.pipeline(transaction=True)
        part = self.part(stream or self.keys.stream(self.pool))
        record_failure(pipe, part, config, entry_id, ledger_key, succeeded, failures, attempt, self.now_ms())
        await pipe.execute()

    async def dead_letter(self, stream: str, entry_id: str, fields: Mapping[Any, Any], *, reason: str,
                          failures: list[Failure], attempts: int, ledger_key: str | None = None,
                          failed: int = 0) -> bool:
        """Dead-letter and ack in one script; False when the entry was no longer pending (nothing written)."""
        call = dead_call(self.part(stream), self.pool, stream, entry_id, fields, reason=reason, failures=failures,
                         attempts=attempts, ledger_key=ledger_key, failed=failed, now_ms=self.now_ms(),
                         redact=self.redact)
        if not await call.run_async(self.redis):
            self._log.info("entry.already_done", entry_id=entry_id, attempt=attempts)
            return False
        self._log.error("entry.dead_lettered", entry_id=entry_id, attempt=attempts,
                        event_id=text(fields.get(b"id")), event_type=text(fields.get(b"type")),
                        **dead_log_fields(reason, failures, self.redact))
        return True

    async def trimmed(self, stream: str, entry_id: str, delivered: int) -> None:
        """Pending, yet gone from the stream: say so in the dead-letter stream rather than lose it."""
        call = trimmed_call(self.part(stream), self.pool, stream, entry_id, delivered, self.now_ms())
        await call.run_async(self.redis)
        self._log.error("entry.dead_lettered", entry_id=entry_id, reason=REASON_TRIMMED, attempt=delivered)

    async def ack(self, stream: str, entry_id: str) -> bool:
        """Ack (and count) an entry at once, outside the batch; False when it was acked already."""
        return bool(await ack_call(self.part(stream), self.pool, stream, entry_id, None).run_async(self.redis))
