"""Partitions on a real local Redis Cluster (3 masters, 3 replicas): atomic fan-out, spread, count check, failover."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest
import redis
from redis.crc import key_slot

from bus.connection import async_redis, is_cluster, sync_redis
from bus.keys import Keys
from bus.partitions import event_partition
from bus.routing import parse_routing
from fanout.samples import sample_event
from ingress.parse import routing_fields
from ingress.publish import Publisher

from .conftest import REPO, TEST_SECRET
from .ingress_client import signed
from .redis_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.anyio]

TABLE = parse_routing("pools: {customer: {}, admin: {}}\nroutes:\n"
                      "  charge.refunded: {customer: [noop], admin: [noop]}\n")


def _refund(i: int, objects: int) -> dict[str, Any]:
    return sample_event("charge.refunded", ids={"charge": f"ch_object{i % objects}"})


async def _publish(client: Any, keys: Keys, events: list[dict[str, Any]]) -> list[bool]:
    publisher = Publisher(client, keys, 3600, budget_s=5.0)
    match = TABLE.match("charge.refunded")
    results = await asyncio.gather(*(
        publisher.publish(routing_fields(orjson.dumps(e)), match, "v1", orjson.dumps(e)) for e in events))
    return [r.duplicate for r in results]


async def test_an_event_routed_to_two_pools_is_one_atomic_publish_on_the_cluster(redis_cluster: LocalCluster) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}", 16)
    client = async_redis(redis_cluster.url)
    try:
        assert is_cluster(client)
        events = [_refund(i, 40) for i in range(100)]
        assert await _publish(client, keys, events) == [False] * 100, "no CROSSSLOT, no partial publish"
        assert await _publish(client, keys, events[:10]) == [True] * 10
        for event in events:
            p = event_partition(routing_fields(orjson.dumps(event)), 16)
            slots = {key_slot(k.encode()) for k in (keys.seen(0, 0, p), keys.stream("customer", p),
                                                    keys.stream("admin", p), keys.ingress_stats_of(p))}
            assert len(slots) == 1
            for pool in ("customer", "admin"):
                rows: Any = await client.xrange(keys.stream(pool, p))
                assert event["id"].encode() in [f[b"id"] for _, f in rows]
    finally:
        await client.aclose()


async def test_events_of_500_objects_spread_over_all_3_masters(redis_cluster: LocalCluster) -> None:
    # The default prefix: its 16 partition tags hash to slots on all three masters of a fresh cluster.
    keys = Keys("fanout", 16)
    client = async_redis(redis_cluster.url)
    try:
        events = [_refund(i, 500) for i in range(3000)]
        assert await _publish(client, keys, events) == [False] * 3000
    finally:
        await client.aclose()
    per_master: dict[int, int] = {}
    records = 0
    for port in redis_cluster.masters():
        with redis_cluster.client(port) as node:
            per_master[port] = sum(1 for _ in node.scan_iter(match=keys.pattern(), count=1000))
            records += sum(int(node.hlen(name)) for name in node.scan_iter(match=keys.seen("*", "*", "*"), count=1000))
    assert len(per_master) == 3
    assert all(n > 100 for n in per_master.values()), per_master
    assert records == 3000, "a dedupe record per event, in the hashes of its partition"


def test_fanout_ingress_on_the_cluster_exits_2_when_the_partition_count_disagrees(redis_cluster: LocalCluster) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    client = sync_redis(redis_cluster.url)
    try:
        client.hset(Keys(prefix).meta, "partitions", "16")
    finally:
        client.close()
    env = {**os.environ, "REDIS_URL": redis_cluster.url, "STRIPE_WEBHOOK_SECRET": TEST_SECRET,
           "FANOUT_PREFIX": prefix, "ROUTING_FILE": str(REPO / "routing.yaml"), "FANOUT_PARTITIONS": "4"}
    result = subprocess.run([sys.executable, "-m", "fanout.cli", "ingress", "--port", "1"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "FANOUT_PARTITIONS is 4" in result.stderr and "uses 16 partitions" in result.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_ingress(url: str, prefix: str, port: int, **env: str) -> subprocess.Popen[bytes]:
    full = {**os.environ, "REDIS_URL": url, "STRIPE_WEBHOOK_SECRET": TEST_SECRET, "FANOUT_PREFIX": prefix,
            "ROUTING_FILE": str(REPO / "routing.yaml"), **env}
    server = subprocess.Popen([sys.executable, "-m", "fanout.cli", "ingress", "--port", str(port)],
                              env=full, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    server.wait()
    raise RuntimeError("the ingress did not start")


async def _steady_stream(port: int, stop: asyncio.Event, answers: list[tuple[float, str, int]]) -> None:
    """Signed deliveries, four at a time, until `stop`; records (time, event id, status) for each."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as client:
        async def sender() -> None:
            while not stop.is_set():
                event = sample_event("checkout.session.completed")
                body, headers = signed(event)
                try:
                    status = (await client.post("/webhooks/stripe", content=body, headers=headers)).status_code
                except httpx.HTTPError:
                    status = 0
                answers.append((time.monotonic(), event["id"], status))
                await asyncio.sleep(0.01)

        await asyncio.gather(*(sender() for _ in range(4)))


