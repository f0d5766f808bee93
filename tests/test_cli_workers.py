"""The operator commands, run as a user runs them: status, dlq list/replay, replay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from tests.conftest import make_settings
from tests.support import FAST_POOL, H, load, publish, runs, worker_env, write_routing
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.ok: {{alpha: ["{H}record"]}}
  test.poison: {{alpha: ["{H}fail_if_poison"]}}
"""


def fanout(prefix: str, routing: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fanout.cli", *args], env=worker_env(prefix, routing),
                          capture_output=True, text=True, timeout=30)


async def test_status_dlq_and_replay_commands(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    settings = make_settings(prefix, routing_file=routing)
    table = load(routing)
    await publish(aredis, keys, table, "test.ok", "evt_ok")
    await publish(aredis, keys, table, "test.poison", "evt_bad", poison=True)
    await run_pool(settings, "alpha", redis=aredis, burst=True)

    status = orjson.loads(fanout(prefix, routing, "status", "--json").stdout)
    assert set(status) == {"pools", "unrouted", "duplicates", "breakers"}
    assert set(status["pools"]["alpha"]) == {"stream_length", "pending", "lag", "consumers", "group_consumers",
                                             "processed", "failed", "retried", "paused", "dead", "stale", "oldest_pending_s",
                                             "partitions"}
    assert (status["pools"]["alpha"]["processed"], status["pools"]["alpha"]["dead"]) == (1, 1)
    assert "alpha" in fanout(prefix, routing, "status").stdout

    dead = orjson.loads(fanout(prefix, routing, "dlq", "list", "alpha", "--json").stdout)
    assert [(d["event_id"], d["attempts"], d["reason"]) for d in dead] == [("evt_bad", 3, "max attempts reached")]
    assert "evt_bad" in fanout(prefix, routing, "dlq", "list", "alpha").stdout
    assert fanout(prefix, routing, "dlq", "replay", "alpha").returncode == 2  # neither --all nor ids
    replayed = fanout(prefix, routing, "dlq", "replay", "alpha", dead[0]["id"])
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "alpha: 1 entry put back in the stream"
    assert orjson.loads(fanout(prefix, routing, "dlq", "list", "alpha", "--json").stdout) == []

    again = fanout(prefix, routing, "replay", "alpha", "--event", "evt_ok")
    assert again.returncode == 0 and again.stdout.strip() == "alpha: 1 entry published again"
    since = fanout(prefix, routing, "replay", "alpha", "--since", "2000-01-01T00:00:00Z")
    # evt_ok and evt_bad, once each: the dead-letter replay of evt_bad and the copy of evt_ok
    # just added are copies, not events received in the window.
    assert "2 entries published again (2 copies from earlier replays skipped)" in since.stdout
    assert fanout(prefix, routing, "replay", "alpha", "--since", "yesterday").returncode == 2
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert (await runs(aredis, prefix, "record"))["evt_ok"] == 3  # once, then --event, then --since


async def test_dlq_list_shows_error_handler_attempts_and_the_traceback(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    settings = make_settings(prefix, routing_file=routing)
    await publish(aredis, keys, load(routing), "test.poison", "evt_tb", poison=True)
    await run_pool(settings, "alpha", redis=aredis, burst=True)

    [dead] = orjson.loads(fanout(prefix, routing, "dlq", "list", "alpha", "--json").stdout)
    assert (dead["error"], dead["handlers"], dead["attempts"]) == (
        "RuntimeError: poison event", [H + "fail_if_poison"], 3)
    assert dead["traceback"].startswith("Traceback (most recent call last):")
    assert dead["traceback"].rstrip().endswith("RuntimeError: poison event")
    # Which routing table chose the handlers: the version the entry was published under.
    assert dead["routing_version"] == load(routing).version != ""

    text = fanout(prefix, routing, "dlq", "list", "alpha").stdout
    first, *rest = text.rstrip("\n").split("\n")
    assert "evt_tb" in first and "attempts=3" in first and f"handlers={H}fail_if_poison" in first
    assert "RuntimeError: poison event" in first
    assert f"routing={load(routing).version}" in first
    assert rest, text
    assert all(line.startswith("    ") for line in rest), text
    assert rest[-1].strip() == "RuntimeError: poison event"
    assert any('raise RuntimeError("poison event")' in line for line in rest), text
