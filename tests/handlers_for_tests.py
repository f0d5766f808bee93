"""Handlers the tests name in their routing files as `tests.handlers_for_tests:<name>`.

Each run is recorded in Redis under the test's key prefix, so tests (and
worker subprocesses) can count how often each handler ran for each event.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time

import redis

from bus.envelope import Event
from bus.errors import PermanentFailure, RetryLater
from bus.keys import Keys
from workers.context import Context


def runs_key(prefix: str, handler: str) -> str:
    """Hash: event id -> how many times `handler` ran for it."""
    return "{" + prefix + "}:test:runs:" + handler


def order_key(prefix: str) -> str:
    """List of "handler event_id" in the order runs started."""
    return "{" + prefix + "}:test:order"


async def _record(event: Event, ctx: Context) -> int:
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.hincrby(runs_key(ctx.settings.key_prefix, ctx.handler), event.id, 1)
    pipe.rpush(order_key(ctx.settings.key_prefix), f"{ctx.handler} {event.id}")
    count, _ = await pipe.execute()
    return int(count)


async def record(event: Event, ctx: Context) -> None:
    await _record(event, ctx)


async def record_other(event: Event, ctx: Context) -> None:
    await _record(event, ctx)


async def fail_twice(event: Event, ctx: Context) -> None:
    if await _record(event, ctx) <= 2:
        raise RuntimeError(f"failing on purpose (attempt {ctx.attempt})")


async def always_fail(event: Event, ctx: Context) -> None:
    await _record(event, ctx)
    raise RuntimeError("poison event")


def poison_seen_key(prefix: str) -> str:
    """Hash: id of an event that is not poison -> "<poison runs so far> <dead-letter length>" when it ran."""
    return "{" + prefix + "}:test:poison-seen"


async def fail_if_poison(event: Event, ctx: Context) -> None:
    await _record(event, ctx)
    prefix = ctx.settings.key_prefix
    if event.data_object.get("poison"):
        await ctx.redis.incr("{" + prefix + "}:test:poison-runs")
        raise RuntimeError("poison event")
    poison_runs = await ctx.redis.get("{" + prefix + "}:test:poison-runs")
    dead = await ctx.redis.xlen(Keys(prefix).dead(ctx.pool))
    await ctx.redis.hset(poison_seen_key(prefix), event.id, f"{int(poison_runs or 0)} {dead}")


async def permanent(event: Event, ctx: Context) -> None:
    await _record(event, ctx)
    raise PermanentFailure("this can never succeed")


async def defer_once(event: Event, ctx: Context) -> None:
    if await _record(event, ctx) == 1:
        raise RetryLater("not yet", defer_s=0.3)


async def too_slow(event: Event, ctx: Context) -> None:
    await _record(event, ctx)
    await asyncio.sleep(60)


async def slow(event: Event, ctx: Context) -> None:
    await asyncio.sleep(float(ctx.settings.env.get("TEST_HANDLER_SLEEP_S", "0.005")))
    await _record(event, ctx)


@functools.cache
def _sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def sync_record(event: Event, ctx: Context) -> None:
    """A blocking handler: it must run in the thread pool, off the event loop."""
    time.sleep(0.01)
    client = _sync_client(ctx.settings.redis_url)
    client.hincrby(runs_key(ctx.settings.key_prefix, ctx.handler), event.id, 1)


def where_key(prefix: str) -> str:
    """Hash: event id -> the pool that ran `record_where` for it."""
    return "{" + prefix + "}:test:where"


def pids_key(prefix: str) -> str:
    """Hash: process id -> how many entries `record_pid` ran there."""
    return "{" + prefix + "}:test:pids"


async def record_where(event: Event, ctx: Context) -> None:
    await ctx.redis.hset(where_key(ctx.settings.key_prefix), event.id, ctx.pool)
    await _record(event, ctx)


async def record_pid(event: Event, ctx: Context) -> None:
    await asyncio.sleep(float(ctx.settings.env.get("TEST_HANDLER_SLEEP_S", "0.02")))
    await ctx.redis.hincrby(pids_key(ctx.settings.key_prefix), str(os.getpid()), 1)
    await _record(event, ctx)


def sync_too_slow(event: Event, ctx: Context) -> None:
    """A blocking call that never returns in time: only a hard timeout (RQ's) can stop it."""
    _sync_client(ctx.settings.redis_url).hincrby(runs_key(ctx.settings.key_prefix, ctx.handler), event.id, 1)
    time.sleep(30)


# In-process in-flight accounting (for pools run by the test itself, not in subprocesses).
INFLIGHT: dict[str, int] = {}
PEAK_INFLIGHT: dict[str, int] = {}


async def busy_fail_twice(event: Event, ctx: Context) -> None:
    """Holds a slot for a moment, records the peak number running at once, fails its first two runs."""
    prefix = ctx.settings.key_prefix
    INFLIGHT[prefix] = INFLIGHT.get(prefix, 0) + 1
    PEAK_INFLIGHT[prefix] = max(PEAK_INFLIGHT.get(prefix, 0), INFLIGHT[prefix])
    try:
        count = await _record(event, ctx)
        await asyncio.sleep(float(ctx.settings.env.get("TEST_HANDLER_SLEEP_S", "0.3")))
    finally:
        INFLIGHT[prefix] -= 1
    if count <= 2:
        raise RuntimeError(f"failing on purpose (attempt {ctx.attempt})")


async def hang_first(event: Event, ctx: Context) -> None:
    """Hangs on its first run (for a test to kill the worker running it); returns on later runs."""
    if await _record(event, ctx) == 1:
        await asyncio.sleep(60)


def sync_swallows_timeouts(event: Event, ctx: Context) -> None:
    """Blocks past any timeout and swallows every Exception, as careless handler code does."""
    _sync_client(ctx.settings.redis_url).hincrby(runs_key(ctx.settings.key_prefix, ctx.handler), event.id, 1)
    try:
        time.sleep(30)
    except Exception:
        return


def fetched_key(prefix: str) -> str:
    """Hash: thin event id -> the JSON of its related object, as fetched through ctx.stripe."""
    return "{" + prefix + "}:test:fetched"


async def fetch_related(event: Event, ctx: Context) -> None:
    """A thin event handler: fetch the object the event refers to, and keep it."""
    import orjson

    obj = await ctx.stripe.fetch_related_object(event)
    await ctx.redis.hset(fetched_key(ctx.settings.key_prefix), event.id, orjson.dumps(obj))


def newer_key(prefix: str) -> str:
    """Hash: event id -> what ctx.newer_completed() said when its handler ran ("1" / "0")."""
    return "{" + prefix + "}:test:newer"


async def record_newer(event: Event, ctx: Context) -> None:
    newer = await ctx.newer_completed()
    await ctx.redis.hset(newer_key(ctx.settings.key_prefix), event.id, "1" if newer else "0")
    await _record(event, ctx)


def ordered_key(prefix: str, what: str) -> str:
    """Keys of the ordering tests: `overlaps` (set), `done:<object>` (list of seqs), `times` (list)."""
    return "{" + prefix + "}:test:ordered:" + what


async def ordered_run(event: Event, ctx: Context) -> None:
    """Record overlapping runs of one object, the order of successes, and start/end times.

    The event id is evt_<object>_<seq>; an object whose name starts with `poison` fails its
    seq 0 always; other entries fail their first attempt when crc32(id) % 10 == 0.
    """
    import random
    import zlib

    prefix, obj = ctx.settings.key_prefix, event.object_id or ""
    seq = event.id.rsplit("_", 1)[1]
    running = ordered_key(prefix, "running:" + obj)
    if int(await ctx.redis.incr(running)) > 1:
        await ctx.redis.sadd(ordered_key(prefix, "overlaps"), obj)
    started = time.time()
    try:
        await asyncio.sleep(random.random() * 0.003)
        if obj.startswith("poison") and seq == "0":
            raise RuntimeError("poison object")
        if ctx.attempt == 1 and zlib.crc32(event.id.encode()) % 10 == 0:
            raise RuntimeError("failing the first attempt on purpose")
        await ctx.redis.rpush(ordered_key(prefix, "done:" + obj), seq)
    finally:
        await ctx.redis.decr(running)
        await ctx.redis.rpush(ordered_key(prefix, "times"), f"{obj} {seq} {started!r} {time.time()!r}")


async def ordered_slow(event: Event, ctx: Context) -> None:
    """ordered_run after 30 ms of waiting: keeps a lease holder busy long enough to be killed."""
    await asyncio.sleep(0.03)
    await ordered_run(event, ctx)
