"""Workers reading partitions: what it costs, against a baseline measured in the same run.

    1. consume throughput of one in-process consumer (burst, concurrency 64, a no-op
       handler) on a private single redis-server as partitions grow (1, 4, 16, 64),
       and on the local 3-master Redis Cluster with 16 partitions against the single
       Redis with 1 (the overhead ratio). Target: within 10% of 1 partition.
    2. publish-to-handler-start latency at a steady 500 events/s with 16 partitions
       (single Redis, and the cluster): p50 / p99. Target: p99 <= 10 ms.

The publisher and the consumer share one process and event loop (separate clients),
so the latency includes the publisher's own work; on 2 shared cores that is pessimistic.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from bench.bench_partitions import private_redis
from bus.connection import async_redis
from bus.envelope import Event
from bus.keys import Keys
from bus.routing import parse_routing
from fanout.samples import sample_event
from ingress.parse import routing_fields
from ingress.publish import Publisher
from tests.conftest import make_settings
from tests.redis_cluster import LocalCluster
from workers.context import Context
from workers.supervision.runner import run_pool

CONSUME_EVENTS = 10000
CONSUME_ROUNDS = 3
PARTITION_COUNTS = (1, 4, 16, 64)
LATENCY_RATE = 500
LATENCY_EVENTS = 2500
ROUTING = """
pools:
  admin: {concurrency: 64}
  timed: {concurrency: 64}
routes:
  charge.refunded: {admin: [noop]}
  payment_intent.succeeded: {timed: ["bench.bench_partition_workers:stamp"]}
"""

# event id -> perf_counter at publish, and the latencies the handler measured (ms).
_published: dict[str, float] = {}
_latencies: list[float] = []


async def stamp(event: Event, ctx: Context) -> None:
    started = _published.get(event.id)
    if started is not None:
        _latencies.append((time.perf_counter() - started) * 1000)


async def _fill(client: aioredis.Redis, keys: Keys, events: int, event_type: str = "charge.refunded") -> None:
    table = parse_routing(ROUTING)
    publisher = Publisher(client, keys, 3600, budget_s=10.0)
    match = table.match(event_type)
    for i in range(0, events, 256):
        bodies = [orjson.dumps(sample_event(event_type)) for _ in range(min(256, events - i))]
        await asyncio.gather(*(publisher.publish(routing_fields(b), match, table.version, b) for b in bodies))


async def _consume_run(url: str, partitions: int, routing: Path) -> tuple[float, float]:
    """(events/s, consumer CPU us per event) to drain CONSUME_EVENTS from `partitions` partitions."""
    prefix = f"b{uuid.uuid4().hex[:8]}"
    client = async_redis(url)
    try:
        await _fill(client, Keys(prefix, partitions), CONSUME_EVENTS)
        settings = make_settings(prefix, routing_file=routing, redis_url=url, FANOUT_PARTITIONS=str(partitions))
        started, cpu = time.perf_counter(), time.process_time()
        await run_pool(settings, "admin", redis=client, burst=True)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        async for key in client.scan_iter(match="{" + prefix + "[}:]*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()
    return CONSUME_EVENTS / wall, cpu / CONSUME_EVENTS * 1e6


async def _latency_run(url: str, partitions: int, routing: Path) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, events timed) for LATENCY_EVENTS published at LATENCY_RATE per second."""
    prefix = f"b{uuid.uuid4().hex[:8]}"
    _published.clear()
    _latencies.clear()
    settings = make_settings(prefix, routing_file=routing, redis_url=url, FANOUT_PARTITIONS=str(partitions))
    consumer_client, publisher_client = async_redis(url), async_redis(url)
    from bus.reload import RoutingHolder
    from workers.engine.consumer import Consumer

    consumer = Consumer(settings, "timed", redis=consumer_client, holder=RoutingHolder.load(routing))
    task = asyncio.create_task(consumer.run())
    try:
        table = parse_routing(ROUTING)
        publisher = Publisher(publisher_client, Keys(prefix, partitions), 3600, budget_s=10.0)
        match = table.match("payment_intent.succeeded")
        await asyncio.sleep(1.0)  # the consumer is reading
        start = time.perf_counter()
        pending: list[asyncio.Task[Any]] = []
        for i in range(LATENCY_EVENTS):
            await asyncio.sleep(max(0.0, start + i / LATENCY_RATE - time.perf_counter()))
            body = orjson.dumps(sample_event("payment_intent.succeeded"))
            fields = routing_fields(body)
            _published[fields.id] = time.perf_counter()
            pending.append(asyncio.create_task(publisher.publish(fields, match, table.version, body)))
        await asyncio.gather(*pending)
        deadline = time.monotonic() + 10
        while len(_latencies) < LATENCY_EVENTS and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        consumer.request_stop()
        await task
        async for key in publisher_client.scan_iter(match="{" + prefix + "[}:]*", count=1000):
            await publisher_client.delete(key)
        await consumer_client.aclose()
        await publisher_client.aclose()
    timed = sorted(_latencies)
    return statistics.median(timed), timed[int(len(timed) * 0.99) - 1], len(timed)


async def _all(single_url: str, cluster_url: str, routing: Path) -> bool:
    runs: dict[str, list[tuple[float, float]]] = {}
    for round_ in range(CONSUME_ROUNDS):
        for n in PARTITION_COUNTS:
            runs.setdefault(f"single {n}", []).append(await _consume_run(single_url, n, routing))
        runs.setdefault("cluster 16", []).append(await _consume_run(cluster_url, 16, routing))
        print(f"round {round_ + 1}: " + "  ".join(f"{k} {v[-1][0]:.0f}/s" for k, v in runs.items()), flush=True)
    base_rate = statistics.median(r[0] for r in runs["single 1"])
    base_cpu = statistics.median(r[1] for r in runs["single 1"])
    print(f"\nconsume, {CONSUME_EVENTS} events, burst consumer (concurrency 64, noop), median of {CONSUME_ROUNDS}:")
    print("  where                 events/s (x of single 1)   consumer CPU us/event (x)")
    ok = True
    for name, rows in runs.items():
        rate, cpu = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        if name.startswith("single"):
            ok &= rate >= 0.9 * base_rate
        print(f"  {name:20s}  {rate:8.0f} ({rate / base_rate:4.2f})           {cpu:8.1f} ({cpu / base_cpu:4.2f})")
    print("  target: single-Redis consume within 10% of 1 partition: " + ("met" if ok else "MISSED"))
    print(f"\npublish-to-handler-start at {LATENCY_RATE} events/s, {LATENCY_EVENTS} events, 16 partitions:")
    for name, url in (("single Redis", single_url), ("3-master cluster", cluster_url)):
        p50, p99, n = await _latency_run(url, 16, routing)
        print(f"  {name:18s} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   ({n} timed)")
        ok &= p99 <= 10.0 and n == LATENCY_EVENTS
    print("  target: p99 <= 10 ms: " + ("met" if ok else "MISSED (or a target above)"))
    return ok


def main() -> int:
    with LocalCluster.start() as cluster, private_redis() as single_url, tempfile.TemporaryDirectory() as tmp:
        routing = Path(tmp) / "routing.yaml"
        routing.write_text(ROUTING)
        ok = asyncio.run(_all(single_url, cluster.url, routing))
    if not ok:
        print("WARNING: a target was missed", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
