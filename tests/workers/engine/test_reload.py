"""Moving a handler between pools in routing.yaml while everything runs: none lost, none doubled."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from bus.keys import Keys
from bus.reload import RoutingHolder
from tests.conftest import make_settings
from tests.handlers_for_tests import where_key
from tests.support import FAST_POOL, H, publish_many, runs, wait_for, write_routing
from workers.engine.consumer import Consumer
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.anyio

BEFORE = f"""
pools:
  alpha: {{{FAST_POOL}}}
  beta: {{{FAST_POOL}}}
routes:
  test.move: {{alpha: ["{H}record_where"]}}
  test.other: {{beta: ["{H}record"]}}
"""
AFTER = BEFORE.replace('test.move: {alpha:', 'test.move: {beta:')


async def test_moving_a_handler_to_another_pool_changes_where_new_events_run(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, BEFORE)
    settings = make_settings(prefix, routing_file=routing)
    ingress_routes = RoutingHolder.load(routing)  # what the ingress holds
    consumers = [Consumer(settings, name, redis=aredis, holder=RoutingHolder.load(routing))
                 for name in ("alpha", "beta")]
    pools = [asyncio.create_task(consumer.run()) for consumer in consumers]
    old = [f"evt_old{i}" for i in range(50)]
    new = [f"evt_new{i}" for i in range(50)]
    try:
        await publish_many(aredis, keys, ingress_routes.table, "test.move", old)
        routing.write_text(AFTER)
        os.utime(routing, ns=(1, 1))  # a different stamp even within the same mtime tick
        assert ingress_routes.check()
        await publish_many(aredis, keys, ingress_routes.table, "test.move", new)

        async def all_ran() -> bool:
            return int(await aredis.hlen(where_key(prefix))) == len(old) + len(new)

        await wait_for(all_ran)
    finally:
        for consumer in consumers:
            consumer.request_stop()
        await asyncio.gather(*pools)
    # Burst both pools to be sure nothing is still on its way.
    for name in ("alpha", "beta"):
        await run_pool(settings, name, redis=aredis, burst=True)
    where = {k.decode(): v.decode() for k, v in (await aredis.hgetall(where_key(prefix))).items()}
    assert where == {**dict.fromkeys(old, "alpha"), **dict.fromkeys(new, "beta")}
    assert await runs(aredis, prefix, "record_where") == dict.fromkeys(old + new, 1)


async def test_watch_reads_and_parses_the_file_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from bus import reload

    routing = write_routing(tmp_path, BEFORE)
    holder = RoutingHolder.load(routing)
    threads: list[int] = []
    real = reload.load_routing

    def recording(path: Path, max_bytes: int) -> object:
        threads.append(threading.get_ident())
        return real(path, max_bytes)

    monkeypatch.setattr(reload, "load_routing", recording)
    watcher = asyncio.create_task(holder.watch(poll_s=0.01))
    try:
        version = holder.table.version
        routing.write_text(AFTER)
        os.utime(routing, ns=(1, 1))

        async def reloaded() -> bool:
            return holder.table.version != version

        await wait_for(reloaded, poll_s=0.01)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert threads
    assert threading.get_ident() not in threads
    # check() stays synchronous for the callers that use it.
    routing.write_text(BEFORE)
    os.utime(routing, ns=(2, 2))
    assert holder.check() is True


# Edits that once ended the watcher for good: each raised something other than ConfigError.
BAD_EDITS = {
    "python_object_tag": (BEFORE.replace("test.other:", "test.other: !!python/object:os.getcwd").encode(), 7),
    "int_tag_on_a_word": (BEFORE.replace(f"alpha: {{{FAST_POOL}}}", "alpha: {concurrency: !!int eight}").encode(), 3),
    "one_non_utf8_byte": (BEFORE.encode().replace(b"test.other", b"test.\xffother"), 7),
}


@pytest.mark.parametrize("edit", BAD_EDITS)
async def test_the_watcher_survives_a_bad_edit_reports_its_line_and_keeps_polling(
    tmp_path: Path, edit: str
) -> None:
    bad, line = BAD_EDITS[edit]
    routing = write_routing(tmp_path, BEFORE)
    holder = RoutingHolder.load(routing)
    version = holder.table.version
    watcher = asyncio.create_task(holder.watch(poll_s=0.01))
    try:
        with capture_logs() as logs:
            routing.write_bytes(bad)
            os.utime(routing, ns=(1, 1))

            async def refused() -> bool:
                return holder.last_error is not None

            await wait_for(refused, poll_s=0.01)
            assert not watcher.done()
            assert holder.table.version == version  # the table in use is kept
            routing.write_text(AFTER)  # the next good edit is still taken up
            os.utime(routing, ns=(2, 2))

            async def reloaded() -> bool:
                return holder.table.version != version

            await wait_for(reloaded, poll_s=0.01)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert holder.last_error is None
    [rejected] = [entry for entry in logs if entry["event"] == "routing.reload_rejected"]
    assert rejected["error"].startswith(f"{routing}:{line}: ")


async def test_the_watcher_survives_an_unexpected_exception_and_says_what_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bus import reload

    routing = write_routing(tmp_path, BEFORE)
    holder = RoutingHolder.load(routing)

    def broken(path: Path, max_bytes: int) -> object:
        raise RuntimeError("a bug in the loader")

    monkeypatch.setattr(reload, "load_routing", broken)
    watcher = asyncio.create_task(holder.watch(poll_s=0.01))
    try:
        with capture_logs() as logs:
            routing.write_text(AFTER)
            os.utime(routing, ns=(1, 1))

            async def refused() -> bool:
                return holder.last_error is not None

            await wait_for(refused, poll_s=0.01)
            checked = holder.last_check_at
            await asyncio.sleep(0.1)
            assert not watcher.done()
            assert holder.last_check_at is not None and checked is not None
            assert holder.last_check_at > checked  # still polling
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert holder.last_error == f"{routing}: cannot load routing file: RuntimeError: a bug in the loader"
    [rejected] = [entry for entry in logs if entry["event"] == "routing.reload_rejected"]
    assert rejected["exc_info"] is True
