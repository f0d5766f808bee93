"""`forward:<destination>` against a real local HTTP receiver that verifies with the Stripe SDK."""

from __future__ import annotations

import asyncio
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import stripe
import structlog
from structlog.testing import capture_logs

from bus.envelope import Event
from bus.errors import PermanentFailure, RetryLater
from bus.keys import Keys
from bus.routing import Destination
from tests.conftest import make_settings
from tests.support import FAST_POOL, event_body, load, publish, write_routing
from workers.context import Context
from workers.forward.handler import forward
from workers.ops.deadletter import list_dead
from workers.resources import Resources
from workers.supervision.runner import run_pool

DEST_SECRET = "whsec_destination_secret_never_logged"
DEST = Destination(name="backend", url_env="BACKEND_URL", secret_env="BACKEND_SECRET", timeout_s=0.5)


MIB = 1024 * 1024


class Receiver(ThreadingHTTPServer):
    """Answers POST /<status>[/<n>] with <status> for the first n requests (then 200).

    Also: /<status>/sleep (after 1 s), /<status>/echo (a long body that echoes the request's
    headers and the destination's secret, as a careless upstream would), /big/<n> (200 with an
    n MiB body, written until the client hangs up; `sent` counts what it wrote), and a
    Location header on every 3xx.
    """

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.daemon_threads = True
        self.received: list[tuple[str, bytes, bool]] = []
        self.hits: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.big_done = 0
        # (time.monotonic(), "arrived" | "answered", path), in the order they happened.
        self.timeline: list[tuple[float, str, str]] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            stripe.Webhook.construct_event(body.decode(), self.headers["Stripe-Signature"], DEST_SECRET)
            verified = True
        except (stripe.SignatureVerificationError, ValueError):
            verified = False
        self.server.received.append((self.path, body, verified))
        self.server.timeline.append((time.monotonic(), "arrived", self.path))
        parts = self.path.strip("/").split("/")
        hits = self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        if parts[0] == "big":
            self._answer_big(int(parts[1]) * MIB)
            return
        status = int(parts[0]) if parts[0].isdigit() else 200
        body = b""
        if len(parts) > 1 and parts[1] == "sleep":
            time.sleep(1)
        elif len(parts) > 1 and parts[1] == "echo":
            body = (b"upstream error: secret=" + DEST_SECRET.encode() + b" auth=Bearer abc.def-ghi; you sent: "
                    + str(dict(self.headers)).encode() + b"x" * 10_000)
        elif len(parts) > 1 and hits > int(parts[1]):
            status = 200
        if not verified:
            status = 400
        self.server.timeline.append((time.monotonic(), "answered", self.path))
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "http://127.0.0.1:1/elsewhere?token=SECRETTOKEN")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer_big(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b"0" * MIB
        sent = 0
        try:
            while sent < size:
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client read what it wanted and hung up
        finally:
            self.server.sent[self.path] = self.server.sent.get(self.path, 0) + sent
            self.server.big_done += 1
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def _event(event_id: str = "evt_fwd") -> Event:
    body = event_body(event_id, "charge.refunded")
    fields = {b"id": event_id.encode(), b"type": b"charge.refunded", b"created": b"1", b"livemode": b"0",
              b"handlers": b"forward:backend", b"version": b"v", b"body": body}
    return Event.from_entry(fields)


def _ctx(aredis: aioredis.Redis, prefix: str, resources: Resources, **env: str) -> Context:
    settings = make_settings(prefix, **env)  # the prefix owns the destination's breaker and rate keys
    return Context(pool="admin", handler="forward:backend", attempt=1, log=structlog.get_logger(),
                   redis=aredis, settings=settings, resources=resources)


@pytest.mark.anyio
async def test_forward_posts_the_original_body_signed_so_the_stripe_sdk_verifies_it(
    aredis: aioredis.Redis, prefix: str, receiver: Receiver
) -> None:
    resources = Resources()
    event = _event()
    with capture_logs() as logs:
        await forward(DEST, event, _ctx(aredis, prefix, resources, BACKEND_URL=receiver.base + "/200",
                                        BACKEND_SECRET=DEST_SECRET))
    await resources.aclose()
    [(path, body, verified)] = receiver.received
    assert (path, body, verified) == ("/200", event.body, True)
    assert DEST_SECRET not in repr(logs)
    assert event.body.decode() not in repr(logs)


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
async def test_forward_treats_4xx_as_permanent(aredis: aioredis.Redis, prefix: str, receiver: Receiver, status: int) -> None:
    resources = Resources()
    ctx = _ctx(aredis, prefix, resources, BACKEND_URL=f"{receiver.base}/{status}", BACKEND_SECRET=DEST_SECRET)
    with pytest.raises(PermanentFailure, match=str(status)):
        await forward(DEST, _event(), ctx)
    await resources.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_forward_retries_5xx_408_and_429(aredis: aioredis.Redis, prefix: str, receiver: Receiver, status: int) -> None:
    resources = Resources()
    ctx = _ctx(aredis, prefix, resources, BACKEND_URL=f"{receiver.base}/{status}", BACKEND_SECRET=DEST_SECRET)
    with pytest.raises(RetryLater, match=str(status)):
        await forward(DEST, _event(), ctx)
    await resources.aclose()


@pytest.mark.anyio
async def test_forward_retries_connection_errors_and_timeouts(
    aredis: aioredis.Redis, prefix: str, receiver: Receiver
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    resources = Resources()
    ctx = _ctx(aredis, prefix, resources, BACKEND_URL=f"http://127.0.0.1:{closed_port}/", BACKEND_SECRET=DEST_SECRET)
    with pytest.raises(RetryLater, match="ConnectError"):
        await forward(DEST, _event(), ctx)
    ctx = _ctx(aredis, prefix, resources, BACKEND_URL=f"{receiver.base}/200/sleep", BACKEND_SECRET=DEST_SECRET)
    with pytest.raises(RetryLater, match="timed out"):
        await forward(DEST, _event(), ctx)
    await resources.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("missing", ["BACKEND_URL", "BACKEND_SECRET"])
async def test_forward_without_its_environment_variable_fails_permanently_naming_it(
    aredis: aioredis.Redis, prefix: str, receiver: Receiver, missing: str
) -> None:
    env = {"BACKEND_URL": receiver.base + "/200", "BACKEND_SECRET": DEST_SECRET}
    del env[missing]
    with pytest.raises(PermanentFailure, match=missing):
        await forward(DEST, _event(), _ctx(aredis, prefix, Resources(), **env))
    assert receiver.received == []


@pytest.mark.anyio
async def test_forward_through_a_pool_retries_a_503_then_delivers_once_acked(
    aredis: aioredis.Redis, prefix: str, keys: Keys, receiver: Receiver, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, f"""
pools:
  admin: {{{FAST_POOL}}}
destinations:
  backend: {{url_env: BACKEND_URL, secret_env: BACKEND_SECRET, timeout_s: 1}}
routes:
  charge.refunded: {{admin: ["forward:backend"]}}
  refund.created: {{admin: ["forward:backend"]}}
""")
    settings = make_settings(prefix, routing_file=routing, BACKEND_URL=receiver.base + "/503/1",
                             BACKEND_SECRET=DEST_SECRET)
    table = load(routing)
    await publish(aredis, keys, table, "charge.refunded", "evt_r1")
    await run_pool(settings, "admin", redis=aredis, burst=True)
    assert [(p, v) for p, _, v in receiver.received] == [("/503/1", True), ("/503/1", True)]
    assert await list_dead(aredis, keys, "admin") == []

    settings = make_settings(prefix, routing_file=routing, BACKEND_URL=receiver.base + "/404",
                             BACKEND_SECRET=DEST_SECRET)
    await publish(aredis, keys, table, "refund.created", "evt_r2")
    await run_pool(settings, "admin", redis=aredis, burst=True)
    [dead] = await list_dead(aredis, keys, "admin")
    assert (dead.event_id, dead.reason, dead.attempts) == ("evt_r2", "permanent failure", 1)


@pytest.mark.anyio
async def test_a_running_pool_forwards_to_the_url_routing_yaml_names_after_a_reload(
    aredis: aioredis.Redis, prefix: str, keys: Keys, receiver: Receiver, tmp_path: Path
) -> None:
    import os

    from bus.reload import RoutingHolder
    from tests.support import wait_for
    from workers.engine.consumer import Consumer

    before = f"""
pools:
  admin: {{{FAST_POOL}}}
destinations:
  backend: {{url_env: BACKEND_URL, secret_env: BACKEND_SECRET, timeout_s: 1}}
routes:
  charge.refunded: {{admin: ["forward:backend"]}}
"""
    routing = write_routing(tmp_path, before)
    settings = make_settings(prefix, routing_file=routing, BACKEND_URL=receiver.base + "/200",
                             NEW_BACKEND_URL=receiver.base + "/202", BACKEND_SECRET=DEST_SECRET)
    pool = Consumer(settings, "admin", redis=aredis, holder=RoutingHolder.load(routing), block_ms=50)
    task = asyncio.create_task(pool.run())

    async def received(n: int) -> bool:
        return len(receiver.received) >= n

    try:
        await publish(aredis, keys, pool.holder.table, "charge.refunded", "evt_before")
        await wait_for(lambda: received(1))
        old_version = pool.holder.table.version
        routing.write_text(before.replace("url_env: BACKEND_URL", "url_env: NEW_BACKEND_URL"))
        os.utime(routing, ns=(1, 1))

        async def reloaded() -> bool:
            return pool.holder.table.version != old_version

        await wait_for(reloaded)
        await publish(aredis, keys, pool.holder.table, "charge.refunded", "evt_after")
        await wait_for(lambda: received(2))
    finally:
        pool.request_stop()
        await task
    assert [(p, v) for p, _, v in receiver.received] == [("/200", True), ("/202", True)]


@pytest.mark.anyio
@pytest.mark.parametrize("url", [
    "http://[SECRETTOKEN]/hook",
    "http://127.0.0.1:1/hook?token=SECRETTOKEN",
    "http://user:SECRETTOKEN@127.0.0.1:1/hook",
    "http://127.0.0.1:abc/hook?token=SECRETTOKEN",
    "ftp://127.0.0.1/hook?token=SECRETTOKEN",
])
async def test_forward_failures_never_carry_the_url_or_the_secret(aredis: aioredis.Redis, prefix: str, url: str) -> None:
    import traceback

    with pytest.raises(Exception) as info:  # whichever failure: its text is what matters
        await forward(DEST, _event(), _ctx(aredis, prefix, Resources(), BACKEND_URL=url, BACKEND_SECRET=DEST_SECRET))
    # What the dead-letter stream keeps, and `fanout dlq list` shows: the error line and the traceback.
    shown = f"{type(info.value).__name__}: {info.value}\n" + "".join(traceback.format_exception(info.value))
    assert "SECRETTOKEN" not in shown
    assert DEST_SECRET not in shown
    assert isinstance(info.value, PermanentFailure | RetryLater)


@pytest.mark.anyio
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_forward_fails_a_redirect_at_once_naming_the_status_and_never_follows_it(
    aredis: aioredis.Redis, prefix: str, receiver: Receiver, status: int
) -> None:
    resources = Resources()
    ctx = _ctx(aredis, prefix, resources, BACKEND_URL=f"{receiver.base}/{status}", BACKEND_SECRET=DEST_SECRET)
    with pytest.raises(PermanentFailure) as info:
        await forward(DEST, _event(), ctx)
    await resources.aclose()
    message = str(info.value)
    assert f"answered {status}" in message and "redirects are not followed" in message
    assert "BACKEND_URL" in message  # what to fix
    assert "SECRETTOKEN" not in message  # the Location is not quoted
    assert [p for p, _, _ in receiver.received] == [f"/{status}"]


@pytest.mark.anyio
async def test_forward_quotes_only_the_start_of_an_error_answer_without_secrets(
    aredis: aioredis.Redis, prefix: str, receiver: Receiver
) -> None:
    resources = Resources()
    ctx = _ctx(aredis, prefix, resources, BACKEND_URL=f"{receiver.base}/500/echo", BACKEND_SECRET=DEST_SECRET)
    with capture_logs() as logs, pytest.raises(RetryLater) as info:
        await forward(DEST, _event(), ctx)
    await resources.aclose()
    message = str(info.value)
    assert "answered 500" in message and "upstream error: secret=" in message
    assert DEST_SECRET not in message and "abc.def-ghi" not in message and "[redacted]" in message
    assert len(message) < 600  # 300 characters of the answer, not its 10 KB
    assert DEST_SECRET not in repr(logs)


@pytest.mark.anyio
async def test_forward_reads_a_bounded_part_of_a_large_answer_and_drops_the_connection(
    aredis: aioredis.Redis, prefix: str, receiver: Receiver
) -> None:
    resources = Resources()
    ctx = _ctx(aredis, prefix, resources, BACKEND_URL=f"{receiver.base}/big/200", BACKEND_SECRET=DEST_SECRET)
    await forward(DEST, _event("evt_big1"), ctx)
    await forward(DEST, _event("evt_big2"), ctx)  # the next forward opens a fresh connection
    await resources.aclose()
    for _ in range(500):  # the server notices the hang-up on a write, soon after
        if receiver.big_done == 2:
            break
        await asyncio.sleep(0.01)
    assert receiver.hits["/big/200"] == receiver.big_done == 2
    # What the server got into socket buffers before the client hung up, not 2 x 200 MiB.
    assert receiver.sent["/big/200"] < 2 * 32 * MIB
