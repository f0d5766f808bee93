"""Helpers for RQ executor tests: drive a pool's stream consumer and an RQ SimpleWorker in turn.

RQ tests are plain (sync) functions: SimpleWorker runs jobs in the calling thread,
which must be the main thread (RQ's hard timeout is SIGALRM) and must not be
running an event loop (the job calls asyncio.run).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from bus.keys import Keys
from bus.settings import Settings
from tests.conftest import TEST_REDIS_URL
from workers.rq.queue import queue_name
from workers.runner import run_pool


def rq_queue_of(client: redis.Redis, prefix: str, pool: str) -> Queue:
    return Queue(queue_name(prefix, pool), connection=client, serializer=JSONSerializer)


def work_burst(client: redis.Redis, prefix: str, pool: str) -> None:
    """Run every job in the pool's RQ queue with a SimpleWorker in burst mode."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker = SimpleWorker([rq_queue_of(client, prefix, pool)], connection=client,
                              serializer=JSONSerializer, name=f"{prefix}-{pool}-worker")
        worker.work(burst=True, logging_level="WARNING")
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def pending(client: redis.Redis, keys: Keys, pool: str) -> int:
    return int(client.xpending(keys.stream(pool), keys.group(pool))["pending"])


def drain_rq(settings: Settings, pool: str, client: redis.Redis, rounds: int = 30) -> int:
    """Stream consumer (burst), then RQ worker (burst), until nothing is pending; returns the rounds used."""
    keys = Keys(settings.key_prefix)
    for round_ in range(1, rounds + 1):
        asyncio.run(run_pool(settings, pool, burst=True))
        groups = client.xinfo_groups(keys.stream(pool))
        if pending(client, keys, pool) == 0 and all(int(g["lag"] or 0) == 0 for g in groups):
            return round_
        work_burst(client, settings.key_prefix, pool)
    raise AssertionError(f"pool {pool} not drained after {rounds} rounds")


def delete_rq_keys(prefix: str) -> None:
    """RQ's keys of this test (its job ids, queues and worker names all carry the prefix)."""
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        found = list(client.scan_iter(match=f"rq:*{prefix}*", count=1000))
        if found:
            client.delete(*found)
        for key in ("rq:queues", "rq:workers"):
            for member in client.smembers(key):
                if prefix.encode() in member:
                    client.srem(key, member)
    finally:
        client.close()


def rq_keys_cleanup(prefix: str) -> Iterator[None]:
    yield
    delete_rq_keys(prefix)
