"""The stream entry: what the ingress writes and what a worker reads.

Each entry is self-contained: the raw body, the fields routing used, the
handler list decided at publish time and the version of the routing table that
decided it (dead letters show it). A worker never needs the routing table to
run an entry. The time received is the stream entry id's (workers.stream_ops.id_ms).

The body is stored LZ4-compressed (the standard LZ4 frame format) when that makes
it smaller, which for Stripe's pretty-printed JSON of 1 to 4 KB is 70 to 45 % of
its size, and the `body_encoding` field says so ("lz4"; "" or absent for the raw
bytes, as in every entry written before compression). LZ4 rather than zstd or
zlib: it costs the ingress 2 to 3 us a body against 6 to 10 (zstd level 1) or
14 to 30 (zlib level 1), and meets the memory target (bench/bench_memory.py). Event.from_entry gives handlers the original
bytes either way: `forward:` re-signs exactly what Stripe signed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import lz4.frame
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
F_BODY_ENCODING = "body_encoding"

# Values of F_BODY_ENCODING. Every entry carries the field, so all entries of a stream
# share one field list, which Redis then stores once per node instead of once per entry.
BODY_RAW = ""
BODY_LZ4 = "lz4"

HANDLER_SEPARATOR = ","
# The `object` of a thin event notification (event destinations; every v2 type, and v1.* types).
THIN_EVENT_OBJECT = "v2.core.event"

# Fields every pool's copy of an event shares, in the order the publish script writes
# them after `handlers`. The script names them itself, so a publish sends values only.
SHARED_FIELDS = (F_ID, F_TYPE, F_CREATED, F_LIVEMODE, F_ACCOUNT, F_OBJECT_ID, F_VERSION,
                 F_BODY_ENCODING, F_BODY)


class BodyEncodingError(ValueError):
    """A stored body whose encoding is unknown or whose bytes do not decode."""


def encode_body(body: bytes) -> tuple[str, bytes]:
    """The encoding and bytes to store for a raw body: compressed when that is smaller."""
    # The frame records the body's size (decompression allocates once) and a checksum of it
    # (a damaged body is an error, never different bytes).
    packed: bytes = lz4.frame.compress(body, store_size=True, content_checksum=True)
    if len(packed) < len(body):
        return BODY_LZ4, packed
    return BODY_RAW, body


def decode_body(encoding: str, stored: bytes) -> bytes:
    """The original body from its stored bytes and encoding (raise BodyEncodingError)."""
    if encoding == BODY_RAW:
        return stored
    if encoding == BODY_LZ4:
        try:
            body: bytes = lz4.frame.decompress(stored)
        except RuntimeError as err:  # what python-lz4 raises for a bad frame
            raise BodyEncodingError(f"the stored body does not decompress: {err}") from err
        return body
    raise BodyEncodingError(f"unknown body encoding {encoding!r}")


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
    """Values of SHARED_FIELDS for one event, in that order (the body encoded: encode_body)."""
    encoding, stored = encode_body(body)
    return (event.id, event.type, str(event.created), "1" if event.livemode else "0",
            event.account or "", event.object_id or "", version, encoding, stored)


def entry_fields(
    event: RoutingFields, handlers: tuple[str, ...], version: str, body: bytes
) -> dict[str, str | bytes]:
    """The fields of one stream entry, as the publish script writes them (tests publish with it)."""
    return {
        F_HANDLERS: HANDLER_SEPARATOR.join(handlers),
        **dict(zip(SHARED_FIELDS, shared_values(event, version, body), strict=True)),
    }


# The fields Event.from_entry reads, by the key a stream entry has (bytes from Redis, text elsewhere).
_READ_NAMES: dict[bytes | str, str] = {
    key: name for name in (F_ID, F_TYPE, F_CREATED, F_LIVEMODE, F_ACCOUNT, F_OBJECT_ID, F_HANDLERS, F_VERSION,
                           F_BODY_ENCODING, F_BODY)
    for key in (name, name.encode())}
_BYTE_NAMES = {name: name.encode() for name in
               (F_ID, F_TYPE, F_CREATED, F_LIVEMODE, F_ACCOUNT, F_OBJECT_ID, F_HANDLERS, F_VERSION,
                F_BODY_ENCODING, F_BODY)}


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
        """The event of a stream entry, its body decoded (raise BodyEncodingError).

        This runs once per entry in every worker, so the fields are read in one pass and the
        frozen instance is filled without its generated __init__ (which sets each field
        through object.__setattr__): about 3 us instead of 10 for a typical entry.
        """
        text: dict[str, str] = {}
        stored: bytes | str = b""
        for key, value in fields.items():
            name = _READ_NAMES.get(key)
            if name is None:
                continue
            if name == F_BODY:
                stored = value
            else:
                text[name] = value.decode() if isinstance(value, bytes) else str(value or "")
        get = text.get
        event = object.__new__(cls)
        event.__dict__.update(
            id=get(F_ID, ""),
            type=get(F_TYPE, ""),
            created=int(get(F_CREATED) or 0),
            livemode=get(F_LIVEMODE) == "1",
            account=get(F_ACCOUNT) or None,
            object_id=get(F_OBJECT_ID) or None,
            handlers=tuple(h for h in get(F_HANDLERS, "").split(HANDLER_SEPARATOR) if h),
            table_version=get(F_VERSION, ""),
            body=decode_body(get(F_BODY_ENCODING, BODY_RAW),
                             stored if isinstance(stored, bytes) else str(stored).encode()),
        )
        return event


def entry_body(fields: Mapping[bytes | str, bytes | str]) -> bytes:
    """The original raw body of a stream entry, whatever its encoding (raise BodyEncodingError)."""
    stored = fields.get(_BYTE_NAMES[F_BODY], fields.get(F_BODY, b""))
    return decode_body(_text(fields, F_BODY_ENCODING),
                       stored if isinstance(stored, bytes) else str(stored).encode())


def plain_entry(fields: Mapping[bytes | str, bytes | str]) -> dict[bytes | str, bytes | str]:
    """The entry's fields with its body decoded and no encoding field (for text-only carriers: RQ jobs)."""
    out = {k: v for k, v in fields.items() if k not in (F_BODY_ENCODING, _BYTE_NAMES[F_BODY_ENCODING])}
    body_key = _BYTE_NAMES[F_BODY] if _BYTE_NAMES[F_BODY] in fields else F_BODY
    out[body_key] = entry_body(fields)
    return out
