"""`fanout send`: build a sample event, sign it as Stripe does, POST it, print the answer."""

from __future__ import annotations

import sys

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


def send_sample(event_type: str, *, url: str, secret: str, event_id: str | None = None,
                objects: list[str] | None = None) -> int:
    """Exit status 0 when the ingress answered 2xx. A thin type (v1.*, v2.*) sends a thin event."""
    from bus.routing import thin_event_types

    thin = event_type in thin_event_types()
    if event_type not in SAMPLES and not thin:
        print(f"fanout send: no sample for {event_type!r}; samples exist for:\n  "
              + "\n  ".join(sorted(SAMPLES))
              + "\n  and every thin event type of the Stripe SDK (v1.customer.created, ...)",
              file=sys.stderr)
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
