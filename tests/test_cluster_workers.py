"""`fanout worker` on a real local Redis Cluster (3 masters, 3 replicas), 16 partitions: kill -9, failover."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from bus.connection import async_redis, sync_redis
from bus.keys import Keys
from bus.routing import parse_routing
from fanout.samples import sample_event
from ingress.parse import routing_fields
from ingress.publish import Publisher
from tests.handlers_for_tests import runs_key
from tests.support import H, start_worker, write_routing

from .redis_cluster import LocalCluster
from .test_cluster import _free_port, _start_ingress, _steady_stream

pytestmark = [pytest.mark.cluster, pytest.mark.anyio]

POOL = "concurrency: 32, max_attempts: 5, timeout_s: 1, backoff_base_s: 0.05, backoff_max_s: 0.2"
ROUTING = f"""
pools:
  alpha: {{{POOL}}}
routes:
  charge.refunded: {{alpha: ["{H}record"]}}
  checkout.session.completed: {{alpha: ["{H}record"]}}
"""


def _runs(url: str, prefix: str) -> dict[str, int]:
    client: redis.cluster.RedisCluster = sync_redis(url)
    try:
        return {k.decode(): int(v) for k, v in client.hgetall(runs_key(prefix, H + "record")).items()}
    finally:
        client.close()


def _pending(url: str, keys: Keys, pool: str) -> int:
    client: redis.cluster.RedisCluster = sync_redis(url)
    try:
        return sum(int(client.xpending(s, pool)["pending"]) for s in keys.streams(pool))
    finally:
        client.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return True
        await asyncio.sleep(0.2)
    return False


async def test_two_workers_one_killed_midway_run_5000_events_of_500_objects_over_16_partitions(
    redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, 16)
    routing = write_routing(tmp_path, ROUTING)
    table = parse_routing(routing.read_text())
    env = {"REDIS_URL": redis_cluster.url, "FANOUT_PARTITIONS": "16"}
    workers = [start_worker(prefix, routing, tmp_path / f"worker{i}.log", "alpha", **env) for i in range(2)]
    client = async_redis(redis_cluster.url)
    ids: list[str] = []
    try:
        publisher = Publisher(client, keys, 3600, budget_s=5.0)
        match = table.match("charge.refunded")
        for batch in range(10):
            events = [sample_event("charge.refunded", ids={"charge": f"ch_object{i % 500}"})
                      for i in range(batch * 500, batch * 500 + 500)]
            ids += [e["id"] for e in events]
            await asyncio.gather(*(publisher.publish(routing_fields(orjson.dumps(e)), match, table.version,
                                                     orjson.dumps(e)) for e in events))
            if batch == 4:  # midway: one worker dies without a chance to ack or hand anything back
                assert await _wait(lambda: len(_runs(redis_cluster.url, prefix)) >= 1500, 60)
                workers[0].send_signal(signal.SIGKILL)
                workers[0].wait()
        assert await _wait(lambda: set(_runs(redis_cluster.url, prefix)) == set(ids), 120), \
            f"{len(set(ids) - set(_runs(redis_cluster.url, prefix)))} events never ran"
        assert await _wait(lambda: _pending(redis_cluster.url, keys, "alpha") == 0, 30)
        assert workers[1].poll() is None, "the survivor is still running"
    finally:
        await client.aclose()
        for worker in workers:
            _stop(worker)
    # At least once: an entry the killed worker had started may have run twice, never zero times.
    assert all(n >= 1 for n in _runs(redis_cluster.url, prefix).values())
    nodes = set()
    cluster: redis.cluster.RedisCluster = sync_redis(redis_cluster.url)
    try:
        for stream in keys.streams("alpha"):
            nodes.add(int(cluster.get_node_from_key(stream).port))
    finally:
        cluster.close()
    assert nodes == set(redis_cluster.masters()), "the pool's partitions are spread over all 3 masters"


@pytest.mark.timeout(180)
async def test_with_min_replicas_workers_recover_from_a_master_failover_and_run_every_accepted_event(
    redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    routing = write_routing(tmp_path, ROUTING)
    port = _free_port()
    env = {"FANOUT_PARTITIONS": "16", "FANOUT_MIN_REPLICAS": "1"}
    server = _start_ingress(redis_cluster.url, prefix, port, ROUTING_FILE=str(routing), **env)
    worker = start_worker(prefix, routing, tmp_path / "worker.log", "alpha", REDIS_URL=redis_cluster.url, **env)
    answers: list[tuple[float, str, int]] = []
    stop = asyncio.Event()
    victim = redis_cluster.masters()[0]
    try:
        stream = asyncio.create_task(_steady_stream(port, stop, answers))
        assert await _wait(lambda: len(_runs(redis_cluster.url, prefix)) >= 20, 30), "the worker is running"
        redis_cluster.kill(victim)  # its replica is promoted after cluster-node-timeout
        await asyncio.sleep(4.0)
        redis_cluster.restart(victim)
        await asyncio.to_thread(redis_cluster.wait_healthy)
        await asyncio.sleep(2.0)
        stop.set()
        await stream
        accepted = {event_id for _, event_id, status in answers if status == 200}
        assert len(accepted) > 50
        assert await _wait(lambda: accepted <= set(_runs(redis_cluster.url, prefix)), 60), \
            f"{len(accepted - set(_runs(redis_cluster.url, prefix)))} accepted events never ran"
        assert worker.poll() is None, "the worker recovered on its own"
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=10)
        _stop(worker)
        if victim not in redis_cluster.live_ports():
            redis_cluster.restart(victim)
        redis_cluster.wait_healthy()


def _getkeys_calls(cluster: LocalCluster) -> int:
    """COMMAND GETKEYS calls served by the masters so far (redis-py's way to find a command's keys
    when the command table cannot tell, as for XREAD and XREADGROUP)."""
    total = 0
    for port in cluster.masters():
        with cluster.client(port) as node:
            total += int(node.info("commandstats").get("cmdstat_command|getkeys", {}).get("calls", 0))
    return total


async def test_a_consumer_on_the_cluster_names_each_reads_node_so_no_read_costs_a_key_lookup(
    redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    from tests.conftest import make_settings
    from workers.supervision.runner import run_pool

    prefix = f"t{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, 16)
    routing = write_routing(tmp_path, ROUTING)
    client = async_redis(redis_cluster.url)
    try:
        table = parse_routing(routing.read_text())
        publisher = Publisher(client, keys, 3600, budget_s=10.0)
        bodies = [orjson.dumps(sample_event("charge.refunded", ids={"charge": f"ch_o{i}"})) for i in range(200)]
        for body in bodies:
            await publisher.publish(routing_fields(body), table.match("charge.refunded"), table.version, body)
        settings = make_settings(prefix, routing_file=routing, redis_url=redis_cluster.url, FANOUT_PARTITIONS="16")
        before = _getkeys_calls(redis_cluster)
        await run_pool(settings, "alpha", redis=client, burst=True)
        after = _getkeys_calls(redis_cluster)
    finally:
        await client.aclose()
    assert len(_runs(redis_cluster.url, prefix)) == 200
    # Before the reader named its nodes, each XREADGROUP of a sweep (16 per sweep here) and each
    # waiter's XREAD first cost an awaited COMMAND GETKEYS round trip.
    assert after - before == 0


def test_a_pool_on_rq_refuses_a_cluster_with_exit_2_and_says_why(redis_cluster: LocalCluster, tmp_path: Path) -> None:
    routing = write_routing(tmp_path, f"""
pools:
  jobs: {{executor: rq}}
routes:
  charge.refunded: {{jobs: ["{H}record"]}}
""")
    worker = start_worker(f"t{uuid.uuid4().hex[:8]}", routing, tmp_path / "worker.log", "jobs",
                          REDIS_URL=redis_cluster.url, FANOUT_PARTITIONS="16")
    assert worker.wait(timeout=60) == 2
    said = (tmp_path / "worker.log").read_text()
    assert "pool 'jobs' has executor: rq, which needs a Redis that is not a cluster" in said
    assert "Traceback" not in said
