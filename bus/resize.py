"""`fanout partitions resize N`: change the partition count without losing an event or a dedupe.

1. Every dedupe record is copied to its partition in the new layout (SET NX with
   the same remaining TTL), so a redelivery of an event seen before the resize is
   still a duplicate. A record holds its event's object id (ingress/publish.py);
   a record written before that (value "1") is copied into every new partition.
2. The meta records the new count, and lists the old one as draining: a consumer
   reads the streams of every draining layout too (bus.partitions.streams_to_read)
   until they are empty and fully acknowledged.
3. A draining layout is dropped from the meta (by the next resize, or by
   `drop_drained`) once none of its streams that the current layout lacks has an
   entry left to read, pending, or dead-lettered.

Copying first and recording last makes an interrupted resize safe to run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bus import defaults
from bus.keys import Keys
from bus.partitions import META_DRAINING, META_PARTITIONS, Layout, partition_of, read_layout

# The value of a dedupe record written before records held their object id.
LEGACY_SEEN_VALUE = b"1"


@dataclass(frozen=True)
class ResizeReport:
    before: Layout
    after: Layout
    copied: int  # dedupe records written into the new layout


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def seen_pattern(prefix: str) -> str:
    """Every dedupe record of the prefix, in every partition of every layout."""
    return "{" + prefix + "[}:]*:seen:*"


async def copy_seen_records(redis: Any, prefix: str, partitions: int, batch: int = defaults.RESIZE_BATCH) -> int:
    """Copy every dedupe record to its partition under `partitions`; returns how many were written."""
    target = Keys(prefix, partitions)
    copied = 0
    names: list[bytes] = []

    async def flush() -> int:
        read = redis.pipeline(transaction=False)
        for name in names:
            read.get(name)
            read.pttl(name)
        replies = await read.execute()
        write = redis.pipeline(transaction=False)
        writes = 0
        for i, name in enumerate(names):
            value, ttl_ms = replies[2 * i], replies[2 * i + 1]
            if value is None or ttl_ms == -2:  # expired meanwhile
                continue
            event_id = _text(name).rsplit(":seen:", 1)[1]
            if value == LEGACY_SEEN_VALUE:
                destinations = {target.seen(event_id, p) for p in range(partitions)}
            else:
                destinations = {target.seen(event_id, partition_of(_text(value) or event_id, partitions))}
            for destination in destinations - {_text(name)}:
                if ttl_ms > 0:
                    write.set(destination, value, px=ttl_ms, nx=True)
                else:
                    write.set(destination, value, nx=True)
                writes += 1
        if writes:
            await write.execute()
        names.clear()
        return writes

    async for name in redis.scan_iter(match=seen_pattern(prefix), count=batch):
        names.append(name)
        if len(names) >= batch:
            copied += await flush()
    if names:
        copied += await flush()
    return copied


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
    draining = tuple(n for n in (*before.draining, before.partitions) if n != partitions)
    draining = tuple(dict.fromkeys(draining))
    await redis.hset(Keys(prefix).meta, mapping={META_PARTITIONS: str(partitions),
                                                  META_DRAINING: ",".join(map(str, draining))})
    after = await drop_drained(redis, prefix)
    assert after is not None
    return ResizeReport(before, after, copied)
