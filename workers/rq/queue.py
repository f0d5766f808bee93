"""The RQ side of an `executor: rq` pool: queue and job names, the job payload, enqueueing, job states.

The pool's stream consumer (workers/engine/, with workers/rq/bridge.py) turns each entry it owns into one
RQ job; an RQ worker runs it (workers/rq/job.py). The job id is
``<prefix>-<pool>-<entry id>-a<attempt>``: one job per delivery attempt of an
entry, never two, because it is enqueued with RQ's ``unique=True``, which
refuses (atomically, in one Lua script) any id whose job hash still exists,
whatever its state: queued, started, finished or failed. Plain enqueueing would
overwrite the job and push its id a second time, so the job would run twice.

The key prefix and the pool name are in the id, and the queue is named after
the pool (``<prefix>-<pool>`` when FANOUT_PREFIX is not the default), so two
deployments, or two test runs, sharing one Redis never share jobs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC
from typing import Any

import redis
import redis.asyncio as aioredis
from rq import Callback, Queue
from rq.exceptions import DuplicateJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from bus import defaults
from bus.envelope import plain_entry
from bus.keys import Keys
from bus.routing import PoolConfig
from workers.engine.outcomes import ledger_ttl_s
from workers.stream_ops import Fields, text

JOB_FUNCTION = "workers.rq.job.run_entry"
SUCCESS_CALLBACK = "workers.rq.job.on_job_success"
# The serializer every RQ worker of a pool must be started with (--serializer).
SERIALIZER_PATH = "rq.serializers.JSONSerializer"

# Job states in which the job will still run or is running: the entry is in RQ's hands.
LIVE_STATES = frozenset({"queued", "started", "deferred", "scheduled", "created", "rate_limited",
                         "ready_to_enqueue"})
FINISHED = "finished"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def queue_name(prefix: str, pool: str) -> str:
    """The RQ queue of a pool: the pool's name, or `<prefix>-<pool>` under a non-default FANOUT_PREFIX."""
    return pool if prefix == defaults.KEY_PREFIX else f"{prefix}-{pool}"


def job_id(prefix: str, pool: str, entry_id: str, attempt: int) -> str:
    """The one job id of (pool, stream entry, delivery attempt)."""
    return _UNSAFE.sub("_", f"{prefix}-{pool}-{entry_id}-a{attempt}")


