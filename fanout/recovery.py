"""The recovery commands' printing: `dlq replay`, `replay`, `reconcile`, `routes diff`.

The work is done by library modules (workers/replay.py, ingress/reconcile.py,
bus/routing_diff.py); this module loads what they need, calls them and prints.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import orjson

from bus.errors import ConfigError
from bus.keys import Keys
from bus.routing import RoutingTable, load_routing
from bus.settings import Settings
from workers.replay import ReplayResult, Skipped

T = TypeVar("T")


def with_redis(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run one async operation with a Redis client that is closed afterwards."""
    from bus.connection import async_redis

    async def run() -> T:
        client = async_redis(settings.redis_url)
        try:
            return await action(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def parse_time(command: str, option: str, value: str) -> datetime | None:
    """An ISO 8601 time with a zone; None after printing why not."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        print(f"fanout {command}: {option} {value!r} is not an ISO 8601 time", file=sys.stderr)
        return None
    if parsed.tzinfo is None:
        print(f"fanout {command}: {option} needs a time zone (for example 2026-01-31T12:00:00Z)",
              file=sys.stderr)
        return None
    return parsed


def current_table(command: str, settings: Settings) -> RoutingTable | None:
    """The routing table of ROUTING_FILE; None after printing why it does not load."""
    try:
        return load_routing(settings.routing_file)
    except ConfigError as err:
        print(f"fanout {command}: {err}", file=sys.stderr)
        return None


def _print_skipped(result: ReplayResult, pool: str, source: str, unrouted_fate: str) -> None:
    def line(entry: Skipped) -> str:
        return f"{entry.id}  {entry.event_id}  {entry.event_type}"

    for entry in result.unrouted:
        print(f"not routed to {pool} by {source} ({unrouted_fate}): {line(entry)}", file=sys.stderr)
    for entry in result.nothing_to_run:
        print(f"nothing left to run (every handler {source} names for it is done): {line(entry)}")


# --- dlq replay / replay ---------------------------------------------------------------------------


def dlq_replay(settings: Settings, pool: str, ids: list[str] | None, *, reroute: bool) -> int:
    from workers.replay import replay_dead_entries

    table = current_table("dlq replay", settings) if reroute else None
    if reroute and table is None:
        return 1
    result = with_redis(settings, lambda r: replay_dead_entries(
        r, Keys(settings.key_prefix), pool, ids, table=table))
    print(f"{pool}: {len(result.added)} entries put back in the stream")
    _print_skipped(result, pool, str(settings.routing_file), "left in the dead-letter stream")
    for dead_id in result.missing:
        print(f"not found (or nothing to replay): {dead_id}", file=sys.stderr)
    return 1 if result.missing or result.unrouted else 0


def replay(settings: Settings, pool: str, *, since: datetime | None, event_id: str | None,
           reroute: bool) -> int:
    from workers.replay import replay_stream

    table = current_table("replay", settings) if reroute else None
    if reroute and table is None:
        return 1
    result = with_redis(settings, lambda r: replay_stream(
        r, Keys(settings.key_prefix), pool, since=since, event_id=event_id, table=table))
    copies = f" ({result.skipped_copies} copies from earlier replays skipped)" if result.skipped_copies else ""
    print(f"{pool}: {len(result.added)} entries published again{copies}")
    _print_skipped(result, pool, str(settings.routing_file), "not published")
    if result.unrouted:
        return 1
    return 0 if result.added or result.nothing_to_run or since is not None else 1


def now_ms() -> int:
    return int(time.time() * 1000)


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
