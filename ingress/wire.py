"""One loop tick's publishes, sent to Redis as packed RESP: one write and one read per connection.

This is redis-py's pipeline minus its generic argument encoding, which measured as
the largest single cost of a publish (see bench/bench_ingress.py). On a Redis
Cluster the batch is split by the node that owns each call's slot, and each
node gets one write. With `min_replicas`, a `WAIT` follows the calls on the same
connection, so its answer covers every write of the batch.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

log = structlog.get_logger("fanout.ingress")

# A slot map refresh after an error waits at least this long after the previous one.
REFRESH_INTERVAL_S = 0.25


class ReplicasBehind(RedisError):
    """Fewer replicas than FANOUT_MIN_REPLICAS acknowledged the batch in time."""


def bulk(value: str | bytes | int) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def command(*parts: str | bytes | int) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(bulk(part) for part in parts)


async def exchange(connection: Any, commands: list[bytes], wait: bytes | None, min_replicas: int) -> list[Any]:
    """Send `commands` (and WAIT) as one write, read one reply per command.

    An error reply for one command is returned in its place; the others still follow.
    With `wait`, a successful reply is replaced by ReplicasBehind when too few replicas
    acknowledged. A connection left half-read is disconnected before this raises.
    """
    try:
        await connection.send_packed_command(b"".join(commands) + (wait or b""), check_health=False)
        results: list[Any] = []
        for _ in commands:
            try:
                results.append(await connection.read_response())
            except ResponseError as err:
                results.append(err)
        if wait is not None:
            acknowledged = int(await connection.read_response())
            if acknowledged < min_replicas:
                behind = ReplicasBehind(f"{acknowledged} of {min_replicas} replicas acknowledged")
                results = [r if isinstance(r, Exception) else behind for r in results]
    except BaseException:
        await connection.disconnect()
        raise
    return results


async def run_single(redis: aioredis.Redis, commands: list[bytes], wait: bytes | None,
                     min_replicas: int) -> list[Any]:
    """The whole batch on one connection from the pool (a single Redis)."""
    pool = redis.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        return await exchange(connection, commands, wait, min_replicas)
    finally:
        await pool.release(connection)


class ClusterWire:
    """Sends a batch to the nodes of a Redis Cluster, one packed write per node.

    A MOVED reply means the call did not run: the slot map is updated and the call is
    sent once more to the new owner. An ASK (a slot being migrated), CLUSTERDOWN or
    TRYAGAIN reply, or a connection error, is returned as the call's failure (the caller
    answers 503 and Stripe retries) and the slot map is refreshed in the background.
    """

    def __init__(self, cluster: RedisCluster, script: str) -> None:
        self._cluster = cluster
        self._load_script = command("SCRIPT", "LOAD", script)
        self._refresh: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0

    async def run(self, commands: list[bytes], slots: list[int], wait: bytes | None,
                  min_replicas: int) -> list[Any]:
        await self._cluster.initialize()
        results: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in range(2):
            by_node: dict[ClusterNode, list[int]] = {}
            for i in todo:
                try:
                    node = self._cluster.nodes_manager.get_node_from_slot(slots[i])
                except RedisClusterException as err:  # slot not covered: the cluster is failing over
                    results[i] = ClusterDownError(str(err))
                    self.refresh_soon()
                    continue
                by_node.setdefault(node, []).append(i)
            nodes = list(by_node)
            replies = await asyncio.gather(
                *(self._run_on(node, [commands[i] for i in by_node[node]], wait, min_replicas)
                  for node in nodes),
                return_exceptions=True,
            )
            todo = []
            for node, reply in zip(nodes, replies, strict=True):
                indexes = by_node[node]
                if isinstance(reply, BaseException):
                    if not isinstance(reply, Exception):
                        raise reply  # cancellation
                    log.warning("publish.node_failed", node=node.name, error=type(reply).__name__)
                    self.refresh_soon()
                    for i in indexes:
                        results[i] = reply
                    continue
                for i, result in zip(indexes, reply, strict=True):
                    results[i] = result
                    if isinstance(result, MovedError) and attempt == 0:
                        await self._cluster.nodes_manager.move_slot(result)
                        todo.append(i)
                    elif isinstance(result, AskError | ClusterDownError | TryAgainError):
                        self.refresh_soon()
            if not todo:
                break
        return results

    async def _run_on(self, node: ClusterNode, commands: list[bytes], wait: bytes | None,
                      min_replicas: int) -> list[Any]:
        connection = node.acquire_connection()
        try:
            results = await exchange(connection, commands, wait, min_replicas)
            unloaded = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if unloaded:
                # A replica promoted by a failover has no script cache: load it there, then re-run
                # only the calls that did not run.
                await exchange(connection, [self._load_script], None, 0)
                retried = await exchange(connection, [commands[i] for i in unloaded], wait, min_replicas)
                for i, result in zip(unloaded, retried, strict=True):
                    results[i] = result
            return results
        finally:
            node.release(connection)

    def refresh_soon(self) -> None:
        """Re-read the slot map in the background, at most every REFRESH_INTERVAL_S."""
        now = time.monotonic()
        if (self._refresh is not None and not self._refresh.done()) or now - self._refreshed_at < REFRESH_INTERVAL_S:
            return
        self._refreshed_at = now
        self._refresh = asyncio.create_task(self._reinitialize())

    async def _reinitialize(self) -> None:
        try:
            await self._cluster.nodes_manager.initialize()
        except (RedisError, RedisClusterException, OSError) as err:
            log.warning("publish.slot_map_refresh_failed", error=type(err).__name__)
