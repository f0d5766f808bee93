"""Routing fields are read from a verified body; anything not shaped like a Stripe event is refused."""

from __future__ import annotations

import orjson
import pytest

from fanout.samples import sample_event
from ingress.parse import routing_fields
from ingress.rejections import Rejected


def test_routing_fields_come_from_the_event() -> None:
    event = sample_event("checkout.session.completed")
    event["account"] = "acct_123"
    fields = routing_fields(orjson.dumps(event))
    assert fields.id == event["id"]
    assert fields.type == "checkout.session.completed"
    assert fields.created == event["created"]
    assert fields.livemode is False
    assert fields.account == "acct_123"
    assert fields.object_id == event["data"]["object"]["id"]


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"\x00"])
def test_a_body_that_is_not_json_is_invalid_json(body: bytes) -> None:
    with pytest.raises(Rejected) as caught:
        routing_fields(body)
    assert caught.value.code == "invalid_json"


BASE = {"id": "evt_1", "type": "charge.refunded", "data": {"object": {"id": "ch_1"}}}


@pytest.mark.parametrize(
    "change",
    [
        {"id": None},
        {"id": 12},
        {"id": "ch_1"},
        {"type": None},
        {"type": ""},
        {"type": 5},
        {"data": None},
        {"data": {"object": []}},
        {"data": {"object": "ch_1"}},
        {"data": {}},
    ],
)
def test_a_json_object_without_the_event_shape_is_not_a_stripe_event(change: dict[str, object]) -> None:
    body = {**BASE, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(Rejected) as caught:
        routing_fields(orjson.dumps(body))
    assert caught.value.code == "not_a_stripe_event"


@pytest.mark.parametrize("body", [b"[]", b"1", b'"evt_1"', b"null"])
def test_json_that_is_not_an_object_is_not_a_stripe_event(body: bytes) -> None:
    with pytest.raises(Rejected) as caught:
        routing_fields(body)
    assert caught.value.code == "not_a_stripe_event"
