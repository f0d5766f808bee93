"""Prometheus metrics of one worker process: handler latency and outcomes, and the pool's queue gauges.

`WorkerMetrics` is the engine's observer (handler_finished, entries_in_flight,
read_batch); the queue gauges (length, pending, lag, oldest pending age, dead
letters) are read from Redis when Prometheus scrapes, so they are as fresh as
the scrape and cost nothing between scrapes. Every process of a pool reports
the same gauges: aggregate them with `max by (pool, partition)`.

The registry is the process's own (not prometheus_client's global one), as in
ingress/metrics.py, so tests can build many.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from bus.keys import Keys
from bus.stream_figures import group_figures

log = structlog.get_logger("fanout.metrics")

# Handlers range from a no-op (microseconds) to a slow backend call (the pool's timeout_s, 30 s).
HANDLER_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0, 30.0, 60.0)
# A read returns at most the free concurrency slots (concurrency is 8 to a few hundred).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# A scraper gets this long to send its request and read the answer.
REQUEST_TIMEOUT_S = 10.0


async def read_queue(redis: aioredis.Redis, keys: Keys, pool: str, p: int, now_s: float) -> dict[str, float]:
    """The queue gauges of partition p of a pool: its stream's figures and its dead letters."""
    figures = await group_figures(redis, keys.stream(pool, p), keys.group(pool), int(now_s * 1000))
    lag, oldest = figures["lag"], figures["oldest_pending_s"]
    return {"stream_length": float(figures["length"]), "pending": float(figures["pending"]),
            "lag": float("nan") if lag is None else float(lag),
            "oldest_pending_seconds": 0.0 if oldest is None else float(oldest),
            "dead_letters": float(await redis.xlen(keys.dead(pool, p))),
            "consumers": float(figures["consumers"])}


QUEUE_GAUGES = {
    "stream_length": "Entries in the pool's stream.",
    "pending": "Entries read by a consumer and not yet acked.",
    "lag": "Entries in the stream not yet read by the pool.",
    "oldest_pending_seconds": "Age of the oldest pending entry (0 when none is pending).",
    "dead_letters": "Entries in the pool's dead-letter stream.",
    "consumers": "Consumers in the pool's group.",
}


class WorkerMetrics:
    """The observer a pool's consumer engine reports to, and its registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.duration = Histogram(
            "fanout_handler_duration_seconds", "Time one handler run took, by pool and handler.",
            ["pool", "handler"], buckets=HANDLER_BUCKETS_S, registry=r)
        self.outcomes = Counter(
            "fanout_handler_outcomes", "Handler runs by outcome: ok, failed (will run again), retry "
            "(asked RetryLater), dead (dead-lettered the entry), stale (skipped by skip_stale: a newer "
            "event of its object completed), taken_over (would have dead-lettered it, but another "
            "consumer owns the entry now).",
            ["pool", "handler", "outcome"], registry=r)
        self.in_flight = Gauge("fanout_entries_in_flight", "Entries this process is running now.",
                               ["pool"], registry=r)
        self.batch = Histogram("fanout_read_batch_size", "Entries returned by one non-empty read.",
                               ["pool"], buckets=BATCH_BUCKETS, registry=r)
        # Label children by key: .labels() costs a dict build and a lock per call on the hot path.
        self._durations: dict[tuple[str, str], Any] = {}
        self._outcomes: dict[tuple[str, str, str], Any] = {}
        self._in_flight: dict[str, Any] = {}
        self.queue = {
            name: Gauge(f"fanout_pool_{name}", help_text, ["pool", "partition"], registry=r)
            for name, help_text in QUEUE_GAUGES.items()
        }
        self._watched: tuple[aioredis.Redis, Keys, list[str], Callable[[], float]] | None = None
        # Two scrapes at once must not clear each other's gauges half-way.
        self._refreshing = asyncio.Lock()

    # --- the observer ----------------------------------------------------------------------------

    def handler_finished(self, pool: str, handler: str, outcome: str, duration_s: float) -> None:
        duration = self._durations.get((pool, handler))
        if duration is None:
            duration = self._durations[(pool, handler)] = self.duration.labels(pool, handler)
        duration.observe(duration_s)
        counter = self._outcomes.get((pool, handler, outcome))
        if counter is None:
            counter = self._outcomes[(pool, handler, outcome)] = self.outcomes.labels(pool, handler, outcome)
        counter.inc()

    def entries_in_flight(self, pool: str, count: int) -> None:
        gauge = self._in_flight.get(pool)
        if gauge is None:
            gauge = self._in_flight[pool] = self.in_flight.labels(pool)
        gauge.set(count)

    def read_batch(self, pool: str, size: int) -> None:
        self.batch.labels(pool).observe(size)

    # --- serving ---------------------------------------------------------------------------------

    def watch_pools(self, redis: aioredis.Redis, keys: Keys, pools: Iterable[str],
                    clock: Callable[[], float] = time.time) -> None:
        """Also report these pools' queue gauges, read with `redis` on each scrape (`refresh`)."""
        self._watched = (redis, keys, list(pools), clock)

    async def refresh(self) -> None:
        """Read the watched pools' queue gauges from Redis; on failure they are left out of the scrape."""
        if self._watched is None:
            return
        redis, keys, pools, clock = self._watched
        for gauge in self.queue.values():
            gauge.clear()
        try:
            for pool in pools:
                for p in range(keys.partitions):
                    values = await read_queue(redis, keys, pool, p, clock())
                    for name, value in values.items():
                        self.queue[name].labels(pool, str(p)).set(value)
        except RedisError as err:
            for gauge in self.queue.values():
                gauge.clear()
            log.warning("metrics.redis_failed", error=f"{type(err).__name__}: {err}")

    async def render(self) -> bytes:
        async with self._refreshing:
            await self.refresh()
            return generate_latest(self.registry)

    async def serve(self, host: str, port: int) -> asyncio.Server:
        """Serve GET /metrics on host:port on the running loop; raises OSError if it cannot listen."""
        return await asyncio.start_server(self._answer, host, port)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = [*head.split(b"\r\n", 1)[0].split(b" "), b"", b""][:2]
                if method == b"GET" and path.split(b"?")[0] == b"/metrics":
                    status, body, kind = b"200 OK", await self.render(), CONTENT_TYPE_LATEST.encode()
                else:
                    status, body, kind = b"404 Not Found", b"only GET /metrics here\n", b"text/plain"
                writer.write(b"HTTP/1.1 %b\r\ncontent-type: %b\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%b" % (status, kind, len(body), body))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a scraper that went away or sent nonsense gets nothing
        finally:
            writer.close()
