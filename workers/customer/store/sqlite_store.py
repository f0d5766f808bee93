"""The embedded store: the customer pool's tables in a local SQLite file.

Used when SUPABASE_URL is unset, so `make run` works on a fresh machine. The
tables mirror supabase/migrations (jsonb becomes JSON text, timestamps ISO
text). aiosqlite runs every statement on its own thread, so the event loop
never blocks. Each write is a single statement in autocommit mode; ordering
rules live in its WHERE clause.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from bus.errors import PermanentFailure
from workers.customer.store.rows import (
    BOOL_COLUMNS,
    CUSTOMER_COLUMNS,
    CUSTOMER_EVENT_COLUMNS,
    JSON_COLUMNS,
    ORDER_COLUMNS,
    OUTBOX_COLUMNS,
    Customer,
    CustomerEvent,
    Order,
    OutboxRow,
    StatusChange,
    customer_event_from_row,
    customer_from_row,
    order_from_row,
    outbox_from_row,
)

DEFAULT_PATH = "var/fanout.sqlite3"
# What `fanout run` and the README suggest to look at the orders with the sqlite3 shell.
ORDERS_QUERY = "select checkout_session_id, status, amount_total, currency, customer_email from orders"
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
create table if not exists orders (
    checkout_session_id text primary key,
    payment_intent_id   text,
    customer_id         text,
    customer_email      text,
    customer_name       text,
    amount_subtotal     integer,
    amount_total        integer,
    amount_shipping     integer,
    currency            text,
    payment_status      text    not null,
    status              text    not null check (status in ('pending', 'paid', 'failed')),
    failure_reason      text,
    shipping            text,
    metadata            text    not null default '{}',
    livemode            integer not null default 0,
    last_event_id       text    not null,
    last_event_created  integer not null,
    created_at          text    not null,
    updated_at          text    not null
);
create unique index if not exists orders_payment_intent_id_key
    on orders (payment_intent_id) where payment_intent_id is not null;
create table if not exists customers (
    id                  text primary key,
    email               text,
    name                text,
    phone               text,
    address             text,
    metadata            text    not null default '{}',
    deleted             integer not null default 0,
    livemode            integer not null default 0,
    last_event_id       text    not null,
    last_event_created  integer not null,
    created_at          text    not null,
    updated_at          text    not null
);
create table if not exists customer_events (
    id             integer primary key autoincrement,
    event_id       text    not null,
    kind           text    not null,
    event_type     text    not null,
    customer_id    text,
    object_id      text,
    amount         integer,
    currency       text,
    event_created  integer not null,
    properties     text    not null default '{}',
    recorded_at    text    not null,
    unique (event_id, kind)
);
create table if not exists email_outbox (
    id           integer primary key autoincrement,
    event_id     text    not null,
    template     text    not null,
    recipient    text    not null,
    order_id     text,
    status       text    not null default 'pending'
                 check (status in ('pending', 'sending', 'sent', 'failed')),
    attempts     integer not null default 0,
    claim_token  text,
    claimed_at   text,
    sent_at      text,
    last_error   text,
    created_at   text    not null,
    unique (event_id, template)
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _encode(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name in JSON_COLUMNS and value is not None:
            out[name] = orjson.dumps(value).decode()
        elif name in BOOL_COLUMNS:
            out[name] = 1 if value else 0
        else:
            out[name] = value
    return out


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in row.keys():  # noqa: SIM118 - sqlite3.Row is not a mapping
        value = row[name]
        if name in JSON_COLUMNS and value is not None:
            out[name] = orjson.loads(value)
        elif name in BOOL_COLUMNS:
            out[name] = bool(value)
        else:
            out[name] = value
    return out


class SqliteStore:
    """Store on one aiosqlite connection (a thread of its own) to a local file."""

    name = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    async def open(cls, path: str | Path = DEFAULT_PATH) -> SqliteStore:
        """Open (creating the file and tables if needed) the database at `path`."""
        file = Path(path)
        await asyncio.to_thread(file.parent.mkdir, parents=True, exist_ok=True)
        conn = await aiosqlite.connect(file, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.row_factory = sqlite3.Row
        # WAL lets the ingress-side tools read while several pool processes write.
        await conn.execute("pragma journal_mode=wal")
        await conn.execute(f"pragma busy_timeout={BUSY_TIMEOUT_MS}")
        await conn.executescript(SCHEMA)
        return cls(conn, file)

    async def aclose(self) -> None:
        await self._conn.close()

    async def _rows(self, sql: str, params: dict[str, Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        try:
            async with self._conn.execute(sql, params) as cursor:
                return [_decode(row) for row in await cursor.fetchall()]
        except sqlite3.IntegrityError as err:
            # Only a second unique key can fail here (the conflict target is handled in SQL):
            # e.g. one payment intent on two sessions. Retrying cannot fix that.
            raise PermanentFailure(f"constraint violated: {err}") from err

    # --- orders -------------------------------------------------------------------------------

    async def upsert_order(self, order: Order) -> bool:
        row = _encode(order.row())
        row["now"] = _now()
        cols = ", ".join(ORDER_COLUMNS)
        values = ", ".join(f":{c}" for c in ORDER_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in ORDER_COLUMNS[1:])
        sql = (
            f"insert into orders ({cols}, created_at, updated_at) values ({values}, :now, :now) "
            f"on conflict (checkout_session_id) do update set {updates}, updated_at = :now "
            "where excluded.last_event_created >= orders.last_event_created "
            "and not (orders.status = 'paid' and excluded.status <> 'paid') "
            # Same-second tie: a terminal status (paid/failed) is not downgraded to pending.
            "and not (excluded.last_event_created = orders.last_event_created "
            "and excluded.status = 'pending' and orders.status in ('paid', 'failed')) "
            "returning checkout_session_id"
        )
        return bool(await self._rows(sql, row))

    async def find_order(self, *, checkout_session_id: str | None = None,
                         payment_intent_id: str | None = None) -> Order | None:
        if checkout_session_id:
            rows = await self._rows("select * from orders where checkout_session_id = ?",
                                    (checkout_session_id,))
            if rows:
                return order_from_row(rows[0])
        if payment_intent_id:
            rows = await self._rows("select * from orders where payment_intent_id = ?",
                                    (payment_intent_id,))
            if rows:
                return order_from_row(rows[0])
        return None

    async def set_order_status(self, change: StatusChange) -> bool:
        params = {
            "id": change.checkout_session_id, "payment_status": change.payment_status,
            "event_id": change.event_id, "created": change.event_created,
            "reason": change.failure_reason, "now": _now(),
        }
        if change.status == "paid":
            sql = (
                "update orders set status = 'paid', payment_status = :payment_status, "
                "failure_reason = null, updated_at = :now, "
                "last_event_id = case when last_event_created <= :created "
                "then :event_id else last_event_id end, "
                "last_event_created = max(last_event_created, :created) "
                "where checkout_session_id = :id "
                "and not (status = 'paid' and last_event_created >= :created) "
                "returning checkout_session_id"
            )
        else:
            sql = (
                "update orders set status = 'failed', payment_status = :payment_status, "
                "failure_reason = :reason, updated_at = :now, last_event_id = :event_id, "
                "last_event_created = :created "
                "where checkout_session_id = :id and status <> 'paid' "
                "and last_event_created <= :created returning checkout_session_id"
            )
        return bool(await self._rows(sql, params))

    # --- customers ----------------------------------------------------------------------------

    async def upsert_customer(self, customer: Customer, *, ties_win: bool) -> bool:
        row = _encode(customer.row())
        row["now"] = _now()
        cols = ", ".join(CUSTOMER_COLUMNS)
        values = ", ".join(f":{c}" for c in CUSTOMER_COLUMNS)
        updates = ", ".join(
            f"{c} = excluded.{c}" for c in CUSTOMER_COLUMNS[1:] if c != "deleted"
        )
        newer = ">=" if ties_win else ">"
        sql = (
            f"insert into customers ({cols}, created_at, updated_at) values ({values}, :now, :now) "
            f"on conflict (id) do update set {updates}, "
            "deleted = customers.deleted or excluded.deleted, updated_at = :now "
            f"where excluded.last_event_created {newer} customers.last_event_created "
            "returning id"
        )
        return bool(await self._rows(sql, row))

    async def get_customer(self, customer_id: str) -> Customer | None:
        rows = await self._rows("select * from customers where id = ?", (customer_id,))
        return customer_from_row(rows[0]) if rows else None

    # --- analytics ----------------------------------------------------------------------------

    async def track(self, event: CustomerEvent) -> bool:
        row = _encode(event.row())
        row["now"] = _now()
        cols = ", ".join(CUSTOMER_EVENT_COLUMNS)
        values = ", ".join(f":{c}" for c in CUSTOMER_EVENT_COLUMNS)
        sql = (
            f"insert into customer_events ({cols}, recorded_at) values ({values}, :now) "
            "on conflict (event_id, kind) do nothing returning id"
        )
        return bool(await self._rows(sql, row))

    async def customer_events(self, event_id: str) -> list[CustomerEvent]:
        rows = await self._rows("select * from customer_events where event_id = ? order by id",
                                (event_id,))
        return [customer_event_from_row(r) for r in rows]

    # --- email outbox -------------------------------------------------------------------------

    async def outbox_enqueue(self, item: OutboxRow) -> bool:
        row = _encode(item.row())
        row["now"] = _now()
        cols = ", ".join(OUTBOX_COLUMNS)
        values = ", ".join(f":{c}" for c in OUTBOX_COLUMNS)
        sql = (
            f"insert into email_outbox ({cols}, created_at) values ({values}, :now) "
            "on conflict (event_id, template) do nothing returning id"
        )
        return bool(await self._rows(sql, row))

    async def outbox_get(self, event_id: str, template: str) -> OutboxRow | None:
        rows = await self._rows(
            "select * from email_outbox where event_id = ? and template = ?", (event_id, template)
        )
        return outbox_from_row(rows[0]) if rows else None

    async def outbox_transition(self, event_id: str, template: str, changes: dict[str, Any],
                                expect: dict[str, Any]) -> bool:
        unknown = (set(changes) | set(expect)) - set(OUTBOX_COLUMNS)
        if unknown:
            raise ValueError(f"not outbox columns: {sorted(unknown)}")
        params: dict[str, Any] = {f"set_{k}": v for k, v in changes.items()}
        params.update({f"is_{k}": v for k, v in expect.items()})
        params.update(event_id=event_id, template=template)
        sets = ", ".join(f"{k} = :set_{k}" for k in changes)
        where = "event_id = :event_id and template = :template"
        for k in expect:
            where += f" and {k} is :is_{k}"
        sql = f"update email_outbox set {sets} where {where} returning id"
        return bool(await self._rows(sql, params))
