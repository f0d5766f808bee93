"""Crash recovery: a SIGKILLed consumer's pending entries are claimed by its peer."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from tests.support import H, load, publish_many, runs, start_worker, wait_for, write_routing
from workers.ops.deadletter import list_dead

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  crash: {{concurrency: 4, max_attempts: 5, timeout_s: 1, backoff_base_s: 0.05, backoff_max_s: 0.2}}
routes:
  test.bulk: {{crash: ["{H}slow", "{H}record"]}}
"""
EVENTS = 2000


async def test_sigkilled_consumer_loses_nothing_its_peer_claims_its_pending_entries(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    ids = [f"evt_{i:05d}" for i in range(EVENTS)]
    await publish_many(aredis, keys, load(routing), "test.bulk", ids)
    env = {"TEST_HANDLER_SLEEP_S": "0.005"}
    victim = start_worker(prefix, routing, tmp_path / "victim.log", "crash", **env)
    peer = start_worker(prefix, routing, tmp_path / "peer.log", "crash", **env)
    stream, group = keys.stream("crash"), keys.group("crash")
    try:
        async def some_done() -> bool:
            return int(await aredis.hlen(f"{{{prefix}}}:test:runs:{H}record")) >= EVENTS // 5

        await wait_for(some_done)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL
        consumers = await aredis.xinfo_consumers(stream, group)
        held = {c["name"].decode(): int(c["pending"]) for c in consumers}
        victim_held = sum(n for name, n in held.items() if f"-{victim.pid}-" in name)
        assert victim_held > 0, f"the victim held nothing when killed: {held}"

        async def all_done() -> bool:
            summary = await aredis.xpending(stream, group)
            done = await aredis.hlen(f"{{{prefix}}}:test:runs:{H}record")
            return int(done) == EVENTS and int(summary["pending"]) == 0

        await wait_for(all_done, poll_s=0.2)
        peer.send_signal(signal.SIGTERM)
        assert peer.wait() == 0
    finally:
        for proc in (victim, peer):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for handler in ("slow", "record"):
        counts = await runs(aredis, prefix, handler)
        assert set(counts) == set(ids)
        assert min(counts.values()) >= 1
    assert int((await aredis.xpending(stream, group))["pending"]) == 0
    assert await list_dead(aredis, keys, "crash") == []


async def test_own_failed_entry_is_due_after_its_backoff_but_a_finished_unacked_one_never(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    from bus.reload import RoutingHolder
    from tests.conftest import make_settings
    from workers.engine.consumer import Consumer
    from workers.engine.reclaim import due_entries

    routing = write_routing(tmp_path, ROUTING)
    pool = Consumer(make_settings(prefix, routing_file=routing), "crash", redis=aredis,
                holder=RoutingHolder.load(routing), consumer="me")
    stream = keys.stream("crash")
    await aredis.xgroup_create(stream, "crash", id="0", mkstream=True)
    for ms in (1000, 2000, 3000):
        await aredis.xadd(stream, {"id": f"evt_{ms}", "handlers": H + "record", "body": "{}"}, id=f"{ms}-0")
    await aredis.xreadgroup("crash", "me", {stream: ">"}, count=2)      # 1000, 2000: mine
    await aredis.xreadgroup("crash", "peer", {stream: ">"}, count=1)    # 3000: a live peer's
    # Idle for one second: past my backoff (at most 50 ms) but not past a peer's takeover time.
    await aredis.xclaim(stream, "crash", "me", min_idle_time=0, message_ids=["1000-0", "2000-0"],
                        idle=1000, justid=True)
    await aredis.xclaim(stream, "crash", "peer", min_idle_time=0, message_ids=["3000-0"],
                        idle=1000, justid=True)
    pool.outcomes.batch.unacked.add((stream, "2000-0"))  # finished; its ack is on its way
    due = await due_entries(pool, stream, limit=10)
    assert [entry_id for entry_id, _, _ in due] == ["1000-0"]
