"""What the console's overview reads: each pool's figures per partition, and the counters its rates use.

Everything comes from Redis (the streams, their consumer groups, the dead letters,
the counters of `fanout status`), so the console can run anywhere that reaches Redis
and shows what every process did. Pages get plain dataclasses; nothing here renders.
One event's story is fanout/console/lookup.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from bus.keys import Keys
from bus.routing import RoutingTable
from bus.stream_figures import group_figures, summed_counters
from workers import heartbeat
from workers.ops.status import COUNTERS

INGRESS_COUNTERS = ("published", "duplicates", "unrouted")


def redis_place(url: str) -> str:
    """Where Redis is, for a page: host, port and database, never the user name or password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True)
class PoolRow:
    pool: str
    partition: str
    executor: str
    stream_length: int
    pending: int
    lag: int | None
    dead_letters: int
    oldest_pending_s: float | None
    # Live worker processes of the pool (heartbeats, as `fanout status` counts them), and the members
    # of this partition's consumer group (stopped ones holding pending entries, killed ones too).
    consumers: int
    group_consumers: int
    # The pool's counters (all partitions).
    counters: dict[str, int]
    # Per minute over the sampled window (None until two samples exist).
    rates: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Overview:
    pools: list[PoolRow]
    ingress: dict[str, int]
    ingress_rates: dict[str, float | None]
    window_s: float


async def counters(redis: aioredis.Redis, keys: Keys, pools: list[str]) -> dict[str, int]:
    """Every counter the rates are computed from, flat and summed over partitions:
    "ingress.published", "pool.customer.processed"..."""
    every = range(keys.partitions)
    # A counter not written yet is 0, so that its rate reads 0 rather than unknown.
    out = {f"ingress.{name}": 0 for name in INGRESS_COUNTERS}
    ingress = await summed_counters(redis, [keys.ingress_stats_of(p) for p in every])
    out.update({f"ingress.{name}": value for name, value in ingress.items()})
    for pool in pools:
        out.update({f"pool.{pool}.{name}": 0 for name in COUNTERS})
        summed = await summed_counters(redis, [keys.pool_stats(pool, p) for p in every])
        out.update({f"pool.{pool}.{name}": value for name, value in summed.items()})
    return out


async def overview(redis: aioredis.Redis, keys: Keys, table: RoutingTable, current: dict[str, int],
                   rates: dict[str, float | None], window_s: float) -> Overview:
    """One row per pool and partition; `current` is `counters()` as read now, `rates` per minute."""
    now_ms = int(time.time() * 1000)
    rows = []
    for pool, config in table.pools.items():
        group = keys.group(pool)
        live = await heartbeat.live_count(redis, keys.heartbeats(pool), now_ms)
        for p, stream in enumerate(keys.streams(pool)):
            figures = await group_figures(redis, stream, group, now_ms)
            rows.append(PoolRow(
                pool=pool, partition=str(p), executor=config.executor,
                stream_length=figures["length"], pending=figures["pending"], lag=figures["lag"],
                dead_letters=int(await redis.xlen(keys.dead(pool, p))),
                oldest_pending_s=figures["oldest_pending_s"], consumers=live,
                group_consumers=figures["consumers"],
                counters={name: current[f"pool.{pool}.{name}"] for name in COUNTERS},
                rates={name: rates.get(f"pool.{pool}.{name}") for name in ("processed", "failed", "dead")},
            ))
    return Overview(
        pools=rows,
        ingress={name: current[f"ingress.{name}"] for name in INGRESS_COUNTERS},
        ingress_rates={name: rates.get(f"ingress.{name}") for name in ("published", "unrouted")},
        window_s=window_s,
    )

