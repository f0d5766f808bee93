"""The hosted store: the customer pool's tables in Supabase, through supabase-py's async client.

PostgREST cannot put a condition on the update half of an upsert, so each
ordered write is two statements, each atomic on its own:

1. insert with `resolution=ignore-duplicates` (INSERT ... ON CONFLICT DO
   NOTHING): a row comes back only if this call created it;
2. otherwise a PATCH whose filters carry the rule
   (`last_event_created=lte.<created>`, `status=neq.paid`): PostgreSQL
   re-checks them on the locked row, so a concurrent newer write wins.

Rows are never deleted, so a row that step 1 found stays there for step 2.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from postgrest.exceptions import APIError
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from bus.errors import PermanentFailure, RetryLater
from bus.redaction import REDACTED, redact_secrets
from bus.settings import Secret, Settings
from workers.customer.store.rows import (
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

POSTGREST_TIMEOUT_S = 10.0
UNIQUE_VIOLATION = "23505"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class SupabaseStore:
    """Store over PostgREST (`/rest/v1`) with the service-role key."""

    name = "supabase"

    def __init__(self, client: AsyncClient, url: str, http: httpx.AsyncClient, *,
                 service_role_key: Secret | None = None, settings: Settings | None = None) -> None:
        self._client = client
        self._http = http
        self.url = url
        self._key = service_role_key.reveal() if service_role_key else ""
        self._settings = settings

    def __repr__(self) -> str:
        return f"SupabaseStore(url={self.url!r})"

    @classmethod
    async def open(cls, url: str, service_role_key: Secret, settings: Settings | None = None) -> SupabaseStore:
        # Our own HTTP client carries the timeout (supabase-py deprecates its timeout option)
        # and is closed with the store.
        http = httpx.AsyncClient(timeout=POSTGREST_TIMEOUT_S)
        options = AsyncClientOptions(
            httpx_client=http,
            auto_refresh_token=False,
            persist_session=False,
        )
        client = await acreate_client(url, service_role_key.reveal(), options=options)
        return cls(client, url, http, service_role_key=service_role_key, settings=settings)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _clean(self, text: str) -> str:
        """Upstream text with every configured secret stripped (bus/redaction.py), the service key first."""
        if self._key and self._key in text:
            text = text.replace(self._key, REDACTED)
        return redact_secrets(text, self._settings)

    async def _run(self, query: Any) -> list[dict[str, Any]]:
        # PostgREST's error body (and supabase-py's exception text) may echo the request, headers
        # included: only its redacted code and message travel on, never chained (`from None`),
        # so the traceback a dead letter keeps cannot quote it either.
        try:
            response = await query.execute()
        except APIError as err:
            said = self._clean(f"{err.code or 'no code'}: {err.message or 'no message'}"
                               + (f" ({err.details})" if err.details else "")
                               + (f" hint: {err.hint}" if err.hint else ""))
            if err.code == UNIQUE_VIOLATION:
                # The conflict target is handled by the upsert; this is a second unique key
                # (e.g. one payment intent on two sessions). Retrying cannot fix it.
                raise PermanentFailure(f"constraint violated: {said}") from None
            raise RetryLater(f"PostgREST error {said}") from None
        except httpx.HTTPError as err:
            raise RetryLater(f"PostgREST unreachable: {type(err).__name__}") from None
        except Exception as err:  # e.g. an answer that is not JSON: its text may quote anything
            raise RetryLater(f"PostgREST answer unusable: {type(err).__name__}: {self._clean(str(err))}") from None
        data: list[dict[str, Any]] = list(response.data)
        return data

    def _table(self, name: str) -> Any:
        return self._client.table(name)

    # --- orders -------------------------------------------------------------------------------

    async def upsert_order(self, order: Order) -> bool:
        row = order.row()
        created = await self._run(self._table("orders").upsert(
            row, on_conflict="checkout_session_id", ignore_duplicates=True))
        if created:
            return True
        changes = {k: v for k, v in row.items() if k != "checkout_session_id"}
        changes["updated_at"] = _now()
        key, created_at = order.checkout_session_id, order.last_event_created
        if order.status == "pending":
            # Same-second tie: a terminal status (paid/failed) is not downgraded to pending,
            # so a tie applies only over a pending row; a strictly newer event over any unpaid one.
            newer = (self._table("orders").update(changes).eq("checkout_session_id", key)
                     .lt("last_event_created", created_at).neq("status", "paid"))
            if await self._run(newer):
                return True
            tie = (self._table("orders").update(changes).eq("checkout_session_id", key)
                   .eq("last_event_created", created_at).eq("status", "pending"))
            return bool(await self._run(tie))
        query = (self._table("orders").update(changes)
                 .eq("checkout_session_id", key)
                 .lte("last_event_created", created_at))
        if order.status != "paid":
            query = query.neq("status", "paid")
        return bool(await self._run(query))

    async def find_order(self, *, checkout_session_id: str | None = None,
                         payment_intent_id: str | None = None) -> Order | None:
        for column, value in (("checkout_session_id", checkout_session_id),
                              ("payment_intent_id", payment_intent_id)):
            if value:
                rows = await self._run(self._table("orders").select("*").eq(column, value))
                if rows:
                    return order_from_row(rows[0])
        return None

    async def set_order_status(self, change: StatusChange) -> bool:
        key = change.checkout_session_id
        marker = {"last_event_id": change.event_id, "last_event_created": change.event_created,
                  "payment_status": change.payment_status, "updated_at": _now()}
        if change.status == "failed":
            query = (self._table("orders")
                     .update({**marker, "status": "failed", "failure_reason": change.failure_reason})
                     .eq("checkout_session_id", key).neq("status", "paid")
                     .lte("last_event_created", change.event_created))
            return bool(await self._run(query))
        paid = {**marker, "status": "paid", "failure_reason": None}
        # As the SQLite store: an unpaid order takes a tie; a paid one only a strictly newer
        # event (a redelivery in the same second changes nothing and returns False).
        unpaid = (self._table("orders").update(paid).eq("checkout_session_id", key)
                  .neq("status", "paid").lte("last_event_created", change.event_created))
        if await self._run(unpaid):
            return True
        newer = (self._table("orders").update(paid).eq("checkout_session_id", key)
                 .eq("status", "paid").lt("last_event_created", change.event_created))
        if await self._run(newer):
            return True
        # A newer event already moved the marker: still mark paid, leave the marker alone.
        older = (self._table("orders")
                 .update({"status": "paid", "payment_status": change.payment_status,
                          "failure_reason": None, "updated_at": _now()})
                 .eq("checkout_session_id", key).neq("status", "paid"))
        return bool(await self._run(older))

    # --- customers ----------------------------------------------------------------------------

    async def upsert_customer(self, customer: Customer, *, ties_win: bool) -> bool:
        row = customer.row()
        created = await self._run(self._table("customers").upsert(
            row, on_conflict="id", ignore_duplicates=True))
        if created:
            return True
        changes = {k: v for k, v in row.items() if k != "id"}
        if not customer.deleted:
            del changes["deleted"]  # a deleted customer stays deleted
        changes["updated_at"] = _now()
        query = self._table("customers").update(changes).eq("id", customer.id)
        query = (query.lte if ties_win else query.lt)("last_event_created",
                                                     customer.last_event_created)
        return bool(await self._run(query))

    async def get_customer(self, customer_id: str) -> Customer | None:
        rows = await self._run(self._table("customers").select("*").eq("id", customer_id))
        return customer_from_row(rows[0]) if rows else None

    # --- analytics ----------------------------------------------------------------------------

    async def track(self, event: CustomerEvent) -> bool:
        created = await self._run(self._table("customer_events").upsert(
            event.row(), on_conflict="event_id,kind", ignore_duplicates=True))
        return bool(created)

    async def customer_events(self, event_id: str) -> list[CustomerEvent]:
        rows = await self._run(
            self._table("customer_events").select("*").eq("event_id", event_id))
        return [customer_event_from_row(r) for r in rows]

    # --- email outbox -------------------------------------------------------------------------

    async def outbox_enqueue(self, item: OutboxRow) -> bool:
        created = await self._run(self._table("email_outbox").upsert(
            item.row(), on_conflict="event_id,template", ignore_duplicates=True))
        return bool(created)

    async def outbox_get(self, event_id: str, template: str) -> OutboxRow | None:
        rows = await self._run(self._table("email_outbox").select("*")
                               .eq("event_id", event_id).eq("template", template))
        return outbox_from_row(rows[0]) if rows else None

    async def outbox_transition(self, event_id: str, template: str, changes: dict[str, Any],
                                expect: dict[str, Any]) -> bool:
        query = (self._table("email_outbox").update(changes)
                 .eq("event_id", event_id).eq("template", template))
        for column, value in expect.items():
            query = query.is_(column, "null") if value is None else query.eq(column, value)
        return bool(await self._run(query))
