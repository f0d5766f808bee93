"""Building handler inputs for customer-pool tests: events from fanout.samples, and contexts."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
import structlog

from bus.envelope import Event
from bus.settings import Settings
from fanout import testing
from fanout.samples import sample_event
from workers.context import Context
from workers.resources import Resources


def event_from(payload: dict[str, Any], handlers: tuple[str, ...] = ()) -> Event:
    """The Event a worker would read for this Stripe payload (the public helper users test with)."""
    return testing.event(payload, handlers)


def make_event(event_type: str, *, ids: dict[str, str] | None = None, created: int | None = None,
               event_id: str | None = None, **changes: Any) -> Event:
    """A sample event of `event_type`; `changes` override fields of its data.object."""
    payload = sample_event(event_type, ids=ids, created=created, event_id=event_id)
    payload["data"]["object"].update(changes)
    return event_from(payload)


def make_context(settings: Settings, *, handler: str = "test", attempt: int = 1,
                 resources: Resources | None = None) -> Context:
    return Context(
        pool="customer", handler=handler, attempt=attempt,
        log=structlog.get_logger().bind(pool="customer", handler=handler),
        redis=aioredis.Redis.from_url(settings.redis_url),  # handlers here never touch Redis
        settings=settings, resources=resources or Resources(),
    )


def checkout_ids(tag: str = "") -> dict[str, str]:
    """Object ids shared by every event of one checkout."""
    suffix = f"{tag}{time.time_ns()}"
    return {"customer": f"cus_{suffix}", "session": f"cs_test_{suffix}",
            "payment_intent": f"pi_{suffix}", "charge": f"ch_{suffix}"}


def customer_pool_env(*, supabase_url: str | None, sqlite_path: str | None,
                      mail_dir: str | None = None, smtp_url: str | None = None) -> dict[str, str]:
    """Environment variables that point the customer pool at a test store and mail sink."""
    env: dict[str, str] = {}
    if supabase_url:
        env["SUPABASE_URL"] = supabase_url
        env["SUPABASE_SERVICE_ROLE_KEY"] = "test-service-role-key"
    if sqlite_path:
        env["FANOUT_SQLITE_PATH"] = sqlite_path
    if mail_dir:
        env["FANOUT_MAIL_DIR"] = mail_dir
    if smtp_url:
        env["SMTP_URL"] = smtp_url
        env["SMTP_FROM"] = "Shop <orders@shop.test>"
    return env


def resolve_handler(name: str) -> Any:
    """The callable behind a built-in handler name (as the pool runtime resolves it)."""
    import importlib

    from bus.handler_names import BUILTIN_HANDLERS

    module, _, attr = BUILTIN_HANDLERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
