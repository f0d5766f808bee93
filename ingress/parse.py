"""Read the few fields routing needs from a verified body, and reject what is not a Stripe event."""

from __future__ import annotations

from typing import Any

import orjson

from bus.envelope import RoutingFields
from ingress.rejections import bad_request


def _shape_error(detail: str) -> Exception:
    return bad_request("not_a_stripe_event", detail)


def routing_fields(body: bytes) -> RoutingFields:
    """Parse `body` once with orjson and pick out id, type, created, livemode, account, object id."""
    try:
        event: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_request("invalid_json", "the body is not valid JSON") from None
    if not isinstance(event, dict):
        raise _shape_error("the body must be a JSON object")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id.startswith("evt_") or len(event_id) > 255:
        raise _shape_error("'id' must be a string starting with 'evt_'")
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 255:
        raise _shape_error("'type' must be a non-empty string")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise _shape_error("'data.object' must be a JSON object")
    created = event.get("created")
    if isinstance(created, bool) or not isinstance(created, int):
        created = 0
    account = event.get("account")
    object_id = obj.get("id")
    return RoutingFields(
        id=event_id,
        type=event_type,
        created=created,
        livemode=event.get("livemode") is True,
        account=account if isinstance(account, str) else None,
        object_id=object_id if isinstance(object_id, str) else None,
    )
