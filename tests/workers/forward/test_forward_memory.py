"""A real `fanout worker` process against a real destination that answers 200 MiB: its memory stays flat."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from tests.support import load, publish, start_worker, write_routing
from tests.workers.forward.test_forward import DEST_SECRET, MIB, Receiver
from workers.ops.deadletter import list_dead

BIG_MIB = 200
# Python, redis-py, httpx and the routing table are loaded before the baseline is taken; what is
# left is buffers. Before the fix, each answer was read whole: +200 MiB at least.
MAX_GROWTH_BYTES = 50 * MIB


def _proc_status(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


async def _settle(aredis: aioredis.Redis, keys: Keys, receiver: Receiver, proc: subprocess.Popen[bytes],
                  hits: dict[str, int], log: Path) -> None:
    """Wait until the receiver saw `hits` and the pool holds nothing pending."""
    for _ in range(600):
        assert proc.poll() is None, _text(log)
        done = all(receiver.hits.get(path, 0) >= n for path, n in hits.items())
        if done:
            groups = await aredis.xinfo_groups(keys.stream("admin"))
            if groups and int(groups[0]["pending"]) == 0 and int(groups[0].get("lag") or 0) == 0:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not settled: {receiver.hits}\n{_text(log)}")


@pytest.mark.anyio
async def test_a_worker_forwarding_to_a_destination_that_answers_200_mib_keeps_its_memory_and_keeps_reading(
    aredis: aioredis.Redis, prefix: str, keys: Keys, receiver: Receiver, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, """
pools:
  admin: {concurrency: 8, max_attempts: 3, timeout_s: 20, backoff_base_s: 0.05, backoff_max_s: 0.2}
destinations:
  big: {url_env: BIG_URL, secret_env: SHARED_SECRET, timeout_s: 10}
  fast: {url_env: FAST_URL, secret_env: SHARED_SECRET, timeout_s: 10}
routes:
  charge.refunded: {admin: ["forward:big"]}
  refund.created: {admin: ["forward:fast"]}
""")
    table = load(routing)
    log = tmp_path / "worker.log"
    proc = start_worker(prefix, routing, log, "admin", BIG_URL=f"{receiver.base}/big/{BIG_MIB}",
                        FAST_URL=f"{receiver.base}/200", SHARED_SECRET=DEST_SECRET)
    try:
        await publish(aredis, keys, table, "refund.created", "evt_warm")  # imports, clients, first connection
        await _settle(aredis, keys, receiver, proc, {"/200": 1}, log)
        before = _proc_status(proc.pid, "VmRSS")
        for i in range(3):
            await publish(aredis, keys, table, "charge.refunded", f"evt_big_{i}")
            await publish(aredis, keys, table, "refund.created", f"evt_fast_{i}")
        await _settle(aredis, keys, receiver, proc, {f"/big/{BIG_MIB}": 3, "/200": 4}, log)
        peak = _proc_status(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert await list_dead(aredis, keys, "admin") == []
    assert peak - before < MAX_GROWTH_BYTES, f"RSS grew by {(peak - before) / MIB:.0f} MiB"
    # The destination did not get to send its answers: the worker hung up after a few KiB.
    assert receiver.sent[f"/big/{BIG_MIB}"] < 3 * BIG_MIB * MIB // 4
