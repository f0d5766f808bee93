"""Replay and `--reroute`: recovering what a bad routing table dead-lettered, and `replay --since` once per event."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from bus.envelope import entry_body
from bus.keys import Keys
from tests.conftest import make_settings
from tests.support import FAST_POOL, H, load, publish, runs, worker_env, write_routing
from workers.ops.deadletter import list_dead
from workers.ops.replay import replay_dead_entries, replay_stream
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.anyio

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

# The typo of the story: a module that does not exist (`handlers_for_test`, no "s").
TYPO = "tests.handlers_for_test:record_other"

WITH_TYPO = f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.order: {{alpha: ["{H}record", "{TYPO}"]}}
"""

FIXED = f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.order: {{alpha: ["{H}record", "{H}record_other"]}}
"""


def fanout(prefix: str, routing: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fanout.cli", *args], env=worker_env(prefix, routing),
                          capture_output=True, text=True, timeout=30)


async def dead_handlers(aredis: aioredis.Redis, keys: Keys, pool: str) -> dict[str, tuple[str, ...]]:
    return {d.event_id: d.handlers for d in await list_dead(aredis, keys, pool)}


async def test_after_a_handler_typo_is_fixed_reroute_recovers_every_dead_lettered_event(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, WITH_TYPO)
    settings = make_settings(prefix, routing_file=routing)
    # `routes check` imports every handler, so it now names the typo (and its line); events
    # dead-lettered by a table deployed without the check are what --reroute recovers.
    check = fanout(prefix, routing, "routes", "check")
    assert check.returncode == 1 and TYPO in check.stderr
    table = load(routing)
    for event_id in ("evt_1", "evt_2", "evt_3", "evt_4"):
        await publish(aredis, keys, table, "test.order", event_id)
    # A running worker that hot-reloaded this table resolves names leniently (strict=False):
    # each entry is dead-lettered "unknown handler", with the broken name stored in it.
    await run_pool(settings, "alpha", redis=aredis, burst=True, strict=False)
    dead = await list_dead(aredis, keys, "alpha")
    assert {(d.event_id, d.reason, d.handlers) for d in dead} == {
        (e, "unknown handler", (TYPO,)) for e in ("evt_1", "evt_2", "evt_3", "evt_4")}
    assert await runs(aredis, prefix, "record") == {"evt_1": 1, "evt_2": 1, "evt_3": 1, "evt_4": 1}

    routing.write_text(FIXED)
    # Without --reroute the stored, broken name runs again: nothing is recovered.
    plain = fanout(prefix, routing, "dlq", "replay", "alpha", "--all")
    assert plain.returncode == 0 and "4 entries put back" in plain.stdout
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert await dead_handlers(aredis, keys, "alpha") == {e: (TYPO,) for e in ("evt_1", "evt_2", "evt_3", "evt_4")}
    assert await runs(aredis, prefix, "record_other") == {}

    # One event is recovered from the stream, the others from the dead-letter stream.
    stream_plain = fanout(prefix, routing, "replay", "alpha", "--event", "evt_4")
    assert stream_plain.returncode == 0 and "1 entry published again" in stream_plain.stdout
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert await runs(aredis, prefix, "record_other") == {}  # the stored list, typo included
    stream = fanout(prefix, routing, "replay", "alpha", "--event", "evt_4", "--reroute")
    assert stream.returncode == 0 and "1 entry published again" in stream.stdout, stream.stderr

    dead_ids = [d.id for d in await list_dead(aredis, keys, "alpha") if d.event_id != "evt_4"]
    rerouted = fanout(prefix, routing, "dlq", "replay", "alpha", *dead_ids, "--reroute")
    assert rerouted.returncode == 0, rerouted.stderr
    assert "3 entries put back" in rerouted.stdout
    await run_pool(settings, "alpha", redis=aredis, burst=True)

    assert await runs(aredis, prefix, "record_other") == {"evt_1": 1, "evt_2": 1, "evt_3": 1, "evt_4": 1}
    # `record` (done before the typo failed) stays done whichever stream the event comes back
    # from: for evt_4's stream entry, its dead letter says what succeeded.
    assert await runs(aredis, prefix, "record") == {"evt_1": 1, "evt_2": 1, "evt_3": 1, "evt_4": 1}
    # Each replay of evt_4 removed the dead letter its copy took over: none is left to replay twice.
    assert await list_dead(aredis, keys, "alpha") == []


POISON_THEN_OK = f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.poison: {{alpha: ["{H}record", "{H}fail_if_poison"]}}
"""

