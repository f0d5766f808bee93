"""The rows the customer pool writes, as typed records shared by every store."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

OrderStatus = Literal["pending", "paid", "failed"]
OutboxStatus = Literal["pending", "sending", "sent", "failed"]

ORDER_COLUMNS = (
    "checkout_session_id", "payment_intent_id", "customer_id", "customer_email", "customer_name",
    "amount_subtotal", "amount_total", "amount_shipping", "currency", "payment_status", "status",
    "failure_reason", "shipping", "metadata", "livemode", "last_event_id", "last_event_created",
)
CUSTOMER_COLUMNS = (
    "id", "email", "name", "phone", "address", "metadata", "deleted", "livemode",
    "last_event_id", "last_event_created",
)
CUSTOMER_EVENT_COLUMNS = (
    "event_id", "kind", "event_type", "customer_id", "object_id", "amount", "currency",
    "event_created", "properties",
)
OUTBOX_COLUMNS = (
    "event_id", "template", "recipient", "order_id", "status", "attempts", "claim_token",
    "claimed_at", "sent_at", "last_error",
)
JSON_COLUMNS = frozenset({"shipping", "metadata", "address", "properties"})
BOOL_COLUMNS = frozenset({"livemode", "deleted"})


@dataclass(frozen=True)
class Order:
    """One row of `orders`, keyed by the Checkout Session id."""

    checkout_session_id: str
    payment_status: str
    status: OrderStatus
    last_event_id: str
    last_event_created: int
    payment_intent_id: str | None = None
    customer_id: str | None = None
    customer_email: str | None = None
    customer_name: str | None = None
    amount_subtotal: int | None = None
    amount_total: int | None = None
    amount_shipping: int | None = None
    currency: str | None = None
    failure_reason: str | None = None
    shipping: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    livemode: bool = False

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StatusChange:
    """A payment outcome to apply to an existing order."""

    checkout_session_id: str
    status: Literal["paid", "failed"]
    payment_status: str
    event_id: str
    event_created: int
    failure_reason: str | None = None


@dataclass(frozen=True)
class Customer:
    """One row of `customers`, keyed by the Stripe customer id."""

    id: str
    last_event_id: str
    last_event_created: int
    email: str | None = None
    name: str | None = None
    phone: str | None = None
    address: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False
    livemode: bool = False

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CustomerEvent:
    """One analytics row: unique per (event_id, kind)."""

    event_id: str
    kind: str
    event_type: str
    event_created: int
    customer_id: str | None = None
    object_id: str | None = None
    amount: int | None = None
    currency: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OutboxRow:
    """One row of `email_outbox`: a message owed for (event_id, template)."""

    event_id: str
    template: str
    recipient: str
    order_id: str | None = None
    status: OutboxStatus = "pending"
    attempts: int = 0
    claim_token: str | None = None
    claimed_at: str | None = None
    sent_at: str | None = None
    last_error: str | None = None

    def row(self) -> dict[str, Any]:
        return asdict(self)


def pick(row: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    """Only the columns a record knows; stores add created_at/updated_at/id of their own."""
    return {name: row.get(name) for name in columns}


def order_from_row(row: dict[str, Any]) -> Order:
    return Order(**pick(row, ORDER_COLUMNS))


def customer_from_row(row: dict[str, Any]) -> Customer:
    return Customer(**pick(row, CUSTOMER_COLUMNS))


def customer_event_from_row(row: dict[str, Any]) -> CustomerEvent:
    return CustomerEvent(**pick(row, CUSTOMER_EVENT_COLUMNS))


def outbox_from_row(row: dict[str, Any]) -> OutboxRow:
    return OutboxRow(**pick(row, OUTBOX_COLUMNS))
