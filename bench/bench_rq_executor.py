"""The cost of isolation: one pool's no-op events on the async executor and on the RQ executor.

Measured in this one run, on the same kind of entries (the built-in `noop` handler):

1. the async executor: one consumer process (run in this process), stream to ack;
2. the RQ executor, `executor: rq`: the stream consumer enqueues every entry as a
   job (timed on its own), then `rq worker --burst` runs them, once with
   `-w rq.SimpleWorker` (jobs in the worker process) and once with RQ's default
   forking Worker (a fresh work horse per job), without and with the warm start of
   `-c workers.rq.settings`. A worker's rate is jobs over the
   time from the first job's start to the last one's end, read from RQ's own
   job records, so process start-up is not counted.

Ratios are the async executor's rate over each RQ figure. Uses BENCH_REDIS_URL
(default redis://127.0.0.1:6379/14) under a fresh prefix, and deletes what it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from bench.bench_workers import REDIS_URL, REPO, _drain, _fill, _run, bench_space, ours_noop_per_s
from bus.keys import Keys
from bus.settings import Settings
from workers.rq.queue import SERIALIZER_PATH, queue_name

ASYNC_JOBS = int(os.environ.get("BENCH_NOOP_JOBS", "10000"))
SIMPLE_JOBS = int(os.environ.get("BENCH_RQ_SIMPLE_JOBS", "3000"))
FORK_JOBS = int(os.environ.get("BENCH_RQ_FORK_JOBS", "300"))
WARM_JOBS = int(os.environ.get("BENCH_RQ_WARM_JOBS", "1000"))

ROUTING = """
pools:
  plain: {concurrency: 512, max_attempts: 3}
  simple: {executor: rq, concurrency: 64, max_attempts: 3}
  forking: {executor: rq, concurrency: 64, max_attempts: 3}
  warm: {executor: rq, concurrency: 64, max_attempts: 3}
routes:
  bench.noop: {plain: [noop]}
"""


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": REDIS_URL, "FANOUT_PREFIX": settings.key_prefix,
            "ROUTING_FILE": str(settings.routing_file), "PYTHONPATH": str(REPO), "LOG_LEVEL": "warning"}


def rq_rates(settings: Settings, keys: Keys, pool: str, n: int, *options: str) -> dict[str, float]:
    """(enqueue rate, RQ worker rate, end to end rate) for n no-op entries of an rq pool."""

    async def enqueue_all() -> float:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        await _fill(client, keys, pool, "bench.noop", "noop", n)
        elapsed = await _drain(settings, pool, client)  # burst: returns once every entry is a job
        await client.aclose()
        return elapsed

    enqueue_s: float = _run(enqueue_all())
    name = queue_name(settings.key_prefix, pool)
    command = [sys.executable, "-m", "rq.cli", "worker", name, "--url", REDIS_URL,
               "--serializer", SERIALIZER_PATH, "--burst", "--quiet"]
    command += options
    subprocess.run(command, env=_env(settings), check=True)
    client = redis.Redis.from_url(REDIS_URL)
    queue = Queue(name, connection=client, serializer=JSONSerializer)
    ids = queue.finished_job_registry.get_job_ids()
    jobs = [j for j in Job.fetch_many(ids, connection=client, serializer=JSONSerializer) if j is not None]
    processed = int(client.hget(keys.pool_stats(pool), "processed") or 0)
    client.close()
    assert processed == n == len(jobs), f"processed {processed}, finished {len(jobs)} of {n}"
    first = min(j.started_at for j in jobs if j.started_at)
    last = max(j.ended_at for j in jobs if j.ended_at)
    run_s = (last - first).total_seconds()
    return {"enqueue_per_s": n / enqueue_s, "worker_per_s": n / run_s, "end_to_end_per_s": n / (enqueue_s + run_s)}


def _cleanup_rq(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    found = list(client.scan_iter(match=f"rq:*{prefix}*", count=1000))
    if found:
        client.delete(*found)
    for member in client.smembers("rq:queues"):
        if prefix.encode() in member:
            client.srem("rq:queues", member)
    client.close()


def measure() -> dict[str, Any]:
    with bench_space(ROUTING) as (settings, keys, _):
        try:
            ours = ours_noop_per_s(settings, keys, ASYNC_JOBS, pool="plain")
            simple = rq_rates(settings, keys, "simple", SIMPLE_JOBS, "-w", "rq.SimpleWorker")
            forking = rq_rates(settings, keys, "forking", FORK_JOBS)
            warm = rq_rates(settings, keys, "warm", WARM_JOBS, "-c", "workers.rq.settings")
        finally:
            _cleanup_rq(settings.key_prefix)
    print(f"no-op events, one process each: async executor {ours:,.0f}/s ({ASYNC_JOBS} events)", flush=True)
    for label, figures, n in (("SimpleWorker", simple, SIMPLE_JOBS), ("forking Worker", forking, FORK_JOBS),
                              ("forking Worker, -c workers.rq.settings", warm, WARM_JOBS)):
        print(f"  RQ executor, {label} ({n} events): worker {figures['worker_per_s']:,.0f}/s "
              f"(async is {ours / figures['worker_per_s']:.1f}x), stream consumer enqueues "
              f"{figures['enqueue_per_s']:,.0f}/s, enqueue then run {figures['end_to_end_per_s']:,.0f}/s "
              f"(async is {ours / figures['end_to_end_per_s']:.1f}x)", flush=True)
    return {"async_per_s": ours, "async_events": ASYNC_JOBS,
            "rq_simple": {**simple, "events": SIMPLE_JOBS, "async_vs_worker": ours / simple["worker_per_s"]},
            "rq_forking": {**forking, "events": FORK_JOBS, "async_vs_worker": ours / forking["worker_per_s"]},
            "rq_forking_warm": {**warm, "events": WARM_JOBS, "async_vs_worker": ours / warm["worker_per_s"]}}


def main() -> int:
    """Run the measurements, print them, and write bench/results/rq_executor.json."""
    figures = measure()
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "rq_executor.json").write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    status = main()
    print(f"({time.perf_counter() - started:.0f} s)")
    raise SystemExit(status)
