"""Ordered pools rebalance their partitions among consumer processes that join and leave, with no
coordinator, and every object's order holds throughout."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from tests.handlers_for_tests import ordered_key
from tests.support import load, start_worker, wait_for, write_routing
from tests.workers.engine.test_ordering import (
    ROUTING,
    assert_no_overlap,
    done_order,
    publish_interleaved,
    times,
    wait_exit,
)
from workers.engine.lease import lease_key

pytestmark = pytest.mark.anyio

PARTITIONS = 8


@pytest.mark.timeout(90)
async def test_a_late_joiner_and_a_leaver_leave_each_partition_to_exactly_one_live_consumer_in_order(
    aredis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    keys = Keys(prefix, PARTITIONS)
    routing = write_routing(tmp_path, ROUTING.replace("ordered_run", "ordered_slow"))
    objects = [f"obj_{i:02d}" for i in range(24)]
    per_object = 100  # each object's chain runs for several seconds: the changes happen mid-way
    await publish_interleaved(aredis, keys, load(routing), objects, per_object)
    env = {"FANOUT_PARTITIONS": str(PARTITIONS)}
    streams = list(keys.streams("ordered"))

    def worker(i: int) -> subprocess.Popen[bytes]:
        return start_worker(prefix, routing, tmp_path / f"w{i}.log", "ordered", **env)

    async def owners() -> list[str | None]:
        tokens = [await aredis.get(lease_key(s, "ordered")) for s in streams]
        return [t.decode().rsplit(":", 1)[0] if t else None for t in tokens]

    def spread_over(procs: list[subprocess.Popen[bytes]]) -> Callable[[], Awaitable[bool]]:
        """Every partition owned by one of `procs` (by pid), and each holds its fair share."""
        async def check() -> bool:
            held = await owners()
            counts = [sum(1 for o in held if o and f"-{p.pid}-" in o) for p in procs]
            share = -(-PARTITIONS // len(procs))
            return sum(counts) == PARTITIONS and all(PARTITIONS // len(procs) <= n <= share for n in counts)
        return check

    first, leaver = worker(0), worker(1)
    procs = [first, leaver]
    try:
        await asyncio.wait_for(wait_for(spread_over([first, leaver])), 20)
        joiner = worker(2)
        procs.append(joiner)
        await asyncio.wait_for(wait_for(spread_over([first, leaver, joiner])), 20)
        assert not all([len(await done_order(aredis, prefix, o)) == per_object for o in objects]), "still running"
        leaver.send_signal(signal.SIGTERM)
        await asyncio.to_thread(wait_exit, [leaver], 20)
        assert leaver.returncode == 0
        await asyncio.wait_for(wait_for(spread_over([first, joiner])), 20)

        async def all_done() -> bool:
            return all([len(await done_order(aredis, prefix, o)) >= per_object for o in objects])

        await asyncio.wait_for(wait_for(all_done), 60)
        await asyncio.wait_for(wait_for(spread_over([first, joiner])), 5)  # still, once idle
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(wait_exit, procs, 20)
    for obj in objects:
        assert await done_order(aredis, prefix, obj) == list(range(per_object)), obj
    assert await aredis.smembers(ordered_key(prefix, "overlaps")) == set()
    assert_no_overlap(await times(aredis, prefix))
    assert sum([int((await aredis.xpending(s, "ordered"))["pending"]) for s in streams]) == 0
