"""The `fanout` command: routes check/explain, send, and the embedded Redis behind `fanout run`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis

from bus import defaults
from bus.keys import Keys
from fanout import embedded
from fanout.cli import main
from fanout.samples import SAMPLES, sample_event
from fanout.send import parse_objects
from ingress.app import create_app

from .conftest import REPO, make_settings
from .live import serve
from .support import is_seen


def routed_and_documented_types() -> list[str]:
    """Every exact event type routing.yaml routes, one of each wildcard, and each the README names."""
    import re

    from bus.routing import load_routing

    table = load_routing(REPO / "routing.yaml")
    found = {r.pattern for r in table.routes if not r.pattern.endswith("*")}
    found |= {r.pattern[:-1] + suffix for r in table.routes if r.pattern.endswith(".*")
              for suffix in ("created", "updated", "deleted")}
    readme = (REPO / "README.md").read_text()
    found |= set(re.findall(r"\b(invoice\.[a-z_]+|customer\.subscription\.[a-z_]+|"
                            r"checkout\.session\.async_[a-z_]+)\b", readme))
    return sorted(found)


REQUIRED_SAMPLES = sorted({
    *routed_and_documented_types(),
    "invoice.paid", "invoice.payment_failed", "customer.subscription.created",
    "customer.subscription.updated", "customer.subscription.deleted", "charge.refunded", "refund.created",
    "product.created", "product.updated", "product.deleted", "price.created", "price.updated",
    "price.deleted", "checkout.session.async_payment_succeeded", "checkout.session.async_payment_failed",
})


def test_routes_check_passes_on_the_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes", "check", str(REPO / "routing.yaml")]) == 0
    assert "ok (version" in capsys.readouterr().out


def test_routes_check_exits_1_with_the_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "routing.yaml"
    bad.write_text("pools: {a: {}}\nroutes:\n  charge.refunded: {b: [noop]}\n")
    assert main(["routes", "check", str(bad)]) == 1
    assert f"{bad}:3: route 'charge.refunded': unknown pool 'b'" in capsys.readouterr().err


def test_routes_explain_names_the_winning_route_and_its_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes", "explain", "product.updated", "--file", str(REPO / "routing.yaml")]) == 0
    out = capsys.readouterr().out
    assert "wildcard route 'product.*'" in out and "admin: forward:admin_backend" in out
    assert main(["routes", "explain", "invoice.paid", "--file", str(REPO / "routing.yaml"), "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == {
        "event_type": "invoice.paid", "route": None, "kind": None, "line": None, "pools": {}}


@pytest.mark.parametrize("event_type", REQUIRED_SAMPLES)
def test_every_required_sample_is_a_realistic_event_of_its_type(event_type: str) -> None:
    event = sample_event(event_type)
    assert event_type in SAMPLES
    assert event["type"] == event_type and event["id"].startswith("evt_") and event["object"] == "event"
    assert isinstance(event["data"]["object"]["id"], str)
    stripe_type = event["data"]["object"]["object"]
    assert event_type.startswith(stripe_type.replace("subscription", "customer.subscription")
                                 if stripe_type == "subscription" else stripe_type), (event_type, stripe_type)


def test_the_required_samples_include_what_the_readme_names() -> None:
    assert {"invoice.paid", "customer.subscription.created"} <= set(routed_and_documented_types())


def test_send_suggests_the_closest_sample_for_an_unknown_type(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "invoice.payed", "--url", "http://127.0.0.1:1/"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fanout send: no sample for 'invoice.payed'; did you mean 'invoice.paid'?")
    assert "--file PAYLOAD.json" in err


def test_send_file_posts_the_payload_signed_as_is(prefix: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    payload = tmp_path / "payload.json"
    body = orjson.dumps(sample_event("invoice.paid", event_id="evt_from_file_1"))  # compact, unlike samples
    payload.write_bytes(body)
    settings = make_settings(prefix, secrets=defaults.DEV_WEBHOOK_SECRET)
    with serve(create_app(settings)) as base:
        url = base + defaults.WEBHOOK_PATH
        assert main(["send", "--file", str(payload), "--url", url]) == 0
        answer = capsys.readouterr().out.splitlines()[-1]
    assert answer == '200 {"id":"evt_from_file_1","duplicate":false,"pools":[]}'
    client = redis.Redis.from_url(settings.redis_url)
    try:
        assert is_seen(client, Keys(prefix), "evt_from_file_1")
    finally:
        client.close()


@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "is not JSON"),
    (b'{"id": "ch_1", "type": "charge.refunded"}', "a Stripe event has an \"id\" starting with 'evt_'"),
    (b'{"id": "evt_1"}', "a Stripe event has a string \"type\""),
])
def test_send_file_refuses_what_cannot_be_a_stripe_event(content: bytes, message: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    payload = tmp_path / "payload.json"
    payload.write_bytes(content)
    assert main(["send", "--file", str(payload), "--url", "http://127.0.0.1:1/"]) == 2
    assert message in capsys.readouterr().err


def test_send_of_a_payment_intent_alone_says_how_to_tie_it_to_a_checkout(
        prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(prefix, secrets=defaults.DEV_WEBHOOK_SECRET)
    with serve(create_app(settings)) as base:
        url = base + defaults.WEBHOOK_PATH
        assert main(["send", "payment_intent.succeeded", "--url", url]) == 0
        alone = capsys.readouterr().err
        assert main(["send", "payment_intent.succeeded", "--url", url,
                     "--object", "session=cs_test_1", "--object", "payment_intent=pi_1"]) == 0
        pinned = capsys.readouterr().err
    assert "names a fresh checkout session that no order has" in alone
    assert "--object session=cs_test_1 --object payment_intent=pi_1" in alone
    assert "note:" not in pinned


def test_send_posts_a_signed_sample_that_the_ingress_stores(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(prefix, secrets=defaults.DEV_WEBHOOK_SECRET)
    with serve(create_app(settings)) as base:
        url = base + defaults.WEBHOOK_PATH
        assert main(["send", "charge.refunded", "--url", url, "--id", "evt_cli_1"]) == 0
        # The in-thread server may log to stdout too; `send` prints its answer last.
        first = capsys.readouterr().out.splitlines()[-1]
        assert main(["send", "charge.refunded", "--url", url, "--id", "evt_cli_1"]) == 0
        second = capsys.readouterr().out.splitlines()[-1]
        assert main(["send", "charge.refunded", "--url", url, "--secret", "whsec_wrong"]) == 1
        wrong = capsys.readouterr().out.splitlines()[-1]
    assert first.startswith("200 ") and '"duplicate":false' in first and '"pools":["admin"]' in first
    assert '"duplicate":true' in second
    assert wrong.startswith("400 ") and "bad_signature" in wrong
    client = redis.Redis.from_url(settings.redis_url)
    try:
        assert client.xlen(Keys(prefix).stream("admin")) == 1
    finally:
        client.close()


def test_send_refuses_an_event_type_without_a_sample(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "invoice.nonexistent", "--url", "http://127.0.0.1:9/"]) == 2
    assert "no sample for 'invoice.nonexistent'" in capsys.readouterr().err


def test_send_object_pins_an_object_id_and_refuses_an_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert sample_event("customer.updated", ids=parse_objects(["customer=cus_pinned"]))[
        "data"]["object"]["id"] == "cus_pinned"
    assert main(["send", "customer.updated", "--url", "http://127.0.0.1:9/", "--object", "coupon=co_1"]) == 2
    assert "KIND is one of customer, session," in capsys.readouterr().err
    assert main(["send", "customer.updated", "--url", "http://127.0.0.1:9/", "--object", "cus_1"]) == 2
    assert "expected KIND=ID" in capsys.readouterr().err


def test_with_no_local_redis_run_falls_back_to_an_in_process_one(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    monkeypatch.setattr(embedded, "LOCAL_REDIS_URL", "redis://127.0.0.1:1/0")
    store = embedded.resolve(None)
    try:
        assert store.in_process
        settings = make_settings(prefix, redis_url=store.url, secrets=defaults.DEV_WEBHOOK_SECRET)
        with serve(create_app(settings)) as base:
            assert main(["send", "checkout.session.completed", "--url", base + defaults.WEBHOOK_PATH,
                         "--id", "evt_embedded"]) == 0
            assert main(["send", "checkout.session.completed", "--url", base + defaults.WEBHOOK_PATH,
                         "--id", "evt_embedded"]) == 0
        client = redis.Redis.from_url(store.url)
        assert client.xlen(Keys(prefix).stream("customer")) == 1
        assert client.xinfo_groups(Keys(prefix).stream("customer"))[0]["name"] == b"customer"
        client.close()
    finally:
        store.close()


def test_a_configured_redis_url_is_used_as_is() -> None:
    assert embedded.resolve("redis://example.invalid:6379/3").url == "redis://example.invalid:6379/3"


def test_ingress_refuses_to_start_without_a_webhook_secret(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fanout.cli", "ingress"], capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "ROUTING_FILE": str(REPO / "routing.yaml")}, cwd=tmp_path, timeout=30,
    )
    assert result.returncode == 2 and "STRIPE_WEBHOOK_SECRET is not set" in result.stderr


def test_ingress_command_serves_with_two_server_processes(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    import httpx

    from .live import free_port

    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": make_settings(prefix).redis_url, "FANOUT_PREFIX": prefix,
           "STRIPE_WEBHOOK_SECRET": "whsec_cli_test", "ROUTING_FILE": str(REPO / "routing.yaml")}
    server = subprocess.Popen([sys.executable, "-m", "fanout.cli", "ingress", "--port", str(port), "--workers", "2"],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}{defaults.WEBHOOK_PATH}"
        assert main(["send", "refund.created", "--url", url, "--secret", "whsec_cli_test"]) == 0
        assert '"pools":["admin"]' in capsys.readouterr().out
    finally:
        server.terminate()
        assert server.wait(timeout=20) == 0
