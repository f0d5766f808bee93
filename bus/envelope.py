"""The stream entry: what the ingress writes and what a worker reads.

Each entry is self-contained: the raw body, the fields routing used, the
handler list decided at publish time and the version of the routing table that
decided it (dead letters show it). A worker never needs the routing table to
run an entry. The time received is the stream entry id's (workers.stream_ops.id_ms).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

from bus.errors import PermanentFailure

# Field names inside a stream entry. Short, because they are stored per entry.
F_ID = "id"
F_TYPE = "type"
F_CREATED = "created"
F_LIVEMODE = "livemode"
F_ACCOUNT = "account"
F_OBJECT_ID = "object_id"
F_HANDLERS = "handlers"
F_VERSION = "version"
F_BODY = "body"
# Set only on entries put in a stream again by `replay` or `dlq replay`: the id of the
# entry the ingress wrote, so a later `replay --since` can tell a copy from an original.
F_REPLAY_OF = "replay_of"
# Set only on replayed entries: handlers already done for the event before the copy was
# made (they are not in its handler list), so a later `--reroute` keeps them done.
F_DONE = "done"

HANDLER_SEPARATOR = ","
# The `object` of a thin event notification (event destinations; every v2 type, and v1.* types).
THIN_EVENT_OBJECT = "v2.core.event"

# Fields every pool's copy of an event shares, in the order the publish script writes
# them after `handlers`. The script names them itself, so a publish sends values only.
SHARED_FIELDS = (F_ID, F_TYPE, F_CREATED, F_LIVEMODE, F_ACCOUNT, F_OBJECT_ID, F_VERSION, F_BODY)


@dataclass(frozen=True)
class RoutingFields:
    """The few fields the ingress parses out of a Stripe event to route it."""

    id: str
    type: str
    created: int
    livemode: bool
    account: str | None
    object_id: str | None


def shared_values(event: RoutingFields, version: str, body: bytes) -> tuple[str | bytes, ...]:
    """Values of SHARED_FIELDS for one event, in that order."""
    return (event.id, event.type, str(event.created), "1" if event.livemode else "0",
            event.account or "", event.object_id or "", version, body)


def entry_fields(
    event: RoutingFields, handlers: tuple[str, ...], version: str, body: bytes
) -> dict[str, str | bytes]:
    """The fields of one stream entry, as the publish script writes them (tests publish with it)."""
    return {
        F_HANDLERS: HANDLER_SEPARATOR.join(handlers),
        **dict(zip(SHARED_FIELDS, shared_values(event, version, body), strict=True)),
    }


_BYTE_NAMES = {name: name.encode() for name in
               (F_ID, F_TYPE, F_CREATED, F_LIVEMODE, F_ACCOUNT, F_OBJECT_ID, F_HANDLERS, F_VERSION, F_BODY)}


def _text(fields: Mapping[bytes | str, bytes | str], name: str) -> str:
    # Entries read from Redis have bytes keys; look those up first (the worker's hot path).
    value = fields.get(_BYTE_NAMES.get(name) or name.encode())
    if value is None:
        value = fields.get(name, b"")
    return value.decode() if isinstance(value, bytes) else str(value or "")


class ThinEventError(PermanentFailure):
    """A handler read a snapshot field (data.object) of a thin event; retrying cannot help."""


@dataclass(frozen=True)
class RelatedObject:
    """What a thin event is about: `id` (None for a singleton), Stripe `type`, API `url` to fetch."""

    id: str | None
    type: str
    url: str


@dataclass(frozen=True)
class Event:
    """A Stripe event as a handler sees it."""

    id: str
    type: str
    created: int
    livemode: bool
    account: str | None
    object_id: str | None
    handlers: tuple[str, ...]
    # The version of the routing table that chose `handlers` (bus.routing_table.RoutingTable.version).
    table_version: str
    body: bytes = field(repr=False)

    @cached_property
    def payload(self) -> dict[str, Any]:
        """The whole event, parsed on first use."""
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed

    @property
    def is_thin(self) -> bool:
        """A thin event notification (`"object": "v2.core.event"`): a reference, no snapshot."""
        return self.payload.get("object") == THIN_EVENT_OBJECT

    @property
    def related_object(self) -> RelatedObject | None:
        """A thin event's `related_object` ({id, type, url}); None for a snapshot event or none sent."""
        if not self.is_thin:
            return None
        related = self.payload.get("related_object")
        if not isinstance(related, dict):
            return None
        ref_id, ref_type, url = related.get("id"), related.get("type"), related.get("url")
        return RelatedObject(id=ref_id if isinstance(ref_id, str) else None,
                             type=str(ref_type or ""), url=str(url or ""))

    @property
    def data_object(self) -> dict[str, Any]:
        """`data.object`: the Stripe object the event is about (a snapshot event's only)."""
        if self.is_thin:
            raise ThinEventError(
                f"{self.type} ({self.id}) is a thin event: it carries no data.object. Fetch the "
                "object with `await ctx.stripe.fetch_related_object(event)` (or the whole event "
                "with `await ctx.stripe.fetch_event(event)`)"
            )
        obj: dict[str, Any] = self.payload["data"]["object"]
        return obj

    @classmethod
    def from_entry(cls, fields: Mapping[bytes | str, bytes | str]) -> Event:
        body = fields.get(F_BODY.encode(), fields.get(F_BODY, b""))
        handlers = _text(fields, F_HANDLERS)
        return cls(
            id=_text(fields, F_ID),
            type=_text(fields, F_TYPE),
            created=int(_text(fields, F_CREATED) or 0),
            livemode=_text(fields, F_LIVEMODE) == "1",
            account=_text(fields, F_ACCOUNT) or None,
            object_id=_text(fields, F_OBJECT_ID) or None,
            handlers=tuple(h for h in handlers.split(HANDLER_SEPARATOR) if h),
            table_version=_text(fields, F_VERSION),
            body=body if isinstance(body, bytes) else str(body).encode(),
        )
