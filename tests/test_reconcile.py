"""`fanout reconcile`: backfill from Stripe's Events API, served by localstripe (and a double where it lacks)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from bus.envelope import entry_body
from bus.keys import Keys
from bus.settings import Secret
from bus.stripe_events import EventPages, EventQuery, StripeApiError
from bus.stripe_http import RateLimiter
from fanout.cli import main
from ingress.reconcile import reconcile
from tests.conftest import TEST_REDIS_URL, make_settings
from tests.ingress_client import running, signed
from tests.live import serve
from tests.localstripe_server import API_KEY, create, flush, localstripe
from tests.stripe_events_double import API_KEY as DOUBLE_KEY
from tests.stripe_events_double import EventsDouble
from tests.support import FAST_POOL, H, load, runs, write_routing
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  alpha: {{{FAST_POOL}}}
  beta: {{{FAST_POOL}}}
routes:
  customer.*: {{alpha: ["{H}record"]}}
  product.*:  {{beta: ["{H}record"]}}
"""
# An hour ago: within the ingress's dedupe memory (SEEN_RETENTION_S), so no warning.
SINCE_TS = int(time.time()) - 3600
SINCE = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(SINCE_TS))


@pytest.fixture(scope="module")
def stripe_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with localstripe(tmp_path_factory.mktemp("localstripe") / "localstripe.log") as base:
        yield base


@pytest.fixture
def api(stripe_api: str) -> str:
    """localstripe, emptied for this test."""
    flush(stripe_api)
    return stripe_api


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, prefix: str, tmp_path: Path, api: str) -> Path:
    """The environment `fanout reconcile` reads, pointed at localstripe; returns the routing file."""
    routing = write_routing(tmp_path, ROUTING)
    for name, value in {"REDIS_URL": TEST_REDIS_URL, "FANOUT_PREFIX": prefix, "ROUTING_FILE": str(routing),
                        "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": api, "LOG_LEVEL": "warning"}.items():
        monkeypatch.setenv(name, value)
    return routing


def listed(base: str, key: str = API_KEY) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/v1/events", params={"limit": 100}, auth=(key, ""), timeout=5)
    response.raise_for_status()
    events: list[dict[str, Any]] = response.json()["data"]
    return events


async def fanout(*argv: str) -> int:
    """`fanout ARGV` in-process; in a thread, since the command runs its own event loop."""
    return await asyncio.to_thread(main, list(argv))


async def reconcile_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert await fanout("reconcile", "--since", SINCE, *args, "--json") == 0
    out: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return out


