"""A routing change tried against recorded traffic: what each event type seen would now do differently.

The pools' streams hold what the ingress stored (for their retention). For every
event type found in them, the old and the new table are matched and compared per
pool: a pool that gains or loses the type, and handlers added or removed. Events
are counted once each, however many pools stored them; copies made by `replay`
are not counted. Nothing is written.

Events no route matched were never stored, so a route added for a type that was
unrouted shows no traffic here (the ingress only counts them: `fanout status`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis

from bus.envelope import F_ID, F_REPLAY_OF, F_TYPE
from bus.keys import Keys
from bus.partitions import Layout, read_layout, streams_to_read
from bus.routing import RoutingTable

Change = Literal["added", "removed", "changed"]
PAGE_SIZE = 1000


@dataclass(frozen=True)
class PoolChange:
    """How one pool's part in an event type changes: the pool added or removed, or its handlers changed."""

    pool: str
    change: Change
    handlers_added: tuple[str, ...]
    handlers_removed: tuple[str, ...]


@dataclass(frozen=True)
class TypeDiff:
    event_type: str
    # Distinct events of this type in the window.
    events: int
    old_route: str | None
    new_route: str | None
    changes: tuple[PoolChange, ...]


@dataclass(frozen=True)
class RoutingDiff:
    old_version: str
    new_version: str
    since_ms: int | None
    # Every event type seen in the window, changed or not, by name.
    types: tuple[TypeDiff, ...]

    @property
    def changed(self) -> tuple[TypeDiff, ...]:
        return tuple(t for t in self.types if t.changes)

    @property
    def affected_events(self) -> int:
        return sum(t.events for t in self.changed)

    @property
    def events(self) -> int:
        return sum(t.events for t in self.types)

    def as_dict(self) -> dict[str, Any]:
        return {
            "old_version": self.old_version, "new_version": self.new_version, "since_ms": self.since_ms,
            "events": self.events, "affected_events": self.affected_events,
            "types": [{
                "event_type": t.event_type, "events": t.events, "old_route": t.old_route,
                "new_route": t.new_route,
                "changes": [{"pool": c.pool, "change": c.change, "handlers_added": list(c.handlers_added),
                             "handlers_removed": list(c.handlers_removed)} for c in t.changes],
            } for t in self.types],
        }


def type_changes(old_table: RoutingTable, new_table: RoutingTable, event_type: str) -> tuple[PoolChange, ...]:
    """What changes for `event_type`, pool by pool (handlers run together, so their order is no change)."""
    old = dict(old_table.match(event_type).targets)
    new = dict(new_table.match(event_type).targets)
    changes: list[PoolChange] = []
    for pool in sorted(old.keys() | new.keys()):
        before, after = old.get(pool), new.get(pool)
        if after is None:
            changes.append(PoolChange(pool, "removed", (), before or ()))
        elif before is None:
            changes.append(PoolChange(pool, "added", after, ()))
        else:
            added = tuple(h for h in after if h not in before)
            removed = tuple(h for h in before if h not in after)
            if added or removed:
                changes.append(PoolChange(pool, "changed", added, removed))
    return tuple(changes)


async def routing_diff(
    redis: aioredis.Redis, keys: Keys, old_table: RoutingTable, new_table: RoutingTable,
    since_ms: int | None = None,
) -> RoutingDiff:
    """Compare two tables on the event types the streams hold (from `since_ms`, or all they hold)."""
    events_by_type: dict[str, set[str]] = defaultdict(set)
    layout = await read_layout(redis, keys.prefix) or Layout(keys.partitions)
    for pool in sorted(old_table.pools.keys() | new_table.pools.keys()):
        for stream in streams_to_read(layout, keys.prefix, pool):  # every partition's stream
            await _collect(redis, stream, since_ms, events_by_type)
    types = []
    for event_type in sorted(events_by_type):
        old_route = old_table.match(event_type).route
        new_route = new_table.match(event_type).route
        types.append(TypeDiff(
            event_type, len(events_by_type[event_type]),
            old_route.pattern if old_route else None, new_route.pattern if new_route else None,
            type_changes(old_table, new_table, event_type),
        ))
    return RoutingDiff(old_table.version, new_table.version, since_ms, tuple(types))


async def _collect(redis: aioredis.Redis, stream: str, since_ms: int | None,
                   events_by_type: dict[str, set[str]]) -> None:
    start = f"{since_ms}-0" if since_ms is not None else "-"
    id_field, type_field, copy_field = F_ID.encode(), F_TYPE.encode(), F_REPLAY_OF.encode()
    while True:
        page: Any = await redis.xrange(stream, min=start, max="+", count=PAGE_SIZE)
        for _, fields in page:
            if fields.get(copy_field):
                continue
            event_type, event_id = _text(fields.get(type_field)), _text(fields.get(id_field))
            if event_type and event_id:
                events_by_type[event_type].add(event_id)
        if len(page) < PAGE_SIZE:
            return
        start = "(" + _text(page[-1][0])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
