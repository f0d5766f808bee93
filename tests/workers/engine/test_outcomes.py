"""What an attempt leaves, written once for both executors: retry times, dead letter with its ack."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from bus.reload import RoutingHolder
from bus.routing import PoolConfig
from tests.conftest import make_settings
from tests.support import H, load, publish, write_routing
from workers.engine.ack_batch import AckBatch
from workers.engine.consumer import Consumer
from workers.engine.failures import REASON_MAX_ATTEMPTS, Failure
from workers.engine.outcomes import ack_call, dead_call, dead_reason, record_failure, retry_at_ms
from workers.engine.reclaim import min_idle_ms, needed_idle_ms
from workers.engine.retry import peer_claim_idle_ms, pool_backoff_ms
from workers.ops.deadletter import list_dead
from workers.stream_ops import ensure_group
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


PAUSED = Failure("forward:a", "Paused: its breaker is open", "", defer_s=0.01, retry_later=True,
                 counts_as_attempt=False, reason="paused")
ERROR = Failure("h", "RuntimeError: x", "", reason="error")


def test_a_paused_run_never_spends_the_last_attempt_but_a_real_failure_beside_it_does() -> None:
    assert dead_reason([PAUSED], attempt=3, max_attempts=3) is None
    assert dead_reason([PAUSED, ERROR], attempt=3, max_attempts=3) == REASON_MAX_ATTEMPTS
    # ... and waits only its defer_s: a paused run has no backoff.
    assert retry_at_ms(CONFIG, 3, "1-0", [PAUSED], now_ms=1000) == 1000 + 10
    assert retry_at_ms(CONFIG, 3, "1-0", [PAUSED, ERROR], now_ms=1000) == 1000 + pool_backoff_ms(CONFIG, 3, "1-0")


async def test_a_paused_run_is_counted_paused_and_one_more_uncounted_run_in_the_same_transaction(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    for _ in range(2):
        pipe = aredis.pipeline(transaction=True)
        record_failure(pipe, keys, CONFIG, "1-0", keys.ledger("p", "evt"), [], [PAUSED], attempt=1, now_ms=1000)
        await pipe.execute()
    assert await aredis.hgetall(keys.pool_stats("p")) == {b"paused": b"2"}
    assert await aredis.hget(keys.uncounted("p"), "1-0") == b"2"
    assert await aredis.hget(keys.retry_at("p"), "1-0") == b"1010"
    pipe = aredis.pipeline(transaction=True)
    record_failure(pipe, keys, CONFIG, "1-0", keys.ledger("p", "evt"), [], [PAUSED, ERROR], attempt=1, now_ms=1000)
    await pipe.execute()
    assert await aredis.hget(keys.pool_stats("p"), "failed") == b"2"
    assert await aredis.hget(keys.uncounted("p"), "1-0") == b"2", "a run that tried is an attempt"


async def test_the_ack_the_ack_batch_and_the_dead_letter_forget_an_entrys_paused_runs(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    stream = keys.stream("p")
    await ensure_group(aredis, keys, "p")
    ids = [(await aredis.xadd(stream, {"id": f"evt_{n}"})).decode() for n in range(3)]
    await aredis.xreadgroup(keys.group("p"), "c", {stream: ">"}, count=3)
    await aredis.hset(keys.uncounted("p"), mapping={i: 1 for i in ids})
    assert await ack_call(keys, "p", stream, ids[0], "evt_0").run_async(aredis) == 1
    assert await dead_call(keys, "p", stream, ids[1], {b"id": b"evt_1"}, reason=REASON_MAX_ATTEMPTS,
                           failures=[ERROR], attempts=3, ledger_key=None, failed=1, now_ms=0).run_async(aredis) == 1
    batch = AckBatch(aredis, keys, "p")
    batch.complete(stream, ids[2], "processed", keys.ledger("p", "evt_2"))
    await batch.flush()
    assert await aredis.exists(keys.uncounted("p")) == 0
    assert await aredis.xpending(stream, keys.group("p")) == {"pending": 0, "min": None, "max": None,
                                                               "consumers": []}


def test_the_backoff_leaves_paused_runs_out_and_never_drops_under_the_min_idle() -> None:
    view: Any = SimpleNamespace(config=CONFIG, consumer="me", claim_margin_s=1.0)
    row = {"message_id": b"1-0", "times_delivered": 5, "consumer": b"me"}
    assert needed_idle_ms(view, row, peer_wait=True, paused_runs=3) == pool_backoff_ms(CONFIG, 2, "1-0")
    assert needed_idle_ms(view, row, peer_wait=True, paused_runs=5) == min_idle_ms(CONFIG) > 0
    peer = {**row, "consumer": b"peer"}
    assert needed_idle_ms(view, peer, peer_wait=True, paused_runs=3) == peer_claim_idle_ms(CONFIG, 2, "1-0", 1.0)
