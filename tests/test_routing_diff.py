"""`fanout routes diff`: a routing change tried on the traffic the streams hold, writing nothing."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from bus.routing_diff import PoolChange, routing_diff
from fanout.cli import main
from tests.conftest import TEST_REDIS_URL
from tests.support import H, load, publish, write_routing
from workers.ops.replay import replay_stream

pytestmark = pytest.mark.anyio

OLD = f"""
pools:
  customer: {{}}
  admin: {{}}
routes:
  checkout.session.completed:
    customer: ["{H}record"]
    admin:    ["{H}record_other"]
  customer.*:      {{customer: ["{H}record"]}}
  charge.refunded: {{admin: ["{H}record_other"]}}
  product.*:       {{admin: ["{H}record_other"]}}
"""

# checkout: admin dropped, customer gains a handler; customer.updated moves to its own route and
# also goes to admin; charge.refunded moves from admin to customer; product.* is unchanged.
NEW = f"""
pools:
  customer: {{}}
  admin: {{}}
routes:
  checkout.session.completed: {{customer: ["{H}record", "{H}slow"]}}
  customer.updated: {{customer: ["{H}record"], admin: ["{H}record_other"]}}
  customer.*:       {{customer: ["{H}record"]}}
  charge.refunded:  {{customer: ["{H}record_other"]}}
  product.*:        {{admin: ["{H}record_other"]}}
"""

TRAFFIC = [("checkout.session.completed", 2), ("customer.updated", 3), ("customer.created", 1),
           ("charge.refunded", 1), ("product.updated", 1)]


async def publish_traffic(aredis: aioredis.Redis, keys: Keys, old_file: Path, tag: str = "") -> None:
    table = load(old_file)
    for event_type, n in TRAFFIC:
        for i in range(n):
            await publish(aredis, keys, table, event_type, f"evt_{tag}{event_type.replace('.', '_')}_{i}")


async def snapshot(aredis: aioredis.Redis, keys: Keys) -> dict[bytes, object]:
    """Every key of the test's prefix with its type and content, to show nothing was written."""
    out: dict[bytes, object] = {}
    async for key in aredis.scan_iter(match=keys.pattern()):
        kind = await aredis.type(key)
        out[key] = (kind, await aredis.xrange(key) if kind == b"stream" else await aredis.dump(key))
    return out


async def test_routes_diff_shows_each_changed_type_with_the_events_it_would_have_affected(
    aredis: aioredis.Redis, keys: Keys, tmp_path: Path,
) -> None:
    old_file = write_routing(tmp_path, OLD)
    new_file = write_routing(tmp_path, NEW, "routing.new.yaml")
    await publish_traffic(aredis, keys, old_file)
    # A replay copy is not another event.
    await replay_stream(aredis, keys, "customer", event_id="evt_customer_updated_0")
    before = await snapshot(aredis, keys)

    diff = await routing_diff(aredis, keys, load(old_file), load(new_file))

    assert await snapshot(aredis, keys) == before
    assert [(t.event_type, t.events, t.changes) for t in diff.types] == [
        ("charge.refunded", 1, (PoolChange("admin", "removed", (), (H + "record_other",)),
                                PoolChange("customer", "added", (H + "record_other",), ()))),
        ("checkout.session.completed", 2, (PoolChange("admin", "removed", (), (H + "record_other",)),
                                           PoolChange("customer", "changed", (H + "slow",), ()))),
        ("customer.created", 1, ()),
        ("customer.updated", 3, (PoolChange("admin", "added", (H + "record_other",), ()),)),
        ("product.updated", 1, ()),
    ]
    assert (diff.events, diff.affected_events) == (8, 6)
    [updated] = [t for t in diff.types if t.event_type == "customer.updated"]
    assert (updated.old_route, updated.new_route) == ("customer.*", "customer.updated")


async def test_routes_diff_counts_the_traffic_of_every_partition(
    aredis: aioredis.Redis, prefix: str, tmp_path: Path,
) -> None:
    keys = Keys(prefix, 3)
    old_file = write_routing(tmp_path, OLD)
    await publish_traffic(aredis, keys, old_file)
    filled = [p for p in range(3) if await aredis.xlen(keys.stream("customer", p))]
    assert len(filled) > 1  # the traffic is spread over partitions

    diff = await routing_diff(aredis, keys, load(old_file), load(write_routing(tmp_path, NEW, "routing.new.yaml")))

    assert (diff.events, diff.affected_events) == (8, 6)


async def test_routes_diff_since_counts_only_the_traffic_stored_from_then(
    aredis: aioredis.Redis, keys: Keys, tmp_path: Path,
) -> None:
    old_file = write_routing(tmp_path, OLD)
    await publish_traffic(aredis, keys, old_file, "early_")
    await asyncio.sleep(0.01)
    since_ms = int(time.time() * 1000)
    await publish(aredis, keys, load(old_file), "charge.refunded", "evt_late")
    diff = await routing_diff(aredis, keys, load(old_file), load(write_routing(tmp_path, NEW, "new.yaml")),
                              since_ms)
    assert [(t.event_type, t.events) for t in diff.types] == [("charge.refunded", 1)]


def test_routes_diff_command_prints_a_table_and_json(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    old_file = write_routing(tmp_path, OLD)
    new_file = write_routing(tmp_path, NEW, "routing.new.yaml")

    async def fill() -> None:
        client = aioredis.Redis.from_url(TEST_REDIS_URL)
        try:
            await publish_traffic(client, Keys(prefix), old_file)
        finally:
            await client.aclose()

    asyncio.run(fill())
    for name, value in {"REDIS_URL": TEST_REDIS_URL, "FANOUT_PREFIX": prefix,
                        "ROUTING_FILE": str(old_file)}.items():
        monkeypatch.setenv(name, value)

    assert main(["routes", "diff", str(new_file)]) == 0
    out = capsys.readouterr().out.splitlines()
    old_v, new_v = load(old_file).version, load(new_file).version
    assert out[0] == (f"{old_file} (version {old_v}) -> {new_file} (version {new_v}): "
                      "8 events of 5 types in the streams (all they hold)")
    other, slow = H + "record_other", H + "slow"
    assert [line.split() for line in out[1:]] == [
        ["event", "type", "events", "pool", "change"],
        ["charge.refunded", "1", "admin", "pool", "removed:", other],
        ["customer", "pool", "added:", other],
        ["checkout.session.completed", "2", "admin", "pool", "removed:", other],
        ["customer", f"+{slow}"],
        ["customer.updated", "3", "admin", "pool", "added:", other],
        ["6", "of", "8", "events", "would", "run", "differently;", "2", "types", "unchanged", "(2", "events)"],
    ]

    assert main(["routes", "diff", str(new_file), "--json"]) == 0
    as_json = orjson.loads(capsys.readouterr().out)
    assert (as_json["events"], as_json["affected_events"], len(as_json["types"])) == (8, 6, 5)

    future = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
    assert main(["routes", "diff", str(new_file), "--since", future, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["types"] == []
    assert main(["routes", "diff", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read routing file" in capsys.readouterr().err
