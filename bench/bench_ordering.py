"""The stale guard's memory, and (with `ordering: object`) ordered pools against unordered ones.

1. Memory per object of the stale guard's bucket (workers/newest.py): 100,000 objects with
   18-character ids written by its own script, as `MEMORY USAGE` of the hash and as the
   growth of `used_memory`.

Uses BENCH_REDIS_URL (default redis://127.0.0.1:6379/12) under a fresh key prefix, and deletes
what it wrote.
"""

from __future__ import annotations

import os
import uuid

import redis

from workers.newest import NEWEST_SCRIPT

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
MEMORY_OBJECTS = 100_000


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


def main() -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        usage, grown = newest_bytes_per_object(client)
    finally:
        client.close()
    print(f"stale guard memory over {MEMORY_OBJECTS:,} objects: MEMORY USAGE {usage:.1f} bytes per object, "
          f"used_memory {grown:.1f} bytes per object")
    return 0
