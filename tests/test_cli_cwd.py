"""`fanout worker` (the console script, as a user runs it) imports handler modules from the current directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from tests.support import load, publish, worker_env, write_routing

pytestmark = pytest.mark.anyio

FANOUT = Path(sys.executable).parent / "fanout"


def run_console_script(args: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FANOUT), *args], capture_output=True, text=True, timeout=30,
                          **options)  # type: ignore[call-overload]


async def test_the_console_script_worker_imports_a_handler_module_from_the_current_directory(
        aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path) -> None:
    (tmp_path / "billing_cwd.py").write_text(
        "import redis\n"
        "def record(event, ctx):\n"
        "    key = '{' + ctx.settings.key_prefix + '}:test:billing'\n"
        "    redis.Redis.from_url(ctx.settings.redis_url).sadd(key, event.id)\n")
    routing = write_routing(tmp_path, "pools: {billing: {max_attempts: 1}}\n"
                                      "routes:\n  invoice.paid: {billing: ['billing_cwd:record']}\n")
    await publish(aredis, keys, load(routing), "invoice.paid", "evt_cwd_1")
    env = worker_env(prefix, routing)  # PYTHONPATH is the repository, not tmp_path
    done = run_console_script(["worker", "billing", "--burst"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert await aredis.smembers("{" + prefix + "}:test:billing") == {b"evt_cwd_1"}
