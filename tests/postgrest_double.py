"""A PostgREST-compatible TEST DOUBLE for the hosted Supabase REST API (`/rest/v1`).

This is not PostgREST and not Supabase. Hosted Supabase cannot run here, so
the tests point supabase-py's real async client (SUPABASE_URL) at this small
Starlette app, which speaks the part of PostgREST's HTTP API that the
customer-pool store uses, over real HTTP, against the real PostgreSQL at
127.0.0.1:5432 with the project's migrations applied:

- GET    /rest/v1/<table>?select=*&<col>=<op>.<value>
- POST   /rest/v1/<table>[?on_conflict=a,b][&columns=...]   (insert / upsert)
- PATCH  /rest/v1/<table>?<col>=<op>.<value>                 (update)
- filters: eq, neq, lt, lte, gt, gte, is (null/true/false); the value is cast
  to the column's type, as PostgREST does;
- Prefer: return=representation|minimal, resolution=merge-duplicates|
  ignore-duplicates (INSERT ... ON CONFLICT DO UPDATE / DO NOTHING; the
  conflict target is `on_conflict`, else the primary key);
- errors in PostgREST's documented body `{"code", "details", "hint",
  "message"}` with its status mapping (23505 and 23503 -> 409, 42P01 and
  unknown tables -> 404, 08*/53* -> 503, class 23 and most others -> 400).

Rows are built the way PostgREST builds them, with
`json_populate_recordset(NULL::<table>, body)`, so PostgreSQL does the typing.
The double serves one private schema per test session and treats it as the
exposed `public` schema (the profile headers supabase-py sends name `public`).
Authentication is not modelled beyond requiring an `apikey` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

RESERVED_PARAMS = frozenset({"select", "on_conflict", "columns", "order", "limit", "offset"})
OPERATORS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.hint = details, hint

    def response(self) -> Response:
        body = {"code": self.code, "details": self.details, "hint": self.hint,
                "message": self.message}
        return Response(orjson.dumps(body), status_code=self.status,
                        media_type="application/json; charset=utf-8")


def status_for_sqlstate(code: str) -> int:
    """PostgREST's documented PostgreSQL error code -> HTTP status table (the parts we meet)."""
    exact = {"23503": 409, "23505": 409, "25006": 405, "42P01": 404, "42883": 404,
             "42501": 403, "P0001": 400, "53400": 500}
    if code in exact:
        return exact[code]
    prefixes = {"08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500,
                "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500,
                "57": 500, "58": 500, "F0": 500, "HV": 500, "P0": 500, "XX": 500}
    return prefixes.get(code[:2], 400)


@dataclass
class Catalog:
    """Column types and primary keys of the served schema, read once at start."""

    columns: dict[str, dict[str, str]] = field(default_factory=dict)
    primary_keys: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    async def load(cls, conn: Any, schema: str) -> Catalog:
        catalog = cls()
        for rec in await conn.fetch(
            "select c.relname, a.attname, format_type(a.atttypid, a.atttypmod) as type "
            "from pg_attribute a join pg_class c on c.oid = a.attrelid "
            "join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = $1 and c.relkind = 'r' and a.attnum > 0 and not a.attisdropped "
            "order by a.attnum", schema):
            catalog.columns.setdefault(rec["relname"], {})[rec["attname"]] = rec["type"]
        for rec in await conn.fetch(
            "select c.relname, array_agg(a.attname order by a.attnum) as cols from pg_index i "
            "join pg_class c on c.oid = i.indrelid join pg_namespace n on n.oid = c.relnamespace "
            "join pg_attribute a on a.attrelid = c.oid and a.attnum = any(i.indkey) "
            "where n.nspname = $1 and i.indisprimary group by c.relname", schema):
            catalog.primary_keys[rec["relname"]] = list(rec["cols"])
        return catalog


def parse_prefer(request: Request) -> dict[str, str]:
    prefs: dict[str, str] = {}
    for header in request.headers.getlist("prefer"):
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            if key:
                prefs[key] = value
    return prefs


