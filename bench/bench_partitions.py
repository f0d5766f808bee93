"""Partitions and Redis Cluster: what they cost, measured against a baseline in the same run.

    1. ingress on a local 3-master Redis Cluster (16 partitions) against the single Redis
       (1 partition), same load (bench_ingress's wrk runs): the overhead ratio, and how
       keys and commands spread over the masters (INFO commandstats / DBSIZE per master).
    2. publish throughput of the Publisher (in process, batches of 64 concurrent publishes)
       on a private redis-server as partitions grow: 1, 4, 16, 64, with Redis's own time per
       publish script (INFO commandstats). Target: within 10% of 1.
    3. the ingress's own CPU per publish (Redis answering at once) as partitions grow.

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
    REDIS_URL,
    ROUNDS,
    Result,
    cleanup,
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
    with LocalCluster.start() as cluster, tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.tsv"
        try:
            for round_ in range(ROUNDS):
                single.append(_ingress_run(REDIS_URL, prefix + "s", 1, events))
                if round_ == 0:
                    for port in cluster.masters():
                        with cluster.client(port) as node:
                            node.config_resetstat()
                clustered.append(_ingress_run(cluster.url, prefix, CLUSTER_PARTITIONS, events))
                print(f"round {round_ + 1} single {single[-1].rps:8.0f} req/s p99 {single[-1].p99_ms:6.2f} ms   "
                      f"cluster {clustered[-1].rps:8.0f} req/s p99 {clustered[-1].p99_ms:6.2f} ms   "
                      f"non-2xx {single[-1].non_2xx}/{clustered[-1].non_2xx}", flush=True)
            spread = _spread(cluster)
        finally:
            cleanup(prefix + "s")
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


async def _publish_rate(client: aioredis.Redis, prefix: str, partitions: int) -> float:
    publisher = Publisher(client, Keys(prefix, partitions), 3600, budget_s=10.0)
    match = TABLE.match("charge.refunded")
    bodies = [orjson.dumps(sample_event("charge.refunded")) for _ in range(PUBLISH_EVENTS)]
    fields = [routing_fields(b) for b in bodies]
    started = time.perf_counter()
    for i in range(0, PUBLISH_EVENTS, PUBLISH_BATCH):
        await asyncio.gather(*(publisher.publish(fields[j], match, "v", 1, bodies[j])
                               for j in range(i, min(i + PUBLISH_BATCH, PUBLISH_EVENTS))))
    return PUBLISH_EVENTS / (time.perf_counter() - started)


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
    rates: dict[int, list[float]] = {n: [] for n in PARTITION_COUNTS}
    server_us: dict[int, list[float]] = {n: [] for n in PARTITION_COUNTS}
    with private_redis() as url:
        client = aioredis.Redis.from_url(url)
        try:
            for round_ in range(PUBLISH_ROUNDS):
                # Interleaved, each round starting at another count, so neither drift in machine load
                # nor the place in a round (the database grows as a round goes) favours one count.
                shift = round_ % len(PARTITION_COUNTS)
                for n in PARTITION_COUNTS[shift:] + PARTITION_COUNTS[:shift]:
                    await client.config_resetstat()
                    rates[n].append(await _publish_rate(client, f"bench-{round_}-{n}", n))
                    stats: Any = await client.info("commandstats")
                    server_us[n].append(float(stats["cmdstat_evalsha"]["usec_per_call"]))
        finally:
            await client.aclose()
    base = statistics.median(rates[1])
    base_us = statistics.median(server_us[1])
    print(f"\npublish throughput on a private redis-server, {PUBLISH_EVENTS} events in batches of "
          f"{PUBLISH_BATCH}, median of {PUBLISH_ROUNDS}; and Redis's own time per publish script:")
    ok = True
    for n in PARTITION_COUNTS:
        rate, us = statistics.median(rates[n]), statistics.median(server_us[n])
        ok &= rate >= 0.9 * base
        print(f"  {n:3d} partitions {rate:8.0f} events/s  {rate / base:5.2f}x of 1 partition (target >= 0.90)"
              f"   Redis {us:5.2f} us/script ({us / base_us:4.2f}x)")
    return ok


class _InstantPublisher(Publisher):
    """Redis answered at once: what is left is the ingress's own CPU per publish (hash, pack, batch)."""

    async def _run(self, batch: list[Any]) -> list[Any]:
        return [1] * len(batch)


async def _cpu_per_publish_us(partitions: int, bodies: list[bytes]) -> float:
    publisher = _InstantPublisher(aioredis.Redis(), Keys("fanout", partitions), 3600, budget_s=1.0)
    match = TABLE.match("charge.refunded")
    fields = [routing_fields(b) for b in bodies]
    started = time.process_time()
    for i in range(0, len(bodies), PUBLISH_BATCH):
        await asyncio.gather(*(publisher.publish(fields[j], match, "v", 1, bodies[j])
                               for j in range(i, min(i + PUBLISH_BATCH, len(bodies)))))
    return (time.process_time() - started) / len(bodies) * 1e6


async def cpu_as_partitions_grow() -> None:
    bodies = [orjson.dumps(sample_event("charge.refunded")) for _ in range(PUBLISH_EVENTS)]
    costs: dict[int, list[float]] = {n: [] for n in PARTITION_COUNTS}
    for _ in range(PUBLISH_ROUNDS):
        for n in PARTITION_COUNTS:
            costs[n].append(await _cpu_per_publish_us(n, bodies))
    base = min(costs[1])
    print(f"\nthe ingress's CPU per publish with Redis answering at once (hash, pack, batch), best of {PUBLISH_ROUNDS}:")
    for n in PARTITION_COUNTS:
        print(f"  {n:3d} partitions {min(costs[n]):6.2f} us  {min(costs[n]) / base:5.2f}x of 1 partition")


def main() -> int:
    probe = redis.Redis.from_url(REDIS_URL)
    try:
        probe.ping()
    finally:
        probe.close()
    ok = ingress_on_cluster()
    ok &= asyncio.run(publish_as_partitions_grow())
    asyncio.run(cpu_as_partitions_grow())
    if not ok:
        print("WARNING: a target was missed or an answer was not 2xx", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
