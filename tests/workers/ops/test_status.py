"""`status`: figures read from Redis in the documented JSON shape."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.envelope import Event
from bus.errors import Paused
from bus.keys import Keys
from tests.conftest import make_settings
from tests.support import FAST_POOL, H, load, publish, publish_many, write_routing
from workers.context import Context
from workers.ops.status import collect_status, render_text
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  alpha: {{{FAST_POOL}}}
  beta: {{{FAST_POOL}}}
routes:
  test.ok: {{alpha: ["{H}record"]}}
  test.poison: {{alpha: ["{H}always_fail"]}}
"""


async def test_status_reports_counters_pending_lag_and_ingress_counts(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    table = load(routing)
    await publish_many(aredis, keys, table, "test.ok", ["evt_1", "evt_2"])
    await publish(aredis, keys, table, "test.poison", "evt_bad")
    await publish(aredis, keys, table, "test.ok", "evt_1")  # duplicate
    await publish(aredis, keys, table, "test.nothing", "evt_unrouted")
    before = await collect_status(aredis, keys, ["alpha", "beta"], int(time.time() * 1000))
    assert before["pools"]["alpha"]["lag"] == 3
    assert before["pools"]["alpha"]["pending"] == 0
    assert before["duplicates"] == 1
    assert before["unrouted"] == 1

    await run_pool(make_settings(prefix, routing_file=routing), "alpha", redis=aredis, burst=True)
    status = await collect_status(aredis, keys, ["alpha", "beta"], int(time.time() * 1000))
    assert status["pools"]["alpha"] == {
        "stream_length": 3, "pending": 0, "lag": 0, "consumers": 0, "group_consumers": 0,
        "processed": 2, "failed": 3, "retried": 2, "paused": 0, "dead": 1, "stale": 0, "oldest_pending_s": None,
        "partitions": {"0": {"length": 3, "pending": 0, "lag": 0}},
    }
    assert status["pools"]["beta"]["stream_length"] == 0
    text = render_text(status)
    assert "alpha" in text and "unrouted events: 1" in text


async def test_status_shows_the_age_of_the_oldest_pending_entry(
    aredis: aioredis.Redis, keys: Keys, tmp_path: Path
) -> None:
    table = load(write_routing(tmp_path, ROUTING))
    await publish(aredis, keys, table, "test.ok", "evt_1")
    await aredis.xreadgroup("alpha", "someone", {keys.stream("alpha"): ">"}, count=1)
    now_ms = int(time.time() * 1000) + 60_000
    status = await collect_status(aredis, keys, ["alpha"], now_ms)
    assert status["pools"]["alpha"]["pending"] == 1
    # "someone" holds an entry, so it is a group member; no process of it beats: not live.
    assert (status["pools"]["alpha"]["group_consumers"], status["pools"]["alpha"]["consumers"]) == (1, 0)
    assert status["pools"]["alpha"]["oldest_pending_s"] >= 60


PAUSED_ROUTING = """
pools:
  p: {concurrency: 4, max_attempts: 2, timeout_s: 2, backoff_base_s: 0.02, backoff_max_s: 0.05}
routes:
  charge.refunded: {p: ["tests.workers.engine.test_paused:paused_then_ok"]}
"""


async def paused_four_times_then_done(aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path) -> dict[str, object]:
    """One entry whose handler is Paused on its first 4 runs (no attempt spent), then succeeds; its pool's status."""
    routing = write_routing(tmp_path, PAUSED_ROUTING)
    await publish(aredis, keys, load(routing), "charge.refunded", "evt_p1")
    await run_pool(make_settings(prefix, routing_file=routing), "p", redis=aredis, burst=True)
    status = await collect_status(aredis, keys, ["p"], int(time.time() * 1000))
    pool: dict[str, object] = status["pools"]["p"]
    assert "paused" in render_text(status).splitlines()[0].split()
    return pool


async def test_status_shows_paused_runs_apart_from_failed_attempts(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    pool = await paused_four_times_then_done(aredis, prefix, keys, tmp_path)
    assert (pool["processed"], pool["paused"], pool["failed"], pool["dead"]) == (1, 4, 0, 0)


async def test_retried_counts_retry_attempts_not_reruns_after_a_paused_run(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    pool = await paused_four_times_then_done(aredis, prefix, keys, tmp_path)
    assert pool["retried"] == 0  # the one attempt was the first; the 4 re-runs before it were not attempts


async def fail_pause_pause_ok(event: Event, ctx: Context) -> None:
    """Run 1 fails (attempt 1), runs 2 and 3 are Paused (no attempt), run 4 succeeds (attempt 2)."""
    runs = await ctx.redis.hincrby("{" + ctx.settings.key_prefix + "}:test:status:runs", event.id, 1)
    if runs == 1:
        raise RuntimeError("failing the first attempt on purpose")
    if runs <= 3:
        raise Paused("the destination is busy", defer_s=0.01)


async def test_retried_counts_the_retry_attempt_once_when_paused_runs_come_between(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, PAUSED_ROUTING.replace(
        "tests.workers.engine.test_paused:paused_then_ok", "tests.workers.ops.test_status:fail_pause_pause_ok"))
    await publish(aredis, keys, load(routing), "charge.refunded", "evt_fp")
    await run_pool(make_settings(prefix, routing_file=routing), "p", redis=aredis, burst=True)
    pool = (await collect_status(aredis, keys, ["p"], int(time.time() * 1000)))["pools"]["p"]
    # Four runs, two attempts: the second is the one retry, however many paused runs came before it.
    assert (pool["processed"], pool["failed"], pool["paused"], pool["retried"], pool["dead"]) == (1, 1, 2, 1, 0)
