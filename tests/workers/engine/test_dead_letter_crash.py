"""The async executor's dead letter and its ack are one step: a crash between them cannot dead-letter twice."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from tests.support import H, load, publish, runs, start_worker, worker_env, write_routing
from workers.ops.deadletter import list_dead

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  dies: {{concurrency: 2, max_attempts: 5, timeout_s: 0.5, backoff_base_s: 0.05, backoff_max_s: 0.1}}
routes:
  test.permanent: {{dies: ["{H}permanent"]}}
"""

# A worker whose dead-letter write is followed at once by SIGKILL: the write has returned,
# nothing after it in that process runs (today's code acked later, in a batch).
VICTIM = """
import os, signal
from bus.settings import Settings
from workers.supervision.runner import serve

def kill_after(real):
    async def wrapped(*args, **kwargs):
        result = await real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapped

try:
    from workers.engine import outcomes
    outcomes.Outcomes.dead_letter = kill_after(outcomes.Outcomes.dead_letter)
except ImportError:  # the layout before the engine package: the XADD, then a batched XACK
    from workers import pool
    pool.dead_letter = kill_after(pool.dead_letter)
serve(Settings.from_env(), "dies", burst=True)
"""


async def test_a_worker_killed_right_after_its_dead_letter_write_leaves_exactly_one_dead_letter(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    await publish(aredis, keys, load(routing), "test.permanent", "evt_once")
    victim = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", VICTIM],
                                     env=worker_env(prefix, routing), capture_output=True, timeout=30, check=False)
    assert victim.returncode == -9, victim.stderr.decode()[-2000:]
    assert len(await list_dead(aredis, keys, "dies")) == 1
    # The peer takes over whatever the victim left pending (past timeout_s + backoff + margin).
    peer = start_worker(prefix, routing, tmp_path / "peer.log", "dies", "--burst")
    try:
        assert peer.wait(timeout=30) == 0, (tmp_path / "peer.log").read_text()
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
    dead = await list_dead(aredis, keys, "dies")
    assert [d.event_id for d in dead] == ["evt_once"], "one dead letter, never a second one"
    assert await runs(aredis, prefix, "permanent") == {"evt_once": 1}
    assert int((await aredis.xpending(keys.stream("dies"), keys.group("dies")))["pending"]) == 0
