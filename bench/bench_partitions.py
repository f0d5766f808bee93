"""Partitions and Redis Cluster: what they cost, measured against a baseline in the same run.

    1. ingress on a local 3-master Redis Cluster (16 partitions) against the single Redis
       (1 partition), same load (bench_ingress's wrk runs): the overhead ratio, and how
       keys and commands spread over the masters (INFO commandstats / DBSIZE per master).
    2. the Publisher (in process, batches of 64 concurrent publishes) on a private
       redis-server as partitions grow: 1, 4, 16, 64: throughput, and the CPU the
       publisher and Redis each spend per event. Target: within 10% of 1 partition.

Both baselines run on redis-servers of their own (persistence off, as the cluster's
nodes), not on the shared one that other test runs use.

On 2 shared cores the cluster cannot be faster: its three masters and three replicas
share the cores with the ingress and wrk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from bench.bench_ingress import (
    ROUNDS,
    Result,
    free_port,
    run_wrk,
    start_server,
    write_events,
)
from bus.keys import Keys
from bus.routing import parse_routing
from fanout.samples import sample_event
from ingress.parse import routing_fields
from ingress.publish import Publisher
from tests.redis_cluster import LocalCluster

CLUSTER_PARTITIONS = 16
EVENTS_PER_RUN = 30000
PUBLISH_EVENTS = 20000
PUBLISH_BATCH = 64
PARTITION_COUNTS = (1, 4, 16, 64)
# The publish figures are in-process and short: more interleaved rounds steady their median.
PUBLISH_ROUNDS = int(os.environ.get("BENCH_PUBLISH_ROUNDS", "7"))
TABLE = parse_routing("pools: {admin: {}}\nroutes:\n  charge.refunded: {admin: [noop]}\n")


def _ingress_run(url: str, prefix: str, partitions: int, events: Path) -> Result:
    write_events(events, EVENTS_PER_RUN)
    port = free_port()
    server = start_server("ingress", port, prefix, {"REDIS_URL": url, "FANOUT_PARTITIONS": str(partitions)})
    try:
        return run_wrk(port, events)
    finally:
        server.terminate()
        server.wait(timeout=10)


def _spread(cluster: LocalCluster) -> list[tuple[int, int, int]]:
    """(port, EVALSHA calls, keys) per master."""
    out = []
    for port in cluster.masters():
        with cluster.client(port) as node:
            stats: Any = node.info("commandstats")
            calls = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
            out.append((port, calls, int(node.dbsize())))
    return out


def ingress_on_cluster() -> bool:
    single: list[Result] = []
    clustered: list[Result] = []
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    with LocalCluster.start() as cluster, private_redis() as single_url, tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.tsv"
        for round_ in range(ROUNDS):
            single.append(_ingress_run(single_url, prefix, 1, events))
            if round_ == 0:
                for port in cluster.masters():
                    with cluster.client(port) as node:
                        node.config_resetstat()
            clustered.append(_ingress_run(cluster.url, prefix, CLUSTER_PARTITIONS, events))
            print(f"round {round_ + 1} single {single[-1].rps:8.0f} req/s p99 {single[-1].p99_ms:6.2f} ms   "
                  f"cluster {clustered[-1].rps:8.0f} req/s p99 {clustered[-1].p99_ms:6.2f} ms   "
                  f"non-2xx {single[-1].non_2xx}/{clustered[-1].non_2xx}", flush=True)
        spread = _spread(cluster)
    s_rps = statistics.median(r.rps for r in single)
    c_rps = statistics.median(r.rps for r in clustered)
    print(f"\ningress, median of {ROUNDS}: single Redis (1 partition) {s_rps:.0f} events/s, "
          f"3-master cluster ({CLUSTER_PARTITIONS} partitions) {c_rps:.0f} events/s: "
          f"cluster / single = {c_rps / s_rps:.2f}")
    total_calls = sum(calls for _, calls, _ in spread) or 1
    print("spread over the masters (all cluster rounds): port, publish scripts run, keys")
    for port, calls, keys in spread:
        print(f"  {port}  {calls:8d} ({calls / total_calls:5.1%})  {keys:8d} keys")
    return sum(r.non_2xx for r in single + clustered) == 0


async def _publish_run(client: aioredis.Redis, partitions: int) -> tuple[float, float, float]:
    """(events/s, the publisher's CPU us per event, Redis's CPU us per event) for one run on an empty server."""
    await client.flushall()  # our private server: every run starts from the same empty database
    publisher = Publisher(client, Keys("fanout", partitions), 3600, budget_s=10.0)
    match = TABLE.match("charge.refunded")
    bodies = [orjson.dumps(sample_event("charge.refunded")) for _ in range(PUBLISH_EVENTS)]
    fields = [routing_fields(b) for b in bodies]
    before: Any = await client.info("cpu")
    started, cpu_started = time.perf_counter(), time.process_time()
    for i in range(0, PUBLISH_EVENTS, PUBLISH_BATCH):
        await asyncio.gather(*(publisher.publish(fields[j], match, "v", bodies[j])
                               for j in range(i, min(i + PUBLISH_BATCH, PUBLISH_EVENTS))))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    after: Any = await client.info("cpu")
    server = sum(after[k] - before[k] for k in ("used_cpu_user", "used_cpu_sys"))
    return PUBLISH_EVENTS / wall, cpu / PUBLISH_EVENTS * 1e6, server / PUBLISH_EVENTS * 1e6


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own (persistence off), so other users of the shared one do not skew the figures."""
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.kill()
        server.wait(timeout=10)


async def publish_as_partitions_grow() -> bool:
    """Cost per event as partitions grow; the target (within 10% of 1 partition) is on CPU per event.

    Throughput is shown too, but on a shared 2-core machine it moves by a third between runs
    with the scheduler; the CPU each side spends per event does not.
    """
    runs: dict[int, list[tuple[float, float, float]]] = {n: [] for n in PARTITION_COUNTS}
    with private_redis() as url:
        client = aioredis.Redis.from_url(url)
        try:
            for round_ in range(PUBLISH_ROUNDS):
                # Interleaved, each round starting at another count, so drift in machine load
                # does not favour one count.
                shift = round_ % len(PARTITION_COUNTS)
                for n in PARTITION_COUNTS[shift:] + PARTITION_COUNTS[:shift]:
                    runs[n].append(await _publish_run(client, n))
        finally:
            await client.aclose()

    def median(n: int, i: int) -> float:
        return statistics.median(run[i] for run in runs[n])

    print(f"\npublish on a private redis-server, {PUBLISH_EVENTS} events in batches of {PUBLISH_BATCH}, "
          f"median of {PUBLISH_ROUNDS}:")
    print("  partitions  events/s (x of 1)   publisher CPU us/event (x)   Redis CPU us/event (x)")
    ok = True
    for n in PARTITION_COUNTS:
        rate, client_us, redis_us = median(n, 0), median(n, 1), median(n, 2)
        cost, base_cost = client_us + redis_us, median(1, 1) + median(1, 2)
        ok &= cost <= 1.1 * base_cost
        print(f"  {n:10d}  {rate:8.0f} ({rate / median(1, 0):4.2f})   {client_us:12.2f} ({client_us / median(1, 1):4.2f})"
              f"          {redis_us:8.2f} ({redis_us / median(1, 2):4.2f})")
    print("  target: publisher + Redis CPU per event within 10% of 1 partition: " + ("met" if ok else "MISSED"))
    return ok


def main() -> int:
    ok = ingress_on_cluster()
    ok &= asyncio.run(publish_as_partitions_grow())
    if not ok:
        print("WARNING: a target was missed or an answer was not 2xx", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
