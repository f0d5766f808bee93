"""The slot counter: bounded, resizable, reserve before awaiting, and wake whoever waits."""

from __future__ import annotations

import asyncio

import pytest

from workers.engine.slots import Slots

pytestmark = pytest.mark.anyio


async def test_reserve_takes_only_free_slots_and_release_gives_them_back() -> None:
    slots = Slots(lambda: 4)
    assert slots.reserve(10) == 4
    assert slots.free() == 0 and slots.reserve(1) == 0
    slots.occupy()  # one of them starts an entry
    slots.release(4)
    assert slots.free() == 3
    slots.vacate()
    assert slots.free() == 4


async def test_a_lowered_capacity_applies_at_once_and_never_goes_below_zero_taken() -> None:
    capacity = 4
    slots = Slots(lambda: capacity)
    for _ in range(3):
        slots.occupy()
    capacity = 2
    assert slots.free() == -1
    assert slots.reserve(5) == 0
    capacity = 8
    assert slots.reserve(5) == 5


async def test_a_waiter_wakes_when_a_slot_is_vacated() -> None:
    slots = Slots(lambda: 1)
    slots.occupy()
    waiter = asyncio.create_task(slots.wait_freed())
    await asyncio.sleep(0)
    assert not waiter.done()
    slots.vacate()
    await asyncio.wait_for(waiter, 1)


async def test_the_reclaimer_waits_for_the_readers_slots_and_holds_the_reader_meanwhile() -> None:
    slots = Slots(lambda: 2)
    taken = slots.reserve(2)  # the reader, in a blocking read
    reclaimer = asyncio.create_task(slots.take_from_reader(lambda: False))
    await asyncio.sleep(0)
    assert not reclaimer.done()
    reader_turn = asyncio.create_task(slots.reader_turn())
    await asyncio.sleep(0)
    assert not reader_turn.done(), "the reader may not reserve again while the reclaimer waits"
    slots.release(taken)
    await asyncio.wait_for(reclaimer, 1)
    await asyncio.wait_for(reader_turn, 1)
    assert slots.free() == 2