POISON_FIXED = f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.poison: {{alpha: ["{H}record", "{H}record_other"]}}
"""


async def dead_lettered_with_record_done(aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path) -> Path:
    """evt_p dead-lettered by fail_if_poison after `record` succeeded for it; the routing file's path."""
    routing = write_routing(tmp_path, POISON_THEN_OK)
    await publish(aredis, keys, load(routing), "test.poison", "evt_p", poison=True)
    await run_pool(make_settings(prefix, routing_file=routing), "alpha", redis=aredis, burst=True)
    assert await dead_handlers(aredis, keys, "alpha") == {"evt_p": (H + "fail_if_poison",)}
    assert await runs(aredis, prefix, "record") == {"evt_p": 1}
    return routing


async def test_replay_event_reroute_of_a_dead_lettered_event_runs_only_the_handlers_that_did_not_succeed(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = await dead_lettered_with_record_done(aredis, prefix, keys, tmp_path)
    routing.write_text(POISON_FIXED)
    result = fanout(prefix, routing, "replay", "alpha", "--event", "evt_p", "--reroute")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "alpha: 1 entry published again",
        "alpha: 1 dead letter of these events removed from the dead-letter stream (the copies run what they held)"]
    [*_, (_, copy)] = await aredis.xrange(keys.stream("alpha"))
    assert (copy[b"handlers"].decode(), copy[b"done"].decode()) == (H + "record_other", H + "record")
    await run_pool(make_settings(prefix, routing_file=routing), "alpha", redis=aredis, burst=True)
    assert await runs(aredis, prefix, "record") == {"evt_p": 1}
    assert await runs(aredis, prefix, "record_other") == {"evt_p": 1}
    assert await list_dead(aredis, keys, "alpha") == []


