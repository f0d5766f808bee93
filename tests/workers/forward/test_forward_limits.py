"""forward: a destination's concurrency and rate limits and its circuit breaker, against real local receivers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from bus.reload import RoutingHolder
from bus.routing import Destination
from tests.conftest import make_settings
from tests.support import load, publish, wait_for, write_routing
from tests.workers.forward.test_forward import DEST_SECRET, Receiver
from workers.engine.consumer import Consumer
from workers.forward.breaker import Breakers, breaker_states
from workers.ops.deadletter import list_dead
from workers.ops.status import collect_status, render_text


@asynccontextmanager
async def running(pool: Consumer) -> AsyncIterator[Consumer]:
    task = asyncio.create_task(pool.run())
    try:
        yield pool
    finally:
        pool.request_stop()
        await task


async def _settled(aredis: aioredis.Redis, keys: Keys) -> bool:
    groups = await aredis.xinfo_groups(keys.stream("admin"))
    return bool(groups) and int(groups[0]["pending"]) == 0 and int(groups[0].get("lag") or 0) == 0


def _routing(tmp_path: Path, slow: str = "", fast: str = "") -> Path:
    return write_routing(tmp_path, f"""
pools:
  admin: {{concurrency: 4, max_attempts: 3, timeout_s: 5, backoff_base_s: 0.05, backoff_max_s: 0.2}}
destinations:
  slow: {{url_env: SLOW_URL, secret_env: SHARED_SECRET, timeout_s: 5{slow}}}
  fast: {{url_env: FAST_URL, secret_env: SHARED_SECRET, timeout_s: 5{fast}}}
routes:
  charge.refunded: {{admin: ["forward:slow"]}}
  refund.created: {{admin: ["forward:fast"]}}
