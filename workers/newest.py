"""The newest completed event per object, for the stale guard (`skip_stale: true`).

Stripe does not order events: a `customer.updated` made at t1 can arrive after one made
at t2 > t1. In a pool with `skip_stale: true`, the success path of every entry records,
per object, the `created` of the newest event that completed; an entry whose event is
strictly older than that, in the same family, is acked without running and counted
`stale`. Handlers can ask themselves: `await ctx.newer_completed()`.

The family of an event type is the type up to its last dot (outside brackets):
`customer.created`, `customer.updated` and `customer.deleted` are family `customer`;
`customer.subscription.updated` is family `customer.subscription`, so a newer
subscription event never makes a `customer.created` stale. `v2.core.account[requirements].updated`
is family `v2.core.account[requirements]`. A `.deleted` event is never skipped (a
deletion is final: skipping it would leave the object alive downstream), but it is
recorded, so an older `customer.updated` arriving after the deletion is stale.
`created` is in whole seconds: an event made in the same second as the newest one runs.

Memory bound: one hash per (pool, partition, family, window), in the entry's partition
slot (Keys.newest); the window is NEWEST_WINDOW_S long. A write goes to the current
window's bucket, whose TTL (two windows) is set when it is created; a read takes the
newest of the current and the previous window. So an object is remembered for one to
two windows after its last completion, and a bucket holds at most NEWEST_BUCKET_CAP
objects (past it new objects are not recorded: their older events run, never the
reverse). The write is queued in the same pipeline as the ack, before it: a crash in
between leaves the entry pending with its own `created` recorded, which is not older
than itself, so it runs again as any unacked entry does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bus import defaults
from bus.envelope import Event
from bus.keys import Keys

# KEYS[1]: the current window's bucket. ARGV: TTL in s, cap, then object id / created pairs.
# Keeps the largest `created` per object; a new bucket gets its TTL once.
NEWEST_SCRIPT = """
local added = 0
for i = 3, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if current then
    if tonumber(current) < tonumber(ARGV[i + 1]) then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  elseif redis.call('HLEN', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    added = added + 1
  end
end
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return added
"""


def family(event_type: str) -> str:
    """The event type up to its last dot outside brackets (the type itself when it has none)."""
    depth = 0
    for i in range(len(event_type) - 1, -1, -1):
        c = event_type[i]
        if c == "]":
            depth += 1
        elif c == "[":
            depth -= 1
        elif c == "." and depth == 0:
            return event_type[:i]
    return event_type


@dataclass(frozen=True, slots=True)
class Newest:
    """One event's place in the stale guard: its object's buckets, and its own `created`."""

    current: str  # the bucket this event's completion is written to
    previous: str  # the previous window's bucket, read too
    object_key: str  # the partition key (bus/partitions.partition_key): object id, else event id
    created: int
    deleted: bool

    @classmethod
    def of(cls, keys: Keys, pool: str, stream: str, event: Event, now_s: float,
           window_s: int = defaults.NEWEST_WINDOW_S) -> Newest:
        fam, window = family(event.type), int(now_s // window_s)
        return cls(keys.newest(stream, pool, fam, window), keys.newest(stream, pool, fam, window - 1),
                   event.object_id or event.id, event.created, event.type.endswith(".deleted"))

    async def newest_completed(self, redis: Any) -> int | None:
        """The `created` of the newest completed event of this object and family, if remembered."""
        pipe = redis.pipeline(transaction=False)
        pipe.hget(self.current, self.object_key)
        pipe.hget(self.previous, self.object_key)
        found = [int(v) for v in await pipe.execute() if v is not None]
        return max(found, default=None)

    async def newer_completed(self, redis: Any) -> bool:
        """Whether an event of this object and family created after this one has completed."""
        newest = await self.newest_completed(redis)
        return newest is not None and newest > self.created

    async def stale(self, redis: Any) -> bool:
        """What the guard skips: a newer event completed, and this one is not a deletion."""
        return not self.deleted and await self.newer_completed(redis)


def queue_writes(pipe: Any, writes: Mapping[str, Mapping[str, int]],
                 ttl_s: int = 2 * defaults.NEWEST_WINDOW_S, cap: int = defaults.NEWEST_BUCKET_CAP) -> None:
    """Queue on `pipe` one NEWEST_SCRIPT per bucket: {bucket: {object id: created}}."""
    for bucket, objects in writes.items():
        flat = [item for pair in objects.items() for item in pair]
        pipe.eval(NEWEST_SCRIPT, 1, bucket, ttl_s, cap, *flat)


def merge_writes(into: dict[str, dict[str, int]], writes: Mapping[str, Mapping[str, int]]) -> None:
    """Add `writes` to `into`, keeping the newest `created` per object."""
    for bucket, objects in writes.items():
        kept = into.setdefault(bucket, {})
        for obj, created in objects.items():
            kept[obj] = max(created, kept.get(obj, created))
