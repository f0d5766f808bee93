"""Paused: a run that did not try (breaker open, destination busy) is retried without spending an attempt."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from bus.envelope import Event
from bus.errors import Paused
from bus.keys import Keys
from tests.conftest import make_settings
from tests.support import load, publish, write_routing
from workers.context import Context
from workers.ops.deadletter import list_dead
from workers.supervision.runner import run_pool

HERE = "tests.workers.engine.test_paused:"
PAUSES = 4


def _runs_key(ctx: Context, name: str) -> str:
    return "{" + ctx.settings.key_prefix + "}:test:paused:" + name


async def paused_then_ok(event: Event, ctx: Context) -> None:
    """Paused for the first PAUSES runs of an event, then succeeds; records the attempt it saw."""
    runs = await ctx.redis.hincrby(_runs_key(ctx, "runs"), event.id, 1)
    if runs <= PAUSES:
        raise Paused("the destination is busy", defer_s=0.01)
    await ctx.redis.hset(_runs_key(ctx, "attempt"), event.id, ctx.attempt)


async def always_paused(event: Event, ctx: Context) -> None:
    await ctx.redis.hincrby(_runs_key(ctx, "paused"), event.id, 1)
    raise Paused("the destination is busy", defer_s=0.01)


async def once(event: Event, ctx: Context) -> None:
    await ctx.redis.hincrby(_runs_key(ctx, "once"), event.id, 1)


async def fails(event: Event, ctx: Context) -> None:
    raise RuntimeError("a real failure")


POOL = "concurrency: 4, max_attempts: 2, timeout_s: 2, backoff_base_s: 0.02, backoff_max_s: 0.05"


@pytest.mark.anyio
async def test_paused_runs_do_not_count_towards_max_attempts_nor_rerun_what_succeeded(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, f"""
pools:
  p: {{{POOL}}}
routes:
  charge.refunded: {{p: ["{HERE}paused_then_ok", "{HERE}once"]}}
""")
    await publish(aredis, keys, load(routing), "charge.refunded", "evt_p1")
    await run_pool(make_settings(prefix, routing_file=routing), "p", redis=aredis, burst=True)
    assert await list_dead(aredis, keys, "p") == []  # 4 paused runs, max_attempts 2
    runs = "{" + prefix + "}:test:paused:"
    assert await aredis.hget(runs + "runs", "evt_p1") == str(PAUSES + 1).encode()
    assert await aredis.hget(runs + "attempt", "evt_p1") == b"1"  # the run that tried was attempt 1
    assert await aredis.hget(runs + "once", "evt_p1") == b"1"  # the ledger held across paused runs
    # Acked, and nothing left behind for it.
    assert await aredis.exists(keys.uncounted("p"), keys.retry_at("p")) == 0


@pytest.mark.anyio
async def test_a_run_with_a_real_failure_counts_even_if_another_handler_was_paused(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, f"""
pools:
  p: {{{POOL}}}
routes:
  charge.refunded: {{p: ["{HERE}always_paused", "{HERE}fails"]}}
""")
    await publish(aredis, keys, load(routing), "charge.refunded", "evt_p2")
    await run_pool(make_settings(prefix, routing_file=routing), "p", redis=aredis, burst=True)
    [dead] = await list_dead(aredis, keys, "p")
    assert (dead.attempts, dead.reason) == (2, "max attempts reached")
    assert {f.handler: f.reason for f in dead.failures} == {
        HERE + "always_paused": "max attempts reached (last run: paused)",
        HERE + "fails": "max attempts reached (last run: error)",
    }


def test_on_an_rq_pool_too_paused_runs_do_not_count_towards_max_attempts(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from tests.rq_support import drain_rq, pending

    routing = write_routing(tmp_path, f"""
pools:
  p: {{executor: rq, {POOL}}}
routes:
  charge.refunded: {{p: ["{HERE}paused_then_ok", "{HERE}once"]}}
""")
    monkeypatch.setenv("ROUTING_FILE", str(routing))
    settings = make_settings(prefix, routing_file=routing)

    async def setup() -> None:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            await publish(client, keys, load(routing), "charge.refunded", "evt_rq")
        finally:
            await client.aclose()

    asyncio.run(setup())
    drain_rq(settings, "p", sync_client)
    assert asyncio.run(_dead(keys)) == []
    runs = "{" + prefix + "}:test:paused:"
    assert sync_client.hget(runs + "runs", "evt_rq") == str(PAUSES + 1).encode()
    assert sync_client.hget(runs + "attempt", "evt_rq") == b"1"
    assert sync_client.hget(runs + "once", "evt_rq") == b"1"
    assert pending(sync_client, keys, "p") == 0
    assert sync_client.exists(keys.uncounted("p"), keys.retry_at("p")) == 0


async def _dead(keys: Keys) -> list[object]:
    from tests.conftest import TEST_REDIS_URL

    client = aioredis.Redis.from_url(TEST_REDIS_URL)
    try:
        return list(await list_dead(client, keys, "p"))
    finally:
        await client.aclose()
