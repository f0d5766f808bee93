"""Stripe-Signature verification against every configured secret.

The SDK's `verify_header` does the cryptographic check. It raises one
exception type for every failure, so we read the header ourselves first, only
to tell the sender *which* check failed (missing, malformed, no match, too old).
"""

from __future__ import annotations

import stripe

from bus.settings import Secret
from ingress.rejections import Rejected, bad_request

SCHEME = "v1"


def _normalise(header: str) -> str:
    # Stripe writes "t=..,v1=.." with no spaces; the SDK does not strip them,
    # and proxies that re-fold headers add them.
    return ",".join(part.strip() for part in header.split(","))


def _timestamp_and_signatures(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError("item without '='")
        if key == "t":
            timestamp = int(value)
        elif key == SCHEME:
            signatures.append(value)
    if timestamp is None:
        raise ValueError("no timestamp")
    return timestamp, signatures


def verify(
    body: bytes, header: str | None, secrets: tuple[Secret, ...], tolerance_s: int
) -> None:
    """Return when one secret signed `body`; otherwise raise Rejected with the reason."""
    if header is None:
        raise bad_request("missing_signature", "no Stripe-Signature header")
    if " " in header or "\t" in header:
        header = _normalise(header)
    if not header.strip(","):
        raise bad_request("malformed_signature", "the Stripe-Signature header is empty")
    if not secrets:
        # A configuration fault, not the sender's: make Stripe retry until it is fixed.
        raise Rejected(503, "no_secret_configured", "STRIPE_WEBHOOK_SECRET is not set")
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("bad_signature", "the body is not UTF-8, so Stripe did not sign it") from None

    signed_but_stale = False
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret.reveal(), tolerance_s)
            return
        except stripe.SignatureVerificationError as err:
            # The SDK checks the signature before the timestamp, so this message
            # means the secret matched and only the age failed.
            if "tolerance" in str(err):
                signed_but_stale = True
    # Only now, on the failure path, read the header to say which check failed.
    try:
        _, signatures = _timestamp_and_signatures(header)
    except ValueError:
        raise bad_request(
            "malformed_signature", "expected 't=<unix time>,v1=<hex signature>'"
        ) from None
    if not signatures:
        raise bad_request("bad_signature", f"no {SCHEME} signature in the header")
    if signed_but_stale:
        raise bad_request(
            "timestamp_out_of_tolerance",
            f"the signature is older than {tolerance_s} s; a replay, or a clock out of sync",
        )
    raise bad_request("bad_signature", "no configured webhook secret matches the signature")
