"""The stale guard (skip_stale: true): an entry older than its object's newest completed event, in
the same family, is acked without running and counted; handlers can ask ctx.newer_completed()."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from bus.routing import RoutingTable
from ingress.parse import routing_fields
from ingress.publish import Publisher
from tests.conftest import make_settings
from tests.handlers_for_tests import newer_key
from tests.support import FAST_POOL, H, load, runs, write_routing
from workers.newest import NEWEST_SCRIPT, Newest, family
from workers.ops.status import collect_status
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  guarded: {{{FAST_POOL}, skip_stale: true}}
  open: {{{FAST_POOL}}}
routes:
  "customer.*": {{guarded: ["{H}record_newer"], open: ["{H}record"]}}
  "customer.subscription.*": {{guarded: ["{H}record_newer"]}}
  test.plain: {{open: ["{H}record_newer"]}}
"""


class Stale:
    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str]] = []

    def handler_finished(self, pool: str, handler: str, outcome: str, duration_s: float) -> None:
        self.outcomes.append((pool, outcome))

    def entries_in_flight(self, pool: str, count: int) -> None:
        pass

    def read_batch(self, pool: str, size: int) -> None:
        pass


async def send(redis: aioredis.Redis, keys: Keys, table: RoutingTable, event_id: str, event_type: str,
               object_id: str, created: int) -> None:
    body = orjson.dumps({"id": event_id, "object": "event", "type": event_type, "created": created,
                         "livemode": False, "data": {"object": {"id": object_id, "object": "customer"}}})
    publisher = Publisher(redis, keys, retention_s=3600, budget_s=2.0)
    await publisher.publish(routing_fields(body), table.match(event_type), table.version, body)


async def drain(prefix: str, routing: Path, redis: aioredis.Redis, pool: str = "guarded") -> Stale:
    observer = Stale()
    await run_pool(make_settings(prefix, routing_file=routing), pool, redis=redis, burst=True, observer=observer)
    return observer


def test_the_family_is_the_type_up_to_its_last_dot_outside_brackets() -> None:
    assert family("customer.updated") == family("customer.created") == family("customer.deleted") == "customer"
    assert family("customer.subscription.updated") == "customer.subscription"
    assert family("v2.core.account[requirements].updated") == "v2.core.account[requirements]"
    assert family("v2.core.account[configuration.customer].updated") == "v2.core.account[configuration.customer]"
    assert family("ping") == "ping"


async def test_an_older_update_after_a_newer_one_completed_is_skipped_and_counted(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    table = load(routing)
    await send(aredis, keys, table, "evt_t2", "customer.updated", "cus_1", 2_000)
    first = await drain(prefix, routing, aredis)
    await send(aredis, keys, table, "evt_t1", "customer.updated", "cus_1", 1_000)
    second = await drain(prefix, routing, aredis)
    assert await runs(aredis, prefix, "record_newer") == {"evt_t2": 1}
    assert first.outcomes == [("guarded", "ok")]
    assert second.outcomes == [("guarded", "stale")]
    status = await collect_status(aredis, keys, ["guarded", "open"], 0)
    assert status["pools"]["guarded"]["stale"] == 1
    assert status["pools"]["guarded"]["processed"] == 1
    assert status["pools"]["guarded"]["pending"] == 0
    # A pool without the guard runs both, and says nothing about staleness.
    await drain(prefix, routing, aredis, "open")
    assert await runs(aredis, prefix, "record") == {"evt_t2": 1, "evt_t1": 1}
    assert status["pools"]["open"]["stale"] == 0


async def test_a_newer_event_of_another_family_never_makes_an_older_one_stale(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    table = load(routing)
    # Same object id on purpose: only the family tells these apart.
    await send(aredis, keys, table, "evt_sub", "customer.subscription.updated", "cus_1", 2_000)
    await drain(prefix, routing, aredis)
    await send(aredis, keys, table, "evt_created", "customer.created", "cus_1", 1_000)
    observer = await drain(prefix, routing, aredis)
    assert observer.outcomes == [("guarded", "ok")]
    assert await runs(aredis, prefix, "record_newer") == {"evt_sub": 1, "evt_created": 1}


async def test_an_older_deletion_still_runs_and_its_handler_sees_the_newer_event(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    table = load(routing)
    await send(aredis, keys, table, "evt_up", "customer.updated", "cus_1", 2_000)
    await send(aredis, keys, table, "evt_other", "customer.updated", "cus_2", 3_000)
    await drain(prefix, routing, aredis)
    await send(aredis, keys, table, "evt_del", "customer.deleted", "cus_1", 1_000)
    await send(aredis, keys, table, "evt_same_second", "customer.updated", "cus_1", 2_000)
    await drain(prefix, routing, aredis)
    assert await runs(aredis, prefix, "record_newer") == {"evt_up": 1, "evt_other": 1, "evt_del": 1,
                                                          "evt_same_second": 1}
    newer = {k.decode(): v.decode() for k, v in (await aredis.hgetall(newer_key(prefix))).items()}
    assert newer == {"evt_up": "0", "evt_other": "0", "evt_del": "1", "evt_same_second": "0"}
    # The deletion is recorded too: a later-arriving older update is stale.
    await send(aredis, keys, table, "evt_old", "customer.updated", "cus_1", 500)
    assert (await drain(prefix, routing, aredis)).outcomes == [("guarded", "stale")]


async def test_a_pool_without_the_guard_refuses_newer_completed_rather_than_answer_false(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    table = load(routing)
    await send(aredis, keys, table, "evt_plain", "test.plain", "obj_1", 1_000)
    observer = await drain(prefix, routing, aredis, "open")
    assert observer.outcomes[-1] == ("open", "dead")
    dead = await aredis.xrange(keys.dead("open"))
    assert len(dead) == 1 and b"set skip_stale: true" in b"".join(dead[0][1].values())


async def test_a_bucket_keeps_the_newest_created_and_stops_adding_objects_at_its_cap(
    aredis: aioredis.Redis, prefix: str
) -> None:
    bucket = "{" + prefix + "}:newest:test"
    assert await aredis.eval(NEWEST_SCRIPT, 1, bucket, 60, 2, "a", 5, "b", 7) == 2
    assert await aredis.eval(NEWEST_SCRIPT, 1, bucket, 60, 2, "a", 3, "b", 9, "c", 1) == 0
    assert {k.decode(): int(v) for k, v in (await aredis.hgetall(bucket)).items()} == {"a": 5, "b": 9}
    assert 0 < await aredis.ttl(bucket) <= 60


async def test_an_object_is_remembered_across_one_window_boundary_and_forgotten_after_two(
    aredis: aioredis.Redis, prefix: str, keys: Keys
) -> None:
    from bus.envelope import Event

    event = Event.from_entry({b"id": b"evt_1", b"type": b"customer.updated", b"created": b"100",
                              b"object_id": b"cus_1", b"handlers": b"x", b"body": b"{}"})
    stream = keys.stream("guarded")
    at_0 = Newest.of(keys, "guarded", stream, event, now_s=10, window_s=100)
    await aredis.hset(at_0.current, "cus_1", 200)
    assert await Newest.of(keys, "guarded", stream, event, now_s=150, window_s=100).stale(aredis)
    assert not await Newest.of(keys, "guarded", stream, event, now_s=250, window_s=100).stale(aredis)
