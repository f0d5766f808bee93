"""email.order_confirmation: one confirmation per order event, through the outbox.

For checkout.session.completed the order is built from the event itself
(orders.order_from_session, as orders.create_from_checkout does), because the
pool runs an entry's handlers concurrently and the order row may not be
written yet. Only an event that does not carry the order reads it from the store.
"""

from __future__ import annotations

from bus.envelope import Event
from bus.errors import PermanentFailure, RetryLater
from workers.context import Context
from workers.handlers.orders import order_from_session
from workers.handlers.stripe_fields import ref
from workers.mail import outbox
from workers.mail.render import order_confirmation as render_confirmation
from workers.mail.transport import sender, transport_for
from workers.store.rows import Order, OutboxRow
from workers.store.select import store_for

TEMPLATE = "order_confirmation"
# For an event that does not carry the order: its row may not be stored yet.
MISSING_ORDER_RETRY_S = 5.0


async def order_confirmation(event: Event, ctx: Context) -> None:
    """Send the order confirmation once; a redelivered event finds the outbox row sent."""
    store = await store_for(ctx)
    session_id = ref(event.data_object.get("id"))
    order: Order | None
    if event.data_object.get("object") == "checkout.session":
        # The event carries the order; orders.create_from_checkout may run concurrently
        # (the pool gathers an entry's handlers), so do not wait for its row.
        order = order_from_session(event)
    else:
        order = await store.find_order(checkout_session_id=session_id)
    if order is None:
        raise RetryLater(f"order {session_id} not stored yet", defer_s=MISSING_ORDER_RETRY_S)
    if not order.customer_email:
        ctx.log.info("order has no customer email; no confirmation", order_id=session_id)
        return
    held = await outbox.claim(store, OutboxRow(
        event_id=event.id, template=TEMPLATE, recipient=order.customer_email,
        order_id=order.checkout_session_id,
    ))
    if held == "busy":
        raise RetryLater("another worker is sending this email", defer_s=outbox.CLAIM_LEASE_S)
    if not isinstance(held, outbox.Claim):
        ctx.log.info("confirmation already sent", order_id=session_id, outbox_status=held)
        return
    message = render_confirmation(order, sender=sender(ctx.settings),
                                  message_id=f"<{event.id}.{TEMPLATE}@stripe-fanout>")
    transport = await transport_for(ctx)
    try:
        await transport.send(message)
    except PermanentFailure as err:
        await outbox.fail(store, held, str(err))
        raise
    except Exception as err:
        await outbox.release(store, held, str(err))
        if isinstance(err, RetryLater):
            raise
        raise RetryLater(f"sending failed: {type(err).__name__}") from err
    await outbox.mark_sent(store, held)
    ctx.log.info("confirmation sent", order_id=session_id, transport=transport.name,
                 attempt_no=held.attempts)
