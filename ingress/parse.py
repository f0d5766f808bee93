"""Read the few fields routing needs from a verified body, and reject what is not a Stripe event.

Two shapes are Stripe events, and both arrive signed the same way:

- a snapshot event (``"object": "event"``): the object is in ``data.object``,
  ``created`` is Unix seconds, a Connect account is in ``account``;
- a thin event notification (``"object": "v2.core.event"``, sent by event
  destinations for every v2 type and for ``v1.*`` types): no ``data.object``,
  only a ``related_object`` reference ``{id, type, url}`` (or null), ``created``
  is an RFC 3339 string, and the account to act as is in ``context``.

Both yield the same RoutingFields, so dedupe (by id), routing (by type) and
publication do not need to know which shape arrived.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from bus.envelope import RoutingFields
from ingress.rejections import bad_request

THIN_OBJECT = "v2.core.event"


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
    if isinstance(obj, dict):
        created = event.get("created")
        if isinstance(created, bool) or not isinstance(created, int):
            created = 0
        account = event.get("account")
        object_id = obj.get("id")
    elif event.get("object") == THIN_OBJECT:
        related = event.get("related_object")
        if related is not None and not isinstance(related, dict):
            raise _shape_error("'related_object' of a thin event must be an object or null")
        created = _thin_created(event.get("created"))
        account = event.get("context")
        object_id = related.get("id") if related else None
    else:
        raise _shape_error(
            "'data.object' must be a JSON object (or, for a thin event, 'object' must be "
            f"{THIN_OBJECT!r})"
        )
    return RoutingFields(
        id=event_id,
        type=event_type,
        created=created,
        livemode=event.get("livemode") is True,
        account=account if isinstance(account, str) else None,
        object_id=object_id if isinstance(object_id, str) else None,
    )


def _thin_created(value: Any) -> int:
    """Unix seconds of a thin event's `created` ("2026-11-30T12:00:00.000Z"); 0 if unreadable."""
    if not isinstance(value, str):
        return 0
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return 0
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())
