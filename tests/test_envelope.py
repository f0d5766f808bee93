"""The stream entry's body: stored compressed, read back as the exact original bytes (bus/envelope.py)."""

from __future__ import annotations

import orjson
import pytest

from bus.envelope import (
    BODY_LZ4,
    BODY_RAW,
    F_BODY,
    F_BODY_ENCODING,
    BodyEncodingError,
    Event,
    decode_body,
    encode_body,
    entry_fields,
    plain_entry,
)
from fanout.samples import sample_event
from ingress.parse import routing_fields

NON_ASCII = {"name": "Zoë Ångström", "city": "東京", "note": "€ 4,99 — ça marche 🎉"}


def _pretty(event: dict[str, object]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_INDENT_2)  # as Stripe sends it


def _stored(fields: dict[str, str | bytes]) -> dict[bytes, bytes]:
    """The entry as a worker reads it from Redis: bytes keys and values."""
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


def test_a_stripe_body_is_stored_compressed_and_read_back_byte_for_byte() -> None:
    event = sample_event("checkout.session.completed")
    event["data"]["object"]["metadata"] = NON_ASCII  # type: ignore[index]
    body = _pretty(event)
    fields = entry_fields(routing_fields(body), ("orders.create_from_checkout",), "v1", body)
    assert fields[F_BODY_ENCODING] == BODY_LZ4
    assert len(fields[F_BODY]) < 0.75 * len(body)
    read = Event.from_entry(_stored(fields))
    assert read.body == body
    assert read.payload["data"]["object"]["metadata"] == NON_ASCII


def test_a_body_that_does_not_shrink_is_stored_raw() -> None:
    body = b'{"id":"evt_1"}'
    assert encode_body(body) == (BODY_RAW, body)
    assert decode_body(BODY_RAW, body) == body


def test_an_entry_written_before_compression_is_still_read() -> None:
    body = _pretty(sample_event("charge.refunded"))
    old = {b"id": b"evt_old", b"type": b"charge.refunded", b"created": b"1", b"livemode": b"0",
           b"account": b"", b"object_id": b"ch_1", b"handlers": b"orders.mark_paid", b"version": b"v",
           b"received_ms": b"1", b"body": body}  # no body_encoding field at all
    event = Event.from_entry(old)
    assert (event.id, event.body, event.handlers) == ("evt_old", body, ("orders.mark_paid",))
    assert Event.from_entry({k.decode(): v.decode() for k, v in old.items()}).body == body, "text keys too"


def test_an_unknown_encoding_or_a_corrupt_body_is_a_clear_error() -> None:
    body = _pretty(sample_event("charge.refunded"))
    fields = _stored(entry_fields(routing_fields(body), ("h",), "v1", body))
    with pytest.raises(BodyEncodingError, match="unknown body encoding 'brotli'"):
        Event.from_entry({**fields, F_BODY_ENCODING.encode(): b"brotli"})
    with pytest.raises(BodyEncodingError, match="does not decompress"):
        Event.from_entry({**fields, F_BODY.encode(): fields[F_BODY.encode()][:-20]})
    assert issubclass(BodyEncodingError, ValueError), "a worker dead-letters it as a malformed entry"


def test_a_text_only_carrier_gets_the_decoded_body_and_no_encoding_field() -> None:
    body = _pretty({**sample_event("customer.updated"), "note": NON_ASCII})
    fields = _stored(entry_fields(routing_fields(body), ("h",), "v1", body))
    plain = plain_entry(fields)
    assert plain[b"body"] == body and F_BODY_ENCODING.encode() not in plain
    assert Event.from_entry(plain).body == body
