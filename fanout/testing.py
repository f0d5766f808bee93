"""Test your own handlers with what stripe-fanout's own tests use (see docs/handlers.md).

* `sample(...)` and `event(...)`: a realistic Stripe payload, and the `Event` a worker
  would hand your handler for it;
* `context(...)`: a `Context` with an in-memory Redis and resources you may fill with fakes;
* `Harness`: a routing file on a real Redis under a key prefix of its own (deleted
  afterwards): publish as the ingress does, then run a pool in burst mode until drained.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog

from bus.envelope import Event, entry_fields
from bus.keys import Keys
from bus.routing import RoutingTable, load_routing
from bus.settings import Settings
from fanout.samples import sample_event
from ingress.parse import routing_fields
from workers.context import Context
from workers.ops.deadletter import DeadEntry, list_dead
from workers.resources import Resources

# Where Harness looks for Redis unless told: a database of its own, so a test never meets real data.
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


def sample(event_type: str, *, ids: Mapping[str, str] | None = None, event_id: str | None = None,
           created: int | None = None, **object_fields: Any) -> dict[str, Any]:
    """A whole Stripe event of `event_type` (as `fanout send` sends it); `object_fields` change
    its data.object, `ids` pin object ids (customer=..., session=..., payment_intent=...)."""
    payload = sample_event(event_type, ids=dict(ids or {}), event_id=event_id, created=created)
    payload["data"]["object"].update(object_fields)
    return payload


def event(payload: Mapping[str, Any], handlers: Sequence[str] = ()) -> Event:
    """The Event a worker reads for this Stripe payload, a snapshot or a thin event (it goes through
    the ingress's parser and a stream entry's fields)."""
    body = orjson.dumps(payload, option=orjson.OPT_INDENT_2)
    fields = entry_fields(routing_fields(body), tuple(handlers), "test", body)
    entry: dict[bytes | str, bytes | str] = {name: value for name, value in fields.items()}
    return Event.from_entry(entry)


def context(settings: Settings | None = None, *, env: Mapping[str, str] | None = None, pool: str = "test",
            handler: str = "test", attempt: int = 1, redis: aioredis.Redis | None = None,
            resources: Resources | None = None) -> Context:
    """A Context as a pool builds it. Without `redis`, an in-memory one (fakeredis); without
    `settings`, settings read from `env` only (never from this process's environment)."""
    if redis is None:
        from fakeredis import FakeAsyncRedis

        redis = FakeAsyncRedis()
    return Context(
        pool=pool, handler=handler, attempt=attempt,
        log=structlog.get_logger("fanout.worker").bind(pool=pool, handler=handler, attempt=attempt),
        redis=redis, settings=settings or Settings.from_env(dict(env or {})),
        resources=resources or Resources(),
    )


@dataclass
class Harness:
    """One routing file on a real Redis, under a key prefix no one else uses."""

    settings: Settings
    redis: aioredis.Redis
    table: RoutingTable

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, routing_file: str | Path, *, redis_url: str | None = None,
                    env: Mapping[str, str] | None = None) -> AsyncIterator[Harness]:
        """Yield a Harness; afterwards every key of its prefix is deleted and its client closed.

        Redis is `redis_url`, else $TEST_REDIS_URL, else DEFAULT_TEST_REDIS_URL. `env` is what
        handlers find in `ctx.settings.env` (their URLs, paths, secrets).
        """
        url = redis_url or os.environ.get("TEST_REDIS_URL") or DEFAULT_TEST_REDIS_URL
        prefix = f"test-{uuid.uuid4().hex[:12]}"
        settings = Settings.from_env({**(env or {}), "REDIS_URL": url, "FANOUT_PREFIX": prefix,
                                      "ROUTING_FILE": str(routing_file)})
        client = aioredis.Redis.from_url(url)
        try:
            yield cls(settings, client, load_routing(Path(routing_file)))
        finally:
            try:
                found = [key async for key in client.scan_iter(match=Keys(prefix).pattern(), count=1000)]
                if found:
                    await client.delete(*found)
            finally:
                await client.aclose()

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.key_prefix, self.settings.partitions)

    async def publish(self, payload: Mapping[str, Any]) -> tuple[str, ...]:
        """Store `payload` as the ingress would after verifying it; the pools it was routed to
        (empty for an unrouted event or a duplicate id)."""
        from ingress.publish import Publisher

        body = orjson.dumps(payload, option=orjson.OPT_INDENT_2)
        fields = routing_fields(body)
        publisher = Publisher(self.redis, self.keys, self.settings.seen_retention_s, budget_s=5.0)
        result = await publisher.publish(fields, self.table.match(fields.type), self.table.version, body)
        return result.pools

    async def drain(self, pool: str, *, resources: Resources | None = None, **options: Any) -> None:
        """Run one consumer of `pool` until nothing is new or pending (retries included): burst mode.

        `resources` may hold fakes your handlers find in `ctx.resources` (an HTTP client, ...).
        """
        from workers.supervision.runner import run_pool

        await run_pool(self.settings, pool, redis=self.redis, table=self.table, burst=True,
                       watch_routing=False, resources=resources, **options)

    async def dead_letters(self, pool: str) -> list[DeadEntry]:
        """The pool's dead-lettered entries, oldest first (as `fanout dlq list` shows them)."""
        return await list_dead(self.redis, self.keys, pool)
