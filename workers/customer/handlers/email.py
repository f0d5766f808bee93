"""email.order_confirmation: one confirmation per order event, through the outbox.

For checkout.session.completed the order is built from the event itself
(orders.order_from_session, as orders.create_from_checkout does), because the
pool runs an entry's handlers concurrently and the order row may not be
written yet. Only an event that does not carry the order reads it from the store.

A send interrupted by the pool's timeout (or a shutdown) is waited for,
bounded by the transport's total timeout (SMTP_TOTAL_TIMEOUT_S, 15 s, below
the pool's timeout_s) plus RECORD_GRACE_S, and its outcome is recorded, so a
later delivery finds the row `sent` instead of sending again.
"""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

from bus.envelope import Event
from bus.errors import PermanentFailure, RetryLater
from workers.context import Context
from workers.customer.handlers.orders import order_from_session
from workers.customer.handlers.stripe_fields import ref
from workers.customer.mail import outbox
from workers.customer.mail.render import order_confirmation as render_confirmation
from workers.customer.mail.transport import SMTP_TOTAL_TIMEOUT_S, Transport, sender, transport_for
from workers.customer.store.base import Store
from workers.customer.store.rows import Order, OutboxRow
from workers.customer.store.select import store_for

TEMPLATE = "order_confirmation"
# For an event that does not carry the order: its row may not be stored yet.
MISSING_ORDER_RETRY_S = 5.0
# After an interrupted send: time, beyond the transport's total timeout, to record its outcome.
RECORD_GRACE_S = 5.0


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
    # The send and its outcome run as their own task: if the pool's timeout (or a shutdown)
    # cancels this handler mid-send, the SMTP thread cannot be stopped, so wait for it
    # (bounded: the transport caps the whole exchange) and record what it did. Otherwise the
    # row would stay `sending` and, after the lease, another delivery would send it again.
    work = asyncio.ensure_future(_send_and_record(store, held, transport, message))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        if not work.done():
            grace_s = getattr(transport, "total_timeout_s", SMTP_TOTAL_TIMEOUT_S) + RECORD_GRACE_S
            ctx.log.warning("confirmation send interrupted; waiting for it to finish",
                            order_id=session_id, wait_s=grace_s)
            await asyncio.wait({work}, timeout=grace_s)
        if work.done() and not work.cancelled():
            error = work.exception()  # retrieved; the pool records the cancellation
            ctx.log.info("interrupted confirmation finished",
                         order_id=session_id, outcome="sent" if error is None else type(error).__name__)
        else:
            work.add_done_callback(_retrieve)
        raise
    ctx.log.info("confirmation sent", order_id=session_id, transport=transport.name,
                 attempt_no=held.attempts)


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


async def _send_and_record(store: Store, held: outbox.Claim, transport: Transport,
                           message: EmailMessage) -> None:
    """Send, then record the outcome on the claimed outbox row."""
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
