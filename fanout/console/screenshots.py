"""Screenshots of every console page for the README: `python -m fanout.console.screenshots [OUT_DIR]`.

It fills a console with sample data (the shipped routing.yaml, the sample events of
`fanout send`, the built-in handlers on a throw-away SQLite store; the admin pool's
`forward:` has no URL, so its events are dead-lettered, as `fanout worker` does), then
drives Debian's chromium with Playwright. It uses the local Redis under a key prefix of
its own, deleted afterwards (or an in-process Redis when none answers).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bus.keys import Keys
from bus.routing import RoutingTable, load_routing
from bus.settings import Settings

OUT_DIR = Path("docs/screenshots")
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
# Retries of a few milliseconds, so that the sample's failures reach the dead letters at once.
FAST = "max_attempts: 3, timeout_s: 5, backoff_base_s: 0.02, backoff_max_s: 0.05"


async def _publish(redis: Any, keys: Keys, table: RoutingTable, event_type: str, **ids: str) -> str:
    import orjson

    from fanout.samples import sample_event
    from ingress.parse import routing_fields
    from ingress.publish import Publisher

    body = orjson.dumps(sample_event(event_type, ids=ids or None), option=orjson.OPT_INDENT_2)
    fields = routing_fields(body)
    await Publisher(redis, keys, retention_s=3600, budget_s=2.0).publish(
        fields, table.match(event_type), table.version, body)
    return fields.id


async def fill(settings: Settings, table: RoutingTable, phase: str) -> dict[str, str]:
    """Sample history. "history": processed events and dead letters; "activity": more of them while
    the console samples its rates; "backlog": entries pending in a consumer and not read yet."""
    from bus.connection import async_redis
    from workers.supervision.runner import run_pool

    keys = Keys(settings.key_prefix)
    redis = async_redis(settings.redis_url)
    try:
        if phase == "backlog":
            for i in range(5):
                await _publish(redis, keys, table, "payment_intent.succeeded", customer=f"cus_sample{i}")
            await redis.xreadgroup("customer", "worker-7f3a", {keys.stream("customer"): ">"}, count=2)
            return {}
        checkout = ""
        for i in range(6 if phase == "history" else 12):
            n = f"{phase[0]}{i}"
            ids = {"customer": f"cus_sample{n}", "checkout_session": f"cs_sample{n}"}
            checkout = await _publish(redis, keys, table, "checkout.session.completed", **ids)
            await _publish(redis, keys, table, "customer.created", customer=f"cus_sample{n}")
        await _publish(redis, keys, table, "charge.refunded")
        await _publish(redis, keys, table, "product.updated")
        for pool in table.pools:
            await run_pool(settings, pool, redis=redis, burst=True)
        return {"event": checkout, "object": "cus_sampleh2"}
    finally:
        await redis.aclose()


def shoot(base: str, out: Path, names: dict[str, str], routing: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    shots: list[Path] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            desk = browser.new_page(viewport={"width": 1280, "height": 800})

            def take(page: Any, name: str) -> None:
                path = out / f"{name}.png"
                page.screenshot(path=str(path), full_page=True)
                shots.append(path)

            desk.goto(base + "/")
            take(desk, "overview")
            desk.goto(f"{base}/events/{names['event']}")
            for summary in desk.locator("section.copy details summary").all():
                summary.click()
            take(desk, "event")
            desk.goto(base + "/dlq/admin")
            desk.locator("li.letter details summary").first.click()
            take(desk, "dlq")
            desk.goto(base + "/dlq/admin/replay-matching?type=checkout.*")
            take(desk, "dlq-replay-preview")
            desk.goto(base + "/routes?type=customer.subscription.created")
            edited = routing.replace("charge.refunded: {admin: [forward:admin_backend]}",
                                     "charge.refunded: {customer: [analytics.track], admin: [forward:admin_backend]}")
            desk.fill("textarea[name=routing]", edited)
            desk.click("form[action='/routes/diff#diff'] button")
            desk.wait_for_selector("#diff-result")
            take(desk, "routes")
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                     is_mobile=True, has_touch=True)
            phone.goto(base + "/")
            take(phone, "overview-phone")
        finally:
            browser.close()
    return shots


def main(argv: list[str]) -> int:
    from fanout import embedded
    from fanout.console.app import create_app
    from fanout.console.cli import ConsoleThread, free_port

    out = Path(argv[0]) if argv else OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    store = embedded.resolve(os.environ.get("REDIS_URL"))
    work = Path(tempfile.mkdtemp(prefix="fanout-screenshots-"))
    shipped = Path("routing.yaml").read_text()
    routing = work / "routing.yaml"
    routing.write_text(re.sub(r"max_attempts: \d+, timeout_s: \d+", FAST, shipped))
    prefix = f"screenshots-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env({**os.environ, "REDIS_URL": store.url, "FANOUT_PREFIX": prefix,
                                  "ROUTING_FILE": str(routing), "FANOUT_SQLITE_PATH": str(work / "db.sqlite3"),
                                  "FANOUT_MAIL_DIR": str(work / "mail"), "ADMIN_BACKEND_URL": ""})
    table = load_routing(routing)
    try:
        names = asyncio.run(fill(settings, table, "history"))
        app = create_app(settings, sample_interval_s=1.0)
        console = ConsoleThread(settings, "127.0.0.1", free_port("127.0.0.1"), app=app)
        console.start()
        try:
            time.sleep(1.5)  # the console's first rate samples, then events while it samples
            asyncio.run(fill(settings, table, "activity"))
            asyncio.run(fill(settings, table, "backlog"))
            time.sleep(1.5)
            shots = shoot(console.url.rstrip("/"), out, names, routing.read_text())
        finally:
            console.stop()
    finally:
        _clean(store.url, prefix)
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    for path in shots:
        print(path)
    return 0


def _clean(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        found = list(client.scan_iter(match=Keys(prefix).pattern(), count=1000))
        if found:
            client.delete(*found)
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
