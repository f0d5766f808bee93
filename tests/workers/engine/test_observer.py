"""The metrics hook: one handler_finished per handler call with its outcome; in-flight counts; read batches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from tests.conftest import make_settings
from tests.support import FAST_POOL, H, load, publish, write_routing
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.ok: {{alpha: ["{H}record", "{H}record_other"]}}
  test.retry: {{alpha: ["{H}fail_twice"]}}
  test.defer: {{alpha: ["{H}defer_once"]}}
  test.poison: {{alpha: ["{H}always_fail"]}}
  test.permanent: {{alpha: ["{H}permanent"]}}
"""


class Recorder:
    def __init__(self) -> None:
        self.finished: list[tuple[str, str, str, float]] = []
        self.in_flight: list[int] = []
        self.batches: list[int] = []

    def handler_finished(self, pool: str, handler: str, outcome: str, duration_s: float) -> None:
        self.finished.append((pool, handler.removeprefix(H), outcome, duration_s))

    def entries_in_flight(self, pool: str, count: int) -> None:
        self.in_flight.append(count)

    def read_batch(self, pool: str, size: int) -> None:
        self.batches.append(size)


async def test_the_observer_hears_each_handler_call_with_its_outcome(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    table = load(routing)
    for event_type, event_id in [("test.ok", "evt_ok"), ("test.retry", "evt_retry"), ("test.defer", "evt_defer"),
                                 ("test.poison", "evt_poison"), ("test.permanent", "evt_perm")]:
        await publish(aredis, keys, table, event_type, event_id)
    recorder = Recorder()
    await run_pool(make_settings(prefix, routing_file=routing), "alpha", redis=aredis, burst=True,
                   observer=recorder)
    outcomes = Counter((handler, outcome) for _, handler, outcome, _ in recorder.finished)
    assert outcomes == Counter({
        ("record", "ok"): 1, ("record_other", "ok"): 1,
        ("fail_twice", "failed"): 2, ("fail_twice", "ok"): 1,
        ("defer_once", "retry"): 1, ("defer_once", "ok"): 1,
        # max_attempts is 3: two retried failures, then the one that dead-letters.
        ("always_fail", "failed"): 2, ("always_fail", "dead"): 1,
        ("permanent", "dead"): 1,
    })
    assert {pool for pool, _, _, _ in recorder.finished} == {"alpha"}
    assert all(duration_s >= 0 for _, _, _, duration_s in recorder.finished)
    assert sum(recorder.batches) == 5, "every entry read once; retries are claimed, not read"
    assert max(recorder.in_flight) >= 1 and recorder.in_flight[-1] == 0


async def test_a_paused_run_is_reported_as_a_retry(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    from tests.workers.engine.test_paused import HERE, PAUSES, POOL

    routing = write_routing(tmp_path, f"""
pools:
  p: {{{POOL}}}
routes:
  charge.refunded: {{p: ["{HERE}paused_then_ok"]}}
""")
    await publish(aredis, keys, load(routing), "charge.refunded", "evt_paused")
    recorder = Recorder()
    await run_pool(make_settings(prefix, routing_file=routing), "p", redis=aredis, burst=True, observer=recorder)
    outcomes = Counter(outcome for _, _, outcome, _ in recorder.finished)
    assert outcomes == Counter({"retry": PAUSES, "ok": 1})
