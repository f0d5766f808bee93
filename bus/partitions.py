"""Partitions: which one an event belongs to, and the layout recorded in Redis.

An event's partition is ``zlib.crc32(key.encode("utf-8")) % N``, where ``key`` is
its Stripe object id (``data.object.id``, or ``related_object.id`` for a thin
event) and, when it has none, its event id. CRC-32 is the zlib/PNG/Ethernet one
(polynomial 0x04C11DB7, reflected), so any language can compute the same number.
The same object always lands in the same partition.

The layout (the partition count in use, and older counts whose streams are still
being drained after a resize) lives in one deployment-wide hash, written with
HSETNX the first time a process uses it, so processes never silently disagree.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Any

from bus.envelope import RoutingFields
from bus.errors import ConfigError
from bus.keys import Keys

# Fields of the meta hash (Keys.meta).
META_PARTITIONS = "partitions"
# Comma-separated older partition counts whose streams readers still drain, oldest first.
META_DRAINING = "draining"


class PartitionMismatch(ConfigError):
    """This process was started with a partition count that differs from the recorded one."""

    def __init__(self, configured: int, recorded: int) -> None:
        self.configured = configured
        self.recorded = recorded
        super().__init__(
            f"FANOUT_PARTITIONS is {configured} but this deployment uses {recorded} partitions "
            f"(recorded in Redis); set FANOUT_PARTITIONS={recorded}, or change the count with "
            f"`fanout partitions resize {configured}`"
        )


def partition_key(event: RoutingFields) -> str:
    """What an event's partition is computed from: its object id, else its event id."""
    return event.object_id or event.id


def partition_of(key: str, partitions: int) -> int:
    """The partition of a partition key: CRC-32 of its UTF-8 bytes, mod the partition count."""
    if partitions == 1:
        return 0
    return zlib.crc32(key.encode()) % partitions


def event_partition(event: RoutingFields, partitions: int) -> int:
    return partition_of(partition_key(event), partitions)


@dataclass(frozen=True)
class Layout:
    """The partition count in use, and older counts whose streams are still read until drained."""

    partitions: int
    draining: tuple[int, ...] = ()

    def counts(self) -> tuple[int, ...]:
        """Every partition count whose keys may still hold entries: the current one first."""
        return (self.partitions, *(n for n in self.draining if n != self.partitions))


@dataclass(frozen=True)
class Partition:
    """One partition of one layout: `keys.stream(pool, p)`, `keys.ledger(pool, evt, p)`, ... share its slot."""

    keys: Keys
    p: int

    def stream(self, pool: str) -> str:
        return self.keys.stream(pool, self.p)

    def group(self, pool: str) -> str:
        return self.keys.group(pool)

    def dead(self, pool: str) -> str:
        return self.keys.dead(pool, self.p)

    def ledger(self, pool: str, event_id: str) -> str:
        return self.keys.ledger(pool, event_id, self.p)

    def retry_at(self, pool: str) -> str:
        return self.keys.retry_at(pool, self.p)

    def pool_stats(self, pool: str) -> str:
        return self.keys.pool_stats(pool, self.p)

    def uncounted(self, pool: str) -> str:
        return self.keys.uncounted(pool, self.p)


def partition_of_stream(prefix: str, stream: str) -> Partition:
    """The partition a pool stream's name belongs to, read from its hash tag.

    `{prefix}:stream:pool` is the single partition; `{prefix:p}:stream:pool` is partition p
    of any layout with more than one (their keys do not depend on the count). An RQ job and
    the dead-letter tools, which know a stream but not the consumer's layout, use this.
    """
    if not stream.startswith("{") or "}" not in stream:
        raise ValueError(f"{stream!r} is not a stream of prefix {prefix!r}")
    tag = stream[1:stream.index("}")]
    if tag == prefix:
        return Partition(Keys(prefix, 1), 0)
    head, _, number = tag.rpartition(":")
    if head != prefix or not number.isdigit():
        raise ValueError(f"{stream!r} is not a stream of prefix {prefix!r}")
    p = int(number)
    return Partition(Keys(prefix, max(2, p + 1)), p)


@functools.lru_cache(maxsize=4096)
def stream_partition(prefix: str, stream: str) -> Partition:
    """partition_of_stream, cached: workers look it up for every outcome."""
    return partition_of_stream(prefix, stream)


def partitions_to_read(layout: Layout, prefix: str, pool: str) -> list[Partition]:
    """Every partition a consumer of `pool` must read: the current layout's, then those still draining.

    An entry read from `part.stream(pool)` keeps its ledger, retry time and dead letter in
    `part.keys`'s keys of `part.p`, so each outcome script stays in one slot. A stream shared
    by two layouts (partition 2 of 4 and of 8 are the same key) is listed once.
    """
    out: list[Partition] = []
    seen: set[str] = set()
    for n in layout.counts():
        keys = Keys(prefix, n)
        for p in range(n):
            if (stream := keys.stream(pool, p)) not in seen:
                seen.add(stream)
                out.append(Partition(keys, p))
    return out


def streams_to_read(layout: Layout, prefix: str, pool: str) -> list[str]:
    """The stream names of partitions_to_read."""
    return [part.stream(pool) for part in partitions_to_read(layout, prefix, pool)]


def _parse(meta: dict[Any, Any]) -> Layout | None:
    raw = meta.get(META_PARTITIONS.encode(), meta.get(META_PARTITIONS))
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    draining_raw = meta.get(META_DRAINING.encode(), meta.get(META_DRAINING)) or b""
    draining_text = draining_raw.decode() if isinstance(draining_raw, bytes) else str(draining_raw)
    return Layout(int(text), tuple(int(n) for n in draining_text.split(",") if n))


async def read_layout(redis: Any, prefix: str) -> Layout | None:
    """The recorded layout, or None before any process has used this deployment."""
    meta: dict[Any, Any] = await redis.hgetall(Keys(prefix).meta)
    return _parse(meta)


async def claim_layout(redis: Any, prefix: str, partitions: int) -> Layout:
    """Record `partitions` if nothing is recorded yet, and return the layout in force.

    Raises PartitionMismatch when another count is recorded: every process (the ingress
    at start, a worker at start) calls this before it reads or writes a partitioned key.
    """
    await redis.hsetnx(Keys(prefix).meta, META_PARTITIONS, str(partitions))
    layout = await read_layout(redis, prefix)
    assert layout is not None  # just written, or already there
    if layout.partitions != partitions:
        raise PartitionMismatch(partitions, layout.partitions)
    return layout


def claim_layout_sync(redis: Any, prefix: str, partitions: int) -> Layout:
    """claim_layout for a blocking client (the CLI, before it starts serving)."""
    meta_key = Keys(prefix).meta
    redis.hsetnx(meta_key, META_PARTITIONS, str(partitions))
    layout = _parse(redis.hgetall(meta_key))
    assert layout is not None
    if layout.partitions != partitions:
        raise PartitionMismatch(partitions, layout.partitions)
    return layout
