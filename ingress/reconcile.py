"""Backfill from Stripe's Events API through the ingress's own dedupe-and-route path.

Events Stripe never delivered (an endpoint down past its retry window, disabled,
or a secret mix-up) are still listed by the Events API for 30 days. Each listed
event is routed by the current table and published by the ingress's Publisher,
whose script skips an event id already seen. An event fetched with the API key
is trusted as it is: there is no signature to verify.

Reconciling is safe to repeat: a second run publishes nothing new.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from bus import defaults
from bus.dedupe import lookup_keys, seen_record
from bus.envelope import RoutingFields
from bus.keys import Keys
from bus.partitions import partition_key, partition_of
from bus.routing import RoutingTable
from ingress.parse import routing_fields
from ingress.publish import Publisher
from ingress.rejections import Rejected


@dataclass(frozen=True)
class Planned:
    """One event reconcile published (or, in a dry run, would publish)."""

    event_id: str
    event_type: str
    created: int
    pools: tuple[str, ...]


@dataclass
class ReconcileSummary:
    dry_run: bool
    listed: int = 0
    already_seen: int = 0
    # New events stored in at least one pool's stream (or that would be, in a dry run).
    published: int = 0
    per_pool: Counter[str] = field(default_factory=Counter)
    # New events no route matches: marked seen and counted, as the ingress does, but stored nowhere.
    unrouted: int = 0
    # Listed objects that are not Stripe events the ingress could route: (event id or "?", why).
    invalid: list[tuple[str, str]] = field(default_factory=list)
    # What was (or would be) published, in listing order.
    events: list[Planned] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run, "listed": self.listed, "already_seen": self.already_seen,
            "published": self.published, "per_pool": dict(self.per_pool), "unrouted": self.unrouted,
            "invalid": [{"id": i, "error": e} for i, e in self.invalid],
            "events": [{"id": p.event_id, "type": p.event_type, "created": p.created, "pools": list(p.pools)}
                       for p in self.events],
        }


async def reconcile(
    redis: aioredis.Redis, keys: Keys, table: RoutingTable, pages: AsyncIterable[list[dict[str, Any]]],
    *, seen_retention_s: int, seen_buckets: int = defaults.SEEN_BUCKETS, dry_run: bool = False,
    clock: Callable[[], float] = time.time,
) -> ReconcileSummary:
    """Publish every listed event not seen yet; with `dry_run`, only say what would be published."""
    summary = ReconcileSummary(dry_run=dry_run)
    publisher = Publisher(redis, keys, seen_retention_s, budget_s=defaults.RECONCILE_PUBLISH_BUDGET_S,
                          seen_buckets=seen_buckets, clock=clock)
    async for page in pages:
        parsed: list[tuple[RoutingFields, bytes]] = []
        for obj in page:
            summary.listed += 1
            # The stored body is the event as the API lists it: the same object a webhook carries.
            body = orjson.dumps(obj)
            try:
                parsed.append((routing_fields(body), body))
            except Rejected as rejection:
                event_id = obj.get("id") if isinstance(obj, dict) else None
                summary.invalid.append((event_id if isinstance(event_id, str) else "?", rejection.detail))
        if dry_run:
            seen = await _seen(redis, keys, [fields for fields, _ in parsed], int(clock() * 1000),
                               seen_retention_s, seen_buckets)
            for (fields, _), was_seen in zip(parsed, seen, strict=True):
                if was_seen:
                    summary.already_seen += 1
                else:
                    _count(summary, fields, table.match(fields.type).pools)
            continue
        # One page's publishes go to Redis together (the Publisher pipelines one loop tick's calls).
        results = await asyncio.gather(*(
            publisher.publish(fields, table.match(fields.type), table.version, body)
            for fields, body in parsed
        ))
        for (fields, _), result in zip(parsed, results, strict=True):
            if result.duplicate:
                summary.already_seen += 1
            else:
                _count(summary, fields, result.pools)
    return summary


def _count(summary: ReconcileSummary, fields: RoutingFields, pools: tuple[str, ...]) -> None:
    if not pools:
        summary.unrouted += 1
        return
    summary.published += 1
    summary.per_pool.update(pools)
    summary.events.append(Planned(fields.id, fields.type, fields.created, pools))


async def _seen(redis: aioredis.Redis, keys: Keys, events: list[RoutingFields], now_ms: int,
                retention_s: int, buckets: int) -> list[bool]:
    """Whether each event has a dedupe record (what the publish script would find)."""
    if not events:
        return []
    pipe = redis.pipeline(transaction=False)
    looked: list[int] = []
    for event in events:
        key = partition_key(event)
        record = seen_record(event.id, key, buckets)
        hashes = lookup_keys(keys, record, partition_of(key, keys.partitions), now_ms,
                             retention_s=retention_s, slice_s=defaults.SEEN_SLICE_S)
        for name in hashes:
            pipe.hexists(name, record.field)
        looked.append(len(hashes))
    found = iter(await pipe.execute())
    return [any([bool(next(found)) for _ in range(n)]) for n in looked]
