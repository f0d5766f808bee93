"""`fanout partitions resize N`: change the partition count without losing an event or a dedupe.

1. Every dedupe record is copied to its partition in the new layout: a record is
   a field of a hash of one time slice and sub-bucket (bus/dedupe.py), and its value
   is the CRC-32 of its event's partition key, so its new partition is that CRC mod
   the new count. It goes to the same slice and sub-bucket there (HSET, and the
   slice's expiry), so a redelivery of an event seen before the resize is still a
   duplicate. A record whose value is not a CRC is copied into every new partition.
2. The meta records the new count, and lists the old one as draining: a consumer
   reads the streams of every draining layout too (bus.partitions.streams_to_read)
   until they are empty and fully acknowledged.
3. Before the meta changes, the last entry id of every stream of the old layouts is
   recorded beside it, in its slot (`boundary_key`): an ordered pool finishes every
   entry up to these boundaries before it starts any later one (workers/engine/barrier.py).
   The ingresses are stopped meanwhile, so nothing lands between the two.
4. A draining layout is dropped from the meta (by the next resize, or by
   `drop_drained`) once none of its streams that the current layout lacks has an
   entry left to read, pending, or dead-lettered.

Copying first and recording last makes an interrupted resize safe to run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bus import defaults
from bus.dedupe import crc_of_value
from bus.keys import Keys
from bus.partitions import META_DRAINING, META_PARTITIONS, Layout, read_layout


@dataclass(frozen=True)
class ResizeReport:
    before: Layout
    after: Layout
    copied: int  # dedupe records written into the new layout


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def seen_pattern(prefix: str) -> str:
    """Every dedupe hash of the prefix, in every partition of every layout."""
    return "{" + prefix + "[}:]*:seen:*"


def _slice_and_bucket(name: str) -> tuple[str, str] | None:
    """The slice and sub-bucket of a dedupe hash's name; None for any other key."""
    parts = name.rsplit(":seen:", 1)[-1].split(":")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None  # e.g. a `seen:<event id>` key of a version before dedupe hashes
    return parts[0], parts[1]


async def copy_seen_records(redis: Any, prefix: str, partitions: int, batch: int = defaults.RESIZE_BATCH) -> int:
    """Copy every dedupe record to its partition under `partitions`; returns how many were written."""
    target = Keys(prefix, partitions)
    copied = 0
    names: list[tuple[str, str, str]] = []

    async def flush() -> int:
        read = redis.pipeline(transaction=False)
        for name, _, _ in names:
            read.hgetall(name)
            read.pexpiretime(name)
        replies = await read.execute()
        write = redis.pipeline(transaction=False)
        writes = 0
        for i, (name, slice_index, bucket) in enumerate(names):
            records, expires_ms = replies[2 * i], replies[2 * i + 1]
            if not records or expires_ms == -2:  # expired meanwhile
                continue
            moved: dict[str, dict[bytes, bytes]] = {}
            for field, value in records.items():
                crc = crc_of_value(value)
                homes = range(partitions) if crc is None else (crc % partitions,)
                for p in homes:
                    moved.setdefault(target.seen(slice_index, bucket, p), {})[field] = value
            for destination, fields in moved.items():
                if destination == name:
                    continue
                write.hset(destination, mapping=fields)
                if expires_ms > 0:
                    write.pexpireat(destination, expires_ms)
                writes += len(fields)
        if writes:
            await write.execute()
        names.clear()
        return writes

    async for raw in redis.scan_iter(match=seen_pattern(prefix), count=batch, _type="hash"):
        name = _text(raw)
        if (where := _slice_and_bucket(name)) is not None:
            names.append((name, *where))
        if len(names) >= batch:
            copied += await flush()
    if names:
        copied += await flush()
    return copied


def boundary_key(stream: str) -> str:
    """Where a resize records `stream`'s last entry id then (in the stream's slot)."""
    return stream.replace(":stream:", ":boundary:", 1)


async def record_boundaries(redis: Any, prefix: str, layout: Layout) -> int:
    """Record the last entry id ("0-0": none) of every stream of `layout`'s counts; how many."""
    tags = {Keys(prefix, n).tag(p) for n in layout.counts() for p in range(n)}
    streams: set[str] = set()
    for tag in sorted(tags):
        async for name in redis.scan_iter(match=tag + ":stream:*", count=1000, _type="stream"):
            streams.add(_text(name))
    for stream in sorted(streams):
        last: Any = await redis.xrevrange(stream, count=1)
        await redis.set(boundary_key(stream), _text(last[0][0]) if last else "0-0")
    return len(streams)


async def _stream_done(redis: Any, stream: str) -> bool:
    """Nothing in `stream` is left for any of its groups: no lag, nothing pending."""
    if not await redis.exists(stream):
        return True
    if int(await redis.xlen(stream)) == 0:
        return True
    groups: Any = await redis.xinfo_groups(stream)
    if not groups:
        return False
    for group in groups:
        if int(group["pending"]) or group.get("lag") is None or int(group["lag"]):
            return False
    return True


async def layout_drained(redis: Any, prefix: str, partitions: int, current: int) -> bool:
    """Whether the streams of layout `partitions` that layout `current` does not share are all consumed."""
    old, new = Keys(prefix, partitions), Keys(prefix, current)
    shared = {new.tag(p) for p in range(current)}
    for p in range(partitions):
        tag = old.tag(p)
        if tag in shared:
            continue
        async for name in redis.scan_iter(match=tag + ":*", count=1000):
            key = _text(name)
            if key.startswith(f"{tag}:dead:") and int(await redis.xlen(key)):
                return False
            if key.startswith(f"{tag}:stream:") and not await _stream_done(redis, key):
                return False
    return True


async def drop_drained(redis: Any, prefix: str) -> Layout | None:
    """Forget the draining layouts whose streams are all consumed; returns the layout now in force."""
    layout = await read_layout(redis, prefix)
    if layout is None or not layout.draining:
        return layout
    still = tuple([n for n in layout.draining
                   if not await layout_drained(redis, prefix, n, layout.partitions)])
    if still != layout.draining:
        await redis.hset(Keys(prefix).meta, META_DRAINING, ",".join(map(str, still)))
    return Layout(layout.partitions, still)


async def resize(redis: Any, prefix: str, partitions: int, *, assume_current: int = 1) -> ResizeReport:
    """Move the deployment to `partitions`; see the module docstring for the steps.

    `assume_current` is the count in use when none is recorded yet (a deployment whose
    processes predate the meta record: they all ran with one partition).
    """
    before = await read_layout(redis, prefix) or Layout(assume_current)
    if partitions == before.partitions:
        return ResizeReport(before, before, 0)
    copied = await copy_seen_records(redis, prefix, partitions)
    await record_boundaries(redis, prefix, before)
    draining = tuple(n for n in (*before.draining, before.partitions) if n != partitions)
    draining = tuple(dict.fromkeys(draining))
    await redis.hset(Keys(prefix).meta, mapping={META_PARTITIONS: str(partitions),
                                                  META_DRAINING: ",".join(map(str, draining))})
    after = await drop_drained(redis, prefix)
    assert after is not None
    return ResizeReport(before, after, copied)
