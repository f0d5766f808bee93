"""A worker process: SIGTERM drains in-flight work, acks it and exits 0; bad handlers fail at start."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from tests.support import (
    H,
    load,
    publish_many,
    runs,
    start_worker,
    wait_for,
    worker_env,
    write_routing,
)

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  drain: {{concurrency: 4, max_attempts: 3, timeout_s: 5, backoff_base_s: 0.05, backoff_max_s: 0.2}}
routes:
  test.work: {{drain: ["{H}slow"]}}
"""


async def test_sigterm_stops_reading_finishes_in_flight_work_acks_and_exits_0(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    ids = [f"evt_{i:03d}" for i in range(40)]
    await publish_many(aredis, keys, load(routing), "test.work", ids)
    worker = start_worker(prefix, routing, tmp_path / "w.log", "drain", TEST_HANDLER_SLEEP_S="0.4")
    stream, group = keys.stream("drain"), keys.group("drain")
    try:
        async def busy() -> bool:
            return int((await aredis.xpending(stream, group))["pending"]) > 0

        await wait_for(busy)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert code == 0, (tmp_path / "w.log").read_text()
    done = await runs(aredis, prefix, "slow")
    processed = int(await aredis.hget(keys.pool_stats("drain"), "processed") or 0)
    # Every entry it had taken was finished and acked; it took no more after SIGTERM.
    assert int((await aredis.xpending(stream, group))["pending"]) == 0
    assert 0 < len(done) == processed < len(ids)
    assert all(n == 1 for n in done.values())
    group_info = (await aredis.xinfo_groups(stream))[0]
    assert group_info["lag"] == len(ids) - processed


def test_worker_with_an_unimportable_handler_exits_2_naming_what_is_missing(
    prefix: str, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, """
pools:
  broken: {concurrency: 1}
routes:
  test.work: {broken: ["tests.handlers_for_tests:no_such_function"]}
""")
    result = subprocess.run([sys.executable, "-m", "fanout.cli", "worker", "broken", "--burst"],
                            env=worker_env(prefix, routing), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "module 'tests.handlers_for_tests' has no attribute 'no_such_function'" in result.stderr
