"""Handler time limits sharing one timer (workers/timeouts.py)."""

from __future__ import annotations

import asyncio

import pytest

from workers.timeouts import HandlerTimeouts

pytestmark = pytest.mark.anyio


async def test_a_call_past_its_limit_ends_with_timeout_error_and_leaves_nothing_in_flight() -> None:
    timeouts = HandlerTimeouts()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError), timeouts.limit(0.05):
        await asyncio.sleep(5)
    assert 0.04 <= loop.time() - started < 2  # ended by the limit, not the sleep
    assert timeouts.in_flight() == 0


async def test_calls_that_finish_in_time_are_not_cancelled_and_only_the_overdue_one_expires() -> None:
    timeouts = HandlerTimeouts()
    outcomes: dict[str, str] = {}

    async def call(name: str, limit_s: float, work_s: float) -> None:
        try:
            with timeouts.limit(limit_s):
                await asyncio.sleep(work_s)
            outcomes[name] = "done"
        except TimeoutError:
            outcomes[name] = "timeout"

    await asyncio.gather(call("slow", 0.1, 3), *(call(f"quick{i}", 0.1, 0.01) for i in range(20)),
                         call("late-long", 1.0, 0.3))
    assert outcomes.pop("slow") == "timeout"
    assert set(outcomes.values()) == {"done"} and len(outcomes) == 21
    assert timeouts.in_flight() == 0


async def test_a_shorter_limit_started_after_a_longer_one_still_expires_on_time() -> None:
    timeouts = HandlerTimeouts()
    loop = asyncio.get_running_loop()

    async def long_call() -> None:
        with timeouts.limit(10):
            await asyncio.sleep(0.5)

    background = asyncio.create_task(long_call())
    await asyncio.sleep(0.01)
    started = loop.time()
    with pytest.raises(TimeoutError), timeouts.limit(0.05):
        await asyncio.sleep(5)
    assert loop.time() - started < 0.4  # not held until the longer call's deadline
    await background  # finished normally: its limit never fired


async def test_a_cancel_from_outside_stays_a_cancellation_even_when_the_limit_has_also_passed() -> None:
    timeouts = HandlerTimeouts()
    entered = asyncio.Event()

    async def call() -> None:
        with timeouts.limit(0.05):
            entered.set()
            try:
                await asyncio.sleep(5)
            finally:
                await asyncio.sleep(0.1)  # cleanup outlives the deadline, as a slow shutdown might

    task = asyncio.create_task(call())
    await entered.wait()
    task.cancel()  # the consumer's shutdown
    with pytest.raises(asyncio.CancelledError):
        await task
    assert timeouts.in_flight() == 0



def test_on_uvloop_too_a_limit_fires_once_its_deadline_has_passed_and_not_before() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[float, int]:
        timeouts = HandlerTimeouts()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError), timeouts.limit(0.05):
            await asyncio.sleep(5)
        return loop.time() - started, timeouts.in_flight()

    elapsed, in_flight = uvloop.run(scenario())
    assert 0.049 - 0.001 <= elapsed < 2 and in_flight == 0
