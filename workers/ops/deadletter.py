"""The pool's dead-letter stream for operators: list; replay is workers/ops/replay.py.

Dead letters are written by workers/engine/outcomes.py (with the ack, in one
script); their fields are described in workers/engine/failures.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from bus.envelope import F_ID, F_TYPE, F_VERSION, HANDLER_SEPARATOR
from bus.keys import Keys
from workers.engine.failures import (
    F_ATTEMPTS,
    F_ENTRY_ID,
    F_ERROR,
    F_ERRORS,
    F_FAILED_HANDLERS,
    F_FAILED_MS,
    F_REASON,
    F_TRACEBACK,
)
from workers.ops.pool_partitions import id_order, pool_partitions
from workers.stream_ops import Fields, text


@dataclass(frozen=True)
class HandlerFailure:
    """One handler's part of a dead letter: how it failed, and its error line."""

    handler: str
    reason: str
    error: str


@dataclass(frozen=True)
class DeadEntry:
    id: str
    event_id: str
    event_type: str
    reason: str
    error: str
    handlers: tuple[str, ...]
    attempts: int
    entry_id: str
    failed_ms: int
    # The deciding handler's traceback ("" when there was none, e.g. a malformed entry).
    traceback: str = ""
    # The version of the routing table that chose the entry's handlers ("" when unknown).
    routing_version: str = ""
    # Each failed handler: how it failed and its error (older dead letters: reason "").
    failures: tuple[HandlerFailure, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "event_id": self.event_id, "event_type": self.event_type,
                "reason": self.reason, "error": self.error, "handlers": list(self.handlers),
                "attempts": self.attempts, "entry_id": self.entry_id, "failed_ms": self.failed_ms,
                "traceback": self.traceback, "routing_version": self.routing_version,
                "failures": [{"handler": f.handler, "reason": f.reason, "error": f.error}
                             for f in self.failures]}


def dead_entry(dead_id: bytes | str, fields: Fields) -> DeadEntry:
    """One dead-letter stream entry (as XRANGE returns it) read into a DeadEntry."""

    def get(name: str) -> str:
        return text(fields.get(name.encode()))

    return DeadEntry(
        id=text(dead_id), event_id=get(F_ID), event_type=get(F_TYPE), reason=get(F_REASON),
        error=get(F_ERROR),
        handlers=tuple(h for h in get(F_FAILED_HANDLERS).split(HANDLER_SEPARATOR) if h),
        attempts=int(get(F_ATTEMPTS) or 0), entry_id=get(F_ENTRY_ID),
        failed_ms=int(get(F_FAILED_MS) or 0), traceback=get(F_TRACEBACK), routing_version=get(F_VERSION),
        failures=_handler_failures(fields.get(F_ERRORS.encode())),
    )


def _handler_failures(raw: Any) -> tuple[HandlerFailure, ...]:
    try:
        items = orjson.loads(raw) if raw else []
    except orjson.JSONDecodeError:
        return ()
    return tuple(HandlerFailure(str(i.get("handler", "")), str(i.get("reason", "")), str(i.get("error", "")))
                 for i in items if isinstance(i, dict))


async def list_dead(redis: aioredis.Redis, keys: Keys, pool: str, count: int | None = None) -> list[DeadEntry]:
    """Dead-lettered entries of a pool, oldest first, of every partition (the first `count`)."""
    rows: list[Any] = []
    for part in await pool_partitions(redis, keys, pool):
        found: Any = await redis.xrange(part.dead(pool), count=count)
        rows.extend(found)
    rows.sort(key=lambda row: id_order(text(row[0])))
    return [dead_entry(dead_id, fields) for dead_id, fields in rows[:count]]


async def replay_dead(
    redis: aioredis.Redis, keys: Keys, pool: str, ids: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """Put dead entries back in the stream; (new stream ids, ids not found). See workers/ops/replay.py."""
    from workers.ops.replay import replay_dead_entries  # it builds on this module

    result = await replay_dead_entries(redis, keys, pool, ids)
    return result.added, result.missing
