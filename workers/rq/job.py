"""The RQ job of an `executor: rq` pool: run one stream entry's handlers inside an RQ worker.

Start the workers with the JSON serializer, in the environment of `fanout worker`
(REDIS_URL, ROUTING_FILE, the destinations' and Supabase's variables):

    rq worker reports -c workers.rq.settings --serializer rq.serializers.JSONSerializer

(`-c workers.rq.settings` takes REDIS_URL and loads the handlers before RQ forks.
`--serializer` stays on the command line: RQ reads no serializer from a settings
module, only from that option.)

How one entry flows, and why nothing is lost or run twice:

1. The pool's stream consumer reads the entry (it is now pending, delivered once)
   and enqueues job ``<prefix>-<pool>-<entry>-a1`` (workers/rq/queue.py). The entry
   stays pending until acked: a crash anywhere leaves it there.
2. The job first checks that its attempt is still the entry's: the entry is
   pending and delivered exactly `attempt` times. Otherwise (the entry is done,
   a later attempt owns it, a requeued old job, a pool switched to async that
   took the entry over) it returns without running anything, and its success
   callback does not ack.
   The job runs the handlers that the completion ledger does not list as done,
   the ledger the async executor also uses: async handlers concurrently on one
   event loop (`asyncio.run`), each under `timeout_s`; sync handlers directly, in
   the job's own thread, so the job's own alarm (SIGALRM at `timeout_s`, raising
   HandlerTimeout, a BaseException no `except Exception` swallows) can stop a
   blocking call. Past that timeout, every handler not yet done counts as timed
   out. RQ's hard timeout, `ceil(timeout_s)` + RQ_RECORDING_MARGIN_S, is only a
   backstop: the job cancels it before recording what happened.
3. Success: the job itself acks the entry and counts it `processed`, in one
   script that counts only when XACK acked (so an ack repeated by the job's RQ
   success callback or a reclaim pass is not counted twice), then returns. If
   that ack fails, the job records every handler as done in the ledger before
   it fails: the next attempt runs nothing and only acks.
4. Failure: the job records what the async executor records (`failed` count,
   the handlers that did succeed in the ledger, the time the retry is due in the
   pool's retry-time hash: its backoff, or longer for RetryLater(defer_s)), then
   raises, so RQ marks the job failed. The entry stays pending. On the last
   attempt, or for a PermanentFailure, it dead-letters, acks and counts the
   entry in one script (DEAD_SCRIPT, workers/engine/outcomes.py), which does nothing if the entry is no
   longer pending: never a second dead letter.
5. Retries are the stream consumer's: its reclaim pass (workers/rq/bridge.py)
   XCLAIMs a due entry whose job failed, which counts the delivery, and enqueues
   the next attempt's job: ``...-a2``. Each attempt is its own job, so a failed
   job stays visible in RQ (rq-dashboard, the failed registry) and is never
   re-enqueued. An entry whose job is queued or started is never touched; one
   whose job is missing (its consumer died between reading and enqueueing) gets
   that same attempt's job enqueued; unique ids make a race a no-op.

A job killed before it could record anything (the work horse was SIGKILLed, say)
ends failed in RQ without a retry time; the reclaimer's next full scan of the
pending list (at most RQ_FULL_SCAN_INTERVAL_S later) retries it, and it counts as
an attempt: after `max_attempts` the reclaimer dead-letters the entry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import structlog
from rq.job import Job, get_current_job
from rq.timeouts import JobTimeoutException

from bus.connection import async_redis, sync_redis
from bus.envelope import Event
from bus.keys import Keys
from bus.logs import configure_logging
from bus.partitions import stream_partition
from bus.redaction import redact_secrets
from bus.reload import RoutingHolder
from bus.routing import PoolConfig
from bus.settings import Settings
from workers.context import Context
from workers.engine import outcomes
from workers.engine.failures import REASON_MALFORMED, REASON_TIMEOUT, Failure
from workers.handlers import HandlerSet, call_handler
from workers.newest import Newest
from workers.resources import Resources
from workers.rq.deadline import INLINE, HandlerTimeout, handler_deadline
from workers.rq.record import (
    SKIPPED,
    AttemptFailed,
    Where,
    ack_done,
    counted_attempt,
    dead,
    record_failure,
    times_delivered,
)
from workers.stream_ops import text

log = structlog.get_logger("fanout.worker")

class _HideJobArguments(logging.Filter):
    """RQ attaches a failed job's arguments (the raw body) to its log record; a JSON log handler
    would print them. Raw bodies never reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in ("arguments", "kwargs"):
            if hasattr(record, name):
                setattr(record, name, "[redacted]")
        return True


