"""The operator's console: a Starlette app of server-rendered pages over what Redis holds.

Pages: `/` (pools, ingress counters, routing table), `/events/<id>` and `/search`
(one event across pools and handlers), `/dlq/<pool>` (dead letters, replay one or
by filter after a preview), `/routes` (the table, explain, the diff of a pasted
file). Every state change is a POST with a CSRF token (fanout/console/auth.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import redis.asyncio as aioredis
import structlog
from jinja2 import StrictUndefined
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from bus import defaults
from bus.connection import async_redis
from bus.keys import Keys
from bus.reload import RoutingHolder
from bus.routing_diff import routing_diff
from bus.settings import Settings
from fanout.console import data, letters, lookup, routes
from fanout.console.auth import (
    SESSION_COOKIE,
    AuthMiddleware,
    Guard,
    cookie_header,
    require_csrf,
    safe_next,
)
from fanout.console.rates import RateRing
from workers.ops.replay import ReplayResult, replay_dead_entries

log = structlog.get_logger("fanout.console")
HERE = Path(__file__).parent
EVENT_ID = re.compile(r"^evt_[A-Za-z0-9_]+$")
SESSION_MAX_AGE_S = 12 * 3600
STOP_TIMEOUT_S = 2.0


def _utc(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


class Console:
    """The console's state for one process: Redis, the routing table it follows, the rate ring."""

    def __init__(self, settings: Settings, *, redis: aioredis.Redis | None = None,
                 holder: RoutingHolder | None = None, clock: Callable[[], float] = time.time,
                 sample_interval_s: float = defaults.CONSOLE_SAMPLE_INTERVAL_S,
                 refresh_s: float = defaults.CONSOLE_REFRESH_S) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix, settings.partitions)
        self._owns_redis = redis is None
        self.redis = redis if redis is not None else async_redis(settings.redis_url)
        self.holder = holder or RoutingHolder.load(settings.routing_file,
                                                   max_bytes=settings.max_routing_file_bytes)
        self.clock = clock
        self.refresh_s = refresh_s
        self.rates = RateRing(defaults.CONSOLE_RATE_WINDOW_S, sample_interval_s)
        self.guard = Guard(settings.console_token)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        # A name a template uses and no page passes is an error, not an empty cell (main dropped
        # Event.received_ms; the event page showed "-" without a word).
        self.templates.env.undefined = StrictUndefined
        self.templates.env.filters["utc"] = _utc
        self.templates.env.filters["rate"] = _rate
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        self._tasks = [asyncio.create_task(self.holder.watch(), name="routing-watch"),
                       asyncio.create_task(self._sample_forever(), name="rates")]
        try:
            yield
        finally:
            # The sampler also stops on the event: a cancellation landing inside a Redis call can be
            # absorbed by the client, and waiting for such a task would never end.
            self._stopping.set()
            for task in self._tasks:
                task.cancel()
            await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
            if self._owns_redis:
                await self.redis.aclose()

    async def sample(self) -> dict[str, int]:
        values = await data.counters(self.redis, self.keys, list(self.holder.table.pools))
        self.rates.add(self.clock(), values)
        return values

    async def _sample_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sample()
            except RedisError as err:
                log.warning("console.sample_failed", error=f"{type(err).__name__}: {err}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.rates.interval_s)

    # --- helpers -----------------------------------------------------------------------------------

    def page(self, request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        table = self.holder.table
        context.update(request=request, csrf=request.state.csrf_token, auth=request.state.auth,
                       pools=list(table.pools), table_version=table.version)
        return self.templates.TemplateResponse(request, template, context, status_code=status_code)

    def pool_or_404(self, request: Request) -> str:
        pool = str(request.path_params["pool"])
        if pool not in self.holder.table.pools:
            raise HTTPException(404, f"no pool {pool!r} in the routing table")
        return pool

    # --- pages -------------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        table = self.holder.table
        current = await data.counters(self.redis, self.keys, list(table.pools))
        now = self.clock()
        seen = await data.overview(self.redis, self.keys, table, current, self.rates.per_minute(now, current),
                                   self.rates.span_s(now))
        return self.page(request, "overview.html", overview=seen, table=table, refresh_s=self.refresh_s,
                         last_error=self.holder.last_error, redis=data.redis_place(self.settings.redis_url))

    async def search(self, request: Request) -> Response:
        query = (request.query_params.get("q") or "").strip()
        if not query:
            return RedirectResponse("/", status_code=303)
        if EVENT_ID.match(query):
            return RedirectResponse(f"/events/{query}", status_code=303)
        found = await lookup.find(self.redis, self.keys, list(self.holder.table.pools), query)
        if len(found.event_ids) == 1:
            return RedirectResponse(f"/events/{found.event_ids[0]}", status_code=303)
        return self.page(request, "search.html", found=found)

    async def event(self, request: Request) -> Response:
        event_id = str(request.path_params["event_id"])
        found = await lookup.find(self.redis, self.keys, list(self.holder.table.pools), event_id)
        copies = [c for c in found.copies if c.event.id == event_id]
        status = 200 if copies else 404
        return self.page(request, "event.html", status_code=status, event_id=event_id, found=found,
                         copies=copies, first=copies[0].event if copies else None,
                         received_ms=found.received_ms(event_id), body=found.body_of(event_id))

    async def dlq(self, request: Request) -> Response:
        pool = self.pool_or_404(request)
        wanted = letters.Filter.from_query(request.query_params)
        seen = await letters.letters(self.redis, self.keys, pool, wanted)
        return self.page(request, "dlq.html", pool=pool, wanted=wanted, seen=seen,
                         filter_query=urlencode(wanted.params()),
                         replayed=request.query_params.get("replayed"),
                         not_replayed=request.query_params.get("missing"),
                         nothing_to_run=request.query_params.get("nothing"))

    async def replay_one(self, request: Request) -> Response:
        await require_csrf(request, self.guard)
        pool = self.pool_or_404(request)
        form = await request.form()
        ids = [str(v) for v in form.getlist("id")]
        done = await self._replay(pool, ids, reroute=form.get("reroute") == "on")
        return self._after_replay(pool, done, str(form.get("back") or ""))

    async def replay_matching_preview(self, request: Request) -> Response:
        pool = self.pool_or_404(request)
        wanted = letters.Filter.from_query(request.query_params)
        seen = await letters.letters(self.redis, self.keys, pool, wanted, show=0)
        return self.page(request, "confirm.html", pool=pool, wanted=wanted, seen=seen,
                         filter_query=urlencode(wanted.params()))

    async def replay_matching(self, request: Request) -> Response:
        await require_csrf(request, self.guard)
        pool = self.pool_or_404(request)
        form = await request.form()
        wanted = letters.Filter.from_query(form)
        if not wanted.upto:
            raise HTTPException(400, "a replay by filter needs the preview's upper bound (upto)")
        ids = await letters.matching_ids(self.redis, self.keys, pool, wanted)
        done = await self._replay(pool, ids, reroute=form.get("reroute") == "on")
        return self._after_replay(pool, done, urlencode(wanted.params()))

    async def _replay(self, pool: str, ids: list[str], *, reroute: bool) -> ReplayResult:
        """As `fanout dlq replay [--reroute]`: with reroute, for the handlers the table in use names."""
        if not ids:
            return ReplayResult()
        return await replay_dead_entries(self.redis, self.keys, pool, ids,
                                         table=self.holder.table if reroute else None)

    def _after_replay(self, pool: str, done: ReplayResult, back: str) -> Response:
        log.info("console.replayed", pool=pool, replayed=len(done.added), missing=len(done.missing),
                 unrouted=len(done.unrouted), nothing_to_run=len(done.nothing_to_run))
        params = {"replayed": str(len(done.added))}
        if done.missing or done.unrouted:
            params["missing"] = str(len(done.missing) + len(done.unrouted))
        if done.nothing_to_run:
            params["nothing"] = str(len(done.nothing_to_run))
        query = urlencode(params) + ("&" + back if back else "")
        return RedirectResponse(f"/dlq/{pool}?{query}", status_code=303)

    async def routes_page(self, request: Request) -> Response:
        table = self.holder.table
        event_type = (request.query_params.get("type") or "").strip()
        return self.page(request, "routes.html", table=table, event_type=event_type,
                         match=table.match(event_type) if event_type else None, diff=None, traffic=None, pasted="",
                         last_error=self.holder.last_error)

    async def routes_diff(self, request: Request) -> Response:
        await require_csrf(request, self.guard)
        form = await request.form()
        pasted = str(form.get("routing") or "")
        event_type = str(form.get("type") or "").strip()  # an explanation shown when the diff was asked
        table = self.holder.table
        diff = routes.diff_pasted(table, pasted, self.settings.max_routing_file_bytes)
        since_ms = int((self.clock() - defaults.CONSOLE_TRAFFIC_WINDOW_S) * 1000)
        traffic = (None if diff.table is None else
                   await routing_diff(self.redis, self.keys, table, diff.table, since_ms))
        return self.page(request, "routes.html", table=table, event_type=event_type,
                         match=table.match(event_type) if event_type else None,
                         diff=diff, traffic=traffic, traffic_window_h=defaults.CONSOLE_TRAFFIC_WINDOW_S / 3600,
                         pasted=pasted, last_error=self.holder.last_error)

    async def login_page(self, request: Request) -> Response:
        if not self.guard.required:
            return RedirectResponse("/", status_code=303)
        return self.page(request, "login.html", next=safe_next(request.query_params.get("next")), wrong=False)

    async def login(self, request: Request) -> Response:
        await require_csrf(request, self.guard)
        form = await request.form()
        target = safe_next(str(form.get("next") or "/"))
        if not self.guard.token_matches(str(form.get("token") or "")):
            await asyncio.sleep(0.5)  # a guess costs time
            return self.page(request, "login.html", status_code=401, next=target, wrong=True)
        response = RedirectResponse(target, status_code=303)
        response.raw_headers.append((b"set-cookie", cookie_header(
            SESSION_COOKIE, self.guard.new_session(), secure=request.url.scheme == "https",
            max_age_s=SESSION_MAX_AGE_S)))
        return response

    async def logout(self, request: Request) -> Response:
        await require_csrf(request, self.guard)
        response = RedirectResponse("/login" if self.guard.required else "/", status_code=303)
        response.raw_headers.append((b"set-cookie", cookie_header(SESSION_COOKIE, "", secure=False, max_age_s=0)))
        return response

    async def error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if not hasattr(request.state, "csrf_token"):
            return Response(detail, status_code=status, media_type="text/plain")
        return self.page(request, "error.html", status_code=status, status=status, detail=detail)


def create_app(settings: Settings, **options: Any) -> Starlette:
    """The console app; `options` go to Console (redis, holder, clock, sample_interval_s, refresh_s)."""
    console = Console(settings, **options)
    app = Starlette(
        routes=[
            Route("/", console.overview),
            Route("/search", console.search),
            Route("/events/{event_id}", console.event),
            Route("/dlq/{pool}", console.dlq),
            Route("/dlq/{pool}/replay", console.replay_one, methods=["POST"]),
            Route("/dlq/{pool}/replay-matching", console.replay_matching_preview, methods=["GET"]),
            Route("/dlq/{pool}/replay-matching", console.replay_matching, methods=["POST"]),
            Route("/routes", console.routes_page),
            Route("/routes/diff", console.routes_diff, methods=["POST"]),
            Route("/login", console.login_page, methods=["GET"]),
            Route("/login", console.login, methods=["POST"]),
            Route("/logout", console.logout, methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        middleware=[Middleware(AuthMiddleware, guard=console.guard)],
        exception_handlers={HTTPException: console.error},
        lifespan=console.lifespan,
    )
    app.state.console = console
    return app
