"""Redis clients built from settings, with timeouts that turn a dead Redis into a fast error."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
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
    except ValueError as err:  # not a redis://, rediss:// or unix:// URL
        return Reachability(where, f"ValueError: {err}")
    try:
        await client.ping()
    except (RedisError, OSError) as err:
        return Reachability(where, error_summary(err))
    finally:
        await client.aclose()
    return Reachability(where)