@dataclass
class _Runtime:
    """What an RQ worker process keeps between jobs: the routing table (followed) and resolved handlers."""

    holder: RoutingHolder
    handlers: HandlerSet


_runtimes: dict[Path, _Runtime] = {}


def _runtime(settings: Settings) -> _Runtime:
    found = _runtimes.get(settings.routing_file)
    if found is None:
        # The first job (or warm_up) is the RQ worker process's entry into our code.
        if not structlog.is_configured():
            configure_logging(settings.log_level, settings=settings)
        rq_log = logging.getLogger("rq.worker")
        if not any(isinstance(f, _HideJobArguments) for f in rq_log.filters):
            rq_log.addFilter(_HideJobArguments())
        found = _runtimes[settings.routing_file] = _Runtime(
            RoutingHolder.load(settings.routing_file, max_bytes=settings.max_routing_file_bytes), HandlerSet())
    elif found.holder.check():
        # A reload: forward handlers read their destination from the handler set at each call,
        # so refresh it, as the pool does, or edits to a destination would never reach RQ jobs.
        found.handlers.load((), found.holder.table, strict=False)
    return found


def warm_up() -> None:
    """Load the routing table and resolve every handler it names, before RQ forks work horses.

    `rq worker -c workers.rq.settings` calls it in the worker's main process, so each
    forked horse starts with them loaded instead of importing them for its one job.
    """
    runtime = _runtime(Settings.from_env())
    table = runtime.holder.table
    names = {h for route in table.routes for _, handlers in route.targets for h in handlers}
    for err in runtime.handlers.load(names, table, strict=False):
        log.warning("handler.unresolved", error=str(err))


def _connection(settings: Settings) -> redis.Redis:
    """The RQ worker's own connection: the Redis that holds the queue, and so the pool's stream."""
    job = get_current_job()
    return job.connection if job is not None else sync_redis(settings.redis_url)


