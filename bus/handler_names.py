"""The names a route may use for a handler, known without importing any handler code.

The ingress validates routing.yaml with this table alone, so it never imports
Supabase, SMTP or HTTP client code. Workers resolve the "module:attr" targets
when they start.
"""

from __future__ import annotations

import re

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

# "package.module:function", the way uvicorn names an app.
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
DESTINATION_NAME = re.compile(r"^[A-Za-z_][\w-]*$")


def handler_name_problem(name: str, destinations: frozenset[str]) -> str | None:
    """Why `name` cannot name a handler, or None when it can."""
    if name.startswith(FORWARD_PREFIX):
        dest = name[len(FORWARD_PREFIX) :]
        if not dest:
            return f"handler {name!r} names no destination"
        if dest not in destinations:
            known = ", ".join(sorted(destinations)) or "none are declared"
            return f"handler {name!r} forwards to unknown destination {dest!r} (destinations: {known})"
        return None
    if name in BUILTIN_HANDLERS:
        return None
    if ":" in name:
        if IMPORT_PATH.match(name):
            return None
        return f"handler {name!r} is not a valid 'package.module:function' path"
    return (
        f"unknown handler {name!r}: use a built-in "
        f"({', '.join(sorted(BUILTIN_HANDLERS))}), 'forward:<destination>', "
        "or 'package.module:function'"
    )
