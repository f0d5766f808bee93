"""Stripe payloads as each API version renders them, with `created` set to now.

fanout.samples renders one (recent) version. These builders render the
fields that moved between versions, for the objects the customer pool is
routed to:

- PaymentIntent `invoice`: present (a string or null) before 2025-03-31.basil,
  gone from then on;
- Checkout Session shipping: `shipping` before 2022-08-01, `shipping_details`
  until 2025-03-31.basil, `collected_information.shipping_details` after;
- Checkout Session `payment_intent`: set at creation before 2022-08-01, set
  only once a payment is attempted after (null for setup-mode sessions and
  sessions that needed no payment).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

Object = dict[str, Any]

# Older to newer; each changes something the handlers read.
API_VERSIONS = ("2020-08-27", "2022-11-15", "2024-06-20", "2025-03-31.basil", "2026-10-28.endive")


def _before(version: str, cutoff: str) -> bool:
    return version[:10] < cutoff


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def _address() -> Object:
    return {"city": "Portland", "country": "US", "line1": "2 Pine St", "line2": None,
            "postal_code": "97201", "state": "OR"}


def event(event_type: str, obj: Object, version: str, *, created: int | None = None,
          previous: Object | None = None, account: str | None = None) -> Object:
    data: Object = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    payload: Object = {
        "id": _id("evt"), "object": "event", "api_version": version,
        "created": int(time.time()) if created is None else created, "data": data,
        "livemode": False, "pending_webhooks": 1,
        "request": {"id": _id("req"), "idempotency_key": secrets.token_hex(8)}, "type": event_type,
    }
    if account:
        payload["account"] = account
    return payload


def checkout_session(version: str, ids: dict[str, str], *, mode: str = "payment",
                     payment_status: str = "paid") -> Object:
    now = int(time.time())
    no_payment = mode == "setup" or payment_status == "no_payment_required"
    session: Object = {
        "id": ids["session"], "object": "checkout.session", "created": now - 30,
        "expires_at": now + 86400, "livemode": False, "mode": mode,
        "payment_status": "no_payment_required" if mode == "setup" else payment_status,
        "status": "complete", "customer": ids.get("customer"), "customer_email": None,
        "customer_details": {"address": _address(), "email": "sam@example.com", "name": "Sam Lee",
                             "phone": None, "tax_exempt": "none", "tax_ids": []},
        "currency": None if mode == "setup" else "usd",
        "amount_subtotal": None if mode == "setup" else (0 if no_payment else 2000),
        "amount_total": None if mode == "setup" else (0 if no_payment else 2500),
        "total_details": None if mode == "setup" else {
            "amount_discount": 2000 if no_payment else 0, "amount_shipping": 0 if no_payment else 500,
            "amount_tax": 0},
        "metadata": {"cart": "c_77"}, "payment_link": None, "url": None,
        "setup_intent": ids.get("setup_intent") if mode == "setup" else None,
        "subscription": ids.get("subscription") if mode == "subscription" else None,
        "invoice": ids.get("invoice") if mode == "subscription" else None,
    }
    # From 2022-08-01 the PaymentIntent exists only once a payment is attempted.
    has_intent = mode == "payment" and not no_payment
    session["payment_intent"] = ids["payment_intent"] if has_intent else None
    shipping = None if mode == "setup" else {"address": _address(), "name": "Sam Lee"}
    if _before(version, "2022-08-01"):
        session["shipping"] = shipping
        if mode == "payment":
            session["payment_intent"] = ids["payment_intent"]
    elif _before(version, "2025-03-31"):
        session["shipping_details"] = shipping
    else:
        session["collected_information"] = {"shipping_details": shipping, "business_name": None,
                                            "individual_name": None, "tax_ids": None}
    return session


def payment_intent(version: str, ids: dict[str, str], *, status: str = "succeeded",
                   origin: str = "checkout") -> Object:
    """A PaymentIntent from `origin`: checkout, direct, connect_destination or subscription."""
    now = int(time.time())
    failed = status == "requires_payment_method"
    intent: Object = {
        "id": ids["payment_intent"], "object": "payment_intent", "amount": 2500,
        "amount_received": 0 if failed else 2500, "currency": "usd", "created": now - 5,
        "customer": ids.get("customer"), "description": None, "livemode": False, "metadata": {},
        "latest_charge": None if failed else ids.get("charge", _id("ch")),
        "payment_method": _id("pm"), "status": status, "on_behalf_of": None,
        "transfer_data": None, "application_fee_amount": None,
        "last_payment_error": ({"code": "card_declined", "decline_code": "generic_decline",
                                "message": "Your card was declined.", "type": "card_error"}
                               if failed else None),
    }
    if origin == "connect_destination":
        intent.update(on_behalf_of="acct_1Dest", application_fee_amount=250,
                      transfer_data={"destination": "acct_1Dest"})
    if origin == "subscription":
        intent.update(description="Subscription creation", setup_future_usage="off_session")
    if _before(version, "2025-03-31"):
        intent["invoice"] = ids.get("invoice") if origin == "subscription" else None
    return intent


def customer(version: str, ids: dict[str, str], *, deleted: bool = False) -> Object:
    now = int(time.time())
    obj: Object = {
        "id": ids["customer"], "object": "customer", "address": _address(), "balance": 0,
        "created": now - 60, "email": "sam@example.com", "livemode": False, "metadata": {},
        "name": "Sam Lee", "phone": "+15035550100", "preferred_locales": [], "shipping": None,
        "tax_exempt": "none", "invoice_prefix": "ABC123", "delinquent": False,
    }
    if _before(version, "2020-08-27"):
        obj["sources"] = {"object": "list", "data": [], "has_more": False}
    if deleted:
        obj["deleted"] = True
    return obj


def checkout_ids() -> dict[str, str]:
    return {"customer": _id("cus"), "session": _id("cs_test"), "payment_intent": _id("pi"),
            "charge": _id("ch"), "invoice": _id("in"), "subscription": _id("sub"),
            "setup_intent": _id("seti")}
