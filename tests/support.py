"""Helpers for worker tests: a routing file per test, events published by the real ingress Publisher."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from bus.keys import Keys
from bus.routing import RoutingTable, load_routing
from ingress.parse import routing_fields
from ingress.publish import Publisher
from tests.handlers_for_tests import runs_key

H = "tests.handlers_for_tests:"
FAST_POOL = "concurrency: 8, max_attempts: 3, timeout_s: 2, backoff_base_s: 0.05, backoff_max_s: 0.2"


def write_routing(tmp_path: Path, text: str, name: str = "routing.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def event_body(event_id: str, event_type: str, **obj: Any) -> bytes:
    return orjson.dumps({
        "id": event_id, "object": "event", "type": event_type, "created": int(time.time()),
        "livemode": False, "api_version": "2024-06-20",
        "data": {"object": {"id": "obj_" + event_id.removeprefix("evt_"), "object": "thing", **obj}},
    }, option=orjson.OPT_INDENT_2)


async def publish(redis: aioredis.Redis, keys: Keys, table: RoutingTable, event_type: str,
                  event_id: str, **obj: Any) -> bool:
    """Publish one event as the ingress does; False when it was a duplicate."""
    body = event_body(event_id, event_type, **obj)
    fields = routing_fields(body)
    publisher = Publisher(redis, keys, retention_s=3600, budget_s=2.0)
    result = await publisher.publish(fields, table.match(event_type), table.version, body)
    return not result.duplicate


async def publish_many(redis: aioredis.Redis, keys: Keys, table: RoutingTable, event_type: str,
                       ids: list[str], **obj: Any) -> None:
    for event_id in ids:
        await publish(redis, keys, table, event_type, event_id, **obj)


async def runs(redis: aioredis.Redis, prefix: str, handler: str) -> dict[str, int]:
    """event id -> how many times `handler` (its short suffix after H) ran for it."""
    raw = await redis.hgetall(runs_key(prefix, H + handler))
    return {k.decode(): int(v) for k, v in raw.items()}


def load(path: Path) -> RoutingTable:
    return load_routing(path)


def worker_env(prefix: str, routing: Path, **extra: str) -> dict[str, str]:
    """The environment of a `fanout worker` subprocess of this test."""
    from tests.conftest import REPO, TEST_REDIS_URL

    return {**os.environ, "REDIS_URL": TEST_REDIS_URL, "FANOUT_PREFIX": prefix, "ROUTING_FILE": str(routing),
            "PYTHONPATH": str(REPO), "LOG_LEVEL": "warning", **extra}


def start_worker(prefix: str, routing: Path, log_path: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """Start `fanout worker ...` as a subprocess; its output goes to `log_path`."""
    with log_path.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "fanout.cli", "worker", *args],
                                env=worker_env(prefix, routing, **env), stdout=out, stderr=subprocess.STDOUT)


async def wait_for(condition: Callable[[], Awaitable[bool]], poll_s: float = 0.05) -> None:
    """Poll until `condition` holds (the test's timeout bounds the wait)."""
    # The state lives in Redis, written by other processes: there is no local event to await.
    while not await condition():  # noqa: ASYNC110
        await asyncio.sleep(poll_s)


def mark_seen(client: Any, keys: Keys, event_id: str, object_id: str | None = None) -> None:
    """Write the dedupe record the ingress writes for an event (bus/dedupe.py), with a sync client."""
    from bus import defaults
    from bus.dedupe import lookup_keys, seen_record
    from bus.partitions import partition_of

    key = object_id or event_id
    record = seen_record(event_id, key, defaults.SEEN_BUCKETS)
    current = lookup_keys(keys, record, partition_of(key, keys.partitions), int(time.time() * 1000),
                          retention_s=defaults.SEEN_RETENTION_S, slice_s=defaults.SEEN_SLICE_S)[0]
    client.hset(current, record.field, record.value)


def is_seen(client: Any, keys: Keys, event_id: str, object_id: str | None = None) -> bool:
    """Whether the ingress holds a dedupe record for the event (a sync client)."""
    from bus import defaults
    from bus.dedupe import lookup_keys, seen_record
    from bus.partitions import partition_of

    key = object_id or event_id
    record = seen_record(event_id, key, defaults.SEEN_BUCKETS)
    hashes = lookup_keys(keys, record, partition_of(key, keys.partitions), int(time.time() * 1000),
                         retention_s=defaults.SEEN_RETENTION_S, slice_s=defaults.SEEN_SLICE_S)
    return any(client.hexists(name, record.field) for name in hashes)
