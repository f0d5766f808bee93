"""Workers reading partitions: what it costs, against a baseline measured in the same run.

    1. consume throughput of one in-process consumer (burst, concurrency 64, a no-op
       handler) on a private single redis-server as partitions grow (1, 4, 16, 64),
       and on the local 3-master Redis Cluster with 16 partitions against the single
       Redis with 1 (the overhead ratio). Target: within 10% of 1 partition. The
       consumer's start and stop, which grow with the streams it reads, are timed
       alone and reported beside the per-event rate, not inside it.
    2. publish-to-handler-start latency at a steady 500 events/s with 16 partitions
       (single Redis, and the cluster), the worker in its own process: p50 / p99 from
       the publish being called and from its reply. Target: p99 <= 10 ms from the call.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TextIO

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

REPO = Path(__file__).resolve().parent.parent
CONSUME_EVENTS = 40000
CONSUME_ROUNDS = 5
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



async def stamp(event: Event, ctx: Context) -> None:
    """The timed pool's handler, in the worker's own process: appends "<event id> <start time>"."""
    _stamps().write(f"{event.id} {time.time()!r}\n")


@functools.cache
def _stamps() -> TextIO:
    """Line-buffered, open for the worker process's lifetime."""
    return open(os.environ["BENCH_STAMP_FILE"], "a", buffering=1)


async def _fill(client: aioredis.Redis, keys: Keys, events: int, event_type: str = "charge.refunded") -> None:
    table = parse_routing(ROUTING)
    publisher = Publisher(client, keys, 3600, budget_s=10.0)
    match = table.match(event_type)
    for i in range(0, events, 256):
        bodies = [orjson.dumps(sample_event(event_type)) for _ in range(min(256, events - i))]
        await asyncio.gather(*(publisher.publish(routing_fields(b), match, table.version, b) for b in bodies))


async def _consume_run(url: str, partitions: int, routing: Path, events: int = CONSUME_EVENTS) -> tuple[float, float]:
    """(wall s, consumer CPU s) of one burst consumer that drains `events` from `partitions` partitions."""
    prefix = f"b{uuid.uuid4().hex[:8]}"
    client = async_redis(url)
    try:
        await _fill(client, Keys(prefix, partitions), events)
        settings = make_settings(prefix, routing_file=routing, redis_url=url, FANOUT_PARTITIONS=str(partitions))
        gc.collect()  # the fill's garbage is not the drain's cost
        started, cpu = time.perf_counter(), time.process_time()
        await run_pool(settings, "admin", redis=client, burst=True)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        async for key in client.scan_iter(match="{" + prefix + "[}:]*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()
    return wall, cpu


async def _latency_run(url: str, partitions: int, routing: Path) -> dict[str, float]:
    """p50/p99 (ms) to handler start of LATENCY_EVENTS published at LATENCY_RATE per second, timed
    from the publish being called (the request arriving) and from its reply (the ingress's 200).

    The worker (`fanout worker timed`) is its own process, as in production, so the publisher's
    work does not sit on the consumer's event loop. Its handler appends each start time to a file.
    """
    prefix = f"b{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        stamps = Path(tmp) / "started.txt"
        env = {**os.environ, "REDIS_URL": url, "FANOUT_PREFIX": prefix, "ROUTING_FILE": str(routing),
               "FANOUT_PARTITIONS": str(partitions), "BENCH_STAMP_FILE": str(stamps),
               "PYTHONPATH": str(REPO), "LOG_LEVEL": "warning"}
        worker = subprocess.Popen(  # noqa: ASYNC220 - once, before anything is timed
            [sys.executable, "-m", "fanout.cli", "worker", "timed"], env=env)
        client = async_redis(url)
        try:
            table = parse_routing(ROUTING)
            publisher = Publisher(client, Keys(prefix, partitions), 3600, budget_s=10.0)
            match = table.match("payment_intent.succeeded")

            async def publish(body: bytes, called: dict[str, float], answered: dict[str, float]) -> None:
                fields = routing_fields(body)
                called[fields.id] = time.time()
                await publisher.publish(fields, match, table.version, body)
                answered[fields.id] = time.time()

            warmup: dict[str, float] = {}
            await publish(orjson.dumps(sample_event("payment_intent.succeeded")), warmup, {})
            while not stamps.exists() or not stamps.read_text():  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.05)
            called: dict[str, float] = {}
            answered: dict[str, float] = {}
            start, pending = time.perf_counter(), []
            for i in range(LATENCY_EVENTS):
                await asyncio.sleep(max(0.0, start + i / LATENCY_RATE - time.perf_counter()))
                body = orjson.dumps(sample_event("payment_intent.succeeded"))
                pending.append(asyncio.create_task(publish(body, called, answered)))
            await asyncio.gather(*pending)
            deadline = time.monotonic() + 20
            while stamps.read_text().count("\n") < LATENCY_EVENTS + 1 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            async for key in client.scan_iter(match="{" + prefix + "[}:]*", count=1000):
                await client.delete(key)
            await client.aclose()
        started = dict(line.split() for line in stamps.read_text().splitlines())
    out: dict[str, float] = {"timed": sum(1 for e in called if e in started)}
    for name, sent in (("request", called), ("200", answered)):
        lat = sorted((float(started[e]) - t) * 1000 for e, t in sent.items() if e in started)
        out[f"{name}_p50"], out[f"{name}_p99"] = statistics.median(lat), lat[int(len(lat) * 0.99) - 1]
    return out


