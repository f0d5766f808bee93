"""What an attempt leaves, written once for both executors: retry times, dead letter with its ack."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from bus.reload import RoutingHolder
from bus.routing import PoolConfig
from tests.conftest import make_settings
from tests.support import H, load, publish, write_routing
from workers.engine.consumer import Consumer
from workers.engine.failures import Failure
from workers.engine.outcomes import dead_call, retry_at_ms
from workers.engine.retry import pool_backoff_ms
from workers.ops.deadletter import list_dead
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.anyio

CONFIG = PoolConfig(name="p", backoff_base_s=1.0, backoff_max_s=60.0)


def test_the_retry_time_is_the_backoff_or_a_longer_defer_whichever_is_later() -> None:
    backoff_ms = pool_backoff_ms(CONFIG, 2, "1-0")
    plain = Failure("h", "RuntimeError: x", "")
    assert retry_at_ms(CONFIG, 2, "1-0", [plain], now_ms=1000) == 1000 + backoff_ms
    short = Failure("h", "RetryLater: x", "", defer_s=0.001, retry_later=True)
    assert retry_at_ms(CONFIG, 2, "1-0", [plain, short], now_ms=1000) == 1000 + backoff_ms
    long = Failure("h", "RetryLater: x", "", defer_s=3600, retry_later=True)
    assert retry_at_ms(CONFIG, 2, "1-0", [plain, long], now_ms=1000) == 1000 + 3_600_000


async def test_an_async_failed_attempt_records_its_retry_time_from_the_backoff(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    # One attempt, then stop: a long backoff, so nothing retries within the test.
    routing = write_routing(tmp_path, f"""
pools:
  slow: {{max_attempts: 3, timeout_s: 1, backoff_base_s: 30, backoff_max_s: 60}}
routes:
  test.retry: {{slow: ["{H}fail_twice"]}}
""")
    await publish(aredis, keys, load(routing), "test.retry", "evt_r")
    before_ms = int(time.time() * 1000)

    async def stop_after_first_attempt() -> None:
        while not await aredis.hget(keys.pool_stats("slow"), "failed"):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        consumer.request_stop()

    consumer = Consumer(make_settings(prefix, routing_file=routing), "slow", redis=aredis,
                        holder=RoutingHolder.load(routing), block_ms=50)
    await asyncio.wait_for(asyncio.gather(consumer.run(), stop_after_first_attempt()), 10)
    [(entry_id, at)] = (await aredis.hgetall(keys.retry_at("slow"))).items()
    backoff_ms = pool_backoff_ms(load(routing).pools["slow"], 1, entry_id.decode())
    assert int(at) >= before_ms + backoff_ms, "not before the backoff, counted from the attempt's end"
    assert int(at) <= int(time.time() * 1000) + backoff_ms
    assert int(await aredis.hget(keys.pool_stats("slow"), "failed")) == 1


async def test_a_dead_letter_repeated_for_an_entry_no_longer_pending_writes_nothing(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, f"""
pools:
  once: {{max_attempts: 1, timeout_s: 1, backoff_base_s: 0.05}}
routes:
  test.permanent: {{once: ["{H}permanent"]}}
""")
    await publish(aredis, keys, load(routing), "test.permanent", "evt_d")
    await run_pool(make_settings(prefix, routing_file=routing), "once", redis=aredis, burst=True)
    [dead] = await list_dead(aredis, keys, "once")
    call = dead_call(keys, "once", keys.stream("once"), dead.entry_id, {b"id": b"evt_d"}, reason="again",
                     failures=[], attempts=1, ledger_key=None, failed=0, now_ms=0)
    assert await call.run_async(aredis) == 0
    assert len(await list_dead(aredis, keys, "once")) == 1
    assert int(await aredis.hget(keys.pool_stats("once"), "dead")) == 1
