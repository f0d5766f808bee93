"""orders.create_from_checkout, orders.mark_paid, orders.mark_failed on both stores."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from bus.errors import RetryLater
from tests.customer.conftest import ContextFactory
from tests.customer.helpers import checkout_ids, make_event
from workers.customer.handlers import orders
from workers.customer.store.base import Store
from workers.customer.store.rows import StatusChange
from workers.customer.store.sqlite_store import SqliteStore
from workers.customer.store.supabase_store import SupabaseStore

pytestmark = pytest.mark.anyio
T0 = 1_780_000_000


async def test_checkout_completed_creates_a_paid_order_with_its_details(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    event = make_event("checkout.session.completed", ids=ids, created=T0)

    await orders.create_from_checkout(event, await make_ctx())

    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None
    assert order.status == "paid" and order.payment_status == "paid"
    assert order.payment_intent_id == ids["payment_intent"]
    assert order.customer_id == ids["customer"]
    assert order.customer_email == "jenny.rosen@example.com"
    assert (order.amount_total, order.amount_subtotal, order.amount_shipping) == (4999, 4500, 499)
    assert order.currency == "usd"
    assert order.metadata == {"cart_id": "cart_1042"}
    assert order.shipping is not None and order.shipping["address"]["city"] == "Kansas City"
    assert (order.last_event_id, order.last_event_created) == (event.id, T0)


async def test_unpaid_checkout_stays_pending(store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    event = make_event("checkout.session.completed", ids=ids, payment_status="unpaid")

    await orders.create_from_checkout(event, await make_ctx())

    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "pending"


async def test_create_from_checkout_twice_leaves_one_unchanged_order(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    event = make_event("checkout.session.completed", ids=ids, created=T0)
    ctx = await make_ctx()

    await orders.create_from_checkout(event, ctx)
    first = await store.find_order(checkout_session_id=ids["session"])
    await orders.create_from_checkout(event, ctx)

    assert await store.find_order(payment_intent_id=ids["payment_intent"]) == first


async def test_async_payment_succeeded_marks_a_pending_order_paid(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    ctx = await make_ctx()
    await orders.create_from_checkout(make_event(
        "checkout.session.completed", ids=ids, created=T0, payment_status="unpaid"), ctx)

    succeeded = make_event("checkout.session.async_payment_succeeded", ids=ids, created=T0 + 60)
    await orders.mark_paid(succeeded, ctx)
    await orders.mark_paid(succeeded, ctx)  # redelivered: nothing more happens

    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "paid"
    assert order.last_event_id == succeeded.id


async def test_payment_intent_succeeded_before_checkout_completed_ends_paid(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    ctx = await make_ctx()
    now = int(time.time())  # a payment intent created just now: its order may be in flight
    paid = make_event("payment_intent.succeeded", ids=ids, created=now + 1, metadata={})
    completed = make_event("checkout.session.completed", ids=ids, created=now,
                           payment_status="unpaid")

    with pytest.raises(RetryLater) as raised:
        await orders.mark_paid(paid, ctx)
    assert raised.value.defer_s is not None and raised.value.defer_s <= 10
    assert await store.find_order(checkout_session_id=ids["session"]) is None

    await orders.create_from_checkout(completed, ctx)
    await orders.mark_paid(paid, ctx)  # the pool's retry

    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "paid"


async def test_late_redelivered_unpaid_checkout_does_not_undo_payment(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    ctx = await make_ctx()
    completed = make_event("checkout.session.completed", ids=ids, created=T0,
                           payment_status="unpaid")
    await orders.create_from_checkout(completed, ctx)
    await orders.mark_paid(make_event("payment_intent.succeeded", ids=ids, created=T0), ctx)

    await orders.create_from_checkout(completed, ctx)  # Stripe redelivers the older event

    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "paid"


async def test_async_payment_failed_marks_order_failed_with_reason(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    ctx = await make_ctx()
    await orders.create_from_checkout(make_event(
        "checkout.session.completed", ids=ids, created=T0, payment_status="unpaid"), ctx)

    failed = make_event("checkout.session.async_payment_failed", ids=ids, created=T0 + 60)
    await orders.mark_failed(failed, ctx)
    await orders.mark_failed(failed, ctx)

    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "failed"
    assert order.failure_reason == "checkout.session.async_payment_failed"


async def test_payment_failed_after_payment_succeeded_leaves_order_paid(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    ctx = await make_ctx()
    await orders.create_from_checkout(make_event(
        "checkout.session.completed", ids=ids, created=T0), ctx)

    await orders.mark_failed(make_event("payment_intent.payment_failed", ids=ids,
                                        created=T0 + 30), ctx)

    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "paid"


async def test_payment_failed_without_an_order_is_ignored(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    await orders.mark_failed(make_event("payment_intent.payment_failed", ids=ids,
                                        metadata={}), await make_ctx())
    assert await store.find_order(payment_intent_id=ids["payment_intent"]) is None


async def test_async_payment_failed_before_its_order_asks_for_a_retry(
        make_ctx: ContextFactory) -> None:
    with pytest.raises(RetryLater):
        await orders.mark_failed(make_event("checkout.session.async_payment_failed",
                                            ids=checkout_ids()), await make_ctx())


# --- payment intents that are not Checkout's -----------------------------------------------------


async def test_invoice_payment_intent_without_an_order_is_skipped_not_retried(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    paid = make_event("payment_intent.succeeded", ids=ids, created=int(time.time()),
                      metadata={}, invoice=f"in_{ids['session']}")
    with capture_logs() as logs:
        await orders.mark_paid(paid, await make_ctx())
    assert [e for e in logs if e["event"] == "payment intent is not a checkout order; skipped"]
    assert await store.find_order(payment_intent_id=ids["payment_intent"]) is None


async def test_direct_payment_intent_past_the_checkout_window_is_skipped(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    created = int(time.time()) - orders.CHECKOUT_ORDER_WINDOW_S - 60
    paid = make_event("payment_intent.succeeded", ids=ids, metadata={})
    paid.data_object["created"] = created
    await orders.mark_paid(paid, await make_ctx())  # no RetryLater: nothing will ever come
    assert await store.find_order(payment_intent_id=ids["payment_intent"]) is None


async def test_direct_payment_intent_inside_the_checkout_window_still_retries(
        make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    paid = make_event("payment_intent.succeeded", ids=ids, metadata={})
    paid.data_object["created"] = int(time.time()) - 60
    with pytest.raises(RetryLater):
        await orders.mark_paid(paid, await make_ctx())


async def test_checkout_linked_payment_intent_retries_even_past_the_window(
        make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    paid = make_event("payment_intent.succeeded", ids=ids)  # metadata.checkout_session is set
    paid.data_object["created"] = int(time.time()) - orders.CHECKOUT_ORDER_WINDOW_S - 60
    with pytest.raises(RetryLater):
        await orders.mark_paid(paid, await make_ctx())


# --- same-second ties -------------------------------------------------------------------------


async def test_redelivered_pending_checkout_in_the_same_second_does_not_undo_a_failure(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    ctx = await make_ctx()
    completed = make_event("checkout.session.completed", ids=ids, created=T0,
                           payment_status="unpaid")
    failed = make_event("checkout.session.async_payment_failed", ids=ids, created=T0)
    await orders.create_from_checkout(completed, ctx)
    await orders.mark_failed(failed, ctx)

    await orders.create_from_checkout(completed, ctx)  # Stripe redelivers, same `created` second

    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "failed"
    assert order.last_event_id == failed.id


async def test_a_newer_pending_checkout_still_updates_a_pending_order_and_ties_apply(
        store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    ctx = await make_ctx()
    first = make_event("checkout.session.completed", ids=ids, created=T0, payment_status="unpaid")
    again = make_event("checkout.session.completed", ids=ids, created=T0, payment_status="unpaid",
                       amount_total=5999)
    await orders.create_from_checkout(first, ctx)
    await orders.create_from_checkout(again, ctx)  # pending over pending on a tie: applied

    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "pending" and order.amount_total == 5999
    assert order.last_event_id == again.id


async def _updated_at(store: Store, checkout_session_id: str) -> str:
    """The row's updated_at, which Order does not carry (each store sets it itself)."""
    if isinstance(store, SqliteStore):
        rows = await store._rows("select updated_at from orders where checkout_session_id = ?",
                                 (checkout_session_id,))
    else:
        assert isinstance(store, SupabaseStore)
        rows = await store._run(store._table("orders").select("updated_at")
                                .eq("checkout_session_id", checkout_session_id))
    return str(rows[0]["updated_at"])


