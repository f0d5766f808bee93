"""Entry points into a pool: `run_pool` for code and tests, `serve` for the CLI (signals, exit code)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import redis.asyncio as aioredis
import structlog

from bus import defaults
from bus.connection import async_redis
from bus.errors import ConfigError
from bus.keys import Keys
from bus.reload import RoutingHolder
from bus.routing import RoutingTable
from bus.settings import Settings
from workers.engine.consumer import Clock, Consumer
from workers.metrics import WorkerMetrics

log = structlog.get_logger("fanout.worker")


async def run_pool(
    settings: Settings,
    pool: str,
    *,
    redis: aioredis.Redis | None = None,
    table: RoutingTable | None = None,
    clock: Clock = time.time,
    burst: bool = False,
    concurrency: int | None = None,
    **options: Any,
) -> Consumer:
    """Run one consumer of `pool` until stopped (or, with burst, until the pool is drained).

    The Redis client and the clock are arguments so tests can drive the pool;
    the routing table is read from settings.routing_file unless given.
    """
    holder = (
        RoutingHolder(settings.routing_file, table, max_bytes=settings.max_routing_file_bytes)
        if table is not None
        else RoutingHolder.load(settings.routing_file, max_bytes=settings.max_routing_file_bytes)
    )
    client = redis if redis is not None else async_redis(settings.redis_url)
    try:
        consumer = Consumer(settings, pool, redis=client, holder=holder, clock=clock, burst=burst,
                        concurrency=concurrency, **options)
        await consumer.run()
    finally:
        if redis is None:
            await client.aclose()
    return consumer


async def _serve(settings: Settings, pool: str, *, burst: bool, concurrency: int | None,
                 metrics_host: str, metrics_port: int | None) -> None:
    holder = RoutingHolder.load(settings.routing_file, max_bytes=settings.max_routing_file_bytes)
    client = async_redis(settings.redis_url, max_connections=None)
    server: asyncio.Server | None = None
    try:
        metrics = WorkerMetrics() if metrics_port is not None else None
        consumer = Consumer(settings, pool, redis=client, holder=holder, burst=burst, concurrency=concurrency,
                            observer=metrics)
        if metrics is not None and metrics_port is not None:
            metrics.watch_pools(client, Keys(settings.key_prefix, settings.partitions), [pool])
            try:
                server = await metrics.serve(metrics_host, metrics_port)
            except OSError as err:
                raise ConfigError(f"cannot serve metrics on {metrics_host}:{metrics_port}: "
                                  f"{err.strerror or err}") from err
            log.info("metrics.serving", pool=pool, address=f"http://{metrics_host}:{metrics_port}/metrics")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, consumer.request_stop)
        await consumer.run()
    finally:
        if server is not None:
            server.close()
        await client.aclose()


def serve(settings: Settings, pool: str, *, burst: bool = False, concurrency: int | None = None,
          metrics_host: str = defaults.METRICS_HOST, metrics_port: int | None = None) -> int:
    """Run a pool consumer in this process until SIGTERM/SIGINT (or drained, with burst).

    With `metrics_port` (else settings.metrics_port), Prometheus metrics are served on
    metrics_host:port/metrics meanwhile. Raises ConfigError (before reading anything) when
    the pool or a handler cannot be resolved, or the metrics port cannot be listened on.
    """
    port = metrics_port if metrics_port is not None else settings.metrics_port
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve(settings, pool, burst=burst, concurrency=concurrency,
                          metrics_host=metrics_host, metrics_port=port))
    return 0