async def test_reconcile_publishes_what_was_never_delivered_and_skips_what_was(
    aredis: aioredis.Redis, prefix: str, keys: Keys, api: str, cli_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    customers = [create(api, "customers", email=f"c{i}@example.com") for i in range(3)]
    create(api, "products", name="T-shirt")
    events = listed(api)
    assert sorted(e["type"] for e in events) == ["customer.created"] * 3 + ["product.created"]
    # One event did reach the ingress, signed, as Stripe delivers it.
    delivered = next(e for e in events if e["data"]["object"]["id"] == customers[0]["id"])
    settings = make_settings(prefix, routing_file=cli_env)
    async with running(settings, watch_routing=False) as (_, client):
        body, headers = signed(orjson.dumps(delivered))
        assert (await client.post("/webhooks/stripe", content=body, headers=headers)).status_code == 200
    capsys.readouterr()  # the ingress's log line

    assert await fanout("reconcile", "--since", SINCE) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == ["listed         4", "already seen   1", "published      3", "  alpha        2",
                       "  beta         1", "unrouted       0"]
    start = datetime.fromtimestamp(SINCE_TS, UTC).isoformat()
    assert out[0] == f"events created {start} to now, every type (1 request)"
    assert await aredis.xlen(keys.stream("alpha")) == 3 and await aredis.xlen(keys.stream("beta")) == 1
    # The stored body is the event as the API listed it.
    stored = {orjson.loads(entry_body(f))["id"]: orjson.loads(entry_body(f))
              for _, f in await aredis.xrange(keys.stream("alpha"))}
    assert stored == {e["id"]: e for e in events if e["type"] == "customer.created"}

    again = await reconcile_json(capsys)
    assert (again["listed"], again["already_seen"], again["published"]) == (4, 4, 0)
    await run_pool(settings, "alpha", redis=aredis, burst=True)
    await run_pool(settings, "beta", redis=aredis, burst=True)
    assert sorted((await runs(aredis, prefix, "record")).values()) == [1, 1, 1, 1]


async def test_reconcile_dry_run_writes_nothing_and_says_what_it_would_publish(
    aredis: aioredis.Redis, prefix: str, keys: Keys, api: str, cli_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    customer = create(api, "customers", email="dry@example.com")
    assert await fanout("reconcile", "--since", SINCE, "--dry-run") == 0
    out = capsys.readouterr().out.splitlines()
    assert "dry run, nothing written" in out[0]
    assert "would publish  1" in out
    [event] = listed(api)
    assert out[-1] == f"  {event['id']}  customer.created  -> alpha"
    assert event["data"]["object"]["id"] == customer["id"]
    assert [k async for k in aredis.scan_iter(match=keys.pattern())] == []


async def test_reconcile_pages_through_localstripe_with_starting_after(
    aredis: aioredis.Redis, prefix: str, keys: Keys, api: str, tmp_path: Path,
) -> None:
    for i in range(5):
        create(api, "customers", email=f"p{i}@example.com")
    table = load(write_routing(tmp_path, ROUTING))
    async with httpx.AsyncClient() as client:
        pages = EventPages(client, Secret(API_KEY), base_url=api, page_limit=2)
        summary = await reconcile(aredis, keys, table, pages.pages(EventQuery(created_gte=0)),
                                  seen_retention_s=3600)
    # 2 + 2 + 1: the third page says has_more false.
    assert pages.requests == 3
    assert (summary.listed, summary.published, dict(summary.per_pool)) == (5, 5, {"alpha": 5})
    assert len({p.event_id for p in summary.events}) == 5


def test_reconcile_until_leaves_out_events_created_after_it(
    api: str, cli_env: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    create(api, "customers", email="early@example.com")
    split = int(time.time())
    while int(time.time()) <= split:  # localstripe's `created` is in whole seconds
        time.sleep(0.05)
    create(api, "products", name="late")
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(split))
    early = asyncio.run(reconcile_json(capsys, "--until", until))
    assert (early["listed"], early["per_pool"]) == (1, {"alpha": 1})
    later = asyncio.run(reconcile_json(capsys))
    assert (later["listed"], later["already_seen"], later["per_pool"]) == (2, 1, {"beta": 1})


def test_reconcile_refuses_to_run_without_an_api_key_or_with_bad_options(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("STRIPE_API_KEY")
    assert main(["reconcile", "--since", SINCE]) == 2
    assert "STRIPE_API_KEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    assert main(["reconcile", "--since", "2026-01-01"]) == 2
    assert "needs a time zone" in capsys.readouterr().err
    assert main(["reconcile", "--since", SINCE, "--types", "customer.*"]) == 2
    assert "exact event types" in capsys.readouterr().err


# --- what localstripe lacks: the double (tests/stripe_events_double.py) ---------------------------


def _event(event_id: str, event_type: str, created: int) -> dict[str, Any]:
    return {"id": event_id, "object": "event", "type": event_type, "created": created, "livemode": False,
            "api_version": "2026-09-30", "data": {"object": {"id": "cus_" + event_id[4:], "object": "customer"}}}


async def test_reconcile_asks_for_the_types_given_and_honours_429_retry_after(
    aredis: aioredis.Redis, keys: Keys, tmp_path: Path,
) -> None:
    double = EventsDouble(events=[_event("evt_1", "customer.created", 100),
                                  _event("evt_2", "customer.updated", 200),
                                  _event("evt_3", "product.created", 300)],
                          throttle=2, retry_after_s="2")
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    table = load(write_routing(tmp_path, ROUTING))
    with serve(double.app()) as base:
        async with httpx.AsyncClient() as client:
            pages = EventPages(client, Secret(DOUBLE_KEY), base_url=base, sleep=sleep)
            query = EventQuery(created_gte=150, types=("customer.updated", "product.created"))
            summary = await reconcile(aredis, keys, table, pages.pages(query), seen_retention_s=3600)
    assert [p.event_id for p in summary.events] == ["evt_3", "evt_2"]  # newest first, as listed
    assert slept == [2.0, 2.0]
    assert pages.requests == 3
    assert double.requests[-1] == {"limit": ["100"], "created[gte]": ["150"],
                                   "types[]": ["customer.updated", "product.created"]}


async def test_an_api_key_refused_is_an_error_that_does_not_quote_the_key(
    aredis: aioredis.Redis, keys: Keys, tmp_path: Path,
) -> None:
    table = load(write_routing(tmp_path, ROUTING))
    with serve(EventsDouble().app()) as base:
        async with httpx.AsyncClient() as client:
            pages = EventPages(client, Secret("sk_test_wrong_key_1234"), base_url=base)
            with pytest.raises(StripeApiError) as raised:
                await reconcile(aredis, keys, table, pages.pages(EventQuery(created_gte=0)),
                                seen_retention_s=3600)
    assert "401" in str(raised.value) and "STRIPE_API_KEY was refused" in str(raised.value)
    assert "sk_test" not in str(raised.value)


def test_the_command_reports_a_refused_key_without_printing_it(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_wrong_key_1234")
    with serve(EventsDouble().app()) as base:
        monkeypatch.setenv("STRIPE_API_BASE", base)
        assert main(["reconcile", "--since", SINCE]) == 1
    captured = capsys.readouterr()
    assert "STRIPE_API_KEY was refused" in captured.err
    assert "wrong_key" not in captured.out + captured.err


async def test_the_rate_limiter_spaces_requests_to_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    limiter = RateLimiter(25, clock=lambda: now[0], sleep=sleep)
    for _ in range(26):
        await limiter.wait()
    # 26 requests take one second: never more than 25 in any second (25 at once, the 26th a second later).
    assert slept == [1.0] and now[0] == pytest.approx(1.0)


async def test_a_5xx_or_a_network_error_is_retried_with_backoff_then_stops_without_the_key() -> None:
    answers = [httpx.Response(503), "network", httpx.Response(200, json={"data": [], "has_more": False})]

    def answer(request: httpx.Request) -> httpx.Response:
        reply = answers.pop(0) if answers else httpx.Response(502)
        if reply == "network":
            raise httpx.ConnectError(f"refused, with {request.headers}")
        assert isinstance(reply, httpx.Response)
        return reply

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        pages = EventPages(client, Secret("sk_test_abc9xQz"), sleep=sleep, max_retries=2)
        assert [page async for page in pages.pages(EventQuery(created_gte=0))] == []
        assert slept == [1.0, 2.0] and pages.requests == 3
        with pytest.raises(StripeApiError, match="answered 502; gave up after 3 tries") as raised:
            await anext(pages.pages(EventQuery(created_gte=0)))
    assert pages.requests == 6 and "9xQz" not in str(raised.value)


def test_reconcile_warns_when_since_is_before_what_the_dedupe_remembers(
    cli_env: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["reconcile", "--since", "2026-01-01T00:00:00Z"]) == 0
    err = capsys.readouterr().err
    assert "SEEN_RETENTION_S=604800" in err and "will run again" in err
