"""Every customer-pool route of routing.yaml, run on payloads as each API version renders them.

Each event has `created` set to now, as live traffic has: a rule that depended on
an event's age would show here (old fixtures, years in the past, hid one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from bus.errors import PermanentFailure
from bus.routing import load_routing
from tests.conftest import REPO
from tests.customer.conftest import ContextFactory
from tests.customer.helpers import event_from, resolve_handler
from tests.customer.stripe_payloads import (
    API_VERSIONS,
    checkout_ids,
    checkout_session,
    customer,
    event,
    payment_intent,
)
from workers.customer.handlers import profiles
from workers.customer.store.base import Store

pytestmark = pytest.mark.anyio
TABLE = load_routing(REPO / "routing.yaml")


async def deliver(payload: dict[str, Any], make_ctx: ContextFactory) -> tuple[str, ...]:
    """Run the customer pool's handlers routing.yaml names for this payload; their names."""
    names = dict(TABLE.match(payload["type"]).targets).get("customer", ())
    stored = event_from(payload, names)
    for name in names:
        await resolve_handler(name)(stored, await make_ctx(handler=name))
    return names


def eml_count(mail_dir: Path) -> int:
    return len(list(mail_dir.glob("*.eml"))) if mail_dir.exists() else 0


def customer_routes() -> set[str]:
    return {r.pattern for r in TABLE.routes if "customer" in dict(r.targets)}


@pytest.mark.parametrize("version", API_VERSIONS)
async def test_a_card_checkout_story_runs_clean_on_every_api_version(
        version: str, store: Store, make_ctx: ContextFactory, mail_dir: Path) -> None:
    ids = checkout_ids()
    ran: set[str] = set()
    # payment_intent.succeeded first: Checkout completes a card session after its intent succeeded.
    for event_type, obj in [
        ("customer.created", customer(version, ids)),
        ("payment_intent.succeeded", payment_intent(version, ids)),
        ("checkout.session.completed", checkout_session(version, ids)),
        ("payment_intent.succeeded", payment_intent(version, ids)),  # redelivered after its order
        ("customer.updated", {**customer(version, ids), "name": "Sam L."}),
        ("customer.deleted", {**customer(version, ids, deleted=True), "name": "Sam L."}),
    ]:
        if await deliver(event(event_type, obj, version), make_ctx):
            ran.add(event_type)
    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "paid" and order.amount_total == 2500
    assert order.payment_intent_id == ids["payment_intent"]
    assert order.shipping is not None and order.shipping["address"]["city"] == "Portland", version
    profile = await store.get_customer(ids["customer"])
    assert profile is not None and profile.deleted and profile.name == "Sam L."
    assert eml_count(mail_dir) == 1
    assert ran == {"customer.created", "payment_intent.succeeded", "checkout.session.completed",
                   "customer.updated", "customer.deleted"}


@pytest.mark.parametrize("version", API_VERSIONS)
@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
async def test_a_delayed_payment_checkout_settles_on_every_api_version(
        version: str, outcome: str, store: Store, make_ctx: ContextFactory) -> None:
    ids = checkout_ids()
    unpaid = checkout_session(version, ids, payment_status="unpaid")
    await deliver(event("checkout.session.completed", unpaid, version), make_ctx)
    if outcome == "succeeded":
        await deliver(event("checkout.session.async_payment_succeeded",
                            {**unpaid, "payment_status": "paid"}, version), make_ctx)
        await deliver(event("payment_intent.succeeded", payment_intent(version, ids), version),
                      make_ctx)
    else:
        await deliver(event("payment_intent.payment_failed",
                            payment_intent(version, ids, status="requires_payment_method"), version),
                      make_ctx)
        await deliver(event("checkout.session.async_payment_failed", unpaid, version), make_ctx)
    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == ("paid" if outcome == "succeeded" else "failed")


@pytest.mark.parametrize("version", API_VERSIONS)
@pytest.mark.parametrize("origin", ["direct", "connect_destination", "subscription"])
async def test_a_payment_intent_that_no_checkout_made_is_settled_at_once(
        version: str, origin: str, store: Store, make_ctx: ContextFactory) -> None:
    """No RetryLater (each would be retried until dead-lettered), for success and failure alike."""
    ids = checkout_ids()
    for event_type, status in (("payment_intent.payment_failed", "requires_payment_method"),
                               ("payment_intent.succeeded", "succeeded")):
        obj = payment_intent(version, ids, status=status, origin=origin)
        await deliver(event(event_type, obj, version), make_ctx)
    assert await store.find_order(payment_intent_id=ids["payment_intent"]) is None