def run_entry(*, prefix: str, pool: str, entry_id: str, attempt: int, max_attempts: int, timeout_s: float,
              backoff_base_s: float, backoff_max_s: float, ledger_ttl_s: int,
              entry: dict[str, str], stream: str | None = None, skip_stale: bool = False) -> dict[str, int]:
    """The job function: run the entry's handlers not yet done; raise AttemptFailed if any failed.

    `stream` is the entry's stream (jobs enqueued before it was passed: the pool's one stream).
    """
    settings = dataclasses.replace(Settings.from_env(), key_prefix=prefix)
    runtime = _runtime(settings)
    client = _connection(settings)
    stream = stream or Keys(prefix).stream(pool)
    keys = stream_partition(prefix, stream)  # the ledger, retry time and dead letter of its partition
    config = PoolConfig(name=pool, max_attempts=max_attempts, timeout_s=timeout_s,
                        backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s)
    where = Where(keys, pool, stream, entry_id)
    delivered = times_delivered(client, where)
    if delivered != attempt:
        # Done (acked, dead-lettered), or another attempt owns it now: a job requeued by hand
        # (`rq requeue`), or a pool switched to async that took the entry over. Run nothing.
        log.warning("entry.attempt_superseded", pool=pool, executor="rq", entry_id=entry_id, attempt=attempt,
                    times_delivered=delivered, event_id=entry.get("id", ""), event_type=entry.get("type", ""))
        return {"handlers": 0, SKIPPED: 1}
    try:
        event = Event.from_entry(entry)  # type: ignore[arg-type]
    except (ValueError, KeyError) as err:
        failure = Failure("", f"{type(err).__name__}: {err}", "", permanent=True)
        dead(client, where, entry, REASON_MALFORMED, [failure], attempt, None)
        raise AttemptFailed(f"malformed entry {entry_id}: dead-lettered") from err
    ledger_key = keys.ledger(pool, event.id)
    newest = Newest.of(Keys(prefix), pool, where.stream, event, time.time()) if skip_stale else None
    done = {text(h) for h in client.smembers(ledger_key)} if attempt > 1 else set()
    # `attempt` is the delivery (the job's identity); handlers see, and max_attempts counts, the
    # attempt number, which leaves out the runs that ended Paused.
    counted = counted_attempt(client, where, attempt)
    todo = [h for h in event.handlers if h not in done]
    succeeded: list[str] = []
    failures: list[Failure] = []
    try:
        with handler_deadline(timeout_s):
            asyncio.run(_run_handlers(runtime, settings, event, pool, counted, todo, timeout_s, succeeded,
                                      failures, newest))
    except (HandlerTimeout, JobTimeoutException):
        ended = {*succeeded, *(f.handler for f in failures)}
        trace = traceback.format_exc()
        failures += [Failure(h, f"TimeoutError: the job ran past timeout_s ({timeout_s} s); it was stopped",
                             trace, reason=REASON_TIMEOUT) for h in todo if h not in ended]
    # From here on only recording, which RQ's alarm (already cancelled by _handler_deadline) must
    # never cut in half.
    if not failures:
        ack_done(client, where, event, attempt, ledger_key, ledger_ttl_s, newest)
        return {"handlers": len(todo)}
    secret_names = runtime.holder.table.secret_env_names()
    record_failure(client, where, config, entry, event, counted, succeeded, failures, ledger_ttl_s,
                   redact=lambda value: redact_secrets(value, settings, secret_names))
    raise AttemptFailed(f"attempt {attempt} of entry {entry_id} ({event.type} {event.id}): "
                        + "; ".join(f"{f.handler}: {f.error}" for f in failures))


async def _run_handlers(runtime: _Runtime, settings: Settings, event: Event, pool: str, attempt: int,
                        todo: list[str], timeout_s: float, succeeded: list[str], failures: list[Failure],
                        newest: Newest | None = None) -> None:
    client = async_redis(settings.redis_url)
    resources = Resources()
    table = runtime.holder.table
    bound = log.bind(pool=pool, executor="rq", event_id=event.id, event_type=event.type, attempt=attempt)

    def make_ctx(handler: str) -> Context:
        return Context(pool=pool, handler=handler, attempt=attempt, log=bound, redis=client, settings=settings,
                       resources=resources, newest=newest, log_fields={"handler": handler})

    async def one(name: str) -> None:
        failure = await call_handler(runtime.handlers.get(name, table), name, event, make_ctx, timeout_s,
                                     lambda: INLINE, passthrough=(JobTimeoutException,))
        if failure is None:
            succeeded.append(name)
        else:
            failures.append(failure)

    try:
        if len(todo) == 1:
            await one(todo[0])
        else:
            await asyncio.gather(*(one(h) for h in todo))
    finally:
        await resources.aclose()
        await client.aclose()


def on_job_success(job: Job, connection: redis.Redis, result: Any) -> None:
    """RQ's success callback: a harmless repeat of the job's own ack (the script counts an entry once).

    Kept for jobs enqueued before the job acked itself. A job that ran nothing (its attempt was
    superseded) must not ack: the entry may be running elsewhere under a later attempt.
    """
    if isinstance(result, dict) and result.get(SKIPPED):
        return
    kwargs: dict[str, Any] = job.kwargs
    event_id = kwargs["entry"].get("id") if kwargs["attempt"] > 1 else None
    stream = kwargs.get("stream") or Keys(kwargs["prefix"]).stream(kwargs["pool"])
    outcomes.ack_call(stream_partition(kwargs["prefix"], stream), kwargs["pool"], stream, kwargs["entry_id"], event_id).run(connection)
