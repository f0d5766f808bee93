"""The publisher's batching: each caller gets the answer of its own script call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from bus.keys import Keys
from bus.routing import parse_routing
from ingress.parse import routing_fields
from ingress.publish import Call, Publisher

from .ingress_client import delivery

pytestmark = pytest.mark.anyio

TABLE = parse_routing("pools: {admin: {}}\nroutes:\n  charge.refunded: {admin: [noop]}\n")


class ScriptedPublisher(Publisher):
    """Answers each batch from a script of results instead of Redis."""

    def __init__(self, answers: list[list[Any]]) -> None:
        super().__init__(aioredis.Redis(), Keys("unused"), 60, budget_s=1.0)
        self.answers = answers
        self.batches: list[int] = []

    async def _run(self, batch: list[Call]) -> list[Any]:
        self.batches.append(len(batch))
        return self.answers.pop(0)


async def test_after_a_script_cache_miss_only_the_calls_that_did_not_run_are_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = ScriptedPublisher([[1, NoScriptError("NOSCRIPT"), 0], [1]])

    async def loaded(_: str) -> str:
        return "sha"

    monkeypatch.setattr(publisher._redis, "script_load", loaded)
    events = [routing_fields(delivery("charge.refunded")[0]) for _ in range(3)]
    match = TABLE.match("charge.refunded")
    results = await asyncio.gather(*(publisher.publish(e, match, "v", b"{}") for e in events))
    assert publisher.batches == [3, 1]
    assert [r.duplicate for r in results] == [False, False, True]


async def test_one_loop_tick_of_publishes_is_one_batch() -> None:
    publisher = ScriptedPublisher([[1] * 5])
    match = TABLE.match("charge.refunded")
    events = [routing_fields(delivery("charge.refunded")[0]) for _ in range(5)]
    await asyncio.gather(*(publisher.publish(e, match, "v", b"{}") for e in events))
    assert publisher.batches == [5]
