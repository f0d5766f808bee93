"""The resize barrier of an ordered pool: nothing published after a resize starts before everything
published before it has ended.

`fanout partitions resize` moves objects between partitions (an object's partition is its key's
CRC mod the count), so one object's entries can sit in two streams: the old ones where the old
count put them, the new ones where the new count does. Streams shared by both layouts (partition
2 of 4 and of 8) hold entries of both kinds. The resize records each old stream's last entry id
(its boundary, bus/resize.py boundary_key), while the ingresses are stopped. The rule:

* a stream with an unpassed boundary is read only up to it: the lease's read script delivers no
  entry beyond it (workers/engine/lease.py), whoever reads it, even a consumer that has not yet
  noticed the resize;
* a stream without a boundary (new in this layout) is not adopted or read while any boundary of
  the consumer's streams is unpassed;
* the barrier is passed once every stream with a boundary has, in the pool's group, delivered
  everything up to it and has nothing pending at or before it (acked or dead-lettered). That only
  grows true, so each consumer checks it on its own at each lease pass (no coordinator), and then
  reads past the boundaries and starts the new streams.

Per object, its entries before the resize are in one stream (in order there), and all end before
any of its later ones start: its order holds across the resize. Another resize before an ordered
pool has passed the barrier of the previous one merges the two barriers: resize again only once
`fanout status` shows nothing pending or lagging in the old streams.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from bus.resize import boundary_key
from workers.stream_ops import text


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def drained_to(redis: Any, stream: str, group: str, boundary: str) -> bool:
    """Whether `group` has delivered every entry of `stream` up to `boundary` and has none pending there."""
    if boundary == "0-0":
        return True
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError as err:
        if "no such key" in str(err).lower():
            return True
        raise
    mine = next((g for g in groups if text(g["name"]) == group), None)
    if mine is None:
        return False
    last = text(mine["last-delivered-id"])
    if _id(last) < _id(boundary) and await redis.xrange(stream, min="(" + last, max=boundary, count=1):
        return False
    return not await redis.xpending_range(stream, group, min="-", max=boundary, count=1)


class Barrier:
    """One consumer's view of its pool's resize barrier (see the module docstring)."""

    def __init__(self, redis: Any, group: str) -> None:
        self.redis = redis
        self.group = group
        self.loaded = False
        self.boundaries: dict[str, str] = {}  # stream -> its boundary, for the streams that have one
        self.passed: dict[str, str] = {}  # stream -> the boundary this consumer saw passed
        self.open = False  # every boundary of the consumer's streams is passed: new streams may be read

    def allows(self, stream: str) -> bool:
        """Whether `stream` may be adopted and read now (up to its boundary, if it has an unpassed one)."""
        return self.loaded and (stream in self.boundaries or self.open)

    def passed_boundary(self, stream: str) -> str:
        """The script's argument: the boundary of `stream` known to be passed ("": none)."""
        return self.passed.get(stream, "")

    async def refresh(self, streams: list[str]) -> bool:
        """Read the boundaries of `streams`, and pass them if the pool is done with them; whether it just opened."""
        was = self.open
        found: dict[str, str] = {}
        for stream in streams:
            value = await self.redis.get(boundary_key(stream))
            if value is not None:
                found[stream] = text(value)
        self.boundaries, self.loaded = found, True
        self.open = all(self.passed.get(s) == b for s, b in found.items())
        if not self.open:
            for stream, boundary in found.items():
                if self.passed.get(stream) != boundary and not await drained_to(
                        self.redis, stream, self.group, boundary):
                    return False
            self.passed, self.open = dict(found), True
        return not was and bool(found)