async def test_both_stores_leave_a_paid_order_alone_for_a_same_second_or_older_paid_event(
        store: Store, make_ctx: ContextFactory) -> None:
    """Redelivery to an already-paid order: no change and False on SQLite and Supabase alike;
    only a strictly newer event moves the marker."""
    ids = checkout_ids()
    ctx = await make_ctx()
    completed = make_event("checkout.session.completed", ids=ids, created=T0,
                           payment_status="paid")
    await orders.create_from_checkout(completed, ctx)
    key = ids["session"]
    before = await _updated_at(store, key)

    for event_id, created in (("evt_tie", T0), ("evt_older", T0 - 5)):
        changed = await store.set_order_status(StatusChange(
            checkout_session_id=key, status="paid", payment_status="paid",
            event_id=f"{event_id}_{key}", event_created=created))
        assert changed is False, event_id
        order = await store.find_order(checkout_session_id=key)
        assert order is not None and order.status == "paid"
        assert order.last_event_id == completed.id and order.last_event_created == T0
        assert await _updated_at(store, key) == before

    newer = f"evt_newer_{key}"
    assert await store.set_order_status(StatusChange(
        checkout_session_id=key, status="paid", payment_status="paid",
        event_id=newer, event_created=T0 + 1)) is True
    order = await store.find_order(checkout_session_id=key)
    assert order is not None and order.status == "paid"
    assert order.last_event_id == newer and order.last_event_created == T0 + 1