async def test_plain_replay_event_of_a_dead_lettered_event_runs_only_its_stored_handlers_not_done(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = await dead_lettered_with_record_done(aredis, prefix, keys, tmp_path)
    [old_dead] = await list_dead(aredis, keys, "alpha")
    result = await replay_stream(aredis, keys, "alpha", event_id="evt_p")
    assert (len(result.added), result.dead_letters_replaced) == (1, [old_dead.id])
    [*_, (_, copy)] = await aredis.xrange(keys.stream("alpha"))
    assert copy[b"handlers"].decode() == H + "fail_if_poison"
    await run_pool(make_settings(prefix, routing_file=routing), "alpha", redis=aredis, burst=True)
    assert await runs(aredis, prefix, "record") == {"evt_p": 1}
    # Still poisoned: the copy is dead-lettered in its turn, in place of the one it replaced.
    [new_dead] = await list_dead(aredis, keys, "alpha")
    assert new_dead.id != old_dead.id and new_dead.handlers == (H + "fail_if_poison",)


async def test_replay_all_handlers_runs_those_that_succeeded_too(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = await dead_lettered_with_record_done(aredis, prefix, keys, tmp_path)
    routing.write_text(POISON_FIXED)
    result = fanout(prefix, routing, "replay", "alpha", "--event", "evt_p", "--reroute", "--all-handlers")
    assert result.returncode == 0, result.stderr
    [*_, (_, copy)] = await aredis.xrange(keys.stream("alpha"))
    assert copy[b"handlers"].decode() == f"{H}record,{H}record_other" and b"done" not in copy
    await run_pool(make_settings(prefix, routing_file=routing), "alpha", redis=aredis, burst=True)
    assert await runs(aredis, prefix, "record") == {"evt_p": 2}
    assert await runs(aredis, prefix, "record_other") == {"evt_p": 1}
    assert await list_dead(aredis, keys, "alpha") == []
    assert "--all-handlers" in fanout(prefix, routing, "replay", "--help").stdout


async def test_reroute_reports_a_dead_letter_its_pool_no_longer_gets_and_keeps_it(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, f"""
pools:
  alpha: {{{FAST_POOL}}}
  beta: {{{FAST_POOL}}}
routes:
  test.poison: {{alpha: ["{H}fail_if_poison"]}}
  test.moved: {{alpha: ["{H}permanent"]}}
""")
    settings = make_settings(prefix, routing_file=routing)
    table = load(routing)
    await publish(aredis, keys, table, "test.poison", "evt_p", poison=True)
    await publish(aredis, keys, table, "test.moved", "evt_m")
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert set(await dead_handlers(aredis, keys, "alpha")) == {"evt_p", "evt_m"}

    # test.moved now goes to beta only; test.poison to a handler that succeeds.
    routing.write_text(f"""
pools:
  alpha: {{{FAST_POOL}}}
  beta: {{{FAST_POOL}}}
routes:
  test.poison: {{alpha: ["{H}record"]}}
  test.moved: {{beta: ["{H}record"]}}
""")
    result = fanout(prefix, routing, "dlq", "replay", "alpha", "--all", "--reroute")
    assert result.returncode == 1
    assert "1 entry put back" in result.stdout
    assert "not routed to alpha" in result.stderr and "evt_m  test.moved" in result.stderr
    assert "left in the dead-letter stream" in result.stderr
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert await runs(aredis, prefix, "record") == {"evt_p": 1}
    assert await dead_handlers(aredis, keys, "alpha") == {"evt_m": (H + "permanent",)}


async def test_reroute_keeps_handlers_done_before_an_earlier_replay_done(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.poison: {{alpha: ["{H}record", "{H}fail_if_poison"]}}
""")
    settings = make_settings(prefix, routing_file=routing)
    await publish(aredis, keys, load(routing), "test.poison", "evt_p", poison=True)
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    # A plain replay runs only fail_if_poison, which dead-letters the copy again: that
    # dead letter's stored list no longer names `record`.
    await replay_dead_entries(aredis, keys, "alpha")
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert await dead_handlers(aredis, keys, "alpha") == {"evt_p": (H + "fail_if_poison",)}

    routing.write_text(f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.poison: {{alpha: ["{H}record", "{H}record_other"]}}
""")
    result = await replay_dead_entries(aredis, keys, "alpha", table=load(routing))
    assert len(result.added) == 1 and not result.unrouted
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert await runs(aredis, prefix, "record") == {"evt_p": 1}
    assert await runs(aredis, prefix, "record_other") == {"evt_p": 1}
    assert await list_dead(aredis, keys, "alpha") == []


async def test_reroute_skips_handlers_the_completion_ledger_holds_and_drops_a_dead_letter_with_nothing_left(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.poison: {{alpha: ["{H}record", "{H}fail_if_poison"]}}
""")
    settings = make_settings(prefix, routing_file=routing)
    await publish(aredis, keys, load(routing), "test.poison", "evt_p", poison=True)
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    # The failing handler is removed from the route: everything left for evt_p is done.
    routing.write_text(f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.poison: {{alpha: ["{H}record"]}}
""")
    result = await replay_dead_entries(aredis, keys, "alpha", table=load(routing))
    assert (result.added, [s.event_id for s in result.nothing_to_run]) == ([], ["evt_p"])
    assert await list_dead(aredis, keys, "alpha") == []

    # An entry still being retried has a ledger of what succeeded; a rerouted replay skips it.
    await aredis.sadd(keys.ledger("alpha", "evt_p"), H + "record")
    result = await replay_stream(aredis, keys, "alpha", event_id="evt_p", table=load(routing))
    assert result.added == [] and [s.event_id for s in result.nothing_to_run] == ["evt_p"]


async def test_replay_since_publishes_each_event_in_the_window_once(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.ok: {{alpha: ["{H}record"]}}
  test.poison: {{alpha: ["{H}fail_if_poison"]}}
""")
    settings = make_settings(prefix, routing_file=routing)
    table = load(routing)
    for event_id in ("evt_a", "evt_b", "evt_c"):
        await publish(aredis, keys, table, "test.ok", event_id)
    await publish(aredis, keys, table, "test.poison", "evt_bad", poison=True)
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    # Two earlier copies in the stream: one from `replay --event`, one from `dlq replay`.
    assert len((await replay_stream(aredis, keys, "alpha", event_id="evt_a")).added) == 1
    assert len((await replay_dead_entries(aredis, keys, "alpha")).added) == 1
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert await aredis.xlen(keys.stream("alpha")) == 6

    result = fanout(prefix, routing, "replay", "alpha", "--since", "2000-01-01T00:00:00Z")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "alpha: 4 entries published again (2 copies from earlier replays skipped)",
        # evt_bad's copy from `dlq replay` was dead-lettered again; its copy now takes that over.
        "alpha: 1 dead letter of these events removed from the dead-letter stream (the copies run what they held)"]
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    assert await runs(aredis, prefix, "record") == {"evt_a": 3, "evt_b": 2, "evt_c": 2}
    # The copies just made are marked too: a second run replays the same 4 events again, once each.
    again = await replay_stream(aredis, keys, "alpha", since=EPOCH)
    assert (len(again.added), again.skipped_copies) == (4, 6)


async def test_replay_since_skips_unmarked_copies_of_an_event_already_replayed(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    """Copies made before copies were marked carry no `replay_of`: the event id catches them."""
    routing = write_routing(tmp_path, f"pools: {{alpha: {{{FAST_POOL}}}}}\nroutes: {{test.ok: {{alpha: ['{H}record']}}}}\n")
    await publish(aredis, keys, load(routing), "test.ok", "evt_a")
    [(_, fields)] = await aredis.xrange(keys.stream("alpha"))
    await aredis.xadd(keys.stream("alpha"), fields)  # an old-style, unmarked copy
    result = await replay_stream(aredis, keys, "alpha", since=EPOCH)
    assert (len(result.added), result.skipped_copies) == (1, 1)
    [*_, (_, copy)] = await aredis.xrange(keys.stream("alpha"))
    assert orjson.loads(entry_body(copy))["id"] == "evt_a" and copy[b"replay_of"]


async def test_all_handlers_on_a_copy_whose_original_was_trimmed_runs_what_the_copy_left_out_too(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    await dead_lettered_with_record_done(aredis, prefix, keys, tmp_path)
    [copy_id] = (await replay_dead_entries(aredis, keys, "alpha")).added  # runs fail_if_poison only
    [(original_id, _), _] = await aredis.xrange(keys.stream("alpha"))
    await aredis.xdel(keys.stream("alpha"), original_id)  # trimmed: the copy is the oldest entry left

    only_failed = await replay_stream(aredis, keys, "alpha", event_id="evt_p")
    every = await replay_stream(aredis, keys, "alpha", event_id="evt_p", all_handlers=True)
    lists = {i.decode(): f[b"handlers"].decode() for i, f in await aredis.xrange(keys.stream("alpha"))}
    assert lists[only_failed.added[0]] == H + "fail_if_poison"
    assert set(lists[every.added[0]].split(",")) == {H + "record", H + "fail_if_poison"}
    assert copy_id in lists
