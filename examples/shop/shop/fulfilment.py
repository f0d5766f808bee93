"""Record each paid order, and ask the warehouse to ship it: two handlers of the `shop` pool.

Delivery is at least once and in no particular order, so both are idempotent:
the order is an upsert keyed by the Checkout Session id that never lets an
older event overwrite a newer one, and the shipment request carries an
idempotency key the warehouse dedupes on.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import httpx

from bus.envelope import Event
from bus.errors import PermanentFailure, RetryLater
from workers.context import Context

SCHEMA = """
create table if not exists orders (
    session_id text primary key,
    email text,
    amount_total integer not null,
    currency text not null,
    event_created integer not null
)
"""
# `where`: an event older than the one already applied changes nothing (Stripe does not order events).
UPSERT = """
insert into orders (session_id, email, amount_total, currency, event_created)
values (:session_id, :email, :amount_total, :currency, :event_created)
on conflict (session_id) do update set
    email = excluded.email, amount_total = excluded.amount_total,
    currency = excluded.currency, event_created = excluded.event_created
where excluded.event_created >= orders.event_created
"""


def record_order(event: Event, ctx: Context) -> None:
    """A sync handler: the pool runs it in its thread pool, so blocking sqlite3 calls are fine."""
    session = event.data_object
    if session.get("payment_status") != "paid":
        ctx.log.info("shop.order_not_paid_yet", session=session["id"])
        return  # checkout.session.async_payment_succeeded records it later
    path = Path(ctx.settings.env.get("SHOP_DB", "var/shop.sqlite3"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # commits, then closes
        db.execute(SCHEMA)
        db.execute(UPSERT, {
            "session_id": session["id"],
            "email": (session.get("customer_details") or {}).get("email"),
            "amount_total": session["amount_total"],
            "currency": session["currency"],
            "event_created": event.created,
        })
    ctx.log.info("shop.order_recorded", session=session["id"])  # ids only: never the body


async def warehouse(ctx: Context) -> httpx.AsyncClient:
    """One HTTP client per worker process, shared by every call (tests put a fake one here)."""
    url = ctx.settings.env.get("WAREHOUSE_URL")
    if not url:
        # Retrying cannot set the variable: dead-letter now, replay once it is set.
        raise PermanentFailure("WAREHOUSE_URL is not set")

    async def build() -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=url, timeout=5.0)

    async def close(client: httpx.AsyncClient) -> None:
        await client.aclose()

    return await ctx.resources.get("shop.warehouse", build, close)


async def request_shipment(event: Event, ctx: Context) -> None:
    """An async handler: it awaits the network without holding up the pool's other entries."""
    session = event.data_object
    if session.get("payment_status") != "paid":
        return
    client = await warehouse(ctx)
    try:
        response = await client.post(
            "/shipments",
            json={"order": session["id"], "ship_to": session.get("shipping_details")},
            # The order, not the event: two events about one order must not ship it twice.
            headers={"Idempotency-Key": f"ship-{session['id']}"},
        )
    except httpx.TransportError as err:
        raise RetryLater(f"warehouse unreachable: {type(err).__name__}") from err
    if response.status_code == 429:
        raise RetryLater("warehouse is busy", defer_s=float(response.headers.get("Retry-After", "30")))
    if 400 <= response.status_code < 500:
        raise PermanentFailure(f"warehouse refused the shipment: HTTP {response.status_code}")
    response.raise_for_status()  # a 5xx raises: retried with backoff, like any exception
    ctx.log.info("shop.shipment_requested", session=session["id"], status=response.status_code)