# --- the checkout window after an outage or a replay ---------------------------------------------


async def test_a_checkout_payment_intent_skipped_after_an_outage_still_ends_paid(
        store: Store, make_ctx: ContextFactory) -> None:
    """The window is measured on the wall clock, so after an outage (or a DLQ replay) of more
    than an hour a real Checkout payment intent that overtook its checkout.session.completed
    is skipped, not retried. The order still ends paid: checkout.session.completed carries
    payment_status itself."""
    ids = checkout_ids()
    ctx = await make_ctx()
    then = int(time.time()) - orders.CHECKOUT_ORDER_WINDOW_S - 600  # handled 1 h 10 min late
    paid = make_event("payment_intent.succeeded", ids=ids, created=then + 1,
                      metadata={})  # Checkout sets no PaymentIntent metadata by default
    paid.data_object["created"] = then
    completed = make_event("checkout.session.completed", ids=ids, created=then,
                           payment_status="paid")

    with capture_logs() as logs:
        await orders.mark_paid(paid, ctx)  # no RetryLater: skipped as past the window
    assert [e for e in logs if e["event"] == "payment intent is not a checkout order; skipped"]
    assert await store.find_order(checkout_session_id=ids["session"]) is None

    await orders.create_from_checkout(completed, ctx)

    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "paid" and order.payment_status == "paid"
    assert order.payment_intent_id == ids["payment_intent"]


async def test_a_delayed_payment_skipped_after_an_outage_ends_paid_by_async_payment_succeeded(
        store: Store, make_ctx: ContextFactory) -> None:
    """A delayed payment method completes Checkout "unpaid"; its money is reported by
    checkout.session.async_payment_succeeded, which names the session and is never skipped."""
    ids = checkout_ids()
    ctx = await make_ctx()
    then = int(time.time()) - orders.CHECKOUT_ORDER_WINDOW_S - 600
    paid = make_event("payment_intent.succeeded", ids=ids, created=then + 2, metadata={})
    paid.data_object["created"] = then
    completed = make_event("checkout.session.completed", ids=ids, created=then,
                           payment_status="unpaid")
    settled = make_event("checkout.session.async_payment_succeeded", ids=ids, created=then + 3)

    await orders.mark_paid(paid, ctx)  # skipped: no order, no linkage, past the window
    await orders.create_from_checkout(completed, ctx)
    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "pending"

    await orders.mark_paid(settled, ctx)

    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "paid"
    assert order.last_event_id == settled.id
