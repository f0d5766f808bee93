"""Helpers for driving an ingress app in-process, and signing test deliveries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson

from bus.settings import Settings
from bus.signing import stripe_signature
from fanout.samples import sample_event
from ingress.app import Ingress, create_app

from .conftest import TEST_SECRET

WEBHOOK = "/webhooks/stripe"


def signed(event: dict[str, Any] | bytes, secret: str = TEST_SECRET, ts: int | None = None) -> tuple[bytes, dict[str, str]]:
    body = event if isinstance(event, bytes) else orjson.dumps(event, option=orjson.OPT_INDENT_2)
    return body, {"Stripe-Signature": stripe_signature(body, secret, timestamp=ts),
                  "Content-Type": "application/json"}


def delivery(event_type: str = "checkout.session.completed", **kwargs: Any) -> tuple[bytes, dict[str, str]]:
    return signed(sample_event(event_type, **kwargs))


@asynccontextmanager
async def running(settings: Settings, **kwargs: Any) -> AsyncIterator[tuple[Ingress, httpx.AsyncClient]]:
    """An ingress started (watcher included) and an HTTP client wired to it in-process."""
    app = create_app(settings, **kwargs)
    await app.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingress") as client:
            yield app, client
    finally:
        await app.stop()