def _stored_ids(url: str, keys: Keys, pool: str) -> set[str]:
    client: redis.cluster.RedisCluster = sync_redis(url)
    try:
        out: set[str] = set()
        for stream in keys.streams(pool):
            out.update(fields[b"id"].decode() for _, fields in client.xrange(stream))
        return out
    finally:
        client.close()


async def test_with_min_replicas_a_master_failover_loses_no_acknowledged_event(redis_cluster: LocalCluster) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, 16)
    port = _free_port()
    server = _start_ingress(redis_cluster.url, prefix, port, FANOUT_PARTITIONS="16", FANOUT_MIN_REPLICAS="1")
    answers: list[tuple[float, str, int]] = []
    stop = asyncio.Event()
    victim = redis_cluster.masters()[0]
    try:
        stream = asyncio.create_task(_steady_stream(port, stop, answers))
        await asyncio.sleep(1.0)
        redis_cluster.kill(victim)  # SIGKILL: its replica is promoted after cluster-node-timeout
        killed_at = time.monotonic()
        await asyncio.sleep(4.0)
        redis_cluster.restart(victim)  # it comes back as a replica of the promoted node
        await asyncio.to_thread(redis_cluster.wait_healthy)
        healthy_at = time.monotonic()
        await asyncio.sleep(2.0)
        stop.set()
        await stream
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=10)
        if victim not in redis_cluster.live_ports():
            redis_cluster.restart(victim)
        redis_cluster.wait_healthy()
    accepted = {event_id for _, event_id, status in answers if status == 200}
    refused = [a for a in answers if a[2] != 200]
    assert refused and all(a[2] == 503 for a in refused), "the outage was answered 503 (Stripe retries)"
    assert all(t >= killed_at for t, _, _ in refused), "nothing failed before the master was killed"
    assert any(status == 200 for t, _, status in answers if killed_at < t < healthy_at), \
        "during the outage, events of the other masters' partitions were still accepted"
    for pool in ("customer", "admin"):
        missing = accepted - _stored_ids(redis_cluster.url, keys, pool)
        assert not missing, f"{len(missing)} events answered 200 are missing from {pool}"
    after = [status for t, _, status in answers if t > healthy_at + 1.0]
    assert after and all(status == 200 for status in after), "the ingress recovered on its own"


def _replica_of(cluster: LocalCluster, master: int) -> int:
    with cluster.client(master) as node:
        return int(node.info("replication")["slave0"]["port"])


def _on_master(url: str, keys: Keys, master: int, wanted: bool) -> dict[str, Any]:
    """A sample event whose partition lives (or, with wanted=False, does not live) on `master`."""
    client: redis.cluster.RedisCluster = sync_redis(url)
    try:
        while True:
            event = sample_event("checkout.session.completed")
            p = event_partition(routing_fields(orjson.dumps(event)), keys.partitions)
            if (int(client.get_node_from_key(keys.tag(p)).port) == master) == wanted:
                return event
    finally:
        client.close()


