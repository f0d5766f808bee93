"""The zero-configuration Redis for `fanout run`: the local server if one answers, else in-process.

The in-process server is fakeredis's TCP server: real RESP over a real socket,
so every process of `fanout run` (ingress and pools) shares it. It keeps
nothing on disk: it is for trying stripe-fanout out, never for production.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

import redis

LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class EmbeddedRedis:
    url: str
    _server: object | None = None
    _thread: threading.Thread | None = None

    @property
    def in_process(self) -> bool:
        return self._server is not None

    def close(self) -> None:
        server = self._server
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.3, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resolve(configured_url: str | None) -> EmbeddedRedis:
    """The configured URL as is; else the local Redis; else a fresh in-process one."""
    if configured_url:
        return EmbeddedRedis(configured_url)
    if _answers(LOCAL_REDIS_URL):
        return EmbeddedRedis(LOCAL_REDIS_URL)
    from fakeredis import TcpFakeServer

    port = _free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="embedded-redis", daemon=True)
    thread.start()
    return EmbeddedRedis(f"redis://127.0.0.1:{port}/0", server, thread)
