"""`fanout status` counts live worker processes: 3 running show 3; stopped or killed, 0 within the bound."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from bus import defaults
from bus.keys import Keys
from tests.support import FAST_POOL, H, start_worker, wait_for, worker_env, write_routing
from workers import heartbeat

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.ok: {{alpha: ["{H}record"]}}
"""


def status_consumers(prefix: str, routing: Path) -> tuple[int, int]:
    import sys

    done = subprocess.run([sys.executable, "-m", "fanout.cli", "status", "--json"],
                          env=worker_env(prefix, routing), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    alpha = orjson.loads(done.stdout)["pools"]["alpha"]
    return alpha["consumers"], alpha["group_consumers"]


async def test_heartbeats_count_members_seen_within_the_bound_and_prune_older_ones(
        aredis: aioredis.Redis, keys: Keys) -> None:
    key = keys.heartbeats("alpha")
    await heartbeat.beat(aredis, key, "old", now_ms=1_000, stale_ms=5_000)
    await heartbeat.beat(aredis, key, "a", now_ms=5_000, stale_ms=5_000)
    assert await heartbeat.live_count(aredis, key, now_ms=6_500, stale_ms=5_000) == 1  # "old" is stale
    await heartbeat.beat(aredis, key, "b", now_ms=7_000, stale_ms=5_000)  # prunes "old"
    assert set(await aredis.zrange(key, 0, -1)) == {b"a", b"b"}
    await heartbeat.leave(aredis, key, "a")
    assert await heartbeat.live_count(aredis, key, now_ms=7_000, stale_ms=5_000) == 1


async def test_status_counts_live_worker_processes_not_group_members(
        aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path) -> None:
    routing = write_routing(tmp_path, ROUTING)
    workers = [start_worker(prefix, routing, tmp_path / f"w{i}.log", "alpha") for i in range(3)]
    try:
        async def live_is(n: int) -> bool:
            return await heartbeat.live_count(aredis, keys.heartbeats("alpha"), int(time.time() * 1000)) == n

        await wait_for(lambda: live_is(3))
        assert status_consumers(prefix, routing)[0] == 3
        # Two stop normally; one is killed, so it never says goodbye.
        workers[0].send_signal(signal.SIGTERM)
        workers[1].send_signal(signal.SIGTERM)
        assert workers[0].wait(timeout=20) == 0 and workers[1].wait(timeout=20) == 0
        workers[2].send_signal(signal.SIGKILL)
        workers[2].wait(timeout=10)
        killed_at = time.monotonic()
        await wait_for(lambda: live_is(0))
        # Within the documented bound (plus the interval between two beats and polling slack).
        assert time.monotonic() - killed_at <= defaults.HEARTBEAT_STALE_S + 1.0
        assert status_consumers(prefix, routing)[0] == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)


class _CancelToConnectionError:
    """A client whose every pipeline waits, and answers its cancellation with a ConnectionError,
    as redis-py can when a command in flight is cancelled."""

    def __init__(self) -> None:
        self.in_flight = asyncio.Event()

    def pipeline(self, transaction: bool = False) -> _CancelToConnectionError:
        return self

    def zadd(self, *args: object) -> None: ...

    def zremrangebyscore(self, *args: object) -> None: ...

    def pexpire(self, *args: object) -> None: ...

    async def execute(self) -> None:
        self.in_flight.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise redis.exceptions.ConnectionError("Connection closed by server.") from None


async def test_the_heartbeat_ends_on_stop_even_when_its_cancelled_beat_comes_back_as_a_connection_error() -> None:
    client = _CancelToConnectionError()
    stopped = False
    task = asyncio.create_task(heartbeat.keep_beating(client, "k", "c", time.time,  # type: ignore[arg-type]
                                                      lambda: stopped, interval_s=0.01))
    await client.in_flight.wait()
    stopped = True
    task.cancel()
    await asyncio.wait({task}, timeout=2)
    assert task.done(), "the heartbeat slept, beat again and waited there: the worker would never exit"
