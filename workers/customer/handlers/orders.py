"""Orders from Checkout: create on completion, then mark paid or failed as payments settle.

Stripe does not order its events. A Checkout event that arrives before its
order exists asks to be retried (RetryLater with a short delay) rather than
dropped; the store keeps a paid order paid and ignores events older than the
last one applied.

Order status comes from the session: "paid" when Checkout says so, "pending"
while a delayed payment method ("unpaid") settles, "setup" for a setup-mode
session (it saves a payment method; no money moves) and "no_payment_required"
for a session that needed no payment (a 100% discount, a trial). The last two
have no amounts to show and get no order confirmation email.

payment_intent.succeeded with no order is skipped, at once and whatever the
intent's age: it is never retried. Most such intents can never have an order
(created directly, Connect destination charges, subscription and invoice
payments; on API versions from 2025-03-31 a PaymentIntent no longer even says
it belongs to an invoice), and nothing on a PaymentIntent says it came from
Checkout (current API versions put no session id on it; only metadata the
merchant sets via payment_intent_data would). Skipping is safe for the ones
that do belong to a Checkout order, because an order's paid status never
depends on payment_intent.succeeded alone:

- Checkout completes a session only once its payment has succeeded or, for a
  delayed method, been submitted. checkout.session.completed carries
  `payment_status` itself, so the order it stores is already "paid";
- a delayed method completes "unpaid" (order "pending"), and its outcome is
  reported by checkout.session.async_payment_succeeded (or _failed), which
  names the session and retries until its order exists.

So when payment_intent.succeeded finds the order (it was stored first) it marks
it paid; when it does not, the order is still to come and will arrive paid, or
will be settled by the session's own event. A skipped payment intent loses only
its event marker, never the payment. Route
checkout.session.async_payment_succeeded to orders.mark_paid (routing.yaml
does) if you accept delayed payment methods; anything that makes an order's
paid status depend on payment_intent.succeeded alone must revisit this rule.
"""

from __future__ import annotations

from typing import Any

from bus.envelope import Event
from bus.errors import RetryLater
from workers.context import Context
from workers.customer.handlers.stripe_fields import ref
from workers.customer.store.rows import Order, OrderStatus, StatusChange
from workers.customer.store.select import store_for

# Long enough for the checkout.session.completed worker to commit, short enough to feel instant.
MISSING_ORDER_RETRY_S = 5.0
# Statuses of sessions that moved no money: no amounts to confirm, no confirmation email.
NO_PAYMENT_STATUSES: frozenset[OrderStatus] = frozenset({"setup", "no_payment_required"})


def order_status(session: dict[str, Any]) -> OrderStatus:
    """The order status a Checkout Session's mode and payment_status mean."""
    payment_status = session.get("payment_status")
    if session.get("mode") == "setup":
        return "setup"
    if payment_status == "no_payment_required":
        return "no_payment_required"
    return "paid" if payment_status == "paid" else "pending"


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
        status=order_status(session),
        # Where each API version puts it: collected_information.shipping_details from
        # 2025-03-31, shipping_details from 2022-08-01, shipping before that.
        shipping=(collected.get("shipping_details") or session.get("shipping_details")
                  or session.get("shipping")),
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


async def create_from_checkout(event: Event, ctx: Context) -> None:
    """checkout.session.completed: upsert the order."""
    order = order_from_session(event)
    store = await store_for(ctx)
    applied = await store.upsert_order(order)
    ctx.log.info("order upserted" if applied else "order newer than event; unchanged",
                 order_id=order.checkout_session_id, status=order.status)


async def mark_paid(event: Event, ctx: Context) -> None:
    """payment_intent.succeeded, checkout.session.async_payment_succeeded: mark the order paid.

    A session with no order yet is retried (its completion event is on its way);
    a payment intent with no order is skipped (see the module docstring).
    """
    store = await store_for(ctx)
    session_id, intent_id = _keys(event)
    order = await store.find_order(checkout_session_id=session_id, payment_intent_id=intent_id)
    if order is None:
        if event.data_object.get("object") != "checkout.session":
            # See the module docstring: never retried, whatever the intent's age.
            ctx.log.info("no order for payment intent; skipped", payment_intent=intent_id)
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
