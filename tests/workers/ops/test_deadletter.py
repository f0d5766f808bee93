"""Dead-letter stream: what an entry carries, listing, and replay with a fresh attempt count."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from tests.conftest import make_settings
from tests.support import FAST_POOL, H, load, publish, runs, write_routing
from tests.workers.forward.test_forward import DEST_SECRET, Receiver
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


async def test_a_dead_letter_says_how_each_handler_failed_and_its_reason_agrees_with_its_error(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path, receiver: Receiver
) -> None:
    import socket

    from tests.test_cli_workers import fanout
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    routing = write_routing(tmp_path, f"""
pools:
  admin: {{{FAST_POOL}}}
destinations:
  a: {{url_env: A_URL, secret_env: SHARED_SECRET, timeout_s: 1}}
  b: {{url_env: B_URL, secret_env: SHARED_SECRET, timeout_s: 1}}
routes:
  charge.refunded: {{admin: ["forward:a", "forward:b"]}}
""")
    env = {"A_URL": f"http://127.0.0.1:{closed_port}/", "B_URL": f"{receiver.base}/400",
           "SHARED_SECRET": DEST_SECRET}
    try:
        await publish(aredis, keys, load(routing), "charge.refunded", "evt_mixed")
        await run_pool(make_settings(prefix, routing_file=routing, **env), "admin", redis=aredis, burst=True)
    finally:
        receiver.shutdown()
        receiver.server_close()
    [dead] = await list_dead(aredis, keys, "admin")
    # Dead-lettered at once for b's 400; a's connection error is said as what it was.
    assert (dead.attempts, dead.reason) == (1, "permanent failure (forward:b)")
    assert dead.error == "PermanentFailure: destination 'b' answered 400"
    assert [(f.handler, f.reason, f.error) for f in dead.failures] == [
        ("forward:a", "retry requested (not retried: the entry was dead-lettered for another handler)",
         "RetryLater: destination 'a': ConnectError"),
        ("forward:b", "permanent failure", "PermanentFailure: destination 'b' answered 400"),
    ]
    listed = fanout(prefix, routing, "dlq", "list", "admin").stdout
    first, *rest = listed.splitlines()
    assert "permanent failure (forward:b): PermanentFailure: destination 'b' answered 400" in first
    assert rest[:2] == [
        "  - forward:a: retry requested (not retried: the entry was dead-lettered for another handler): "
        "RetryLater: destination 'a': ConnectError",
        "  - forward:b: permanent failure: PermanentFailure: destination 'b' answered 400",
    ]
