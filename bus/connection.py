"""Redis clients built from settings, with timeouts that turn a dead Redis into a fast error."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bus import defaults


def async_redis(url: str, *, max_connections: int | None = None) -> aioredis.Redis:
    """The client the ingress and the workers use. A database number in the URL is honoured."""
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


def sync_redis(url: str) -> redis.Redis:
    """A blocking client, for the CLI."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=defaults.REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=defaults.REDIS_SOCKET_TIMEOUT_S * 4,
        retry=Retry(NoBackoff(), 1),
    )