class PostgrestDouble:
    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn, self.schema = dsn, schema
        self.pool: asyncpg.Pool | None = None
        self.catalog = Catalog()
        self.requests: list[tuple[str, str]] = []  # (method, path?query) for assertions

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=4, server_settings={"search_path": self.schema})
        async with self.pool.acquire() as conn:
            self.catalog = await Catalog.load(conn, self.schema)
        try:
            yield
        finally:
            await self.pool.close()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/rest/v1/{table}", self.endpoint,
                                       methods=["GET", "POST", "PATCH"])],
                         lifespan=self.lifespan)

    async def endpoint(self, request: Request) -> Response:
        self.requests.append((request.method, f"{request.url.path}?{request.url.query}"))
        try:
            return await self._handle(request)
        except ApiError as err:
            return err.response()
        except asyncpg.PostgresError as err:
            code = str(getattr(err, "sqlstate", "") or "XX000")
            return ApiError(status_for_sqlstate(code), code, str(getattr(err, "message", err)),
                            getattr(err, "detail", None), getattr(err, "hint", None)).response()

    async def _handle(self, request: Request) -> Response:
        if "apikey" not in request.headers:
            raise ApiError(401, "PGRST301", "No API key found in request",
                           hint="No `apikey` request header or url param was found.")
        profile = request.headers.get("content-profile" if request.method != "GET"
                                      else "accept-profile")
        if profile not in (None, "public", self.schema):
            raise ApiError(406, "PGRST106", "Invalid schema: " + profile,
                           hint="Only the following schemas are exposed: public")
        table = request.path_params["table"]
        if table not in self.catalog.columns:
            raise ApiError(404, "PGRST205",
                           f"Could not find the table 'public.{table}' in the schema cache")
        prefs = parse_prefer(request)
        if request.method == "GET":
            sql, args = self._select(table, request)
            return self._json(await self._fetch(sql, args), 200, prefs, read=True)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as err:
            raise ApiError(400, "PGRST102", "Empty or invalid json") from err
        if request.method == "POST":
            sql, args = self._insert(table, request, prefs, body)
            return self._json(await self._fetch(sql, args), 201, prefs)
        sql, args = self._update(table, request, body)
        return self._json(await self._fetch(sql, args), 200, prefs)

    async def _fetch(self, sql: str, args: list[Any]) -> bytes:
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            text: str = await conn.fetchval(sql, *args)
        return text.encode()

    def _json(self, rows: bytes, status: int, prefs: dict[str, str], *, read: bool = False) -> Response:
        headers = {}
        applied = [f"{k}={prefs[k]}" for k in ("resolution", "return") if k in prefs]
        if applied:
            headers["Preference-Applied"] = ",".join(applied)
        if not read and prefs.get("return", "minimal") != "representation":
            return Response(status_code=201 if status == 201 else 204, headers=headers)
        return Response(rows, status_code=status, headers=headers,
                        media_type="application/json; charset=utf-8")

    def _column(self, table: str, name: str) -> str:
        if name not in self.catalog.columns[table]:
            raise ApiError(400, "42703", f"column {table}.{name} does not exist")
        return self.catalog.columns[table][name]

    def _where(self, table: str, request: Request, args: list[Any]) -> str:
        conds = []
        qualified = ident(table)
        for column, raw in request.query_params.multi_items():
            if column in RESERVED_PARAMS:
                continue
            col_type = self._column(table, column)
            op, dot, value = raw.partition(".")
            if not dot:
                raise ApiError(400, "PGRST100", f'"failed to parse filter ({raw})"')
            if op == "is":
                keyword = {"null": "null", "true": "true", "false": "false"}.get(value.lower())
                if keyword is None:
                    raise ApiError(400, "PGRST100", f'"failed to parse filter (is.{value})"')
                conds.append(f"{qualified}.{ident(column)} is {keyword}")
            elif op in OPERATORS:
                args.append(value)
                conds.append(f"{qualified}.{ident(column)} {OPERATORS[op]} ${len(args)}::text::{col_type}")
            else:
                raise ApiError(400, "PGRST100", f'"failed to parse filter ({raw})"')
        return " and ".join(conds) or "true"

    def _select(self, table: str, request: Request) -> tuple[str, list[Any]]:
        select = request.query_params.get("select", "*")
        if select == "*":
            cols = "*"
        else:
            names = [c.strip() for c in select.split(",") if c.strip()]
            for name in names:
                self._column(table, name)
            cols = ", ".join(ident(n) for n in names)
        args: list[Any] = []
        where = self._where(table, request, args)
        sql = (f"select coalesce(jsonb_agg(to_jsonb(t)), '[]')::text from "
               f"(select {cols} from {ident(table)} where {where}) t")
        return sql, args

    def _insert(self, table: str, request: Request, prefs: dict[str, str],
                body: Any) -> tuple[str, list[Any]]:
        rows = body if isinstance(body, list) else [body]
        if not rows or not all(isinstance(r, dict) for r in rows):
            raise ApiError(400, "PGRST102", "Empty or invalid json")
        if "columns" in request.query_params:
            names = [c.strip().strip('"') for c in request.query_params["columns"].split(",")]
        else:
            names = list(rows[0])
            if any(set(r) != set(names) for r in rows):
                raise ApiError(400, "PGRST102", "All object keys must match")
        for name in names:
            self._column(table, name)
        cols = ", ".join(ident(n) for n in names)
        conflict = ""
        resolution = prefs.get("resolution")
        if resolution in ("merge-duplicates", "ignore-duplicates"):
            target_raw = request.query_params.get("on_conflict")
            target = ([c.strip() for c in target_raw.split(",")] if target_raw
                      else self.catalog.primary_keys.get(table, []))
            for name in target:
                self._column(table, name)
            on = ", ".join(ident(c) for c in target)
            if resolution == "ignore-duplicates":
                conflict = f"on conflict ({on}) do nothing"
            else:
                sets = ", ".join(f"{ident(n)} = excluded.{ident(n)}"
                                 for n in names if n not in target)
                conflict = (f"on conflict ({on}) do update set {sets}" if sets
                            else f"on conflict ({on}) do nothing")
        sql = (
            f"with pgrst_source as (insert into {ident(table)} ({cols}) "
            f"select {cols} from json_populate_recordset(null::{ident(table)}, $1::json) "
            f"{conflict} returning *) "
            "select coalesce(jsonb_agg(to_jsonb(pgrst_source)), '[]')::text from pgrst_source"
        )
        return sql, [orjson.dumps(rows).decode()]

    def _update(self, table: str, request: Request, body: Any) -> tuple[str, list[Any]]:
        if not isinstance(body, dict):
            raise ApiError(400, "PGRST102", "Empty or invalid json")
        if not body:
            return "select '[]'::text", []
        for name in body:
            self._column(table, name)
        args: list[Any] = [orjson.dumps(body).decode()]
        sets = ", ".join(f"{ident(n)} = pgrst_body.{ident(n)}" for n in body)
        where = self._where(table, request, args)
        sql = (
            f"with pgrst_source as (update {ident(table)} set {sets} "
            f"from json_populate_record(null::{ident(table)}, $1::json) as pgrst_body "
            f"where {where} returning {ident(table)}.*) "
            "select coalesce(jsonb_agg(to_jsonb(pgrst_source)), '[]')::text from pgrst_source"
        )
        return sql, args


