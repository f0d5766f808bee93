"""One `customer_events` row per (event, kind): the analytics trail of the customer pool."""

from __future__ import annotations

from bus.envelope import Event
from workers.context import Context
from workers.customer.handlers.stripe_fields import amount_of, customer_of, ref
from workers.customer.store.rows import CustomerEvent
from workers.customer.store.select import store_for

# Stripe event type -> the business fact it records; other types keep their own name.
KINDS: dict[str, str] = {
    "checkout.session.completed": "order_placed",
    "checkout.session.async_payment_succeeded": "payment_succeeded",
    "checkout.session.async_payment_failed": "payment_failed",
    "payment_intent.succeeded": "payment_succeeded",
    "payment_intent.payment_failed": "payment_failed",
    "customer.created": "customer_signed_up",
    "customer.updated": "customer_updated",
    "customer.deleted": "customer_deleted",
}


def customer_event(event: Event) -> CustomerEvent:
    obj = event.data_object
    return CustomerEvent(
        event_id=event.id,
        kind=KINDS.get(event.type, event.type),
        event_type=event.type,
        event_created=event.created,
        customer_id=customer_of(obj),
        object_id=ref(obj.get("id")),
        amount=amount_of(obj),
        currency=obj.get("currency"),
        properties={"livemode": event.livemode, "account": event.account},
    )


async def track(event: Event, ctx: Context) -> None:
    """Record the event once; a redelivery finds its row and writes nothing."""
    row = customer_event(event)
    store = await store_for(ctx)
    created = await store.track(row)
    ctx.log.info("customer event recorded" if created else "customer event already recorded",
                 kind=row.kind)
