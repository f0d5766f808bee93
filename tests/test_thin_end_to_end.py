"""A thin event end to end: signed, POSTed to a real ingress over a socket, routed by a wildcard,
run by worker pools (burst), forwarded re-signed to a receiver that parses it with the Stripe SDK,
and its related object fetched by a handler from the Stripe API test double."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import stripe

from bus.keys import Keys
from bus.signing import stripe_signature
from fanout.samples import thin_event
from ingress.app import create_app
from tests.handlers_for_tests import fetched_key
from tests.postgrest_double import serve
from tests.stripe_api_double import StripeApiDouble
from tests.support import FAST_POOL, write_routing
from workers.ops.deadletter import list_dead
from workers.supervision.runner import run_pool

from .conftest import TEST_SECRET, make_settings

pytestmark = pytest.mark.anyio
DEST_SECRET = "whsec_thin_destination"


class ThinReceiver(ThreadingHTTPServer):
    """An endpoint as a Stripe user writes it for thin events: StripeClient.parse_event_notification."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.daemon_threads = True
        self.received: list[tuple[bytes, str, str | None]] = []  # body, notification class, related id

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: ThinReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        client = stripe.StripeClient("sk_test_receiver")
        try:
            notification = client.parse_event_notification(
                body, self.headers["Stripe-Signature"], DEST_SECRET)
        except (stripe.SignatureVerificationError, ValueError):
            self.send_response(400)
        else:
            related = getattr(notification, "related_object", None)
            self.server.received.append((body, type(notification).__name__,
                                         related.id if related else None))
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[ThinReceiver]:
    server = ThinReceiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@dataclass
class IngressServer:
    """What tests.postgrest_double.serve runs: any object with app()."""

    asgi: Any

    def app(self) -> Any:
        return self.asgi


async def test_a_thin_event_is_verified_routed_by_wildcard_run_forwarded_and_fetched(
        aredis: aioredis.Redis, prefix: str, keys: Keys, receiver: ThinReceiver,
        tmp_path: Path) -> None:
    routing = write_routing(tmp_path, f"""
pools:
  customer: {{{FAST_POOL}}}
  admin: {{{FAST_POOL}}}
destinations:
  backend: {{url_env: BACKEND_URL, secret_env: BACKEND_SECRET}}
routes:
  v1.customer.*:
    customer: ["tests.handlers_for_tests:fetch_related", analytics.track]
    admin: ["forward:backend"]
  customer.*: {{admin: [noop]}}
""")
    api = StripeApiDouble()
    payload = thin_event("v1.customer.updated", related_id="cus_thin_e2e", context="acct_1Thin")
    api.objects["/v1/customers/cus_thin_e2e"] = {"id": "cus_thin_e2e", "object": "customer",
                                                 "email": "thin@example.com"}
    body = orjson.dumps(payload, option=orjson.OPT_INDENT_2)
    # The SDK accepts this payload for what it is, before anything of ours touches it.
    sdk = stripe.StripeClient("sk_test_x").parse_event_notification(
        body, stripe_signature(body, TEST_SECRET), TEST_SECRET)
    assert type(sdk).__name__ == "V1CustomerUpdatedEventNotification"

    with serve(api) as api_url:  # type: ignore[arg-type]
        settings = make_settings(prefix, routing_file=routing, BACKEND_URL=receiver.base + "/hook",
                                 BACKEND_SECRET=DEST_SECRET, STRIPE_API_KEY=api.api_key,
                                 STRIPE_API_BASE=api_url,
                                 FANOUT_SQLITE_PATH=str(tmp_path / "fanout.sqlite3"))
        ingress = create_app(settings, watch_routing=False)
        with serve(IngressServer(ingress)) as ingress_url:  # type: ignore[arg-type]
            async with httpx.AsyncClient(base_url=ingress_url) as client:
                answers = [await client.post("/webhooks/stripe", content=body, headers={
                    "Stripe-Signature": stripe_signature(body, TEST_SECRET),
                    "Content-Type": "application/json"}) for _ in range(2)]
                tampered = await client.post("/webhooks/stripe", content=body + b" ", headers={
                    "Stripe-Signature": stripe_signature(body, TEST_SECRET)})
        assert answers[0].status_code == 200, answers[0].text
        assert answers[0].json() == {"id": payload["id"], "duplicate": False,
                                     "pools": ["customer", "admin"]}
        assert answers[1].json() == {"id": payload["id"], "duplicate": True, "pools": []}
        assert tampered.status_code == 400 and tampered.json()["error"] == "bad_signature"

        for pool in ("customer", "admin"):
            await run_pool(settings, pool, redis=aredis, burst=True)

    assert [(b, cls, rid) for b, cls, rid in receiver.received] == [
        (body, "V1CustomerUpdatedEventNotification", "cus_thin_e2e")], "forwarded once, unchanged"
    fetched = await aredis.hget(fetched_key(prefix), payload["id"])
    assert fetched is not None and orjson.loads(fetched)["email"] == "thin@example.com"
    assert api.requests[0].headers["stripe-context"] == "acct_1Thin"
    assert await list_dead(aredis, keys, "customer") == [] and await list_dead(aredis, keys, "admin") == []
    [(_, entry)] = await aredis.xrange(keys.stream("customer"))
    assert entry[b"object_id"] == b"cus_thin_e2e" and entry[b"account"] == b"acct_1Thin"
