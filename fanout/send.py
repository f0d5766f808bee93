"""`fanout send`: build a sample event, sign it as Stripe does, POST it, print the answer."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Collection
from pathlib import Path

import httpx
import orjson

from bus.signing import stripe_signature
from fanout.samples import OBJECT_KINDS, SAMPLES, sample_event, thin_event


def parse_objects(pairs: list[str]) -> dict[str, str]:
    """`--object KIND=ID` arguments as sample_event's `ids`; ValueError names what is wrong."""
    ids: dict[str, str] = {}
    for pair in pairs:
        kind, sep, object_id = pair.partition("=")
        if not sep or not object_id:
            raise ValueError(f"--object {pair!r}: expected KIND=ID, e.g. customer=cus_123")
        if kind not in OBJECT_KINDS:
            raise ValueError(f"--object {pair!r}: KIND is one of {', '.join(OBJECT_KINDS)}")
        ids[kind] = object_id
    return ids


# Samples that settle an order the built-in customer pool stores from checkout.session.completed.
SETTLES_A_CHECKOUT = ("payment_intent.succeeded", "payment_intent.payment_failed",
                      "checkout.session.async_payment_succeeded", "checkout.session.async_payment_failed")


def no_sample_line(event_type: str, thin_types: Collection[str]) -> str:
    close = difflib.get_close_matches(event_type, [*SAMPLES, *thin_types], n=1, cutoff=0.7)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"fanout send: no sample for {event_type!r}; {hint}samples exist for:\n  "
            + "\n  ".join(sorted(SAMPLES))
            + "\n  and every thin event type of the Stripe SDK (v1.customer.created, ...)"
            + "\n(or send your own payload with --file PAYLOAD.json)")


def checkout_hint(event_type: str, ids: dict[str, str]) -> str | None:
    """Why this sample, sent alone, settles no order; and the two commands that do."""
    if event_type not in SETTLES_A_CHECKOUT or "session" in ids:
        return None
    return (f"note: this {event_type} names a fresh checkout session that no order has, so the customer "
            "pool has nothing to settle. To follow one order, pin the same ids on both sends:\n"
            "  fanout send checkout.session.completed --object session=cs_test_1 --object payment_intent=pi_1\n"
            f"  fanout send {event_type} --object session=cs_test_1 --object payment_intent=pi_1")


def send_sample(event_type: str, *, url: str, secret: str, event_id: str | None = None,
                objects: list[str] | None = None) -> int:
    """Exit status 0 when the ingress answered 2xx. A thin type (v1.*, v2.*) sends a thin event."""
    from bus.routing import thin_event_types

    thin_types = thin_event_types()
    thin = event_type in thin_types
    if event_type not in SAMPLES and not thin:
        print(no_sample_line(event_type, thin_types), file=sys.stderr)
        return 2
    if event_id is not None and not event_id.startswith("evt_"):
        print("fanout send: --id must start with 'evt_'", file=sys.stderr)
        return 2
    try:
        ids = parse_objects(objects or [])
    except ValueError as err:
        print(f"fanout send: {err}", file=sys.stderr)
        return 2
    # Stripe sends pretty-printed JSON; the signature covers these exact bytes.
    payload = (thin_event(event_type, event_id=event_id, related_id=next(iter(ids.values()), None))
               if thin else sample_event(event_type, event_id=event_id, ids=ids))
    body = orjson.dumps(payload, option=orjson.OPT_INDENT_2)
    code = post_signed(body, url=url, secret=secret)
    hint = checkout_hint(event_type, ids)
    if hint is not None and code == 0:
        print(hint, file=sys.stderr)
    return code


def send_file(path: Path, *, url: str, secret: str) -> int:
    """POST a payload from a file, signed over its exact bytes; exit 2 if it cannot be a Stripe event."""
    try:
        body = path.read_bytes()
    except OSError as err:
        print(f"fanout send: cannot read {path}: {err.strerror or err}", file=sys.stderr)
        return 2
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        print(f"fanout send: {path} is not JSON ({err})", file=sys.stderr)
        return 2
    event_id = payload.get("id") if isinstance(payload, dict) else None
    if not isinstance(event_id, str) or not event_id.startswith("evt_"):
        print(f"fanout send: {path}: a Stripe event has an \"id\" starting with 'evt_'", file=sys.stderr)
        return 2
    if not isinstance(payload.get("type"), str):
        print(f"fanout send: {path}: a Stripe event has a string \"type\"", file=sys.stderr)
        return 2
    return post_signed(body, url=url, secret=secret)


def post_signed(body: bytes, *, url: str, secret: str) -> int:
    """Sign `body` as Stripe does, POST it, print the answer; 0 when it was 2xx."""
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": stripe_signature(body, secret),
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks) fanout-send",
    }
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=10.0)
    except httpx.HTTPError as err:
        print(f"fanout send: could not reach {url}: {err}", file=sys.stderr)
        return 1
    print(f"{response.status_code} {response.text}")
    return 0 if response.is_success else 1
