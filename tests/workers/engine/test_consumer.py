"""The consumer loop against the real Redis: acks, retries, the ledger, dead letters, counters."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.envelope import entry_body
from bus.keys import Keys
from tests.conftest import make_settings
from tests.handlers_for_tests import order_key, poison_seen_key
from tests.support import FAST_POOL, H, load, publish, publish_many, runs, write_routing
from workers.ops.deadletter import list_dead
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  alpha: {{{FAST_POOL}}}
  solo: {{{FAST_POOL.replace("concurrency: 8", "concurrency: 1")}}}
  pair: {{{FAST_POOL.replace("concurrency: 8", "concurrency: 2")}}}
routes:
  test.retry: {{alpha: ["{H}fail_twice", "{H}record"]}}
  test.poison: {{solo: ["{H}fail_if_poison"]}}
  test.permanent: {{alpha: ["{H}permanent", "{H}record"]}}
  test.unknown: {{alpha: ["{H}record", "{H}record_other"]}}
  test.sync: {{alpha: ["{H}sync_record"]}}
  test.slow: {{alpha: ["{H}too_slow"]}}
  test.defer: {{alpha: ["{H}defer_once"]}}
  test.many: {{alpha: ["{H}record"]}}
  test.busy: {{pair: ["{H}busy_fail_twice"]}}
"""


@pytest.fixture
def routing(tmp_path: Path) -> Path:
    return write_routing(tmp_path, ROUTING)


async def pending(redis: aioredis.Redis, keys: Keys, pool: str) -> int:
    summary = await redis.xpending(keys.stream(pool), keys.group(pool))
    return int(summary["pending"])


async def stats(redis: aioredis.Redis, keys: Keys, pool: str) -> dict[str, int]:
    raw = await redis.hgetall(keys.pool_stats(pool))
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_handler_failing_twice_runs_three_times_and_its_sibling_once(
    aredis: aioredis.Redis, prefix: str, keys: Keys, routing: Path
) -> None:
    settings = make_settings(prefix, routing_file=routing)
    await publish(aredis, keys, load(routing), "test.retry", "evt_retry1")
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert await runs(aredis, prefix, "fail_twice") == {"evt_retry1": 3}
    assert await runs(aredis, prefix, "record") == {"evt_retry1": 1}
    assert await pending(aredis, keys, "alpha") == 0
    assert await list_dead(aredis, keys, "alpha") == []
    counters = await stats(aredis, keys, "alpha")
    assert counters == {"processed": 1, "failed": 2, "retried": 2}
    # The ledger is removed once the entry is done.
    assert await aredis.exists(keys.ledger("alpha", "evt_retry1")) == 0


async def test_concurrency_holds_while_the_reader_and_the_reclaimer_both_start_entries(
    aredis: aioredis.Redis, prefix: str, keys: Keys, routing: Path
) -> None:
    import asyncio

    from bus.reload import RoutingHolder
    from tests.handlers_for_tests import PEAK_INFLIGHT
    from tests.support import wait_for
    from workers.engine.consumer import Consumer

    settings = make_settings(prefix, routing_file=routing)
    table = load(routing)
    pool = Consumer(settings, "pair", redis=aredis, holder=RoutingHolder.load(routing), block_ms=1000)
    task = asyncio.create_task(pool.run())

    async def started(event_id: str, times: int) -> bool:
        return (await runs(aredis, prefix, "busy_fail_twice")).get(event_id, 0) >= times

    try:
        # Two entries fail; their retries are due while the reader waits for new entries.
        await publish_many(aredis, keys, table, "test.busy", ["evt_a", "evt_b"])
        await wait_for(lambda: started("evt_b", 2))
        # New entries arrive while both slots run the retries.
        await publish_many(aredis, keys, table, "test.busy", ["evt_c", "evt_d"])
        for event_id in ("evt_a", "evt_b", "evt_c", "evt_d"):
            await wait_for(lambda e=event_id: started(e, 3))
    finally:
        pool.request_stop()
        await task
    assert PEAK_INFLIGHT[prefix] <= 2


