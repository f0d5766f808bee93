"""Small readers for Stripe objects: expandable ids, amounts, customer of an object."""

from __future__ import annotations

from typing import Any


def ref(value: Any) -> str | None:
    """The id of an expandable field: a plain id, or an expanded object's "id"."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        found = value.get("id")
        return found if isinstance(found, str) else None
    return None


def customer_of(obj: dict[str, Any]) -> str | None:
    """The Stripe customer an object belongs to (the object itself for a customer)."""
    if obj.get("object") == "customer":
        return ref(obj.get("id"))
    return ref(obj.get("customer"))


def amount_of(obj: dict[str, Any]) -> int | None:
    for name in ("amount_total", "amount_received", "amount"):
        value = obj.get(name)
        if isinstance(value, int):
            return value
    return None
