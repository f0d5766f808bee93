"""Customer profiles from customer.created / customer.updated / customer.deleted."""

from __future__ import annotations

from bus.envelope import Event
from workers.context import Context
from workers.customer.store.rows import Customer
from workers.customer.store.select import store_for


def customer_from_event(event: Event) -> Customer:
    obj = event.data_object
    return Customer(
        id=obj["id"],
        email=obj.get("email"),
        name=obj.get("name"),
        phone=obj.get("phone"),
        address=obj.get("address"),
        metadata=dict(obj.get("metadata") or {}),
        deleted=event.type == "customer.deleted" or obj.get("deleted") is True,
        livemode=bool(obj.get("livemode", event.livemode)),
        last_event_id=event.id,
        last_event_created=event.created,
    )


async def upsert(event: Event, ctx: Context) -> None:
    """Apply the event's customer unless the stored profile came from a newer event.

    `created` has one-second resolution. On a tie, customer.created loses (it
    is the first event of a customer, so anything in the same second is at
    least as new); updated and deleted win.
    """
    customer = customer_from_event(event)
    store = await store_for(ctx)
    applied = await store.upsert_customer(customer, ties_win=event.type != "customer.created")
    ctx.log.info("profile upserted" if applied else "profile newer than event; unchanged",
                 customer_id=customer.id, deleted=customer.deleted)