def entry_payload(fields: Fields) -> dict[str, str]:
    """The entry's fields as text, for the JSON serializer; the raw body travels as UTF-8 text
    (decompressed: bus.envelope.plain_entry).

    Raises UnicodeDecodeError for a body that is not UTF-8 (the ingress never stores one).
    """
    return {text(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in plain_entry(fields).items()}


def job_kwargs(prefix: str, pool: str, entry_id: str, attempt: int, config: PoolConfig,
               entry: Mapping[str, str], *, stream: str | None = None) -> dict[str, Any]:
    """What the job function receives: where the entry came from, the pool's options, the entry."""
    # Only a stream other than the pool's own travels with the job, so RQ workers started before
    # jobs carried it keep running today's jobs.
    where = {"stream": stream} if stream is not None and stream != Keys(prefix).stream(pool) else {}
    return {
        "prefix": prefix, "pool": pool, **where, "entry_id": entry_id, "attempt": attempt,
        "max_attempts": config.max_attempts, "timeout_s": config.timeout_s,
        "backoff_base_s": config.backoff_base_s, "backoff_max_s": config.backoff_max_s,
        "ledger_ttl_s": ledger_ttl_s(config),
        "entry": dict(entry),
    }


def job_timeout_s(config: PoolConfig) -> int:
    """RQ's hard timeout for one job, in whole seconds as RQ wants it.

    The job stops its handlers at the pool's timeout_s itself; the margin is for recording the
    outcome, which RQ's alarm must never cut in half.
    """
    return max(1, math.ceil(config.timeout_s)) + defaults.RQ_RECORDING_MARGIN_S


def rq_queue(client: redis.Redis, prefix: str, pool: str) -> Queue:
    return Queue(queue_name(prefix, pool), connection=client, serializer=JSONSerializer)


def enqueue(queue: Queue, kwargs: dict[str, Any], config: PoolConfig) -> bool:
    """Enqueue the job of one (entry, attempt); False when that job exists already (nothing is added).

    Blocking (RQ's client is synchronous): the pool calls it from a thread.
    """
    entry = kwargs["entry"]
    try:
        queue.enqueue_call(
            JOB_FUNCTION,
            kwargs=kwargs,
            job_id=job_id(kwargs["prefix"], kwargs["pool"], kwargs["entry_id"], kwargs["attempt"]),
            timeout=job_timeout_s(config),
            failure_ttl=config.retention_s,
            # RQ logs the description: ids only, never the body.
            description=(f"{kwargs['pool']} {entry.get('type', '')} {entry.get('id', '')} "
                         f"entry {kwargs['entry_id']} attempt {kwargs['attempt']}"),
            on_success=Callback(SUCCESS_CALLBACK),
            unique=True,
        )
    except DuplicateJobError:
        return False
    return True


async def job_states(client: aioredis.Redis, job_ids: list[str]) -> list[str | None]:
    """The RQ status of each job (None: no such job, or it expired), read in one round trip."""
    if not job_ids:
        return []
    pipe = client.pipeline(transaction=False)
    for jid in job_ids:
        pipe.hget(Job.key_for(jid), "status")
    states: list[Any] = await pipe.execute()
    return [text(s) if s is not None else None for s in states]


STARTED = "started"
WORKER_KEY_PREFIX = "rq:worker:"
EXECUTION_KEY_PREFIX = "rq:execution:"


def _utc_s(value: Any) -> float | None:
    """An RQ timestamp field (`2026-11-27T11:40:00.123456Z`) as Unix seconds."""
    if not value:
        return None
    from rq.utils import utcparse

    return utcparse(text(value)).replace(tzinfo=UTC).timestamp()


async def abandoned_jobs(client: aioredis.Redis, queue: str, job_ids: list[str], now_s: float) -> set[str]:
    """Those of `job_ids`, all seen `started`, whose worker is gone: nobody will ever finish them.

    RQ marks such a job failed only in a maintenance pass (every 10 minutes) or once its
    execution's heartbeat has expired. A started job is abandoned here when it is still
    `started` and either it has run past its RQ timeout plus RQ_ABANDONED_MARGIN_S (RQ's own
    alarm would have stopped it by then), or none of its executions belongs to a worker whose
    heartbeat key still exists.
    """
    if not job_ids:
        return set()
    pipe = client.pipeline(transaction=False)
    for jid in job_ids:
        pipe.hmget(Job.key_for(jid), ["status", "started_at", "timeout"])
    pipe.zrange(StartedJobRegistry.key_template.format(queue), 0, -1)
    found: list[Any] = await pipe.execute()
    rows, members = found[:-1], [text(m) for m in found[-1]]
    executions: dict[str, list[str]] = {}
    for member in members:
        jid, _, _ = member.rpartition(":")
        executions.setdefault(jid, []).append(member)
    candidates: list[str] = []
    abandoned: set[str] = set()
    for jid, (status, started_at, timeout) in zip(job_ids, rows, strict=True):
        if text(status) != STARTED:
            continue
        started_s = _utc_s(started_at)
        limit_s = float(timeout) if timeout else float(defaults.RQ_FULL_SCAN_INTERVAL_S)
        if started_s is not None and started_s + limit_s + defaults.RQ_ABANDONED_MARGIN_S < now_s:
            abandoned.add(jid)
        else:
            candidates.append(jid)
    if not candidates:
        return abandoned
    pipe = client.pipeline(transaction=False)
    for jid in candidates:
        for member in executions.get(jid, []):
            pipe.hget(EXECUTION_KEY_PREFIX + member, "worker_name")
    names: list[Any] = await pipe.execute()
    workers = sorted({text(n) for n in names if n})
    alive: list[Any] = []
    if workers:
        pipe = client.pipeline(transaction=False)
        for name in workers:
            pipe.exists(WORKER_KEY_PREFIX + name)
        alive = await pipe.execute()
    live_workers = {name for name, n in zip(workers, alive, strict=True) if n}
    names_iter = iter(names)
    for jid in candidates:
        owners = [text(next(names_iter) or b"") for _ in executions.get(jid, [])]
        if not any(owner in live_workers for owner in owners):
            abandoned.add(jid)
    return abandoned


def cleanup_started(queue: Queue) -> None:
    """RQ's own pass over the queue's started jobs: those whose execution heartbeat expired end failed.

    Blocking (RQ's client is synchronous).
    """
    StartedJobRegistry(queue.name, connection=queue.connection, serializer=JSONSerializer).cleanup()


async def queue_figures(client: aioredis.Redis, name: str) -> dict[str, Any]:
    """`fanout status` fields of an RQ pool: its queue, jobs waiting in it, workers listening to it."""
    pipe = client.pipeline(transaction=False)
    pipe.llen(Queue.redis_queue_namespace_prefix + name)
    pipe.scard(WORKERS_BY_QUEUE_KEY % name)
    queued, workers = await pipe.execute()
    return {"executor": "rq", "rq_queue": name, "rq_queued": int(queued), "rq_workers": int(workers)}