async def _all(single_url: str, cluster_url: str, routing: Path) -> bool:
    # A burst consumer's start and stop (routing, group creation, the empty reads that end the burst,
    # leaving the groups) are not a cost per event: timed alone, on an empty pool, they are kept out
    # of the per-event rate, which is what partitions must not change.
    fixed = {n: statistics.median([(await _consume_run(single_url, n, routing, 0))[0] for _ in range(3)])
             for n in PARTITION_COUNTS}
    fixed_cluster = statistics.median([(await _consume_run(cluster_url, 16, routing, 0))[0] for _ in range(3)])
    runs: dict[str, list[tuple[float, float]]] = {}
    order = [f"single {n}" for n in PARTITION_COUNTS] + ["cluster 16"]
    for round_ in range(CONSUME_ROUNDS):
        # Each round starts at another count, so that no count always runs first or last in a round.
        for n in PARTITION_COUNTS[round_ % len(PARTITION_COUNTS):] + PARTITION_COUNTS[:round_ % len(PARTITION_COUNTS)]:
            wall, cpu = await _consume_run(single_url, n, routing)
            runs.setdefault(f"single {n}", []).append((CONSUME_EVENTS / (wall - fixed[n]), cpu / CONSUME_EVENTS * 1e6))
        wall, cpu = await _consume_run(cluster_url, 16, routing)
        runs.setdefault("cluster 16", []).append((CONSUME_EVENTS / (wall - fixed_cluster), cpu / CONSUME_EVENTS * 1e6))
        print(f"round {round_ + 1}: " + "  ".join(f"{k} {runs[k][-1][0]:.0f}/s" for k in order), flush=True)
    base_rate = statistics.median(r[0] for r in runs["single 1"])
    base_cpu = statistics.median(r[1] for r in runs["single 1"])
    print(f"\nconsume, {CONSUME_EVENTS} events, burst consumer (concurrency 64, noop), median of {CONSUME_ROUNDS};"
          " events/s net of the start and stop, timed alone on an empty pool:")
    print("  where                 events/s (x of single 1)   consumer CPU us/event (x)   start+stop ms")
    ok = True
    for name in order:
        rows = runs[name]
        rate, cpu = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        if name.startswith("single"):
            ok &= rate >= 0.9 * base_rate
        start_stop = fixed_cluster if name.startswith("cluster") else fixed[int(name.split()[1])]
        print(f"  {name:20s}  {rate:8.0f} ({rate / base_rate:4.2f})           {cpu:8.1f} ({cpu / base_cpu:4.2f})"
              f"            {start_stop * 1000:6.0f}")
    print("  target: single-Redis consume within 10% of 1 partition: " + ("met" if ok else "MISSED"))
    print(f"\npublish-to-handler-start at {LATENCY_RATE} events/s, {LATENCY_EVENTS} events, 16 partitions:")
    for name, url in (("single Redis", single_url), ("3-master cluster", cluster_url)):
        lat = await _latency_run(url, 16, routing)
        print(f"  {name:18s} from the request p50 {lat['request_p50']:6.2f} ms  p99 {lat['request_p99']:6.2f} ms;"
              f"  from the 200 p50 {lat['200_p50']:6.2f} ms  p99 {lat['200_p99']:6.2f} ms  ({lat['timed']:.0f} timed)",
              flush=True)
        ok &= lat["request_p99"] <= 10.0 and lat["timed"] == LATENCY_EVENTS
    print("  target: p99 from the request <= 10 ms: " + ("met" if ok else "MISSED (or a target above)"))
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