class EchoingPostgrest:
    """A careless PostgREST-like upstream: every request fails with an error body that echoes its headers.

    Real proxies and gateways in front of PostgREST have done this; with supabase-py that puts
    the service-role key (`apikey`, `Authorization: Bearer`) into the error message and details.
    Needs no database; served by `serve()` like the double.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/rest/v1/{table}", self.endpoint, methods=["GET", "POST", "PATCH"])])

    async def endpoint(self, request: Request) -> Response:
        self.requests.append((request.method, f"{request.url.path}?{request.url.query}"))
        headers = "; ".join(f"{k}: {v}" for k, v in request.headers.items())
        return ApiError(400, "PGRST100", f"bad request; headers were {headers}",
                        details=dict(request.headers).get("apikey", ""), hint=headers).response()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(double: PostgrestDouble | EchoingPostgrest) -> Iterator[str]:
    """Run the double under uvicorn on 127.0.0.1 in a thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(double.app(), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on", loop="asyncio", http="h11")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="postgrest-double", daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            if not thread.is_alive():
                raise RuntimeError("the PostgREST double did not start")
            threading.Event().wait(0.01)
        else:
            raise RuntimeError("the PostgREST double did not start in 5 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def apply_migrations(dsn: str, schema: str, sql_files: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"create schema {ident(schema)}")
        await conn.execute(f"set search_path to {ident(schema)}")
        for text in sql_files:
            await conn.execute(text)
    finally:
        await conn.close()


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"drop schema if exists {ident(schema)} cascade")
    finally:
        await conn.close()


def run(coro: Any) -> Any:
    """Run a coroutine to completion from sync fixture code."""
    return asyncio.run(coro)