@pytest.mark.parametrize("min_replicas", [1, 0])
async def test_an_event_is_acknowledged_only_once_a_replica_has_it_also_when_redelivered(
    redis_cluster: LocalCluster, min_replicas: int
) -> None:
    from .conftest import make_settings
    from .ingress_client import running

    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = make_settings(prefix, redis_url=redis_cluster.url, FANOUT_PARTITIONS="16",
                             FANOUT_MIN_REPLICAS=str(min_replicas))
    master = redis_cluster.masters()[0]
    replica = redis_cluster.processes[_replica_of(redis_cluster, master)]
    stalled = _on_master(redis_cluster.url, Keys(prefix, 16), master, wanted=True)
    elsewhere = _on_master(redis_cluster.url, Keys(prefix, 16), master, wanted=False)
    warm_up = _on_master(redis_cluster.url, Keys(prefix, 16), master, wanted=False)
    async with running(settings) as (_, client):
        async def post(event: dict[str, Any]) -> httpx.Response:
            body, headers = signed(event)
            return await client.post("/webhooks/stripe", content=body, headers=headers)

        async def post_as_stripe(event: dict[str, Any]) -> httpx.Response:
            """Retried on 503 as Stripe retries: on a loaded machine a healthy master may miss
            the publish budget once; the assertions are about what is finally acknowledged."""
            for _ in range(4):
                answer = await post(event)
                if answer.status_code != 503:
                    break
                await asyncio.sleep(0.2)
            return answer

        # The ingress's cluster client learns the slot map on its first command; let it do that
        # before a node stalls (a live ingress has long done so), or it may ask the stalled one.
        assert (await post_as_stripe(warm_up)).status_code == 200
        os.kill(replica.pid, signal.SIGSTOP)  # the master's writes no longer reach its replica
        try:
            first, other = await post(stalled), await post_as_stripe(elsewhere)
            again = await post(stalled)
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        await asyncio.to_thread(redis_cluster.wait_healthy)
        settled = await post_as_stripe(stalled)
    assert other.status_code == 200, other.text
    if min_replicas:
        assert first.status_code == 503 and first.json()["error"] == "store_unavailable"
        assert again.status_code == 503, "a redelivery must not be acknowledged before the original is replicated"
        assert settled.status_code == 200 and settled.json()["duplicate"] is True
    else:
        assert first.status_code == 200 and again.json()["duplicate"] is True


def _set_slot_everywhere(cluster: LocalCluster, slot: int, owner: int) -> None:
    """Assign an empty slot to the master on port `owner`, on every node (as a resharding tool does)."""
    with cluster.client(owner) as node:
        owner_id = node.execute_command("CLUSTER", "MYID").decode()
        node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", owner_id)
        node.execute_command("CLUSTER", "BUMPEPOCH")
    for port in cluster.masters():  # replicas learn it from their masters
        if port != owner:
            with cluster.client(port) as node:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", owner_id)
    cluster.wait_healthy()


async def test_a_publish_to_a_slot_that_moved_follows_the_moved_reply(redis_cluster: LocalCluster) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}", 16)
    client = async_redis(redis_cluster.url)
    try:
        assert await _publish(client, keys, [_refund(0, 1)]) == [False]  # the client has its slot map now
        used = event_partition(routing_fields(orjson.dumps(_refund(0, 1))), 16)

        def empty_slot(event: dict[str, Any]) -> bool:
            # A slot can only be reassigned while it holds no key, and the suite's other tests
            # share this cluster: their prefixes can hash to the slot of one of our partitions.
            slot = key_slot(keys.tag(event_partition(routing_fields(orjson.dumps(event)), 16)).encode())
            with redis_cluster.client(int(client.nodes_manager.get_node_from_slot(slot).port)) as node:
                return int(node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)) == 0

        event = next(e for e in (_refund(i, 10_000) for i in range(1, 10_000))
                     if event_partition(routing_fields(orjson.dumps(e)), 16) != used and empty_slot(e))
        p = event_partition(routing_fields(orjson.dumps(event)), 16)
        slot = key_slot(keys.tag(p).encode())
        source = int(client.nodes_manager.get_node_from_slot(slot).port)
        target = next(port for port in redis_cluster.masters() if port != source)
        _set_slot_everywhere(redis_cluster, slot, target)
        try:
            with redis_cluster.client(source) as node:
                moved_before = int(node.info("errorstats").get("errorstat_MOVED", {}).get("count", 0))
            assert await _publish(client, keys, [event]) == [False], "answered from the new owner, not 503"
            with redis_cluster.client(source) as node:
                assert int(node.info("errorstats")["errorstat_MOVED"]["count"]) == moved_before + 1
            with redis_cluster.client(target) as node:
                assert node.xlen(keys.stream("customer", p)) == 1
        finally:
            with redis_cluster.client(target) as node:
                names = node.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
                if names:
                    node.delete(*names)
            _set_slot_everywhere(redis_cluster, slot, source)
    finally:
        await client.aclose()
