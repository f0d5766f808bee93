"""`fanout status`: per pool stream length, pending, lag, live consumers, counters; ingress counters.

Everything is read from Redis, so the figures hold across processes and restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bus.keys import Keys
from bus.stream_figures import partition_figures, summed_counters, totals
from workers import heartbeat
from workers.engine.lease import lease_key
from workers.engine.ordering import heartbeat_key
from workers.forward.breaker import breaker_states
from workers.rq.queue import queue_figures
from workers.stream_ops import id_ms, text

# The pool's counters, as the engine writes them (workers/engine/outcomes.py, entries.py):
# `failed` handler runs that raised or timed out (an attempt), `retried` entries run as attempt
# 2 or later, `paused` handler runs that ended Paused (no attempt spent); README "Operating".
COUNTERS = ("processed", "failed", "retried", "paused", "dead", "stale")


async def pool_status(redis: aioredis.Redis, keys: Keys, pool: str, now_ms: int) -> dict[str, Any]:
    """The status of one pool; a pool whose stream does not exist yet shows zeros."""
    stream, group = keys.stream(pool), keys.group(pool)
    # consumers: live worker processes (heartbeats); group_consumers: members of the consumer
    # group, which include stopped consumers still holding pending entries, and killed ones.
    out: dict[str, Any] = {"stream_length": 0, "pending": 0, "lag": 0,
                           "consumers": await heartbeat.live_count(redis, keys.heartbeats(pool), now_ms),
                           "group_consumers": 0}
    counters: Any = await redis.hgetall(keys.pool_stats(pool))
    for name in COUNTERS:
        out[name] = int(counters.get(name.encode(), 0))
    out["oldest_pending_s"] = None
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet
        return out
    out["stream_length"] = int(await redis.xlen(stream))
    ours = next((g for g in groups if text(g["name"]) == group), None)
    if ours is None:
        out["lag"] = out["stream_length"]
        return out
    out["pending"] = int(ours["pending"])
    out["group_consumers"] = int(ours["consumers"])
    lag = ours.get("lag")
    out["lag"] = int(lag) if lag is not None else None
    if out["pending"]:
        summary: Any = await redis.xpending(stream, group)
        if summary["min"] is not None:  # acked between the two calls
            out["oldest_pending_s"] = round(max(0, now_ms - id_ms(summary["min"])) / 1000, 3)
    return out


async def ordering_status(redis: aioredis.Redis, keys: Keys, pool: str) -> dict[str, Any]:
    """An ordered pool's leases: {"owners": {partition: consumer or None}, "held_objects" and "held"
    (objects, entries held back behind a running or failed entry of their object), "consumers":
    {consumer: {"partitions": [...], "held_objects": n, "held": n}}} (workers/engine/ordering.py).
    The held figures are each consumer's heartbeat, at most a second old."""
    owners: dict[str, str | None] = {}
    for p, stream in enumerate(keys.streams(pool)):
        token = await redis.get(lease_key(stream, pool))
        owners[str(p)] = text(token).rsplit(":", 1)[0] if token else None
    beats: Any = await redis.hgetall(heartbeat_key(keys.prefix, pool))
    consumers: dict[str, Any] = {}
    for consumer, raw in beats.items():
        beat = orjson.loads(raw)
        partitions = sorted(p for p, owner in owners.items() if owner == text(consumer))
        consumers[text(consumer)] = {"partitions": partitions, "held_objects": int(beat.get("held_objects", 0)),
                                     "held": int(beat.get("held", 0))}
    return {"owners": owners, "held_objects": sum(c["held_objects"] for c in consumers.values()),
            "held": sum(c["held"] for c in consumers.values()), "consumers": consumers}


async def collect_status(redis: aioredis.Redis, keys: Keys, pools: list[str], now_ms: int,
                         rq_queues: Mapping[str, str] | None = None,
                         destinations: list[str] | None = None,
                         ordered: list[str] | None = None) -> dict[str, Any]:
    """The `status --json` document: {"pools": {name: {...}}, "unrouted", "duplicates", "breakers"}.

    "breakers" has each of `destinations` (forward:): {"state": closed|open|half-open,
    "failures" in the current window, "open_for_s", "trips"}.

    A pool in `rq_queues` (pool -> RQ queue name) also gets "executor": "rq", "rq_queue",
    "rq_queued" (jobs waiting in the queue) and "rq_workers" (RQ workers listening to it).
    A pool in `ordered` (`ordering: object`) also gets "ordering" (ordering_status).
    """
    ingress = await summed_counters(redis, [keys.ingress_stats_of(p) for p in range(keys.partitions)])
    out: dict[str, dict[str, Any]] = {}
    for pool in pools:
        out[pool] = await pool_status(redis, keys, pool, now_ms)
        # Per partition figures; with several partitions the totals are their sums.
        out[pool]["partitions"] = figures = await partition_figures(redis, keys, pool)
        if keys.partitions > 1:
            out[pool].update(totals(figures))
            counters = await summed_counters(redis, [keys.pool_stats(pool, p) for p in range(keys.partitions)])
            out[pool].update({name: counters.get(name, 0) for name in COUNTERS})
        if rq_queues and pool in rq_queues:
            out[pool].update(await queue_figures(redis, rq_queues[pool]))
        if ordered and pool in ordered:
            out[pool]["ordering"] = await ordering_status(redis, keys, pool)
    return {
        "pools": out,
        "unrouted": ingress.get("unrouted", 0),
        "duplicates": ingress.get("duplicates", 0),
        "breakers": await breaker_states(redis, keys, destinations or []),
    }


def render_text(status: dict[str, Any]) -> str:
    """A table for people."""
    columns = ("stream_length", "pending", "lag", "consumers", *COUNTERS, "oldest_pending_s")
    headers = ("pool", "length", "pending", "lag", "consumers", *COUNTERS, "oldest pending")
    rows = [headers]
    for name, pool in status["pools"].items():
        cells = [name]
        for column in columns:
            value = pool[column]
            cells.append("-" if value is None else f"{value}s" if column == "oldest_pending_s" else str(value))
        rows.append(tuple(cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    for name, pool in status["pools"].items():
        if pool.get("executor") == "rq":
            lines.append(f"{name} runs on RQ queue {pool['rq_queue']!r}: {pool['rq_queued']} jobs queued, "
                         f"{pool['rq_workers']} RQ workers")
    for name, breaker in status.get("breakers", {}).items():
        if breaker["state"] == "open":
            lines.append(f"forward:{name}: circuit breaker OPEN for {breaker['open_for_s']}s more "
                         f"({breaker['failures']} failures); its entries wait without spending attempts")
        elif breaker["state"] == "half-open":
            lines.append(f"forward:{name}: circuit breaker half-open (a probe decides)")
    for name, pool in status["pools"].items():
        if "ordering" in pool:
            owners = ", ".join(f"{p}: {owner or '-'}" for p, owner in pool["ordering"]["owners"].items())
            lines.append(f"{name} is ordered per object: partition owners {owners}; "
                         f"{pool['ordering']['held_objects']} objects held back "
                         f"({pool['ordering']['held']} entries)")
    lines.append(f"unrouted events: {status['unrouted']}    duplicate deliveries: {status['duplicates']}")
    return "\n".join(lines)