@pytest.mark.parametrize("version", API_VERSIONS)
@pytest.mark.parametrize(("mode", "payment_status", "status"), [
    ("setup", "no_payment_required", "setup"),
    ("payment", "no_payment_required", "no_payment_required"),
    ("subscription", "no_payment_required", "no_payment_required"),  # a free trial
])
async def test_a_session_that_moved_no_money_gets_its_own_status_and_no_confirmation(
        version: str, mode: str, payment_status: str, status: str, store: Store,
        make_ctx: ContextFactory, mail_dir: Path) -> None:
    ids = checkout_ids()
    session = checkout_session(version, ids, mode=mode, payment_status=payment_status)
    await deliver(event("checkout.session.completed", session, version), make_ctx)
    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == status
    assert order.payment_status == "no_payment_required"
    assert eml_count(mail_dir) == 0


@pytest.mark.parametrize("version", API_VERSIONS)
async def test_a_paid_subscription_checkout_is_a_paid_order(
        version: str, store: Store, make_ctx: ContextFactory, mail_dir: Path) -> None:
    ids = checkout_ids()
    session = checkout_session(version, ids, mode="subscription")
    await deliver(event("checkout.session.completed", session, version), make_ctx)
    await deliver(event("payment_intent.succeeded",
                        payment_intent(version, ids, origin="subscription"), version), make_ctx)
    order = await store.find_order(checkout_session_id=ids["session"])
    assert order is not None and order.status == "paid" and eml_count(mail_dir) == 1


def test_these_payloads_cover_every_customer_route_of_routing_yaml() -> None:
    assert customer_routes() == {
        "checkout.session.completed", "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed", "payment_intent.succeeded",
        "payment_intent.payment_failed", "customer.created", "customer.updated", "customer.deleted",
    }, "a new customer route needs its payloads in this file"


@pytest.mark.parametrize(("event_type", "obj"), [
    ("customer.discount.created", {"object": "discount", "coupon": {"id": "SPRING"},
                                   "customer": "cus_1", "start": 1}),
    ("customer.subscription.created", {"id": "sub_1", "object": "subscription",
                                       "customer": "cus_1", "status": "active"}),
    ("customer.source.created", {"id": "card_1", "object": "card", "customer": "cus_1"}),
    ("customer.tax_id.created", {"id": "txi_1", "object": "tax_id", "customer": "cus_1"}),
])
async def test_profiles_upsert_fails_permanently_on_an_object_that_is_not_a_customer(
        event_type: str, obj: dict[str, Any], store: Store, make_ctx: ContextFactory) -> None:
    stored = event_from(event(event_type, obj, API_VERSIONS[-1]))
    with pytest.raises(PermanentFailure) as caught:
        await profiles.upsert(stored, await make_ctx())
    assert "customer objects only" in str(caught.value) and event_type in str(caught.value)
    assert await store.get_customer("cus_1") is None


async def test_analytics_records_a_thin_event_by_its_reference(
        store: Store, make_ctx: ContextFactory) -> None:
    from bus.envelope import Event, entry_fields
    from fanout.samples import thin_event
    from ingress.parse import routing_fields
    from workers.customer.handlers import analytics

    body = orjson.dumps(thin_event("v1.customer.created", related_id="cus_thin_a"))
    stored = Event.from_entry(dict(entry_fields(routing_fields(body), (), "v", body)))
    await analytics.track(stored, await make_ctx())
    rows = await store.customer_events(stored.id)
    assert [(r.kind, r.object_id, r.customer_id) for r in rows] == [
        ("customer_signed_up", "cus_thin_a", "cus_thin_a")]


async def test_an_sqlite_file_made_before_the_new_statuses_is_widened_and_keeps_its_orders(
        tmp_path: Path) -> None:
    import sqlite3

    from workers.customer.store.rows import Order
    from workers.customer.store.sqlite_store import SCHEMA, SqliteStore

    old_schema = SCHEMA.replace("'failed', 'setup', 'no_payment_required'", "'failed'")
    assert old_schema != SCHEMA
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(old_schema)
        conn.execute("insert into orders (checkout_session_id, payment_status, status, last_event_id,"
                     " last_event_created, created_at, updated_at)"
                     " values ('cs_old', 'paid', 'paid', 'evt_old', 1, 'x', 'x')")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("insert into orders (checkout_session_id, payment_status, status,"
                         " last_event_id, last_event_created, created_at, updated_at)"
                         " values ('cs_x', 'no_payment_required', 'setup', 'e', 1, 'x', 'x')")
    store = await SqliteStore.open(path)
    try:
        assert await store.upsert_order(Order(
            checkout_session_id="cs_setup", payment_status="no_payment_required", status="setup",
            last_event_id="evt_new", last_event_created=2))
        old = await store.find_order(checkout_session_id="cs_old")
        assert old is not None and old.status == "paid"
    finally:
        await store.aclose()
    reopened = await SqliteStore.open(path)  # a second open finds it widened: nothing to do
    await reopened.aclose()
