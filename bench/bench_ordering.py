"""The stale guard's memory, and (with `ordering: object`) ordered pools against unordered ones.

1. Memory per object of the stale guard's bucket (workers/newest.py): 100,000 objects with
   18-character ids written by its own script, as `MEMORY USAGE` of the hash and as the
   growth of `used_memory`.
2. A no-op handler through one process, `ordering: object` against `ordering: none`, over
   1,000 distinct objects (target: at least 70% of unordered) and over 10 objects (reported).
3. A 20 ms I/O-bound handler at concurrency 64 over 1,000 objects, ordered, against the
   ideal 64 / 0.02 = 3,200 events/s (target: at least 85%), with the unordered figure beside it.

Uses BENCH_REDIS_URL (default redis://127.0.0.1:6379/12) under a fresh key prefix, and deletes
what it wrote.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from bench.bench_workers import _body, _drain, _run, bench_space
from bus.envelope import RoutingFields, entry_fields
from bus.keys import Keys
from bus.settings import Settings
from workers.newest import NEWEST_SCRIPT

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
MEMORY_OBJECTS = 100_000
NOOP_EVENTS = int(os.environ.get("BENCH_ORDERING_NOOP_EVENTS", "10000"))
IO_EVENTS = int(os.environ.get("BENCH_ORDERING_IO_EVENTS", "9600"))

ROUTING = """
pools:
  plain: {concurrency: 512, max_attempts: 3}
  ordered: {concurrency: 512, max_attempts: 3, ordering: object}
  io_plain: {concurrency: 64, max_attempts: 3}
  io_ordered: {concurrency: 64, max_attempts: 3, ordering: object}
routes:
  bench.noop: {plain: [noop], ordered: [noop]}
  bench.io: {io_plain: ["bench.bench_workers:sleep_20ms"], io_ordered: ["bench.bench_workers:sleep_20ms"]}
"""


async def _fill(client: aioredis.Redis, keys: Keys, pool: str, event_type: str, handler: str, n: int,
                objects: int) -> None:
    """n entries in the pool's stream, object i % objects each, as the publish script writes them."""
    stream = keys.stream(pool)
    await client.xgroup_create(stream, keys.group(pool), id="0", mkstream=True)
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            event_id = f"evt_{pool}_{i}"
            fields = entry_fields(RoutingFields(event_id, event_type, 1700000000, False, None,
                                                f"obj_{i % objects}"),
                                  (handler,), "bench", _body(event_id, event_type))
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        await pipe.execute()


def per_s(settings: Settings, keys: Keys, pool: str, event_type: str, handler: str, n: int,
          objects: int) -> float:
    """Events per second through one consumer of `pool` (burst), every entry processed."""

    async def go() -> float:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            await client.delete(keys.stream(pool), keys.pool_stats(pool))
            await _fill(client, keys, pool, event_type, handler, n, objects)
            elapsed = await _drain(settings, pool, client)
            processed = int(await client.hget(keys.pool_stats(pool), "processed") or 0)
            assert processed == n, f"{pool}: processed {processed} of {n}"
            return n / elapsed
        finally:
            await client.aclose()

    result: float = _run(go())
    return result


def newest_bytes_per_object(client: redis.Redis, n: int = MEMORY_OBJECTS) -> tuple[float, float]:
    """(MEMORY USAGE, used_memory growth) per object of one bucket holding n objects."""
    key = "{bench-" + uuid.uuid4().hex[:8] + "}:newest:bench:customer:0"
    try:
        before = int(client.info("memory")["used_memory"])
        for start in range(0, n, 1000):
            flat: list[str | int] = []
            for i in range(start, min(n, start + 1000)):
                flat += [f"cus_{i:014d}", 1_700_000_000 + i]
            client.eval(NEWEST_SCRIPT, 1, key, 600, 10 * n, *flat)
        grown = int(client.info("memory")["used_memory"]) - before
        usage = int(client.memory_usage(key, samples=0) or 0)
        return usage / n, grown / n
    finally:
        client.delete(key)


def measure() -> dict[str, Any]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        usage, grown = newest_bytes_per_object(client)
    finally:
        client.close()
    print(f"stale guard memory over {MEMORY_OBJECTS:,} objects: MEMORY USAGE {usage:.1f} bytes per object, "
          f"used_memory {grown:.1f} bytes per object", flush=True)
    out: dict[str, Any] = {"newest_memory_usage_per_object": usage, "newest_used_memory_per_object": grown}
    with bench_space(ROUTING) as (settings, keys, _):
        for objects in (1000, 10):
            plain = per_s(settings, keys, "plain", "bench.noop", "noop", NOOP_EVENTS, objects)
            ordered = per_s(settings, keys, "ordered", "bench.noop", "noop", NOOP_EVENTS, objects)
            target = " (target >= 70%)" if objects == 1000 else ""
            print(f"no-op, {NOOP_EVENTS} events over {objects} objects, one process: ordered {ordered:,.0f}/s, "
                  f"unordered {plain:,.0f}/s -> {ordered / plain:.1%}{target}", flush=True)
            out[f"noop_{objects}_objects"] = {"ordered_per_s": ordered, "unordered_per_s": plain,
                                              "ratio": ordered / plain}
        handler = "bench.bench_workers:sleep_20ms"
        io_plain = per_s(settings, keys, "io_plain", "bench.io", handler, IO_EVENTS, 1000)
        io_ordered = per_s(settings, keys, "io_ordered", "bench.io", handler, IO_EVENTS, 1000)
        print(f"I/O-bound 20 ms handler, concurrency 64, {IO_EVENTS} events over 1000 objects: ordered "
              f"{io_ordered:,.0f}/s = {io_ordered / 3200:.1%} of the ideal 3,200/s (target >= 85%); "
              f"unordered {io_plain:,.0f}/s = {io_plain / 3200:.1%}", flush=True)
        out["io_1000_objects"] = {"ordered_per_s": io_ordered, "unordered_per_s": io_plain,
                                  "ordered_vs_ideal": io_ordered / 3200}
    return out


def main() -> int:
    """Run the measurements, print them, and write bench/results/ordering.json."""
    started = time.time()
    figures = measure()
    figures["measured_at"] = started
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "ordering.json").write_text(json.dumps(figures, indent=2) + "\n")
    return 0
