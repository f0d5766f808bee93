"""Orders from Checkout: create on completion, then mark paid or failed as payments settle.

Stripe does not order its events. A payment event that arrives before its
order exists asks to be retried (RetryLater with a short delay) rather than
dropped; the store keeps a paid order paid and ignores events older than the
last one applied.

Not every payment_intent.succeeded is a Checkout payment. Subscriptions,
invoices and PaymentIntents created directly never get an order, so waiting
for one would retry until max_attempts and dead-letter every such payment.
When no order is found for a payment intent, mark_paid skips it (info log,
no retry) if it cannot belong to a Checkout order:

- its `invoice` is set (subscription and invoice payments), or
- it carries no Checkout linkage (`metadata.checkout_session`) and was created
  more than CHECKOUT_ORDER_WINDOW_S (1 hour) ago: a Checkout order would have
  been stored by then.

A payment intent linked to a Checkout session, or one younger than the
window, still asks to be retried, since its order may be in flight.

The window is measured against the wall clock when the event is handled, not
when it happened. After an outage, a backlog or a `dlq replay` of more than an
hour, a real Checkout payment intent whose payment_intent.succeeded overtook
its checkout.session.completed (Checkout sets no PaymentIntent metadata unless
asked to) is therefore skipped rather than retried. That is safe only because
mark_paid on a payment intent is never the sole way an order becomes paid:

- checkout.session.completed carries `payment_status` itself, so the order it
  stores is already paid ("paid" or "no_payment_required");
- a delayed payment method completes "unpaid", and its money is reported by
  checkout.session.async_payment_succeeded, which names the session and is
  never skipped (it retries until its order exists).

A skipped payment intent loses only its event marker, never the payment.
Anything that makes an order's paid status depend on payment_intent.succeeded
alone must revisit this rule.
"""

from __future__ import annotations

import time
from typing import Any

from bus.envelope import Event
from bus.errors import RetryLater
from workers.context import Context
from workers.customer.handlers.stripe_fields import ref
from workers.customer.store.rows import Order, OrderStatus, StatusChange
from workers.customer.store.select import store_for

# Long enough for the checkout.session.completed worker to commit, short enough to feel instant.
MISSING_ORDER_RETRY_S = 5.0
# How long after a payment intent's creation its Checkout order may still be in flight.
CHECKOUT_ORDER_WINDOW_S = 3600
# Checkout's payment_status values that mean the money is in.
PAID_STATUSES = frozenset({"paid", "no_payment_required"})


def order_status(payment_status: str) -> OrderStatus:
    """An order is paid when Checkout says so; "unpaid" (async methods) stays pending."""
    return "paid" if payment_status in PAID_STATUSES else "pending"


def order_from_session(event: Event) -> Order:
    """The order row a checkout.session.* event describes."""
    session = event.data_object
    details: dict[str, Any] = session.get("customer_details") or {}
    totals: dict[str, Any] = session.get("total_details") or {}
    collected: dict[str, Any] = session.get("collected_information") or {}
    payment_status = str(session.get("payment_status") or "unpaid")
    return Order(
        checkout_session_id=session["id"],
        payment_intent_id=ref(session.get("payment_intent")),
        customer_id=ref(session.get("customer")),
        customer_email=details.get("email") or session.get("customer_email"),
        customer_name=details.get("name"),
        amount_subtotal=session.get("amount_subtotal"),
        amount_total=session.get("amount_total"),
        amount_shipping=totals.get("amount_shipping"),
        currency=session.get("currency"),
        payment_status=payment_status,
        status=order_status(payment_status),
        shipping=session.get("shipping_details") or collected.get("shipping_details"),
        metadata=dict(session.get("metadata") or {}),
        livemode=bool(session.get("livemode", event.livemode)),
        last_event_id=event.id,
        last_event_created=event.created,
    )


def _keys(event: Event) -> tuple[str | None, str | None]:
    """(checkout session id, payment intent id) named by a session or payment-intent event."""
    obj = event.data_object
    if obj.get("object") == "checkout.session":
        return ref(obj.get("id")), ref(obj.get("payment_intent"))
    metadata: dict[str, Any] = obj.get("metadata") or {}
    return ref(metadata.get("checkout_session")), ref(obj.get("id"))


def _not_from_checkout(obj: dict[str, Any], event: Event, now: float) -> str | None:
    """Why a payment intent with no order cannot belong to a Checkout order; None if it may."""
    if obj.get("object") != "payment_intent":
        return None
    if obj.get("invoice"):
        return "invoice payment"
    metadata: dict[str, Any] = obj.get("metadata") or {}
    if metadata.get("checkout_session"):
        return None
    created = obj.get("created")
    created_s = created if isinstance(created, int) else event.created
    if now - created_s > CHECKOUT_ORDER_WINDOW_S:
        return "no checkout linkage and no order within the checkout window"
    return None


async def create_from_checkout(event: Event, ctx: Context) -> None:
    """checkout.session.completed: upsert the order."""
    order = order_from_session(event)
    store = await store_for(ctx)
    applied = await store.upsert_order(order)
    ctx.log.info("order upserted" if applied else "order newer than event; unchanged",
                 order_id=order.checkout_session_id, status=order.status)


async def mark_paid(event: Event, ctx: Context) -> None:
    """payment_intent.succeeded, checkout.session.async_payment_succeeded: mark the order paid."""
    store = await store_for(ctx)
    session_id, intent_id = _keys(event)
    order = await store.find_order(checkout_session_id=session_id, payment_intent_id=intent_id)
    if order is None:
        reason = _not_from_checkout(event.data_object, event, time.time())
        if reason is not None:
            ctx.log.info("payment intent is not a checkout order; skipped",
                         payment_intent=intent_id, reason=reason)
            return
        raise RetryLater(
            f"no order yet for session {session_id} / payment intent {intent_id}",
            defer_s=MISSING_ORDER_RETRY_S,
        )
    changed = await store.set_order_status(StatusChange(
        checkout_session_id=order.checkout_session_id, status="paid", payment_status="paid",
        event_id=event.id, event_created=event.created,
    ))
    ctx.log.info("order marked paid" if changed else "order already paid",
                 order_id=order.checkout_session_id)


async def mark_failed(event: Event, ctx: Context) -> None:
    """checkout.session.async_payment_failed, payment_intent.payment_failed: mark the order failed.

    A failed payment intent with no order is not ours to track (a customer may
    retry a card inside Checkout before the session completes), so it is
    ignored; a failed Checkout session always has an order, so a missing one
    means its completion event is still on its way.
    """
    store = await store_for(ctx)
    session_id, intent_id = _keys(event)
    order = await store.find_order(checkout_session_id=session_id, payment_intent_id=intent_id)
    if order is None:
        if event.data_object.get("object") == "checkout.session":
            raise RetryLater(f"no order yet for session {session_id}",
                             defer_s=MISSING_ORDER_RETRY_S)
        ctx.log.info("no order for failed payment intent; nothing to mark", payment_intent=intent_id)
        return
    error: dict[str, Any] = event.data_object.get("last_payment_error") or {}
    reason = error.get("message") or error.get("code") or event.type
    changed = await store.set_order_status(StatusChange(
        checkout_session_id=order.checkout_session_id, status="failed",
        payment_status=str(event.data_object.get("payment_status") or "unpaid"),
        event_id=event.id, event_created=event.created, failure_reason=str(reason),
    ))
    ctx.log.info("order marked failed" if changed else "order paid or newer; unchanged",
                 order_id=order.checkout_session_id)
