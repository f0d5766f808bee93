"""The ingress against a real Redis: answers, publication, dedupe, failure modes, hot reload."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from bus.envelope import Event
from bus.keys import Keys
from bus.settings import Settings
from fanout.samples import sample_event

from .conftest import REPO, TEST_SECRET, make_settings
from .ingress_client import WEBHOOK, delivery, running, signed

pytestmark = pytest.mark.anyio


def entries(sredis: redis.Redis, keys: Keys, pool: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return sredis.xrange(keys.stream(pool))  # type: ignore[return-value]


def published_count(sredis: redis.Redis, keys: Keys) -> int:
    return sum(sredis.xlen(k) for k in sredis.scan_iter(match=keys.stream("*")))


async def test_a_verified_event_is_stored_in_every_routed_pool(settings: Settings, sredis: redis.Redis, keys: Keys) -> None:
    event = sample_event("checkout.session.completed")
    body, headers = signed(event)
    async with running(settings) as (app, client):
        response = await client.post(WEBHOOK, content=body, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"id": event["id"], "duplicate": False, "pools": ["customer", "admin"]}
    for pool, handlers in (("customer", ("orders.create_from_checkout", "email.order_confirmation", "analytics.track")),
                           ("admin", ("forward:admin_backend",))):
        [(_, fields)] = entries(sredis, keys, pool)
        stored = Event.from_entry(fields)
        assert stored.id == event["id"] and stored.type == "checkout.session.completed"
        assert stored.body == body, "the raw body is kept byte for byte"
        assert stored.handlers == handlers
        assert stored.object_id == event["data"]["object"]["id"]
        assert stored.created == event["created"]
        assert stored.table_version == app.holder.table.version


async def test_each_pool_stream_gets_its_consumer_group_at_id_zero(settings: Settings, sredis: redis.Redis, keys: Keys) -> None:
    async with running(settings) as (_, client):
        await client.post(WEBHOOK, content=(d := delivery())[0], headers=d[1])
    groups = sredis.xinfo_groups(keys.stream("customer"))
    assert [g["name"] for g in groups] == [b"customer"]
    # Nothing has read it yet, so the whole stream is still ahead of the group.
    assert groups[0]["last-delivered-id"] == b"0-0" and groups[0]["lag"] == 1


async def test_a_second_delivery_is_a_duplicate_and_publishes_nothing(settings: Settings, sredis: redis.Redis, keys: Keys) -> None:
    body, headers = delivery("charge.refunded")
    async with running(settings) as (_, client):
        first = await client.post(WEBHOOK, content=body, headers=headers)
        second = await client.post(WEBHOOK, content=body, headers=headers)
    assert first.json()["duplicate"] is False and second.status_code == 200
    assert second.json()["duplicate"] is True and second.json()["pools"] == []
    assert sredis.xlen(keys.stream("admin")) == 1
    assert sredis.hget(keys.ingress_stats, "duplicates") == b"1"


async def test_a_hundred_concurrent_identical_deliveries_publish_once(settings: Settings, sredis: redis.Redis, keys: Keys) -> None:
    body, headers = delivery()
    # Two ingress replicas with their own connection pools, as behind a load balancer.
    async with running(settings) as (_, one), running(settings) as (_, two):
        answers = await asyncio.gather(*(
            (one if i % 2 else two).post(WEBHOOK, content=body, headers=headers) for i in range(100)
        ))
    assert {a.status_code for a in answers} == {200}
    assert sum(not a.json()["duplicate"] for a in answers) == 1
    assert sredis.xlen(keys.stream("customer")) == 1 and sredis.xlen(keys.stream("admin")) == 1


async def test_an_unrouted_event_is_answered_200_and_counted(settings: Settings, sredis: redis.Redis, keys: Keys) -> None:
    body, headers = signed({**sample_event("customer.created"), "type": "invoice.paid"})
    async with running(settings) as (_, client):
        response = await client.post(WEBHOOK, content=body, headers=headers)
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 200 and response.json()["pools"] == []
    assert published_count(sredis, keys) == 0
    assert sredis.hget(keys.ingress_stats, "unrouted") == b"1"
    assert "fanout_ingress_unrouted_total 1.0" in metrics


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (lambda b, h: (b, {k: v for k, v in h.items() if k != "Stripe-Signature"}), 400, "missing_signature"),
        (lambda b, h: (b, {**h, "Stripe-Signature": "nonsense"}), 400, "malformed_signature"),
        (lambda b, h: (b.replace(b"usd", b"eur", 1), h), 400, "bad_signature"),
        (lambda b, h: signed(b, secret="whsec_wrong"), 400, "bad_signature"),
        (lambda b, h: signed(b, ts=int(time.time()) - 3600), 400, "timestamp_out_of_tolerance"),
        (lambda b, h: signed(b"{not json"), 400, "invalid_json"),
        (lambda b, h: signed(b'{"id": "ch_1", "type": "x", "data": {"object": {}}}'), 400, "not_a_stripe_event"),
        (lambda b, h: signed(b" " * 2048 + b), 413, "body_too_large"),
    ],
)
async def test_each_rejection_has_its_status_code_and_publishes_nothing(
    prefix: str, sredis: redis.Redis, keys: Keys, mutate, status: int, code: str  # type: ignore[no-untyped-def]
) -> None:
    settings = make_settings(prefix, MAX_BODY_BYTES="2048")
    body, headers = mutate(*delivery())
    async with running(settings) as (_, client):
        response = await client.post(WEBHOOK, content=body, headers=headers)
        metrics = (await client.get("/metrics")).text
    assert response.status_code == status
    assert response.json()["error"] == code and response.json()["detail"]
    assert published_count(sredis, keys) == 0
    assert f'fanout_ingress_rejected_total{{code="{code}"}} 1.0' in metrics


async def test_a_body_over_the_limit_is_refused_even_when_streamed_without_a_length(prefix: str) -> None:
    settings = make_settings(prefix, MAX_BODY_BYTES="1024")
    body, headers = delivery()

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    async with running(settings) as (_, client):
        response = await client.post(WEBHOOK, content=chunks(), headers=headers)
    assert response.status_code == 413 and response.json()["error"] == "body_too_large"


async def test_other_methods_on_the_webhook_route_are_405(settings: Settings) -> None:
    async with running(settings) as (_, client):
        response = await client.get(WEBHOOK)
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


async def test_an_unreachable_redis_gives_503_within_two_seconds(prefix: str) -> None:
    settings = make_settings(prefix, redis_url="redis://127.0.0.1:1/0")
    body, headers = delivery()
    async with running(settings) as (_, client):
        started = time.monotonic()
        response = await client.post(WEBHOOK, content=body, headers=headers)
        elapsed = time.monotonic() - started
        ready = await client.get("/readyz")
    assert response.status_code == 503 and response.json()["error"] == "store_unavailable"
    assert elapsed < 2.0
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
async def test_redis_stopped_gives_503_and_after_a_restart_the_same_delivery_is_stored_once(prefix: str, tmp_path: Path) -> None:
    port = _free_port()
    server = _start_redis(port, tmp_path)
    settings = make_settings(prefix, redis_url=f"redis://127.0.0.1:{port}/0")
    body, headers = delivery()
    try:
        async with running(settings) as (_, client):
            assert (await client.get("/readyz")).status_code == 200
            server.terminate()
            server.wait(timeout=10)
            refused = await client.post(WEBHOOK, content=body, headers=headers)
            assert refused.status_code == 503
            server = _start_redis(port, tmp_path)
            accepted = await client.post(WEBHOOK, content=body, headers=headers)
            retried = await client.post(WEBHOOK, content=body, headers=headers)
        assert accepted.status_code == 200 and accepted.json()["duplicate"] is False
        assert retried.json()["duplicate"] is True
        check = redis.Redis(port=port)
        keys = Keys(prefix)
        assert check.xlen(keys.stream("customer")) == 1 and check.xlen(keys.stream("admin")) == 1
    finally:
        server.kill()
        server.wait(timeout=10)


async def test_healthz_and_readyz_answer_when_all_is_well(settings: Settings) -> None:
    async with running(settings) as (app, client):
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["redis"] == "ok"
    assert ready.json()["routing"]["version"] == app.holder.table.version


async def test_metrics_count_received_published_duplicates_and_latency(settings: Settings) -> None:
    body, headers = delivery()
    async with running(settings) as (_, client):
        for _ in range(2):
            await client.post(WEBHOOK, content=body, headers=headers)
        text = (await client.get("/metrics")).text
    assert "fanout_ingress_received_total 2.0" in text
    assert "fanout_ingress_duplicates_total 1.0" in text
    assert 'fanout_ingress_published_total{pool="customer"} 1.0' in text
    assert 'fanout_ingress_published_total{pool="admin"} 1.0' in text
    assert "fanout_ingress_request_seconds_count 2.0" in text
    assert "fanout_routing_table_info{version=" in text


# --- hot reload ---------------------------------------------------------------------------------

ROUTES_V1 = "pools: {customer: {}, admin: {}}\nroutes:\n  charge.refunded: {admin: [noop]}\n"
ROUTES_V2 = "pools: {customer: {}, admin: {}}\nroutes:\n  charge.refunded: {customer: [noop]}\n"


async def _pools_for(client: httpx.AsyncClient, event_type: str) -> list[str]:
    body, headers = delivery(event_type)
    response = await client.post(WEBHOOK, content=body, headers=headers)
    assert response.status_code == 200
    pools: list[str] = response.json()["pools"]
    return pools


async def _eventually(check, timeout_s: float = 2.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_editing_the_routing_file_takes_effect_within_two_seconds(prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(ROUTES_V1)
    async with running(make_settings(prefix, routing_file=path)) as (app, client):
        assert await _pools_for(client, "charge.refunded") == ["admin"]
        old_version = app.holder.table.version
        path.write_text(ROUTES_V2)

        async def moved() -> bool:
            return await _pools_for(client, "charge.refunded") == ["customer"]

        assert await _eventually(moved)
        assert app.holder.table.version != old_version


async def test_an_invalid_edit_keeps_the_old_table_and_logs_the_line(prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(ROUTES_V1)
    async with running(make_settings(prefix, routing_file=path)) as (app, client):
        version = app.holder.table.version
        with capture_logs() as logs:
            path.write_text(ROUTES_V1 + "  refund.created: {nowhere: [noop]}\n")

            async def refused() -> bool:
                return app.holder.last_error is not None

            assert await _eventually(refused)
        assert app.holder.table.version == version
        assert await _pools_for(client, "charge.refunded") == ["admin"]
        [line] = [entry for entry in logs if entry["event"] == "routing.reload_rejected"]
        assert f"{path}:4:" in line["error"] and "unknown pool 'nowhere'" in line["error"]
        ready = (await client.get("/readyz")).json()
        assert "unknown pool" in ready["routing"]["last_reload_error"]


async def test_readyz_shows_a_reload_error_and_the_watcher_still_alive(prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(ROUTES_V1)
    async with running(make_settings(prefix, routing_file=path)) as (app, client):
        path.write_text(ROUTES_V1.replace("[noop]", "[!!python/object:os.getcwd noop]"))

        async def refused() -> bool:
            return app.holder.last_error is not None

        assert await _eventually(refused)
        ready = (await client.get("/readyz")).json()
        assert ready["routing"]["last_reload_error"].startswith(f"{path}:3: unsupported YAML tag")
        watcher = ready["routing"]["watcher"]
        assert watcher["alive"] is True and watcher["seconds_since_check"] < 5
        path.write_text(ROUTES_V2)  # and it keeps following the file

        async def moved() -> bool:
            return await _pools_for(client, "charge.refunded") == ["customer"]

        assert await _eventually(moved)
        assert (await client.get("/readyz")).json()["routing"]["last_reload_error"] is None


# --- logs ---------------------------------------------------------------------------------------


async def test_logs_carry_the_event_and_never_the_body_or_secret(settings: Settings) -> None:
    event = sample_event("customer.created")
    body, headers = signed(event)
    with capture_logs() as logs:
        async with running(settings) as (_, client):
            await client.post(WEBHOOK, content=body, headers=headers)
            await client.post(WEBHOOK, content=body, headers={**headers, "Stripe-Signature": "t=1,v1=00"})
    accepted = [e for e in logs if e["event"] == "webhook.accepted"]
    assert accepted and accepted[0]["event_id"] == event["id"] and accepted[0]["event_type"] == "customer.created"
    dumped = orjson.dumps(logs, default=str).decode()
    assert TEST_SECRET not in dumped and "jenny.rosen@example.com" not in dumped


def test_settings_repr_hides_every_secret(prefix: str) -> None:
    settings = make_settings(prefix, secrets="whsec_one,whsec_two")
    text = repr(settings) + str(settings.webhook_secrets)
    assert "whsec_one" not in text and "whsec_two" not in text


async def test_a_database_number_in_redis_url_is_honoured(prefix: str, aredis: aioredis.Redis) -> None:
    settings = make_settings(prefix, redis_url="redis://127.0.0.1:6379/15")
    body, headers = delivery("charge.refunded")
    async with running(settings) as (_, client):
        await client.post(WEBHOOK, content=body, headers=headers)
    other_db = redis.Redis.from_url("redis://127.0.0.1:6379/15")
    try:
        assert other_db.xlen(Keys(prefix).stream("admin")) == 1
        assert await aredis.exists(Keys(prefix).stream("admin")) == 0
    finally:
        other_db.delete(*other_db.keys(Keys(prefix).pattern()))
        other_db.close()


def test_the_repo_routing_file_is_used_by_default() -> None:
    assert Settings.from_env({}).routing_file == Path("routing.yaml") and (REPO / "routing.yaml").exists()


async def test_a_publish_that_cannot_write_every_stream_writes_nothing_and_a_retry_stores_it(
    settings: Settings, sredis: redis.Redis, keys: Keys
) -> None:
    body, headers = delivery("checkout.session.completed")
    sredis.set(keys.stream("admin"), "not a stream")  # an operator's mistake, or a key clash
    async with running(settings) as (_, client):
        refused = await client.post(WEBHOOK, content=body, headers=headers)
        assert refused.status_code == 503
        assert not sredis.exists(keys.stream("customer")), "no half publish"
        assert list(sredis.scan_iter(match=keys.seen("*", "*"))) == [], "a failed publish is not marked seen"
        sredis.delete(keys.stream("admin"))
        accepted = await client.post(WEBHOOK, content=body, headers=headers)
    assert accepted.status_code == 200 and accepted.json()["duplicate"] is False
    assert sredis.xlen(keys.stream("customer")) == 1 and sredis.xlen(keys.stream("admin")) == 1


async def test_readyz_reports_whether_redis_keeps_what_we_acknowledge(settings: Settings, sredis: redis.Redis) -> None:
    aof = sredis.config_get("appendonly")["appendonly"] == "yes"
    policy = sredis.config_get("maxmemory-policy")["maxmemory-policy"]
    with capture_logs() as logs:
        async with running(settings) as (_, client):
            durability = (await client.get("/readyz")).json()["durability"]
            await asyncio.sleep(0.1)  # let the start-up check log
    assert durability["aof"] is aof and durability["maxmemory_policy"] == policy
    assert any("appendonly is off" in w for w in durability["warnings"]) is (not aof)
    warned = [e for e in logs if e["event"] == "redis.not_durable"]
    assert len(warned) == len(durability["warnings"])


async def test_a_redis_that_accepts_but_never_answers_gives_503_within_two_seconds(prefix: str) -> None:
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)  # so the accept loop notices `done` and every socket is closed here
    held: list[socket.socket] = []
    done = threading.Event()

    def accept_and_say_nothing() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)

    acceptor = threading.Thread(target=accept_and_say_nothing, daemon=True)
    acceptor.start()
    port = listener.getsockname()[1]
    settings = make_settings(prefix, redis_url=f"redis://127.0.0.1:{port}/0")
    body, headers = delivery()
    try:
        async with running(settings) as (_, client):
            started = time.monotonic()
            response = await client.post(WEBHOOK, content=body, headers=headers)
            elapsed = time.monotonic() - started
    finally:
        done.set()
        acceptor.join(timeout=5)
        listener.close()
        for conn in held:
            conn.close()
    assert response.status_code == 503 and response.json()["error"] == "store_unavailable"
    assert elapsed < 2.0, f"answered after {elapsed:.2f} s"
