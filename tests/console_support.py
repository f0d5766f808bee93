"""A pool history for the console tests: done, dead-lettered, pending and not yet read events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.applications import Starlette

from bus.keys import Keys
from bus.settings import Settings
from fanout.console.app import create_app
from tests.conftest import TEST_REDIS_URL, make_settings
from tests.support import FAST_POOL, H, load, publish, write_routing
from workers.supervision.runner import run_pool

ROUTING = f"""
pools:
  alpha: {{{FAST_POOL}}}
  beta: {{{FAST_POOL}}}
  gamma: {{concurrency: 8, max_attempts: 2, timeout_s: 2, backoff_base_s: 0.05, backoff_max_s: 0.2}}
routes:
  test.ok: {{alpha: ["{H}record"], beta: ["{H}record_other"]}}
  test.poison: {{alpha: ["{H}record", "{H}fail_if_poison"]}}
  test.later: {{beta: ["{H}record"]}}
  test.flaky: {{gamma: ["{H}fail_twice"]}}
"""
# A string in every event body, to check where raw bodies may appear.
BODY_MARKER = "marker-of-a-raw-body"


@dataclass(frozen=True)
class Seeded:
    settings: Settings
    routing: Path
    keys: Keys
    done: str  # ran in alpha and beta
    dead: str  # alpha: record done, fail_if_poison dead-lettered after 3 attempts
    pending: str  # beta: read by a consumer, not acked
    waiting: str  # beta: not read yet
    object_id: str
    flaky: str  # gamma: fail_twice dead-lettered after 2 attempts; a replay succeeds


async def seed(prefix: str, tmp_path: Path) -> Seeded:
    import redis.asyncio as aioredis

    routing = write_routing(tmp_path, ROUTING)
    settings = make_settings(prefix, routing_file=routing)
    keys = Keys(prefix)
    table = load(routing)
    client = aioredis.Redis.from_url(TEST_REDIS_URL)
    try:
        await publish(client, keys, table, "test.ok", "evt_done1", note=BODY_MARKER)
        await publish(client, keys, table, "test.poison", "evt_dead1", poison=True, note=BODY_MARKER)
        await run_pool(settings, "alpha", redis=client, burst=True)
        await run_pool(settings, "beta", redis=client, burst=True)
        await publish(client, keys, table, "test.flaky", "evt_flaky1", note=BODY_MARKER)
        await run_pool(settings, "gamma", redis=client, burst=True)
        await publish(client, keys, table, "test.later", "evt_pending1", note=BODY_MARKER)
        await client.xreadgroup("beta", "someone", {keys.stream("beta"): ">"}, count=1)
        await publish(client, keys, table, "test.later", "evt_waiting1", note=BODY_MARKER)
    finally:
        await client.aclose()
    return Seeded(settings, routing, keys, "evt_done1", "evt_dead1", "evt_pending1", "evt_waiting1",
                  "obj_done1", "evt_flaky1")


@asynccontextmanager
async def console_client(settings: Settings) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The console app with its lifespan running, and an HTTP client wired to it in-process."""
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        yield app, client
