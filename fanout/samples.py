"""Realistic sample Stripe events for `fanout send`, shaped like the API's own payloads.

Snapshot events (`sample_event`) carry their object in `data.object`; thin
event notifications (`thin_event`: `"object": "v2.core.event"`, sent by event
destinations) carry only a `related_object` reference and an RFC 3339 `created`.

Ids are fresh each call so every send is a new event, unless the caller fixes
the event id (to show deduplication). The objects carry the fields the built-in
handlers read: session/payment-intent/customer ids, amounts, email, shipping.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

API_VERSION = "2025-06-30.basil"

Object = dict[str, Any]


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _address() -> Object:
    return {"city": "Kansas City", "country": "US", "line1": "1 Market St", "line2": None,
            "postal_code": "64105", "state": "MO"}


def _customer(ids: dict[str, str], now: int) -> Object:
    return {
        "id": ids["customer"], "object": "customer", "address": _address(), "balance": 0,
        "created": now, "currency": "usd", "email": "jenny.rosen@example.com",
        "livemode": False, "metadata": {}, "name": "Jenny Rosen", "phone": "+18005550100",
        "preferred_locales": ["en"], "shipping": None, "tax_exempt": "none",
    }


def _checkout_session(ids: dict[str, str], now: int, payment_status: str = "paid") -> Object:
    return {
        "id": ids["session"], "object": "checkout.session", "amount_subtotal": 4500,
        "amount_total": 4999, "currency": "usd", "created": now - 60,
        "customer": ids["customer"],
        "customer_details": {"address": _address(), "email": "jenny.rosen@example.com",
                             "name": "Jenny Rosen", "phone": None, "tax_exempt": "none"},
        "customer_email": None, "livemode": False, "metadata": {"cart_id": "cart_1042"},
        "mode": "payment", "payment_intent": ids["payment_intent"],
        "payment_status": payment_status,
        "shipping_details": {"address": _address(), "name": "Jenny Rosen"},
        "status": "complete", "total_details": {"amount_discount": 0, "amount_shipping": 499,
                                                "amount_tax": 0},
        "url": None,
    }


def _payment_intent(ids: dict[str, str], now: int, status: str = "succeeded") -> Object:
    failed = status == "requires_payment_method"
    return {
        "id": ids["payment_intent"], "object": "payment_intent", "amount": 4999,
        "amount_received": 0 if failed else 4999, "currency": "usd", "created": now - 60,
        "customer": ids["customer"], "latest_charge": ids["charge"], "livemode": False,
        "metadata": {"checkout_session": ids["session"]}, "receipt_email": "jenny.rosen@example.com",
        "status": status,
        "last_payment_error": (
            {"code": "card_declined", "decline_code": "insufficient_funds",
             "message": "Your card has insufficient funds.", "type": "card_error"}
            if failed else None
        ),
    }


def _charge(ids: dict[str, str], now: int) -> Object:
    return {
        "id": ids["charge"], "object": "charge", "amount": 4999, "amount_captured": 4999,
        "amount_refunded": 4999, "captured": True, "created": now - 3600, "currency": "usd",
        "customer": ids["customer"], "livemode": False, "paid": True,
        "payment_intent": ids["payment_intent"], "refunded": True, "status": "succeeded",
        "refunds": {"object": "list", "data": [_refund(ids, now)], "has_more": False},
    }


def _refund(ids: dict[str, str], now: int) -> Object:
    return {
        "id": ids["refund"], "object": "refund", "amount": 4999, "charge": ids["charge"],
        "created": now, "currency": "usd", "metadata": {}, "payment_intent": ids["payment_intent"],
        "reason": "requested_by_customer", "status": "succeeded",
    }


def _product(ids: dict[str, str], now: int) -> Object:
    return {
        "id": ids["product"], "object": "product", "active": True, "created": now - 86400,
        "default_price": ids["price"], "description": "Charcoal wool suit, slim fit",
        "livemode": False, "metadata": {"sku": "SUIT-CHAR-40R", "inventory": "12"},
        "name": "Charcoal Suit", "updated": now,
    }


def _price(ids: dict[str, str], now: int) -> Object:
    return {
        "id": ids["price"], "object": "price", "active": True, "created": now - 86400,
        "currency": "usd", "livemode": False, "product": ids["product"], "type": "one_time",
        "unit_amount": 4999,
    }


def _subscription(ids: dict[str, str], now: int, status: str = "active") -> Object:
    period_end = now + 30 * 86400
    return {
        "id": ids["subscription"], "object": "subscription", "cancel_at_period_end": False,
        "canceled_at": now if status == "canceled" else None, "collection_method": "charge_automatically",
        "created": now - 60, "currency": "usd", "customer": ids["customer"],
        "ended_at": now if status == "canceled" else None, "latest_invoice": ids["invoice"],
        "livemode": False, "metadata": {},
        "items": {"object": "list", "has_more": False, "data": [{
            "id": "si_" + ids["subscription"].removeprefix("sub_"), "object": "subscription_item",
            "current_period_start": now, "current_period_end": period_end, "quantity": 1,
            "price": _price(ids, now) | {"type": "recurring",
                                        "recurring": {"interval": "month", "interval_count": 1}},
        }]},
        "status": status,
    }


def _invoice(ids: dict[str, str], now: int, paid: bool = True) -> Object:
    return {
        "id": ids["invoice"], "object": "invoice", "amount_due": 4999,
        "amount_paid": 4999 if paid else 0, "amount_remaining": 0 if paid else 4999,
        "attempt_count": 1, "billing_reason": "subscription_cycle", "collection_method": "charge_automatically",
        "created": now - 60, "currency": "usd", "customer": ids["customer"],
        "customer_email": "jenny.rosen@example.com", "livemode": False, "metadata": {},
        "number": "FANOUT-0001", "paid": paid,
        "parent": {"type": "subscription_details",
                   "subscription_details": {"subscription": ids["subscription"], "metadata": {}}},
        "status": "paid" if paid else "open", "total": 4999,
        "status_transitions": {"paid_at": now if paid else None, "finalized_at": now - 60},
    }


Builder = Callable[[dict[str, str], int], Object]

# event type -> builder of its data.object (and, for *.updated, previous_attributes).
SAMPLES: dict[str, Builder] = {
    "checkout.session.completed": _checkout_session,
    "checkout.session.async_payment_succeeded": _checkout_session,
    "checkout.session.async_payment_failed": lambda ids, now: _checkout_session(ids, now, "unpaid"),
    "payment_intent.succeeded": _payment_intent,
    "payment_intent.payment_failed": lambda ids, now: _payment_intent(ids, now, "requires_payment_method"),
    "customer.created": _customer,
    "customer.updated": _customer,
    "customer.deleted": _customer,
    "charge.refunded": _charge,
    "refund.created": _refund,
    "product.created": _product,
    "product.updated": _product,
    "product.deleted": lambda ids, now: _product(ids, now) | {"active": False},
    "price.created": _price,
    "price.updated": _price,
    "price.deleted": lambda ids, now: _price(ids, now) | {"active": False},
    "customer.subscription.created": _subscription,
    "customer.subscription.updated": _subscription,
    "customer.subscription.deleted": lambda ids, now: _subscription(ids, now, "canceled"),
    "invoice.created": lambda ids, now: _invoice(ids, now, paid=False) | {"status": "draft"},
    "invoice.finalized": lambda ids, now: _invoice(ids, now, paid=False),
    "invoice.paid": _invoice,
    "invoice.payment_succeeded": _invoice,
    "invoice.payment_failed": lambda ids, now: _invoice(ids, now, paid=False),
}

# The objects a sample names, with the prefix of their fresh ids; `ids` may pin any of them.
OBJECT_KINDS: dict[str, str] = {
    "customer": "cus", "session": "cs_test", "payment_intent": "pi", "charge": "ch",
    "refund": "re", "product": "prod", "price": "price", "subscription": "sub", "invoice": "in",
}

PREVIOUS_ATTRIBUTES: dict[str, Object] = {
    "customer.updated": {"name": "Jenny R."},
    "product.updated": {"metadata": {"sku": "SUIT-CHAR-40R", "inventory": "13"}},
    "price.updated": {"active": False},
    "customer.subscription.updated": {"cancel_at_period_end": True},
}


def sample_event(
    event_type: str,
    *,
    event_id: str | None = None,
    ids: dict[str, str] | None = None,
    created: int | None = None,
) -> Object:
    """A whole Stripe event of `event_type`; raise KeyError when no sample exists for it.

    `ids` pins object ids (customer, session, payment_intent, ...) so that
    several events can describe the same objects, as a real checkout does.
    """
    builder = SAMPLES[event_type]
    now = int(time.time()) if created is None else created
    all_ids = {name: _id(prefix) for name, prefix in OBJECT_KINDS.items()}
    all_ids.update(ids or {})
    data: Object = {"object": builder(all_ids, now)}
    if event_type in PREVIOUS_ATTRIBUTES:
        data["previous_attributes"] = PREVIOUS_ATTRIBUTES[event_type]
    return {
        "id": event_id or _id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": now,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": _id("req"), "idempotency_key": secrets.token_hex(16)},
        "type": event_type,
    }


# Thin event type prefix -> (related_object.type, id prefix, API path of the object).
THIN_RELATED: dict[str, tuple[str, str, str]] = {
    "v1.customer.": ("customer", "cus", "/v1/customers/"),
    "v1.billing.meter.": ("billing.meter", "mtr", "/v1/billing/meters/"),
    "v1.payment_intent.": ("payment_intent", "pi", "/v1/payment_intents/"),
    "v1.checkout.session.": ("checkout.session", "cs_test", "/v1/checkout/sessions/"),
    "v1.charge.": ("charge", "ch", "/v1/charges/"),
    "v2.core.account_person.": ("v2.core.account_person", "person", "/v2/core/accounts/acct_1/persons/"),
    "v2.core.account": ("v2.core.account", "acct", "/v2/core/accounts/"),
    "v2.core.event_destination.": ("v2.core.event_destination", "ed_test", "/v2/core/event_destinations/"),
}


def thin_event(
    event_type: str,
    *,
    event_id: str | None = None,
    related_id: str | None = None,
    context: str | None = None,
    created: float | None = None,
) -> Object:
    """A thin event notification of `event_type`, as an event destination delivers it.

    Its related object is inferred from the type (v1.customer.* -> a customer);
    the StripeClient's parse_event_notification accepts it.
    """
    when = time.time() if created is None else created
    kind, prefix, path = next(
        (spec for start, spec in THIN_RELATED.items() if event_type.startswith(start)),
        (event_type.split(".")[1], "obj", f"/v1/{event_type.split('.')[1]}s/"),
    )
    object_id = related_id or _id(prefix)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z"
    return {
        "id": event_id or f"evt_test_{secrets.token_hex(24)}",
        "object": "v2.core.event",
        "context": context,
        "created": stamp,
        "livemode": False,
        "reason": {"type": "request",
                   "request": {"id": _id("req"), "idempotency_key": secrets.token_hex(16)}},
        "related_object": {"id": object_id, "type": kind, "url": path + object_id},
        "type": event_type,
    }
