"""Thin event notifications ("object": "v2.core.event"): parsed, routed by type, read by handlers."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import stripe

from bus.envelope import Event, RoutingFields, ThinEventError, entry_fields
from bus.errors import PermanentFailure
from bus.routing import EVENT_NAME, known_event_types, parse_routing, thin_event_types
from fanout.samples import thin_event
from ingress.parse import routing_fields
from ingress.rejections import Rejected


def test_a_thin_event_is_routed_by_type_with_its_related_object_id() -> None:
    event = thin_event("v1.customer.created", related_id="cus_thin_1", context="acct_1ABC",
                       created=1764590400.25)
    fields = routing_fields(orjson.dumps(event))
    assert fields == RoutingFields(id=event["id"], type="v1.customer.created", created=1764590400,
                                   livemode=False, account="acct_1ABC", object_id="cus_thin_1")


def test_the_sample_thin_event_is_one_the_stripe_sdk_parses() -> None:
    event = thin_event("v1.customer.created")
    client = stripe.StripeClient("sk_test_unused")
    notification = client.parse_event_notification_without_verification(orjson.dumps(event))
    assert type(notification).__name__ == "V1CustomerCreatedEventNotification"
    assert notification.related_object.id == event["related_object"]["id"]


def test_a_thin_event_without_a_related_object_is_accepted_with_no_object_id() -> None:
    event = {**thin_event("v2.core.event_destination.ping"), "related_object": None}
    fields = routing_fields(orjson.dumps(event))
    assert fields.type == "v2.core.event_destination.ping" and fields.object_id is None


@pytest.mark.parametrize("created", [None, 17, "not a time"])
def test_a_thin_event_with_an_unreadable_created_is_accepted_as_time_zero(created: object) -> None:
    event = {**thin_event("v1.customer.updated"), "created": created}
    assert routing_fields(orjson.dumps(event)).created == 0


@pytest.mark.parametrize("change", [
    {"object": "v2.core.events"},   # not the thin object name
    {"object": None},               # neither data.object nor a thin event
    {"related_object": "cus_1"},    # a reference must be an object
    {"id": "thin_1"},               # thin event ids start with evt_ as well
])
def test_a_body_that_is_neither_snapshot_nor_thin_is_not_a_stripe_event(change: dict[str, object]) -> None:
    event = {**thin_event("v1.customer.created"), **change}
    with pytest.raises(Rejected) as caught:
        routing_fields(orjson.dumps(event))
    assert caught.value.code == "not_a_stripe_event"


def _event(payload: dict[str, object]) -> Event:
    body = orjson.dumps(payload)
    fields = routing_fields(body)
    return Event.from_entry(dict(entry_fields(fields, ("noop",), "v", body)))


def test_a_handler_sees_a_thin_event_and_its_related_object() -> None:
    event = _event(thin_event("v1.customer.updated", related_id="cus_9"))
    assert event.is_thin
    assert event.related_object is not None
    assert (event.related_object.id, event.related_object.type, event.related_object.url) == (
        "cus_9", "customer", "/v1/customers/cus_9")


def test_data_object_of_a_thin_event_fails_permanently_and_says_to_fetch_it() -> None:
    event = _event(thin_event("v1.customer.updated"))
    with pytest.raises(ThinEventError) as caught:
        _ = event.data_object
    assert isinstance(caught.value, PermanentFailure)
    assert "thin event" in str(caught.value) and "ctx.stripe.fetch_related_object" in str(caught.value)


def test_a_snapshot_event_is_not_thin() -> None:
    from fanout.samples import sample_event

    event = _event(sample_event("customer.created"))
    assert not event.is_thin and event.related_object is None
    assert event.data_object["object"] == "customer"


def test_every_thin_type_of_the_sdk_is_a_valid_route_name_and_known() -> None:
    thin = thin_event_types()
    assert {"v1.customer.created", "v2.core.account.created",
            "v2.core.account[requirements].updated"} <= thin
    assert thin <= known_event_types()
    assert [t for t in thin if not EVENT_NAME.match(t)] == []


ROUTES = """\
pools: {a: {}, b: {}}
routes:
  v1.customer.*: {a: [noop]}
  v2.core.account.*: {b: [noop]}
  v2.core.account[requirements].*: {a: [noop]}
  v1.billing.meter.error_report_triggered: {a: [noop]}
"""


def test_thin_types_route_by_wildcard_with_no_unknown_type_warning() -> None:
    table = parse_routing(ROUTES)
    assert table.warnings == ()
    assert table.match("v1.customer.created").pools == ("a",)
    assert table.match("v1.customer.subscription.updated").pools == ("a",)
    assert table.match("customer.created").route is None, "a snapshot type is not a thin one"
    assert table.match("v2.core.account.updated").pools == ("b",)


def test_a_bracketed_sub_resource_belongs_to_its_resource_wildcard() -> None:
    table = parse_routing(ROUTES)
    assert table.match("v2.core.account[identity].updated").route.pattern == "v2.core.account.*"  # type: ignore[union-attr]
    assert table.match("v2.core.account[configuration.customer].updated").pools == ("b",)
    assert table.match("v2.core.account[requirements].updated").route.pattern == (  # type: ignore[union-attr]
        "v2.core.account[requirements].*")
    assert table.match("v2.core.account_person.created").route is None


@pytest.mark.parametrize("pattern", ["v2.core.account[].updated", "v2.core.account[x.updated",
                                     "v2.core.account]x[.updated", "v2.core[a][b].x"])
def test_a_malformed_bracket_is_a_malformed_route(pattern: str) -> None:
    from bus.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_routing(f'pools: {{a: {{}}}}\nroutes:\n  "{pattern}": {{a: [noop]}}\n')
    assert "malformed route" in str(caught.value)


def test_fanout_send_posts_a_thin_event_that_the_ingress_stores(
        prefix: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import redis

    from bus import defaults
    from bus.keys import Keys
    from fanout.cli import main
    from ingress.app import create_app
    from tests.conftest import make_settings
    from tests.live import serve

    routing = tmp_path / "routing.yaml"
    routing.write_text("pools: {admin: {}}\nroutes:\n  v1.customer.*: {admin: [noop]}\n")
    settings = make_settings(prefix, routing_file=routing, secrets=defaults.DEV_WEBHOOK_SECRET)
    with serve(create_app(settings)) as base:
        assert main(["send", "v1.customer.created", "--url", base + defaults.WEBHOOK_PATH,
                     "--object", "customer=cus_sent"]) == 0
        answer = capsys.readouterr().out.splitlines()[-1]
    assert answer.startswith("200 ") and '"pools":["admin"]' in answer
    client = redis.Redis.from_url(settings.redis_url)
    try:
        [(_, entry)] = client.xrange(Keys(prefix).stream("admin"))
    finally:
        client.close()
    assert entry[b"type"] == b"v1.customer.created" and entry[b"object_id"] == b"cus_sent"
