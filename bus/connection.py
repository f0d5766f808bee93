"""Redis clients built from settings, with timeouts that turn a dead Redis into a fast error.

A `REDIS_URL` may point at a single Redis or at any node of a Redis Cluster: the
server is asked once (`INFO cluster`) and the matching redis-py client is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse, urlsplit

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


def redis_location(url: str) -> str:
    """Where a Redis URL points, for people: host:port or the socket path, never the password."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path or "?"
        if parts.scheme not in ("redis", "rediss"):
            return "(not a redis:// URL)"
        return f"{parts.hostname or '?'}:{parts.port or 6379}"
    except ValueError:  # a port that is not a number
        return "?"


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by asterisks, for banners and messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)
        user = parts.username or ""
        return parts._replace(netloc=f"{user}:****@{netloc[1]}").geturl()
    except ValueError:
        return "(a URL that does not parse)"


@dataclass(frozen=True)
class Reachability:
    """Whether Redis answered a PING: where it was asked (no password), and why not."""

    where: str
    error: str | None = None  # "ConnectionError: Connection refused"; None when it answered

    @property
    def ok(self) -> bool:
        return self.error is None


def error_summary(err: BaseException) -> str:
    """The error class and the operating system's reason, without repeating the address."""
    cause = err.__cause__ or err.__context__
    reason = None
    if isinstance(cause, OSError):
        # "Connection refused" rather than asyncio's "Connect call failed ('127.0.0.1', 6390)".
        reason = os.strerror(cause.errno) if cause.errno and cause.errno > 0 else cause.strerror
    if reason is None:
        text = str(err)
        # redis-py says "Error 111 connecting to host:port. Connection refused."; keep the reason.
        reason = text.rsplit(". ", 1)[-1].rstrip(".") if "connecting to" in text else text
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


async def reachability(url: str) -> Reachability:
    """PING the Redis at `url` once, within the client's connect and socket timeouts."""
    where = redis_location(url)
    try:
        client = async_redis(url)
    except (ValueError, ConfigError) as err:  # not a redis:// URL; a database number on a cluster
        return Reachability(where, f"{type(err).__name__}: {err}")
    try:
        await client.ping()
    except (RedisError, OSError) as err:
        return Reachability(where, error_summary(err))
    finally:
        await client.aclose()
    return Reachability(where)
