"""Dead-letter stream: what an entry carries, listing, and replay with a fresh attempt count."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from tests.conftest import make_settings
from tests.support import FAST_POOL, H, load, publish, runs, write_routing
from workers.ops.deadletter import list_dead, replay_dead
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.poison: {{alpha: ["{H}fail_if_poison", "{H}record"]}}
"""


async def test_dlq_replay_runs_the_failed_handler_again_with_a_fresh_attempt_count(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    settings = make_settings(prefix, routing_file=routing)
    await publish(aredis, keys, load(routing), "test.poison", "evt_p", poison=True)
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    [dead] = await list_dead(aredis, keys, "alpha")
    assert dead.attempts == 3
    assert await runs(aredis, prefix, "fail_if_poison") == {"evt_p": 3}
    assert await runs(aredis, prefix, "record") == {"evt_p": 1}

    added, missing = await replay_dead(aredis, keys, "alpha", [dead.id])
    assert len(added) == 1 and missing == []
    assert await list_dead(aredis, keys, "alpha") == []
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    # Three fresh attempts for the failed handler only; the one that succeeded is not re-run.
    assert await runs(aredis, prefix, "fail_if_poison") == {"evt_p": 6}
    assert await runs(aredis, prefix, "record") == {"evt_p": 1}
    [again] = await list_dead(aredis, keys, "alpha")
    assert again.attempts == 3


async def test_dlq_replay_of_an_unknown_id_reports_it_missing(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    added, missing = await replay_dead(aredis, keys, "alpha", ["1-1"])
    assert (added, missing) == ([], ["1-1"])


async def test_replay_all_moves_every_dead_entry_back(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    settings = make_settings(prefix, routing_file=routing)
    for i in range(3):
        await publish(aredis, keys, load(routing), "test.poison", f"evt_p{i}", poison=True)
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert len(await list_dead(aredis, keys, "alpha")) == 3
    added, _ = await replay_dead(aredis, keys, "alpha")
    assert len(added) == 3
    assert await list_dead(aredis, keys, "alpha") == []
    assert await aredis.xlen(keys.stream("alpha")) == 6
