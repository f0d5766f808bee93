"""Sign a body exactly as Stripe does, for `fanout send`, the `forward:` handler and tests."""

from __future__ import annotations

import time

import stripe


def stripe_signature(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header value for `body`: ``t=<unix time>,v1=<hex HMAC-SHA256>``."""
    ts = int(time.time()) if timestamp is None else timestamp
    header: str = stripe.WebhookSignature.generate_signature_header(
        body.decode("utf-8"), secret, timestamp=ts
    )
    return header
