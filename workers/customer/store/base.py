"""The store interface every customer-pool handler uses; see sqlite_store and supabase_store.

Each operation is one atomic step in the database: keys are enforced by
unique constraints and ordering by conditions inside the write itself
(`... where last_event_created <= $created`), never by reading first and
deciding in Python.
"""

from __future__ import annotations

from typing import Any, Protocol

from workers.customer.store.rows import Customer, CustomerEvent, Order, OutboxRow, StatusChange


class Store(Protocol):
    """Rows of the customer pool. Implementations: SqliteStore, SupabaseStore."""

    name: str

    async def upsert_order(self, order: Order) -> bool:
        """Insert, or update if `order` is not older than the stored row; a paid order stays paid.

        On a same-second tie (equal `last_event_created`) a terminal status
        (paid, failed) is not downgraded by a pending order: a redelivered
        checkout.session.completed does not undo an async_payment_failed.

        True when the row was written.
        """
        ...

    async def find_order(self, *, checkout_session_id: str | None = None,
                         payment_intent_id: str | None = None) -> Order | None: ...

    async def set_order_status(self, change: StatusChange) -> bool:
        """Apply a payment outcome to an existing order; True when the row changed.

        "paid" always wins (a succeeded payment is final) and moves the
        last-event marker forward only; "failed" applies only to an order that
        is not paid and not already changed by a newer event.
        """
        ...

    async def upsert_customer(self, customer: Customer, *, ties_win: bool) -> bool:
        """Insert, or update if newer than the stored row (or as new, when `ties_win`).

        A deleted customer stays deleted. True when the row was written.
        """
        ...

    async def get_customer(self, customer_id: str) -> Customer | None: ...

    async def track(self, event: CustomerEvent) -> bool:
        """Record one analytics row; False when (event_id, kind) was already there."""
        ...

    async def customer_events(self, event_id: str) -> list[CustomerEvent]: ...

    async def outbox_enqueue(self, item: OutboxRow) -> bool:
        """Create the outbox row for (event_id, template) unless it exists; True when created."""
        ...

    async def outbox_get(self, event_id: str, template: str) -> OutboxRow | None: ...

    async def outbox_transition(self, event_id: str, template: str, changes: dict[str, Any],
                                expect: dict[str, Any]) -> bool:
        """Compare-and-set on one outbox row: apply `changes` only if it still equals `expect`."""
        ...

    async def aclose(self) -> None: ...
