"""The email outbox protocol: claim (event, template) once, then mark it sent, released or failed.

Every step is a compare-and-set on the row (`outbox_transition`), so two
workers holding the same event cannot both claim it: the claim bumps
`attempts`, and only the worker whose expected (status, attempts) still
matches wins. A claim whose worker died mid-send can be taken over after
`lease_s`; that is the one case where a message may go out twice. Only
`sent` is final: a `failed` row (permanent SMTP refusal, entry dead-lettered)
is claimed again when the event is replayed or redelivered.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from workers.customer.store.base import Store
from workers.customer.store.rows import OutboxRow

CLAIM_LEASE_S = 120.0
MAX_ERROR_CHARS = 500

Refusal = Literal["sent", "busy"]


@dataclass(frozen=True)
class Claim:
    event_id: str
    template: str
    token: str
    attempts: int


def _now() -> datetime:
    return datetime.now(UTC)


def _expired(claimed_at: str | None, now: datetime, lease_s: float) -> bool:
    if not claimed_at:
        return True
    return datetime.fromisoformat(claimed_at) + timedelta(seconds=lease_s) <= now


async def claim(store: Store, item: OutboxRow, *, lease_s: float = CLAIM_LEASE_S,
                now: datetime | None = None) -> Claim | Refusal:
    """Take the row for (item.event_id, item.template), creating it on first delivery."""
    now = now or _now()
    await store.outbox_enqueue(item)
    row = await store.outbox_get(item.event_id, item.template)
    if row is None:  # enqueue just made sure it exists; rows are never deleted
        raise RuntimeError(f"outbox row {item.event_id}/{item.template} vanished")
    if row.status == "sent":  # only "sent" is done: a failed row is re-claimed by a replay
        return "sent"
    if row.status == "sending" and not _expired(row.claimed_at, now, lease_s):
        return "busy"
    token = uuid.uuid4().hex
    won = await store.outbox_transition(
        item.event_id, item.template,
        {"status": "sending", "attempts": row.attempts + 1, "claim_token": token,
         "claimed_at": now.isoformat()},
        expect={"status": row.status, "attempts": row.attempts},
    )
    return Claim(item.event_id, item.template, token, row.attempts + 1) if won else "busy"


async def _finish(store: Store, held: Claim, changes: dict[str, object]) -> bool:
    return await store.outbox_transition(held.event_id, held.template, changes,
                                         expect={"claim_token": held.token, "status": "sending"})


async def mark_sent(store: Store, held: Claim) -> bool:
    return await _finish(store, held, {"status": "sent", "sent_at": _now().isoformat(),
                                       "last_error": None})


async def release(store: Store, held: Claim, error: str) -> bool:
    """Give the claim back after a transient failure, so a retry can take it."""
    return await _finish(store, held, {"status": "pending", "last_error": error[:MAX_ERROR_CHARS]})


async def fail(store: Store, held: Claim, error: str) -> bool:
    """Record a permanent failure. The entry is dead-lettered; a replay re-claims the row."""
    return await _finish(store, held, {"status": "failed", "last_error": error[:MAX_ERROR_CHARS]})
