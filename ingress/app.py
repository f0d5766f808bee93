"""The ingress ASGI app.

`POST /webhooks/stripe` is served by a plain ASGI callable in front of
Starlette: the hot path is verify, parse routing fields, route, publish, and
it skips routing tables, middleware and Request objects. Everything else
(health, readiness, metrics) is an ordinary Starlette app behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bus import defaults
from bus.connection import async_redis
from bus.durability import check_durability
from bus.errors import StoreUnavailable
from bus.keys import Keys
from bus.reload import RoutingHolder
from bus.routing import RoutingTable
from bus.settings import Settings
from ingress.metrics import CONTENT_TYPE, EDGE_CLOSED_STATE, IngressMetrics
from ingress.parse import routing_fields
from ingress.publish import Publisher
from ingress.rejections import Rejected
from ingress.signature import verify

log = structlog.get_logger("fanout.ingress")

# Redis gets this long to store an event before we answer 503 (the contract is "within 2 s").
PUBLISH_BUDGET_S = 1.5
JSON_HEADERS = [(b"content-type", b"application/json")]


class Ingress:
    """State of one ingress process, and its ASGI entry point."""

    def __init__(
        self,
        settings: Settings,
        holder: RoutingHolder,
        *,
        redis: aioredis.Redis | None = None,
        clock: Callable[[], float] = time.time,
        watch_routing: bool = True,
        freeze_gc: bool = False,
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.metrics = IngressMetrics()
        self.metrics.table_version(holder.table.version)
        self._owns_redis = redis is None
        self.redis = redis if redis is not None else async_redis(settings.redis_url)
        self.publisher = Publisher(self.redis, Keys(settings.key_prefix, settings.partitions),
                                   settings.seen_retention_s, budget_s=PUBLISH_BUDGET_S,
                                   min_replicas=settings.min_replicas, seen_buckets=settings.seen_buckets,
                                   clock=clock)
        self._watch_routing = watch_routing
        self._freeze_gc = freeze_gc
        self._watcher: asyncio.Task[None] | None = None
        self._durability_check: asyncio.Task[None] | None = None
        self._site = Starlette(
            routes=[
                Route("/healthz", self.healthz),
                Route("/readyz", self.readyz),
                Route("/metrics", self.metrics_endpoint),
            ],
            lifespan=self._lifespan,
        )

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._durability_check = asyncio.create_task(self._warn_if_not_durable())
        if self._watch_routing and self._watcher is None:
            self._watcher = asyncio.create_task(self.holder.watch(), name="routing-watch")
        # Everything allocated so far (the SDK, the routing table) lives for the whole
        # process: keep it out of the collector's full passes, which cost p99 latency.
        if self._freeze_gc:
            gc.collect()
            gc.freeze()

    async def _warn_if_not_durable(self) -> None:
        try:
            durability = await check_durability(self.redis)
        except Exception:  # Redis down at start: /readyz says so; nothing to add here
            return
        for warning in durability.warnings:
            log.warning("redis.not_durable", problem=warning)

    async def stop(self) -> None:
        if self._durability_check is not None:
            # Awaited before Redis is closed: cancelled mid-connect, it would leave a socket open.
            self._durability_check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._durability_check
            self._durability_check = None
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._owns_redis:
            await self.redis.aclose()

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[dict[str, Any]]:
        await self.start()
        try:
            # uvicorn shares this state with each connection's protocol: the edge guard counts its closes here.
            yield {EDGE_CLOSED_STATE: self.metrics.edge_closed}
        finally:
            await self.stop()

    # --- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == defaults.WEBHOOK_PATH:
            if scope["method"] == "POST":
                await self.webhook(scope, receive, send)
            else:
                await _send_json(send, 405, {"error": "method_not_allowed", "detail": "use POST"},
                                 extra=[(b"allow", b"POST")])
            return
        await self._site(scope, receive, send)

    async def webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        self.metrics.received.inc()
        try:
            status, answer = await self._handle(scope, receive)
        except Rejected as rejection:
            self.metrics.reject(rejection.code)
            log.info("webhook.rejected", error=rejection.code, status=rejection.status)
            status, answer = rejection.status, {"error": rejection.code, "detail": rejection.detail}
        await _send_json(send, status, answer)
        self.metrics.latency.observe(time.perf_counter() - started)

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        body = await _read_body(scope, receive, self.settings.max_body_bytes)
        verify(body, _header(scope, b"stripe-signature"), self.settings.webhook_secrets,
               self.settings.signature_tolerance_s)
        event = routing_fields(body)
        table = self.holder.table
        match = table.match(event.type)
        try:
            result = await self.publisher.publish(event, match, table.version, body)
        except StoreUnavailable as err:
            log.warning("webhook.store_unavailable", event_id=event.id, event_type=event.type,
                        error=type(err.__cause__ or err).__name__)
            raise Rejected(503, "store_unavailable",
                           "the event was not stored; retry later") from err
        if result.duplicate:
            self.metrics.duplicates.inc()
        else:
            self.metrics.publish(result.pools)
        log.info("webhook.accepted", event_id=event.id, event_type=event.type,
                 pools=list(result.pools), duplicate=result.duplicate,
                 route=match.route.pattern if match.route else None)
        return 200, {"id": event.id, "duplicate": result.duplicate, "pools": list(result.pools)}

    # --- operational endpoints -----------------------------------------------------------------

    async def healthz(self, _: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, _: Request) -> Response:
        table = self.holder.table
        checks: dict[str, Any] = {
            "routing": {"version": table.version, "file": table.source,
                        "last_reload_error": self.holder.last_error,
                        "watcher": self._watcher_state()},
        }
        try:
            async with asyncio.timeout(PUBLISH_BUDGET_S):
                await self.redis.ping()
            checks["redis"] = "ok"
            ready = True
        except Exception as err:  # any failure to answer means "not ready"
            checks["redis"] = f"unreachable ({type(err).__name__})"
            ready = False
        if ready:
            # Shown, not enforced: development Redis often runs without AOF.
            checks["durability"] = (await check_durability(self.redis)).as_dict()
        checks["status"] = "ready" if ready else "not_ready"
        return JSONResponse(checks, status_code=200 if ready else 503)

    def _watcher_state(self) -> dict[str, Any]:
        """Whether hot reload is on: the watcher task is alive, and when it last looked at the file."""
        alive = self._watcher is not None and not self._watcher.done()
        checked = self.holder.last_check_at
        return {
            "alive": alive,
            "last_check_at": None if checked is None else datetime.fromtimestamp(checked, UTC).isoformat(),
            "seconds_since_check": None if checked is None else round(max(0.0, time.time() - checked), 3),
        }

    async def metrics_endpoint(self, _: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


def create_app(
    settings: Settings,
    *,
    table: RoutingTable | None = None,
    redis: aioredis.Redis | None = None,
    clock: Callable[[], float] = time.time,
    watch_routing: bool = True,
    freeze_gc: bool = False,
) -> Ingress:
    """Build the ingress from settings; a table or Redis client passed in replaces the default."""
    ingress: Ingress

    def on_change(new: RoutingTable | None, _: str | None) -> None:
        ingress.metrics.reloads.labels("ok" if new else "rejected").inc()
        if new:
            ingress.metrics.table_version(new.version)

    holder = (
        RoutingHolder(settings.routing_file, table, on_change=on_change,
                      max_bytes=settings.max_routing_file_bytes)
        if table is not None
        else RoutingHolder.load(settings.routing_file, on_change=on_change,
                                max_bytes=settings.max_routing_file_bytes)
    )
    ingress = Ingress(settings, holder, redis=redis, clock=clock,
                      watch_routing=watch_routing, freeze_gc=freeze_gc)
    return ingress


# --- small ASGI helpers ---------------------------------------------------------------------------


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, "body_too_large", f"the body is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Rejected(400, "client_disconnected", "the client went away mid-body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Rejected(413, "body_too_large", f"the body is over {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _send_json(
    send: Send, status: int, payload: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = orjson.dumps(payload)
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