async def test_an_unexpected_error_in_the_reclaimer_is_logged_and_retries_go_on(
    aredis: aioredis.Redis, prefix: str, keys: Keys, routing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from structlog.testing import capture_logs

    from workers.engine import reclaim

    real = reclaim.reclaim_pass
    calls = 0

    async def broken_once(*args: object) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("injected failure")
        return await real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(reclaim, "reclaim_pass", broken_once)
    settings = make_settings(prefix, routing_file=routing)
    await publish(aredis, keys, load(routing), "test.retry", "evt_bg")
    with capture_logs() as logs:
        # Before the fix the reclaimer died silently here, so the retries never ran and burst hung.
        await asyncio.wait_for(run_pool(settings, "alpha", redis=aredis, burst=True), timeout=15)
    assert await runs(aredis, prefix, "fail_twice") == {"evt_bg": 3}
    [failed] = [e for e in logs if e["event"] == "pool.background_failed"]
    assert failed["action"] == "reclaim"
    assert failed["log_level"] == "error"
    assert failed["exc_info"]


async def test_a_reload_resolves_new_handler_names_off_the_event_loop(
    aredis: aioredis.Redis, prefix: str, keys: Keys, routing: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import os
    import threading

    from bus import reload
    from bus.reload import RoutingHolder
    from tests.support import wait_for
    from workers import handlers as execute
    from workers.engine.consumer import Consumer

    loop_thread = threading.get_ident()
    threads: dict[str, set[bool]] = {}
    real_resolve, real_load = execute.resolve_handler, reload.load_routing

    def resolve(name: str, *args: object) -> object:
        threads.setdefault(name, set()).add(threading.get_ident() == loop_thread)
        return real_resolve(name, *args)  # type: ignore[arg-type]

    def load_routing(path: Path, max_bytes: int) -> object:
        threads.setdefault("routing.yaml", set()).add(threading.get_ident() == loop_thread)
        return real_load(path, max_bytes)

    settings = make_settings(prefix, routing_file=routing)
    pool = Consumer(settings, "alpha", redis=aredis, holder=RoutingHolder.load(routing), block_ms=50)
    monkeypatch.setattr(execute, "resolve_handler", resolve)
    monkeypatch.setattr(reload, "load_routing", load_routing)
    task = asyncio.create_task(pool.run())
    try:
        # A name first seen in an entry (published under a newer table than the worker's).
        newer = write_routing(tmp_path, ROUTING.replace(f'"{H}record_other"', f'"{H}record_where"'),
                              name="newer.yaml")
        await publish(aredis, keys, load(newer), "test.unknown", "evt_new_name")

        async def ran() -> bool:
            return "evt_new_name" in await runs(aredis, prefix, "record_where")

        await wait_for(ran)
        # A name first seen in a reloaded routing.yaml.
        write_routing(tmp_path, ROUTING.replace(f'"{H}record_other"', f'"{H}slow"'))
        os.utime(routing, ns=(1, 1))

        async def resolved() -> bool:
            return H + "slow" in threads

        await wait_for(resolved)
    finally:
        pool.request_stop()
        await task
    assert threads["routing.yaml"] == {False}
    assert threads[H + "record_where"] == {False}
    assert threads[H + "slow"] == {False}


async def test_poison_event_is_dead_lettered_after_max_attempts_while_later_events_run(
    aredis: aioredis.Redis, prefix: str, keys: Keys, routing: Path
) -> None:
    settings = make_settings(prefix, routing_file=routing)
    table = load(routing)
    await publish(aredis, keys, table, "test.poison", "evt_poison", poison=True)
    later = [f"evt_later{i}" for i in range(10)]
    await publish_many(aredis, keys, table, "test.poison", later)
    await run_pool(settings, "solo", redis=aredis, burst=True)

    assert await runs(aredis, prefix, "fail_if_poison") == {"evt_poison": 3, **dict.fromkeys(later, 1)}
    dead = await list_dead(aredis, keys, "solo")
    assert len(dead) == 1
    assert dead[0].event_id == "evt_poison"
    assert dead[0].attempts == 3
    assert dead[0].reason == "max attempts reached"
    assert dead[0].handlers == (H + "fail_if_poison",)
    assert "RuntimeError: poison event" in dead[0].error
    # With one slot, the poison entry ran first, and events behind it ran while it was still
    # pending between its attempts (as each of them recorded), rather than waiting for it.
    order = [x.decode().split()[1] for x in await aredis.lrange(order_key(prefix), 0, -1)]
    assert order[0] == "evt_poison"
    seen = {k.decode(): tuple(map(int, v.split())) for k, v in
            (await aredis.hgetall(poison_seen_key(prefix))).items()}
    assert set(seen) == set(later)
    assert any(1 <= poison_runs < 3 and dead == 0 for poison_runs, dead in seen.values()), seen
    assert await pending(aredis, keys, "solo") == 0
    assert (await stats(aredis, keys, "solo"))["dead"] == 1


async def test_permanent_failure_is_dead_lettered_at_once_with_its_traceback(
    aredis: aioredis.Redis, prefix: str, keys: Keys, routing: Path
) -> None:
    settings = make_settings(prefix, routing_file=routing)
    await publish(aredis, keys, load(routing), "test.permanent", "evt_perm")
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert await runs(aredis, prefix, "permanent") == {"evt_perm": 1}
    assert await runs(aredis, prefix, "record") == {"evt_perm": 1}
    [dead] = await list_dead(aredis, keys, "alpha")
    assert (dead.reason, dead.attempts, dead.handlers) == ("permanent failure", 1, (H + "permanent",))
    raw = await aredis.xrange(keys.dead("alpha"))
    fields = raw[0][1]
    assert b"PermanentFailure" in fields[b"dlq_traceback"]
    assert entry_body(fields).startswith(b"{")  # the original entry (its body as stored) travels with it
    assert await pending(aredis, keys, "alpha") == 0


async def test_unknown_handler_name_is_dead_lettered_not_dropped(
    aredis: aioredis.Redis, prefix: str, keys: Keys, routing: Path, tmp_path: Path
) -> None:
    # The entry was published under a table naming a handler this worker cannot import.
    other = write_routing(tmp_path, ROUTING.replace(f'"{H}record_other"', '"tests.nowhere:handler"'),
                          name="other.yaml")
    await publish(aredis, keys, load(other), "test.unknown", "evt_unknown")
    settings = make_settings(prefix, routing_file=routing)
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    [dead] = await list_dead(aredis, keys, "alpha")
    assert dead.reason == "unknown handler"
    assert dead.handlers == ("tests.nowhere:handler",)
    assert "no module named 'tests.nowhere'" in dead.error
    # `dlq list` prints "<reason>: <error>": the error must not repeat the reason.
    assert dead.error.startswith("ConfigError: handler 'tests.nowhere:handler': could not import"), dead.error
    assert await runs(aredis, prefix, "record") == {"evt_unknown": 1}
    assert await pending(aredis, keys, "alpha") == 0


async def test_sync_handler_runs_in_the_thread_pool(
    aredis: aioredis.Redis, prefix: str, keys: Keys, routing: Path
) -> None:
    settings = make_settings(prefix, routing_file=routing)
    await publish_many(aredis, keys, load(routing), "test.sync", [f"evt_s{i}" for i in range(5)])
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert await runs(aredis, prefix, "sync_record") == {f"evt_s{i}": 1 for i in range(5)}


async def test_handler_over_its_timeout_is_a_failed_attempt(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING.replace("alpha: {concurrency: 8, max_attempts: 3, timeout_s: 2",
                                                      "alpha: {concurrency: 8, max_attempts: 2, timeout_s: 0.1"))
    settings = make_settings(prefix, routing_file=routing)
    await publish(aredis, keys, load(routing), "test.slow", "evt_slow")
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    [dead] = await list_dead(aredis, keys, "alpha")
    assert dead.attempts == 2
    assert dead.error.startswith("TimeoutError")
    assert await runs(aredis, prefix, "too_slow") == {"evt_slow": 2}


async def test_retry_later_defer_is_respected_then_succeeds(
    aredis: aioredis.Redis, prefix: str, keys: Keys, routing: Path
) -> None:
    settings = make_settings(prefix, routing_file=routing)
    await publish(aredis, keys, load(routing), "test.defer", "evt_defer")
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert await runs(aredis, prefix, "defer_once") == {"evt_defer": 2}
    assert await aredis.exists(keys.retry_at("alpha")) == 0
    assert await pending(aredis, keys, "alpha") == 0


async def test_counters_add_up_across_runs_in_redis(
    aredis: aioredis.Redis, prefix: str, keys: Keys, routing: Path
) -> None:
    settings = make_settings(prefix, routing_file=routing)
    table = load(routing)
    await publish_many(aredis, keys, table, "test.many", [f"evt_a{i}" for i in range(30)])
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    await publish_many(aredis, keys, table, "test.many", [f"evt_b{i}" for i in range(20)])
    await run_pool(settings, "alpha", redis=aredis, burst=True, concurrency=3)
    assert (await stats(aredis, keys, "alpha"))["processed"] == 50
    assert len(await runs(aredis, prefix, "record")) == 50
    # A consumer that leaves with nothing pending removes itself from the group.
    assert await aredis.xinfo_consumers(keys.stream("alpha"), keys.group("alpha")) == []


async def test_burst_claims_entries_left_pending_by_a_consumer_that_is_gone_then_exits(
    aredis: aioredis.Redis, prefix: str, keys: Keys, routing: Path
) -> None:
    settings = make_settings(prefix, routing_file=routing)
    ids = [f"evt_left{i}" for i in range(5)]
    await publish_many(aredis, keys, load(routing), "test.many", ids)
    stream = keys.stream("alpha")
    read = await aredis.xreadgroup("alpha", "gone", {stream: ">"}, count=5)
    entry_ids = [entry_id for entry_id, _ in read[0][1]]
    # The consumer that read them died an hour ago.
    await aredis.xclaim(stream, "alpha", "gone", min_idle_time=0, message_ids=entry_ids,
                        idle=3_600_000, justid=True)
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert await runs(aredis, prefix, "record") == dict.fromkeys(ids, 1)
    assert await pending(aredis, keys, "alpha") == 0


async def test_a_stream_deleted_under_a_running_worker_is_recreated_and_read_again(
    aredis: aioredis.Redis, prefix: str, keys: Keys, routing: Path
) -> None:
    import asyncio

    from bus.envelope import entry_fields
    from bus.reload import RoutingHolder
    from ingress.parse import routing_fields
    from tests.support import event_body, wait_for
    from workers.engine.consumer import Consumer

    async def pool_read_failed(pool: Consumer) -> bool:
        return pool.read_failures > 0

    settings = make_settings(prefix, routing_file=routing)
    pool = Consumer(settings, "alpha", redis=aredis, holder=RoutingHolder.load(routing), block_ms=50)
    task = asyncio.create_task(pool.run())
    try:
        await publish(aredis, keys, load(routing), "test.many", "evt_before")

        async def ran(event_id: str) -> bool:
            return event_id in await runs(aredis, prefix, "record")

        await wait_for(lambda: ran("evt_before"))
        await aredis.delete(keys.stream("alpha"))
        await wait_for(lambda: pool_read_failed(pool))
        # Written without the publish script, so nothing but the worker can create the group.
        body = event_body("evt_after", "test.many")
        await aredis.xadd(keys.stream("alpha"), entry_fields(  # type: ignore[arg-type]
            routing_fields(body), (H + "record",), "v", body))
        await wait_for(lambda: ran("evt_after"))
    finally:
        pool.request_stop()
        await task


async def test_an_unexpected_error_from_the_client_fails_one_read_and_one_outcome_not_the_consumer(
    aredis: aioredis.Redis, prefix: str, keys: Keys, routing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As redis-py's cluster client once did during a failover: RuntimeError('Event loop is closed')
    # while it dropped a stale connection. The read and the outcome fail; the consumer goes on.
    from structlog.testing import capture_logs

    from workers.engine.ack_batch import AckBatch
    from workers.engine.reader import StreamReader

    real_read, real_succeeded = StreamReader.read, AckBatch.complete
    broken = {"read": 1, "complete": 1}

    async def read_once_broken(self: StreamReader, free: int) -> object:
        if broken["read"]:
            broken["read"] -= 1
            raise RuntimeError("Event loop is closed")
        return await real_read(self, free)

    def complete_once_broken(self: AckBatch, *args: object, **kwargs: object) -> None:
        if broken["complete"]:
            broken["complete"] -= 1
            raise RuntimeError("Event loop is closed")
        real_succeeded(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(StreamReader, "read", read_once_broken)
    monkeypatch.setattr(AckBatch, "complete", complete_once_broken)
    settings = make_settings(prefix, routing_file=routing)
    await publish_many(aredis, keys, load(routing), "test.many", ["evt_x1", "evt_x2"])
    with capture_logs() as logs:
        pool = await run_pool(settings, "alpha", redis=aredis, burst=True, block_ms=50)
    assert pool.read_failures == 1
    # The entry whose outcome failed stayed pending, and a reclaim pass ran it again.
    assert set(await runs(aredis, prefix, "record")) == {"evt_x1", "evt_x2"}
    assert await pending(aredis, keys, "alpha") == 0
    events = [e["event"] for e in logs]
    assert "pool.read_failed" in events and "entry.redis_failed" in events
