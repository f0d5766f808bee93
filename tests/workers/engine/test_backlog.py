"""The consumer's backlog and read-ahead (workers/engine/backlog.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from bus.reload import RoutingHolder
from tests.conftest import make_settings
from tests.support import FAST_POOL, H, load, publish_many, runs, write_routing
from workers.engine.backlog import READ_AHEAD, Backlog, read_ahead
from workers.engine.consumer import Consumer
from workers.engine.executor import Entry

pytestmark = pytest.mark.anyio


def entry(n: int) -> Entry:
    return Entry("s", f"{n}-0", {}, 1)


def test_an_entry_held_past_the_limit_is_never_started_from_the_backlog() -> None:
    now = [100.0]
    backlog = Backlog(clock=lambda: now[0])
    backlog.append(entry(1))
    now[0] += 5
    backlog.append(entry(2))
    now[0] += 0.5
    assert backlog.holds("s", "1-0") and len(backlog) == 2
    # Entry 1 was held 5.5 s, past a 2 s limit: dropped (a reclaim pass claims it), entry 2 starts.
    assert backlog.take(max_hold_s=2.0) == entry(2)
    assert backlog.dropped == 1 and not backlog and not backlog.holds("s", "1-0")
    assert backlog.take(max_hold_s=2.0) is None


def test_the_read_ahead_is_a_quarter_of_the_concurrency_up_to_its_cap_less_what_is_held() -> None:
    assert read_ahead(8, 0) == 2
    assert read_ahead(8, 2) == 0
    assert read_ahead(1024, 0) == READ_AHEAD
    assert read_ahead(1024, READ_AHEAD + 3) == 0
    assert read_ahead(3, 0) == 0


async def test_a_busy_pool_holds_at_most_its_read_ahead_and_a_freed_slot_takes_a_held_entry(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.slow: {{alpha: ["{H}slow"]}}
""")
    settings = make_settings(prefix, routing_file=routing, TEST_HANDLER_SLEEP_S="0.05")
    ids = [f"evt_ra{i}" for i in range(40)]
    await publish_many(aredis, keys, load(routing), "test.slow", ids)
    consumer = Consumer(settings, "alpha", redis=aredis, holder=RoutingHolder.load(routing), burst=True)
    held: list[int] = []
    delivered: list[int] = []

    async def watch() -> None:
        while True:
            held.append(len(consumer.backlog))
            summary = await aredis.xpending(keys.stream("alpha"), keys.group("alpha"))
            delivered.append(int(summary["pending"]))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(consumer.run(), timeout=30)
    finally:
        watcher.cancel()
    concurrency = consumer.concurrency
    assert await runs(aredis, prefix, "slow") == dict.fromkeys(ids, 1)
    assert max(held) == read_ahead(concurrency, 0) > 0  # it did read ahead, and no further
    # Never more delivered to this consumer than its slots, its read-ahead and one unsent ack batch.
    assert max(delivered) <= concurrency + read_ahead(concurrency, 0) + concurrency
    assert consumer.backlog.dropped == 0
