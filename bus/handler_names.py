"""The names a route may use for a handler, known without importing any handler code.

The ingress validates routing.yaml with this table alone, so it never imports
Supabase, SMTP or HTTP client code. Workers resolve the "module:attr" targets
when they start.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

FORWARD_PREFIX = "forward:"

# Short name used in routing.yaml -> "module:attr" that implements it.
BUILTIN_HANDLERS: dict[str, str] = {
    "orders.create_from_checkout": "workers.customer.handlers.orders:create_from_checkout",
    "orders.mark_paid": "workers.customer.handlers.orders:mark_paid",
    "orders.mark_failed": "workers.customer.handlers.orders:mark_failed",
    "profiles.upsert": "workers.customer.handlers.profiles:upsert",
    "analytics.track": "workers.customer.handlers.analytics:track",
    "email.order_confirmation": "workers.customer.handlers.email:order_confirmation",
    # Does nothing and succeeds: for benchmarks and for routes you want acknowledged only.
    "noop": "workers.builtin:noop",
}

# The event types each built-in handler can handle, by the shape of the object Stripe sends
# for them. `routes check` (bus/routing.py) refuses a route that would send a built-in any
# other type, exact or through a wildcard; declared here so validation imports no handler.
# ANY_TYPE: every type, thin events included. Handlers not listed take snapshot events only.
ANY_TYPE = "*"
BUILTIN_ACCEPTS: dict[str, frozenset[str]] = {
    # A Checkout Session object; completed, or settled later for a delayed payment method.
    "orders.create_from_checkout": frozenset({
        "checkout.session.completed", "checkout.session.async_payment_succeeded"}),
    "orders.mark_paid": frozenset({
        "payment_intent.succeeded", "checkout.session.async_payment_succeeded"}),
    "orders.mark_failed": frozenset({
        "payment_intent.payment_failed", "checkout.session.async_payment_failed"}),
    # Customer objects only: customer.discount.*, customer.subscription.*, customer.source.*,
    # customer.tax_id.* carry discounts, subscriptions, cards and tax ids.
    "profiles.upsert": frozenset({"customer.created", "customer.updated", "customer.deleted"}),
    "email.order_confirmation": frozenset({
        "checkout.session.completed", "checkout.session.async_payment_succeeded"}),
    # Any snapshot object, and thin events by their related object's reference.
    "analytics.track": frozenset({ANY_TYPE}),
    "noop": frozenset({ANY_TYPE}),
}


def handler_accepts(name: str, event_type: str) -> bool:
    """Whether the built-in `name` can handle `event_type` (custom and forward handlers: always)."""
    accepted = BUILTIN_ACCEPTS.get(name)
    return accepted is None or ANY_TYPE in accepted or event_type in accepted


# "package.module:function", the way uvicorn names an app.
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
DESTINATION_NAME = re.compile(r"^[A-Za-z_][\w-]*$")


@dataclass(frozen=True)
class HandlerName:
    """What a handler name stands for: a forward to a destination, or a "module:attr" to import."""

    kind: Literal["forward", "import"]
    # The destination's name (forward), or the "module:attr" path (a built-in's, or the name itself).
    target: str


def classify_handler(name: str, destinations: Collection[str]) -> HandlerName | str:
    """What `name` stands for, or why it cannot name a handler (the one wording, for routes check and workers)."""
    if name.startswith(FORWARD_PREFIX):
        dest = name[len(FORWARD_PREFIX) :]
        if not dest:
            return f"handler {name!r} names no destination"
        if dest not in destinations:
            known = ", ".join(sorted(destinations)) or "none are declared"
            return f"handler {name!r} forwards to unknown destination {dest!r} (destinations: {known})"
        return HandlerName("forward", dest)
    builtin = BUILTIN_HANDLERS.get(name)
    if builtin is not None:
        return HandlerName("import", builtin)
    if ":" in name:
        if IMPORT_PATH.match(name):
            return HandlerName("import", name)
        return f"handler {name!r} is not a valid 'package.module:function' path"
    return (
        f"unknown handler {name!r}: use a built-in "
        f"({', '.join(sorted(BUILTIN_HANDLERS))}), 'forward:<destination>', "
        "or 'package.module:function'"
    )


def handler_name_problem(name: str, destinations: Collection[str]) -> str | None:
    """Why `name` cannot name a handler, or None when it can."""
    found = classify_handler(name, destinations)
    return found if isinstance(found, str) else None
