"""The console in a real headless Chromium (Debian's chromium, driven by Playwright), as an operator uses it.

The console is served by uvicorn on a free loopback port, over the test's own key
prefix in the real Redis. One browser serves every test (they are all in this module;
the fixture is module-scoped because sync Playwright holds an event loop running in the
main thread while it is open, which other tests' asyncio.run() would trip on); each test
opens a fresh context (its own cookies).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from bus.settings import Secret
from fanout.console.app import create_app
from tests.console_support import Seeded, seed
from tests.live import serve
from tests.support import runs, worker_env
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
T = TypeVar("T")
TOKEN = "browser-test-console-token-0123456789"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium package"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a loop of its own: sync Playwright holds this thread's loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture
def seeded(prefix: str, tmp_path: Path) -> Seeded:
    return in_thread(seed(prefix, tmp_path))


@pytest.fixture
def console(seeded: Seeded) -> Iterator[str]:
    with serve(create_app(seeded.settings)) as url:
        yield url


def test_the_overview_shows_a_pools_lag_as_fanout_status_json_does(
    page: Any, console: str, seeded: Seeded
) -> None:
    done = subprocess.run([sys.executable, "-m", "fanout.cli", "status", "--json"], check=True,
                          env=worker_env(seeded.settings.key_prefix, seeded.routing), capture_output=True,
                          text=True, timeout=30)
    status = orjson.loads(done.stdout)["pools"]
    page.goto(console + "/")
    for pool in ("alpha", "beta", "gamma"):
        row = page.locator(f'tr[data-pool="{pool}"]')
        assert row.locator('[data-field="lag"]').inner_text() == str(status[pool]["lag"])
        assert row.locator('[data-field="pending"]').inner_text() == str(status[pool]["pending"])
    assert status["beta"]["lag"] == 1  # evt_waiting1 is not read yet


def test_the_overview_refreshes_itself(page: Any, seeded: Seeded) -> None:
    with serve(create_app(seeded.settings, refresh_s=0.5)) as url:
        page.goto(url + "/")
        lag = page.locator('tr[data-pool="beta"] [data-field="lag"]')
        assert lag.inner_text() == "1"
        in_thread(publish_later(seeded))
        # No navigation: the page's own script fetches it again and swaps the figures in.
        page.wait_for_function(
            """() => document.querySelector('tr[data-pool="beta"] [data-field="lag"]').textContent === "2" """,
            timeout=5_000)
        assert page.url == url + "/"


async def publish_later(seeded: Seeded) -> None:
    import redis.asyncio as aioredis

    from tests.conftest import TEST_REDIS_URL
    from tests.support import load, publish

    client = aioredis.Redis.from_url(TEST_REDIS_URL)
    try:
        await publish(client, seeded.keys, load(seeded.routing), "test.later", "evt_waiting2")
    finally:
        await client.aclose()


def test_searching_an_event_id_shows_its_handlers(page: Any, console: str, seeded: Seeded) -> None:
    page.goto(console + "/")
    page.fill('input[name="q"]', seeded.dead)
    page.press('input[name="q"]', "Enter")
    page.wait_for_url(f"**/events/{seeded.dead}")
    stream_copy = page.locator('section.copy[data-where="stream"]')
    handlers = stream_copy.locator("li.handler")
    states = {handlers.nth(i).get_attribute("data-handler"): handlers.nth(i).locator(".state").inner_text()
              for i in range(handlers.count())}
    assert states == {"tests.handlers_for_tests:record": "done",
                      "tests.handlers_for_tests:fail_if_poison": "failed"}
    body = page.locator("details.body")
    assert not body.evaluate("element => element.open")  # the raw body is collapsed until asked for
    body.locator("summary").click()
    assert "marker-of-a-raw-body" in body.locator("pre").inner_text()


def test_clicking_replay_on_a_dead_letter_runs_its_handler(page: Any, console: str, seeded: Seeded) -> None:
    page.goto(console + "/dlq/gamma")
    letter = page.locator("li.letter", has_text=seeded.flaky)
    letter.locator("summary").click()  # the traceback, on click
    assert "RuntimeError: failing on purpose" in letter.locator("pre").inner_text()
    letter.locator("button.replay").click()
    page.wait_for_url("**/dlq/gamma?replayed=1*")
    assert "1 put back in the stream" in page.locator("#notice").inner_text()

    async def burst() -> dict[str, int]:
        await run_pool(seeded.settings, "gamma", burst=True)
        import redis.asyncio as aioredis

        from tests.conftest import TEST_REDIS_URL

        client = aioredis.Redis.from_url(TEST_REDIS_URL)
        try:
            return await runs(client, seeded.settings.key_prefix, "fail_twice")
        finally:
            await client.aclose()

    assert in_thread(burst()) == {seeded.flaky: 3}  # two failed runs, then the replayed one succeeded
    page.goto(f"{console}/events/{seeded.flaky}")
    assert page.locator('section.copy li.handler .state').all_inner_texts()[-1] == "done"
    assert page.locator('section.copy[data-where="dead letters"]').count() == 0


def test_with_a_token_the_console_refuses_requests_without_it_and_posts_without_csrf(
    page: Any, seeded: Seeded
) -> None:
    settings = replace(seeded.settings, console_token=Secret(TOKEN))
    with serve(create_app(settings)) as url:
        page.goto(url + "/dlq/alpha")
        page.wait_for_url("**/login?next=/dlq/alpha")
        assert page.request.get(url + "/dlq/alpha", max_redirects=0).status == 401
        page.fill('input[name="token"]', "not-the-token")
        page.click('button[type="submit"]')
        assert "not the console" in page.locator("main").inner_text()
        page.fill('input[name="token"]', TOKEN)
        page.click('button[type="submit"]')
        page.wait_for_url("**/dlq/alpha")
        assert seeded.dead in page.locator("main").inner_text()
        # Logged in (the cookie travels with page.request), a POST without the CSRF token is refused.
        refused = page.request.post(url + "/dlq/alpha/replay", form={"id": "1-1"})
        assert refused.status == 403
        cookies = {c["name"]: c for c in page.context.cookies()}
        session = cookies["fanout_console_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict" and TOKEN not in session["value"]
