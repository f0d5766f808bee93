"""The order confirmation message: plain text and HTML from one stored order."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formataddr, formatdate
from html import escape
from typing import Any

from workers.customer.store.rows import Order

# ISO 4217 currencies Stripe bills in whole units (no minor unit).
ZERO_DECIMAL = frozenset({
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
})


def money(amount: int | None, currency: str | None) -> str:
    """Stripe minor units as text: 4999 usd -> "49.99 USD"."""
    if amount is None:
        return "-"
    code = (currency or "").lower()
    if code in ZERO_DECIMAL:
        return f"{amount} {code.upper()}"
    return f"{amount / 100:.2f} {code.upper()}".strip()


def _address_lines(shipping: dict[str, Any] | None) -> list[str]:
    if not shipping:
        return []
    address: dict[str, Any] = shipping.get("address") or {}
    city_line = " ".join(str(p) for p in (address.get("postal_code"), address.get("city"),
                                           address.get("state")) if p)
    parts = [shipping.get("name"), address.get("line1"), address.get("line2"), city_line,
             address.get("country")]
    return [str(p) for p in parts if p]


def order_reference(order: Order) -> str:
    """A short, human-readable order reference: the tail of the session id."""
    return order.checkout_session_id[-8:].upper()


def render_text(order: Order) -> str:
    lines = [
        f"Hello {order.customer_name or 'there'},",
        "",
        f"Thank you for your order {order_reference(order)}.",
        "",
        f"Subtotal: {money(order.amount_subtotal, order.currency)}",
        f"Shipping: {money(order.amount_shipping, order.currency)}",
        f"Total:    {money(order.amount_total, order.currency)}",
        f"Payment:  {order.status}",
    ]
    address = _address_lines(order.shipping)
    if address:
        lines += ["", "Shipping to:", *(f"  {line}" for line in address)]
    lines += ["", f"Order id: {order.checkout_session_id}", ""]
    return "\n".join(lines)


def render_html(order: Order) -> str:
    rows = "".join(
        f"<tr><td>{escape(label)}</td><td>{escape(value)}</td></tr>"
        for label, value in (
            ("Subtotal", money(order.amount_subtotal, order.currency)),
            ("Shipping", money(order.amount_shipping, order.currency)),
            ("Total", money(order.amount_total, order.currency)),
            ("Payment", order.status),
        )
    )
    address = "<br>".join(escape(line) for line in _address_lines(order.shipping))
    shipping = f"<h2>Shipping to</h2><p>{address}</p>" if address else ""
    return (
        "<!doctype html><html><body>"
        f"<p>Hello {escape(order.customer_name or 'there')},</p>"
        f"<p>Thank you for your order <strong>{escape(order_reference(order))}</strong>.</p>"
        f"<table>{rows}</table>{shipping}"
        f"<p><small>Order id: {escape(order.checkout_session_id)}</small></p>"
        "</body></html>"
    )


def order_confirmation(order: Order, *, sender: str, message_id: str) -> EmailMessage:
    """The whole message, addressed to the order's customer."""
    if not order.customer_email:
        raise ValueError("order has no customer email")
    message = EmailMessage()
    message["Subject"] = f"Your order {order_reference(order)} is confirmed"
    message["From"] = sender
    message["To"] = formataddr((order.customer_name or "", order.customer_email))
    message["Date"] = formatdate(usegmt=True)
    # Stable per (event, template): a resend after a crash is recognisably the same message.
    message["Message-ID"] = message_id
    message.set_content(render_text(order))
    message.add_alternative(render_html(order), subtype="html")
    return message
