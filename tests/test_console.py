"""The console's pages and data layer over a real Redis, driven in-process over ASGI."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.routing import Route

from fanout.console.routes import diff_pasted, table_diff
from tests.console_support import BODY_MARKER, ROUTING, Seeded, console_client, seed
from tests.support import load, write_routing

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
async def seeded(prefix: str, tmp_path: Path) -> Seeded:
    return await seed(prefix, tmp_path)


@pytest.fixture
async def running(seeded: Seeded) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    async with console_client(seeded.settings) as running:
        yield running


@pytest.fixture
def client(running: tuple[Starlette, httpx.AsyncClient]) -> httpx.AsyncClient:
    return running[1]


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "the page has no CSRF field"
    return found.group(1)


async def test_the_overview_shows_each_pool_with_the_figures_of_status(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    alpha = re.search(r'<tr data-pool="alpha".*?</tr>', page, re.S)
    assert alpha is not None
    assert re.search(r'data-field="dead_letters" [^>]*><a [^>]*>1</a>', alpha.group(0))
    beta = re.search(r'<tr data-pool="beta".*?</tr>', page, re.S)
    assert beta is not None
    assert re.search(r'data-field="pending" [^>]*>1<', beta.group(0))
    assert re.search(r'data-field="lag" [^>]*>1<', beta.group(0))
    assert "routing table" in page.lower()


async def test_an_event_page_tells_each_pools_handlers_done_pending_failed(client: httpx.AsyncClient, seeded: Seeded) -> None:
    dead = (await client.get(f"/events/{seeded.dead}")).text
    # alpha's stream copy, and its dead letter with the error and the traceback.
    assert 'data-where="stream"' in dead and 'data-where="dead letters"' in dead
    assert re.search(r'handler done" data-handler="tests.handlers_for_tests:record"', dead)
    assert re.search(r'handler failed" data-handler="tests.handlers_for_tests:fail_if_poison"', dead)
    assert "RuntimeError: poison event" in dead and "Traceback (most recent call last)" in dead
    assert "attempts: 3" in dead
    assert "<details class=\"body\"><summary>raw body</summary>" in dead and BODY_MARKER in dead
    pending = (await client.get(f"/events/{seeded.pending}")).text
    assert re.search(r'handler pending" data-handler="tests.handlers_for_tests:record"', pending)
    assert "attempt 1" in pending
    waiting = (await client.get(f"/events/{seeded.waiting}")).text
    assert "not read by the pool yet" in waiting
    done = (await client.get(f"/events/{seeded.done}")).text
    assert done.count('class="handler done"') == 2 and 'class="handler failed"' not in done


async def test_an_unknown_event_is_404_and_says_what_was_scanned(client: httpx.AsyncClient) -> None:
    answer = await client.get("/events/evt_nowhere")
    assert answer.status_code == 404
    assert "No pool holds this event" in answer.text and "Looked at" in answer.text


async def test_search_by_event_id_or_object_id_leads_to_the_event(client: httpx.AsyncClient, seeded: Seeded) -> None:
    by_id = await client.get("/search", params={"q": seeded.done}, follow_redirects=False)
    assert by_id.headers["location"] == f"/events/{seeded.done}"
    by_object = await client.get("/search", params={"q": seeded.object_id}, follow_redirects=False)
    assert by_object.headers["location"] == f"/events/{seeded.done}"


async def test_a_lookup_scan_that_hits_its_limit_says_it_was_cut(seeded: Seeded, aredis: aioredis.Redis) -> None:
    from fanout.console.lookup import find

    found = await find(aredis, seeded.keys, ["alpha", "beta"], "evt_done1", scan_limit=1)
    assert seeded.keys.stream("alpha") in found.cut
    assert found.copies == []  # evt_done1 is not the newest entry of alpha's stream
    whole = await find(aredis, seeded.keys, ["alpha", "beta"], "evt_done1")
    assert whole.cut == [] and {c.pool for c in whole.copies} == {"alpha", "beta"}


async def test_the_dead_letter_page_filters_and_shows_no_raw_body(client: httpx.AsyncClient, seeded: Seeded) -> None:
    page = (await client.get("/dlq/alpha")).text
    assert seeded.dead in page and "RuntimeError: poison event" in page
    assert BODY_MARKER not in page
    assert seeded.dead not in (await client.get("/dlq/alpha", params={"type": "test.ok"})).text
    assert seeded.dead in (await client.get("/dlq/alpha", params={"type": "test.*"})).text
    assert seeded.dead not in (await client.get("/dlq/alpha", params={"q": "no such error"})).text
    assert seeded.dead in (await client.get("/dlq/alpha", params={"q": "POISON"})).text
    assert seeded.dead not in (await client.get("/dlq/alpha", params={"since": "2999-01-01T00:00"})).text
    assert (await client.get("/dlq/nopool")).status_code == 404


async def test_replay_by_filter_previews_the_count_then_replays_only_those(
    client: httpx.AsyncClient, seeded: Seeded, aredis: aioredis.Redis
) -> None:
    preview = (await client.get("/dlq/alpha/replay-matching", params={"type": "test.poison"})).text
    assert re.search(r"<strong>1</strong> dead letter will be replayed", preview)
    upto = re.search(r'name="upto" value="([0-9-]+)"', preview)
    assert upto is not None
    length = await aredis.xlen(seeded.keys.stream("alpha"))
    answer = await client.post("/dlq/alpha/replay-matching", follow_redirects=False,
                         data={"csrf": csrf_of(preview), "type": "test.poison", "upto": upto.group(1)})
    assert answer.status_code == 303 and "replayed=1" in answer.headers["location"]
    assert await aredis.xlen(seeded.keys.dead("alpha")) == 0
    assert await aredis.xlen(seeded.keys.stream("alpha")) == length + 1
    [(_, fields)] = await aredis.xrevrange(seeded.keys.stream("alpha"), count=1)
    assert fields[b"handlers"] == b"tests.handlers_for_tests:fail_if_poison"


async def test_reroute_takes_the_handlers_from_the_routing_table_in_use(
    running: tuple[Starlette, httpx.AsyncClient], seeded: Seeded, aredis: aioredis.Redis
) -> None:
    app, client = running
    [(dead_id, _)] = await aredis.xrange(seeded.keys.dead("alpha"))
    # The table now also runs record_other for test.poison in alpha; record had succeeded already.
    seeded.routing.write_text(ROUTING.replace('"tests.handlers_for_tests:fail_if_poison"]',
                                              '"tests.handlers_for_tests:fail_if_poison", '
                                              '"tests.handlers_for_tests:record_other"]'))
    console = app.state.console
    assert console.holder.check()
    page = (await client.get("/dlq/alpha")).text
    answer = await client.post("/dlq/alpha/replay", follow_redirects=False,
                         data={"csrf": csrf_of(page), "id": dead_id.decode(), "reroute": "on"})
    assert answer.status_code == 303 and "replayed=1" in answer.headers["location"]
    [(_, fields)] = await aredis.xrevrange(seeded.keys.stream("alpha"), count=1)
    assert fields[b"handlers"] == b"tests.handlers_for_tests:fail_if_poison,tests.handlers_for_tests:record_other"
    assert fields[b"version"] == console.holder.table.version.encode()


async def test_a_reroute_leaves_an_unrouted_letter_and_removes_one_with_nothing_left_to_run(
    running: tuple[Starlette, httpx.AsyncClient], seeded: Seeded, aredis: aioredis.Redis
) -> None:
    app, client = running
    console = app.state.console
    [(dead_id, _)] = await aredis.xrange(seeded.keys.dead("alpha"))
    poison_route = 'test.poison: {alpha: ["tests.handlers_for_tests:record", "tests.handlers_for_tests:fail_if_poison"]}'
    assert poison_route in ROUTING

    async def reroute() -> str:
        assert console.holder.check()
        page = (await client.get("/dlq/alpha")).text
        answer = await client.post("/dlq/alpha/replay", follow_redirects=True, data={"csrf": csrf_of(page), "id": dead_id.decode(),
                                                                "reroute": "on"})
        notice = re.search(r'<p class="notice" id="notice">(.*?)</p>', answer.text, re.S)
        assert notice is not None
        return notice.group(1)

    # test.poison now goes to beta only: the letter stays where it is.
    seeded.routing.write_text(ROUTING.replace(poison_route, 'test.poison: {beta: ["tests.handlers_for_tests:record"]}'))
    assert "0 put back in the stream; 1 not found or not routed to this pool (left in place)" in await reroute()
    assert [i for i, _ in await aredis.xrange(seeded.keys.dead("alpha"))] == [dead_id]
    # Only record, which had succeeded: nothing is left to run, the letter is removed.
    seeded.routing.write_text(ROUTING.replace(poison_route, 'test.poison: {alpha: ["tests.handlers_for_tests:record"]}'))
    assert "0 put back in the stream; 1 with nothing left to run" in await reroute()
    assert await aredis.xlen(seeded.keys.dead("alpha")) == 0


async def test_the_lookup_reads_every_partitions_stream_and_dead_letters(
    seeded: Seeded, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    from bus.keys import Keys
    from bus.partitions import partition_of
    from fanout.console.lookup import find
    from tests.support import publish
    from workers.engine.failures import Failure, dead_fields

    keys = Keys(seeded.keys.prefix, 2)
    # An event whose object (obj_<suffix>) lands in partition 1.
    event_id = next(f"evt_p{n}" for n in range(100) if partition_of(f"obj_p{n}", 2) == 1)
    table = load(seeded.routing)
    assert await publish(aredis, keys, table, "test.ok", event_id)
    [(entry_id, fields)] = await aredis.xrange(keys.stream("alpha", 1))
    await aredis.xadd(keys.dead("alpha", 1), dead_fields(
        entry_id.decode(), fields, reason="max attempts reached", attempts=3, now_ms=1,
        failures=[Failure("tests.handlers_for_tests:record", "RuntimeError: boom", "Traceback ...")]))
    found = await find(aredis, keys, ["alpha", "beta"], event_id)
    assert {(c.pool, c.partition, c.where) for c in found.copies} == {
        ("alpha", "1", "stream"), ("beta", "1", "stream"), ("alpha", "1", "dead letters")}
    letter = next(c for c in found.copies if c.where == "dead letters")
    assert [(h.name, h.state, h.error) for h in letter.handlers] == [
        ("tests.handlers_for_tests:record", "failed", "RuntimeError: boom")]
    assert found.received_ms(event_id) == int(entry_id.decode().split("-")[0])


async def test_every_post_without_the_csrf_token_is_refused(
    running: tuple[Starlette, httpx.AsyncClient]
) -> None:
    app, client = running
    posts = [r.path for r in app.routes if isinstance(r, Route) and r.methods and "POST" in r.methods]
    assert len(posts) >= 5
    for path in posts:
        path = path.replace("{pool}", "alpha")
        answer = await client.post(path, data={"id": "1-1", "upto": "+", "routing": "x", "token": "x"})
        assert answer.status_code == 403, path
        wrong = await client.post(path, data={"csrf": "0" * 64, "id": "1-1"})
        assert wrong.status_code == 403, path


async def test_routes_explains_a_type_and_diffs_a_pasted_file(client: httpx.AsyncClient, seeded: Seeded) -> None:
    page = (await client.get("/routes", params={"type": "test.poison"})).text
    assert "exact route <code>test.poison</code>" in page
    pasted = ROUTING.replace('test.later: {beta: ["tests.handlers_for_tests:record"]}',
                             'test.later: {alpha: ["tests.handlers_for_tests:record"]}')
    answer = (await client.post("/routes/diff", data={"csrf": csrf_of(page), "routing": pasted})).text
    assert "route test.later → alpha" in answer and "route test.later → beta" in answer
    # On recorded traffic: the two test.later events (pending and waiting in beta) of five would change.
    summary = re.search(r'<p id="traffic-summary">(.*?)</p>', answer, re.S)
    assert summary is not None and re.match(r"2 of 5 events\s+in the streams would run differently", summary.group(1))
    assert re.search(r'data-type="test.later" data-pool="alpha">.*?pool added:', answer, re.S)
    assert re.search(r'data-type="test.later" data-pool="beta">.*?pool removed:', answer, re.S)
    broken = (await client.post("/routes/diff", data={"csrf": csrf_of(page), "routing": "pools: [\n"})).text
    assert "invalid YAML" in broken


async def test_table_diff_names_added_removed_and_changed_routes_and_pools(tmp_path: Path) -> None:
    old = load(write_routing(tmp_path, ROUTING))
    new_text = (ROUTING.replace("  beta: {concurrency: 8", "  beta: {concurrency: 3")
                .replace('  test.later: {beta: ["tests.handlers_for_tests:record"]}\n', "")
                + '  test.new: {alpha: ["tests.handlers_for_tests:record"]}\n')
    changes = {(c.kind, c.what) for c in table_diff(old, load(write_routing(tmp_path, new_text, "new.yaml")))}
    assert changes == {("removed", "route test.later"), ("added", "route test.new"), ("changed", "pool beta")}
    assert diff_pasted(old, ROUTING).changes == []


async def test_no_secret_appears_on_any_page_and_raw_bodies_only_on_an_event_page(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from bus.settings import Secret

    secrets = {"STRIPE_WEBHOOK_SECRET": "whsec_never_on_a_page_1", "ADMIN_BACKEND_SECRET": "never_on_a_page_2",
               "SUPABASE_SERVICE_ROLE_KEY": "never_on_a_page_3", "FANOUT_CONSOLE_TOKEN": "never_on_a_page_4"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    settings = replace(seeded.settings, console_token=Secret(secrets["FANOUT_CONSOLE_TOKEN"]),
                       env={**seeded.settings.env, **secrets})
    async with console_client(settings) as (_, client):
        login = (await client.get("/login")).text
        await client.post("/login", data={"csrf": csrf_of(login), "token": secrets["FANOUT_CONSOLE_TOKEN"]})
        pages = ["/", "/routes", "/routes?type=test.ok", "/dlq/alpha", "/dlq/beta", "/dlq/alpha/replay-matching",
                 f"/events/{seeded.dead}", f"/events/{seeded.pending}", "/search?q=obj_nothing",
                 "/login", "/events/evt_nowhere"]
        for path in pages:
            answer = await client.get(path)
            assert answer.status_code in (200, 404), path
            for value in secrets.values():
                assert value not in answer.text, (path, value)
                assert value not in str(answer.headers), (path, value)
            if not path.startswith("/events/"):
                assert BODY_MARKER not in answer.text, path


def test_rates_are_per_minute_since_the_oldest_sample_in_the_window() -> None:
    from fanout.console.rates import RateRing

    ring = RateRing(window_s=300, interval_s=5)
    assert ring.per_minute(1000.0, {"a": 5}) == {"a": None}  # no history yet
    ring.add(1000.0, {"a": 10, "b": 50})
    ring.add(1030.0, {"a": 20, "b": 50})
    assert ring.per_minute(1060.0, {"a": 40, "b": 10}) == {"a": 30.0, "b": None}  # b was reset
    assert ring.span_s(1060.0) == 60.0
    # Samples older than the window no longer count.
    assert ring.per_minute(1320.0, {"a": 40, "b": 50}) == {"a": 20 * 60 / 290, "b": 0.0}


async def test_the_overview_counts_live_consumers_by_heartbeat_as_status_does(
    client: httpx.AsyncClient, seeded: Seeded, aredis: aioredis.Redis
) -> None:
    import time

    from workers import heartbeat

    # The seeded pools ran in burst and stopped: none is alive.
    before = re.search(r'<tr data-pool="alpha".*?</tr>', (await client.get("/")).text, re.S)
    assert before is not None and re.search(r'data-field="consumers" [^>]*>0 \(', before.group(0))
    await heartbeat.beat(aredis, seeded.keys.heartbeats("alpha"), "worker-1", int(time.time() * 1000))
    after = re.search(r'<tr data-pool="alpha".*?</tr>', (await client.get("/")).text, re.S)
    assert after is not None and re.search(r'data-field="consumers" [^>]*>1 \(', after.group(0))
