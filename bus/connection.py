"""Redis clients built from settings, with timeouts that turn a dead Redis into a fast error.

A `REDIS_URL` may point at a single Redis or at any node of a Redis Cluster: the
server is asked once (`INFO cluster`) and the matching redis-py client is built.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisError
from redis.retry import Retry

from bus import defaults
from bus.errors import ConfigError

# Either client: the cluster client has the same command methods for single-slot commands.
AsyncClient = aioredis.Redis | AsyncRedisCluster
SyncClient = redis.Redis | RedisCluster


def is_cluster_url(url: str) -> bool:
    """Whether the server at `url` runs in cluster mode (`INFO cluster` says cluster_enabled:1).

    An unreachable server counts as a single Redis: the caller then answers 503 as for any
    Redis that is down, and a cluster is detected on the next start.
    """
    if urlparse(url).scheme == "unix":
        return False
    probe = redis.Redis.from_url(url, socket_connect_timeout=defaults.REDIS_CONNECT_TIMEOUT_S,
                                 socket_timeout=defaults.REDIS_SOCKET_TIMEOUT_S)
    try:
        info: Any = probe.info("cluster")
    except (RedisError, OSError):
        return False
    finally:
        probe.close()
    return bool(int(info.get("cluster_enabled", 0)))


def _cluster_url(url: str) -> str:
    path = urlparse(url).path.strip("/")
    if path not in ("", "0"):
        raise ConfigError(f"REDIS_URL names database {path}, but a Redis Cluster only has database 0")
    return url


def is_cluster(client: Any) -> bool:
    return isinstance(client, AsyncRedisCluster | RedisCluster)


def async_redis(url: str, *, max_connections: int | None = None) -> Any:
    """The client the ingress and the workers use: `redis.asyncio.Redis`, or its cluster client.

    A database number in the URL is honoured (single Redis only).
    """
    if is_cluster_url(url):
        return AsyncRedisCluster.from_url(
            _cluster_url(url),
            socket_connect_timeout=defaults.REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=defaults.REDIS_SOCKET_TIMEOUT_S,
            max_connections=max_connections or 100,
        )
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=defaults.REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=defaults.REDIS_SOCKET_TIMEOUT_S,
        # One quick retry covers a dropped idle connection; more would blow the
        # ingress's 2 s budget for answering 503 when Redis is really gone.
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
        max_connections=max_connections,
    )


def sync_redis(url: str) -> Any:
    """A blocking client, for the CLI: `redis.Redis`, or `redis.cluster.RedisCluster`."""
    if is_cluster_url(url):
        return RedisCluster.from_url(
            _cluster_url(url),
            socket_connect_timeout=defaults.REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=defaults.REDIS_SOCKET_TIMEOUT_S * 4,
        )
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=defaults.REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=defaults.REDIS_SOCKET_TIMEOUT_S * 4,
        retry=Retry(NoBackoff(), 1),
    )