""")


@pytest.mark.anyio
async def test_events_for_a_fast_destination_keep_flowing_while_a_slow_one_is_saturated(
    aredis: aioredis.Redis, prefix: str, keys: Keys, receiver: Receiver, tmp_path: Path
) -> None:
    routing = _routing(tmp_path)  # slow: no concurrency set, so half the pool's 4 slots
    settings = make_settings(prefix, routing_file=routing, SLOW_URL=f"{receiver.base}/200/sleep",
                             FAST_URL=f"{receiver.base}/200", SHARED_SECRET=DEST_SECRET)
    table = load(routing)
    for i in range(6):  # each answered after 1 s: 3 s of work at 2 at a time
        await publish(aredis, keys, table, "charge.refunded", f"evt_slow_{i}")
    for i in range(4):
        await publish(aredis, keys, table, "refund.created", f"evt_fast_{i}")
    pool = Consumer(settings, "admin", redis=aredis, holder=RoutingHolder.load(routing), block_ms=50)
    async with running(pool):
        await wait_for(lambda: _settled(aredis, keys))
    timeline = list(receiver.timeline)
    fast_arrivals = [i for i, (_, what, path) in enumerate(timeline) if what == "arrived" and path == "/200"]
    first_slow_answer = next(i for i, (_, what, path) in enumerate(timeline)
                             if what == "answered" and path == "/200/sleep")
    assert len(fast_arrivals) == 4
    # Every fast event was delivered before the slow destination had answered even once.
    assert max(fast_arrivals) < first_slow_answer, timeline
    # The slow destination never had more than its 2 forwards in flight.
    in_flight = peak = 0
    for _, what, path in timeline:
        if path == "/200/sleep":
            in_flight += 1 if what == "arrived" else -1
            peak = max(peak, in_flight)
    assert peak == 2
    # The waiting slow entries were paused, more often than max_attempts, and none was dead-lettered.
    assert sorted(p for p, _, _ in receiver.received).count("/200/sleep") == 6
    assert await list_dead(aredis, keys, "admin") == []
    stats = {k.decode(): int(v) for k, v in (await aredis.hgetall(keys.pool_stats("admin"))).items()}
    assert stats.get("failed", 0) == 0 and stats["paused"] > 3 and stats["processed"] == 10


@pytest.mark.anyio
async def test_a_destination_rate_limit_spaces_its_forwards_across_the_pool(
    aredis: aioredis.Redis, prefix: str, keys: Keys, receiver: Receiver, tmp_path: Path
) -> None:
    routing = _routing(tmp_path, fast=", rate_per_s: 10, concurrency: 4")
    settings = make_settings(prefix, routing_file=routing, SLOW_URL=f"{receiver.base}/200/sleep",
                             FAST_URL=f"{receiver.base}/200", SHARED_SECRET=DEST_SECRET)
    table = load(routing)
    for i in range(6):
        await publish(aredis, keys, table, "refund.created", f"evt_rated_{i}")
    pool = Consumer(settings, "admin", redis=aredis, holder=RoutingHolder.load(routing), block_ms=50)
    async with running(pool):
        await wait_for(lambda: _settled(aredis, keys))
    arrivals = [t for t, what, path in receiver.timeline if what == "arrived" and path == "/200"]
    assert len(arrivals) == 6
    # 10/s: 5 gaps of 100 ms (measured where they arrive, so allow some jitter on each).
    assert arrivals[-1] - arrivals[0] >= 0.4
    assert await list_dead(aredis, keys, "admin") == []


@pytest.mark.anyio
async def test_a_failing_destination_opens_its_breaker_its_entries_wait_without_spending_attempts(
    aredis: aioredis.Redis, prefix: str, keys: Keys, receiver: Receiver, tmp_path: Path
) -> None:
    routing = _routing(tmp_path, fast=", breaker_failures: 3, breaker_open_s: 2")
    # The first 3 requests answer 503, then the destination is back.
    settings = make_settings(prefix, routing_file=routing, SLOW_URL=f"{receiver.base}/200/sleep",
                             FAST_URL=f"{receiver.base}/503/3", SHARED_SECRET=DEST_SECRET)
    table = load(routing)
    for i in range(5):
        await publish(aredis, keys, table, "refund.created", f"evt_b_{i}")
    pool = Consumer(settings, "admin", redis=aredis, holder=RoutingHolder.load(routing), block_ms=50)
    seen_open: list[str] = []

    async def breaker_open() -> bool:
        status = await collect_status(aredis, keys, ["admin"], 0, destinations=["fast", "slow"])
        if status["breakers"]["fast"]["state"] == "open":
            seen_open.append(render_text(status))
            return True
        return False

    async with running(pool):
        await wait_for(breaker_open, poll_s=0.01)
        # A forward admitted before the breaker opened may still be on its way to the receiver:
        # let it land (the breaker stays open 2 s) before counting, or it looks sent while open.
        await asyncio.sleep(0.2)
        hits_at_open = receiver.hits.get("/503/3", 0)
        await asyncio.sleep(0.5)
        assert await breaker_open()
        hits_while_open = receiver.hits.get("/503/3", 0)
        await wait_for(lambda: _settled(aredis, keys))
    assert "forward:fast: circuit breaker OPEN" in seen_open[0]
    # A forward admitted just before the third failure came back may still go out (2 in flight
    # at once); after that, nothing while it is open.
    assert 3 <= hits_at_open == hits_while_open <= 4
    # Then one probe got a 200 and closed it; each event was delivered once, none dead-lettered
    # although max_attempts is 3 and each entry waited through several paused runs.
    assert receiver.hits["/503/3"] == 3 + 5
    assert await list_dead(aredis, keys, "admin") == []
    assert (await breaker_states(aredis, keys, ["fast"]))["fast"]["state"] == "closed"


# --- the breaker on its own ------------------------------------------------------------------------


DEST = Destination(name="d", url_env="D_URL", secret_env="D_SECRET", timeout_s=0.2,
                   breaker_failures=3, breaker_window_s=10, breaker_open_s=0.3)


@pytest.mark.anyio
async def test_breaker_opens_after_enough_failures_and_lets_one_probe_through_when_half_open(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    breakers = Breakers(aredis, keys)
    for _ in range(2):
        admission = await breakers.admit(DEST)
        assert admission.verdict == "closed"
        assert not await breakers.record(DEST, admission, ok=False)
    admission = await breakers.admit(DEST)
    assert await breakers.record(DEST, admission, ok=False)  # the third failure opens it
    assert (await breakers.admit(DEST)).verdict == "open"
    await asyncio.sleep(0.35)
    probe = await breakers.admit(DEST)
    assert probe.verdict == "probe"
    assert (await breakers.admit(DEST)).verdict == "probing"  # one probe at a time, across processes
    assert await breakers.record(DEST, probe, ok=False)  # a failed probe opens it again
    assert (await breakers.admit(DEST)).verdict == "open"
    await asyncio.sleep(0.35)
    probe = await breakers.admit(DEST)
    assert probe.verdict == "probe"
    await breakers.record(DEST, probe, ok=True)  # a good probe closes it and forgets the failures
    assert (await breakers.admit(DEST)).verdict == "closed"
    assert await aredis.exists(keys.breaker("d")) == 0


@pytest.mark.anyio
async def test_breaker_stays_closed_while_successes_outnumber_failures(aredis: aioredis.Redis, keys: Keys) -> None:
    breakers = Breakers(aredis, keys)
    for _ in range(5):
        assert not await breakers.record(DEST, await breakers.admit(DEST), ok=False)
        for _ in range(2):
            await breakers.record(DEST, await breakers.admit(DEST), ok=True)
    assert (await breakers.admit(DEST)).verdict == "closed"
    state = (await breaker_states(aredis, keys, ["d"]))["d"]
    assert (state["state"], state["failures"]) == ("closed", 5)


# --- the options, as routing.yaml declares them -----------------------------------------------------


def test_destination_limits_and_breaker_options_are_read_and_validated_with_their_line() -> None:
    import textwrap

    from bus.errors import ConfigError
    from bus.routing import parse_routing
    from workers.forward.slots import destination_limit

    table = parse_routing(textwrap.dedent("""\
        pools: {a: {concurrency: 9}}
        destinations:
          plain: {url_env: P_URL, secret_env: P_SECRET}
          tuned: {url_env: T_URL, secret_env: T_SECRET, concurrency: 3, rate_per_s: 2.5,
                  breaker_failures: 10, breaker_window_s: 60, breaker_open_s: 5}
        routes: {}
        """), source="r.yaml")
    plain, tuned = table.destinations["plain"], table.destinations["tuned"]
    assert (plain.concurrency, plain.rate_per_s) == (None, None)
    assert (tuned.concurrency, tuned.rate_per_s, tuned.breaker_failures, tuned.breaker_window_s,
            tuned.breaker_open_s) == (3, 2.5, 10, 60, 5)
    # The default: half the pool's slots in this process, at least 1; unlimited when unknown (RQ).
    assert [destination_limit(plain, n) for n in (9, 1, 0)] == [4, 1, None]
    assert destination_limit(tuned, 9) == 3
    with pytest.raises(ConfigError) as caught:
        parse_routing(textwrap.dedent("""\
            pools: {a: {}}
            destinations:
              d: {url_env: D_URL, secret_env: D_SECRET, concurrency: 1.5, rate_per_s: 0, breaker_open_s: x}
            routes: {}
            """), source="r.yaml")
    found = str(caught.value)
    assert "r.yaml:3:" in found
    assert "concurrency must be a positive whole number" in found
    assert "rate_per_s must be a positive number" in found and "breaker_open_s must be a positive number" in found
