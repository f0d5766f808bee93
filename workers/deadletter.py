"""The pool's dead-letter stream: write (always before the ack), list, replay.

A dead-letter entry holds the original stream fields unchanged plus ``dlq_*``
fields: why, the error and traceback of each failed handler, the attempt count,
the handlers that had not succeeded, and the original entry id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from bus.envelope import F_HANDLERS, F_ID, F_TYPE, HANDLER_SEPARATOR
from bus.keys import Keys
from workers.streams import Fields, ensure_group, text

DLQ_PREFIX = "dlq_"
F_REASON = "dlq_reason"
F_ERROR = "dlq_error"
F_TRACEBACK = "dlq_traceback"
F_ERRORS = "dlq_errors"
F_ATTEMPTS = "dlq_attempts"
F_FAILED_HANDLERS = "dlq_handlers"
F_ENTRY_ID = "dlq_entry_id"
F_FAILED_MS = "dlq_failed_ms"

REASON_UNKNOWN_HANDLER = "unknown handler"
REASON_PERMANENT = "permanent failure"
REASON_MAX_ATTEMPTS = "max attempts reached"
REASON_TRIMMED = "entry trimmed from the stream while pending"
REASON_MALFORMED = "malformed entry"


@dataclass(frozen=True)
class Failure:
    """One handler's failed run: its name, the error line and the traceback."""

    handler: str
    error: str
    traceback: str
    permanent: bool = False
    reason: str = ""
    # Set when the handler raised RetryLater(defer_s=...): the next run waits at least this long.
    defer_s: float | None = None


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
    # The first failed handler's traceback ("" when there was none, e.g. a malformed entry).
    traceback: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "event_id": self.event_id, "event_type": self.event_type,
                "reason": self.reason, "error": self.error, "handlers": list(self.handlers),
                "attempts": self.attempts, "entry_id": self.entry_id, "failed_ms": self.failed_ms,
                "traceback": self.traceback}


def dead_fields(
    entry_id: str, fields: Fields, *, reason: str, failures: list[Failure], attempts: int, now_ms: int
) -> dict[Any, Any]:
    """The fields of the dead-letter entry for one stream entry."""
    out: dict[Any, Any] = {
        k: v for k, v in fields.items() if not text(k).startswith(DLQ_PREFIX)
    }
    first = failures[0] if failures else None
    out[F_REASON] = reason
    out[F_ERROR] = first.error if first else reason
    out[F_TRACEBACK] = first.traceback if first else ""
    out[F_ERRORS] = orjson.dumps(
        [{"handler": f.handler, "error": f.error, "traceback": f.traceback} for f in failures]
    )
    out[F_ATTEMPTS] = str(attempts)
    out[F_FAILED_HANDLERS] = HANDLER_SEPARATOR.join(f.handler for f in failures)
    out[F_ENTRY_ID] = entry_id
    out[F_FAILED_MS] = str(now_ms)
    return out


async def dead_letter(
    redis: aioredis.Redis, keys: Keys, pool: str, entry_id: str, fields: Fields, *,
    reason: str, failures: list[Failure], attempts: int, now_ms: int,
) -> str:
    """Write the entry to the pool's dead-letter stream; the caller acks only after this returns."""
    new_id = await redis.xadd(
        keys.dead(pool),
        dead_fields(entry_id, fields, reason=reason, failures=failures, attempts=attempts, now_ms=now_ms),
    )
    return text(new_id)


def _dead_entry(dead_id: bytes | str, fields: Fields) -> DeadEntry:
    def get(name: str) -> str:
        return text(fields.get(name.encode()))

    return DeadEntry(
        id=text(dead_id), event_id=get(F_ID), event_type=get(F_TYPE), reason=get(F_REASON),
        error=get(F_ERROR),
        handlers=tuple(h for h in get(F_FAILED_HANDLERS).split(HANDLER_SEPARATOR) if h),
        attempts=int(get(F_ATTEMPTS) or 0), entry_id=get(F_ENTRY_ID),
        failed_ms=int(get(F_FAILED_MS) or 0), traceback=get(F_TRACEBACK),
    )


async def list_dead(redis: aioredis.Redis, keys: Keys, pool: str, count: int | None = None) -> list[DeadEntry]:
    """Dead-lettered entries of a pool, oldest first."""
    rows: Any = await redis.xrange(keys.dead(pool), count=count)
    return [_dead_entry(dead_id, fields) for dead_id, fields in rows]


async def replay_dead(
    redis: aioredis.Redis, keys: Keys, pool: str, ids: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """Put dead entries (all when `ids` is None) back in the pool's stream with a fresh attempt count.

    Only the handlers that had not succeeded run again. The new entry is added
    before the dead one is deleted, so a crash in between leaves a duplicate.
    Returns (new stream ids, ids that were not found).
    """
    await ensure_group(redis, keys, pool)
    dead_key = keys.dead(pool)
    rows: Any
    if ids is None:
        rows = await redis.xrange(dead_key)
        missing: list[str] = []
    else:
        rows, missing = [], []
        for dead_id in ids:
            found = await redis.xrange(dead_key, min=dead_id, max=dead_id)
            if found:
                rows.extend(found)
            else:
                missing.append(dead_id)
    added: list[str] = []
    for dead_id, fields in rows:
        original: dict[Any, Any] = {
            k: v for k, v in fields.items() if not text(k).startswith(DLQ_PREFIX)
        }
        if F_ID.encode() not in original:
            missing.append(text(dead_id))  # nothing left to replay (the entry was trimmed)
            continue
        failed = text(fields.get(F_FAILED_HANDLERS.encode()))
        if failed:
            original[F_HANDLERS.encode()] = failed
        added.append(text(await redis.xadd(keys.stream(pool), original)))
        await redis.xdel(dead_key, dead_id)
    return added, missing
