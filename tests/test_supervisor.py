"""`fanout worker POOL --processes N` shares a pool's work between its children."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from tests.handlers_for_tests import pids_key
from tests.support import H, load, publish_many, runs, start_worker, write_routing

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  shared: {{concurrency: 2, max_attempts: 3, timeout_s: 2, backoff_base_s: 0.05, backoff_max_s: 0.2}}
routes:
  test.work: {{shared: ["{H}record_pid"]}}
"""


async def test_processes_2_shares_the_work_and_burst_exits_0_when_drained(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    ids = [f"evt_{i:04d}" for i in range(300)]
    await publish_many(aredis, keys, load(routing), "test.work", ids)
    parent = start_worker(prefix, routing, tmp_path / "pool.log", "shared", "--processes", "2", "--burst",
                          TEST_HANDLER_SLEEP_S="0.02")
    try:
        code = parent.wait(timeout=50)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert code == 0, (tmp_path / "pool.log").read_text()
    counts = await runs(aredis, prefix, "record_pid")
    assert set(counts) == set(ids)
    per_pid = {k.decode(): int(v) for k, v in (await aredis.hgetall(pids_key(prefix))).items()}
    assert len(per_pid) == 2, per_pid
    assert all(n > 0 for n in per_pid.values())
    assert int((await aredis.xpending(keys.stream("shared"), keys.group("shared")))["pending"]) == 0
