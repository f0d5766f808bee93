"""Follow the partition layout: a cheap check every LAYOUT_CHECK_S, and the trim pass.

After `fanout partitions resize`, the old layout's streams are read until they are
drained, then the layout is forgotten (bus/resize.py drop_drained) and its streams
are no longer read. A consumer started before the resize also starts reading the
new layout's streams here, so no partition is left without a reader until it is
restarted with the new FANOUT_PARTITIONS. An ordered pool follows too, behind the resize
barrier (workers/engine/barrier.py).

check_layout (every LAYOUT_CHECK_S) notices a resize within seconds: it reads the layout
alone, and only a change of streams costs more. Forgetting a drained layout needs scans of
its keys, so that stays in the trim pass (follow_layout, every TRIM_INTERVAL_S).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bus.partitions import claim_layout, read_layout, streams_to_read
from bus.resize import drop_drained
from bus.settings import Settings
from workers.stream_ops import ensure_groups

START_RETRY_S = 0.5


class LayoutFollower(Protocol):
    settings: Settings
    redis: aioredis.Redis
    name: str
    group: str
    streams: list[str]
    log: Any

    def use_streams(self, streams: list[str]) -> None: ...


async def claim_streams(owner: LayoutFollower, stopping: Callable[[], bool]) -> None:
    """At start: claim FANOUT_PARTITIONS (PartitionMismatch when another count is recorded), read its streams.

    A Redis that is not reachable yet (a cluster node failing over while the worker starts) is
    waited for, as the read loop waits for it later, rather than ending the process.
    """
    prefix = owner.settings.key_prefix
    while True:
        try:
            layout = await claim_layout(owner.redis, prefix, owner.settings.partitions)
            owner.use_streams(streams_to_read(layout, prefix, owner.name))
            await ensure_groups(owner.redis, owner.streams, owner.group)
            return
        except RedisError as err:
            if stopping():
                raise
            owner.log.error("pool.start_failed", error=f"{type(err).__name__}: {err}")
            await asyncio.sleep(START_RETRY_S)


async def check_layout(owner: LayoutFollower) -> None:
    """Follow the layout if the one recorded implies other streams than those read (one round trip if not)."""
    prefix = owner.settings.key_prefix
    layout = await read_layout(owner.redis, prefix)
    if layout is not None and streams_to_read(layout, prefix, owner.name) != owner.streams:
        await follow_layout(owner)


async def follow_layout(owner: LayoutFollower) -> None:
    """Drop drained layouts; read the streams of the layout now recorded, if they changed."""
    prefix = owner.settings.key_prefix
    layout = await drop_drained(owner.redis, prefix)
    if layout is None:
        return
    streams = streams_to_read(layout, prefix, owner.name)
    if streams == owner.streams:
        return
    await ensure_groups(owner.redis, streams, owner.group)
    owner.log.info("pool.streams_changed", partitions=layout.partitions, draining=list(layout.draining),
                   streams=len(streams))
    owner.use_streams(streams)
