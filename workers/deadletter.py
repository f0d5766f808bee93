"""The pool's dead-letter stream: write (always before the ack), list, replay.

A dead-letter entry holds the original stream fields unchanged plus ``dlq_*``
fields: why, the error and traceback of each failed handler, the attempt count,
the handlers that had not succeeded, and the original entry id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from bus.envelope import F_HANDLERS, F_ID, F_TYPE, HANDLER_SEPARATOR
from bus.keys import Keys
from bus.redaction import redact_secrets
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
# How one handler's run failed when it could be retried (Failure.reason).
REASON_TIMEOUT = "timeout"
REASON_RETRY_REQUESTED = "retry requested"
REASON_ERROR = "error"
REASON_PAUSED = "paused"


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
    # False when the handler raised Paused: the run is not one of max_attempts.
    counts_as_attempt: bool = True


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
    # Each failed handler: how it failed and its error (older dead letters: reason "").
    failures: tuple[HandlerFailure, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "event_id": self.event_id, "event_type": self.event_type,
                "reason": self.reason, "error": self.error, "handlers": list(self.handlers),
                "attempts": self.attempts, "entry_id": self.entry_id, "failed_ms": self.failed_ms,
                "traceback": self.traceback,
                "failures": [{"handler": f.handler, "reason": f.reason, "error": f.error}
                             for f in self.failures]}


def handler_reason(failure: Failure, entry_reason: str) -> str:
    """How one handler failed, as its dead letter says it (the entry's reason is `entry_reason`)."""
    if failure.permanent:
        return failure.reason or REASON_PERMANENT
    if entry_reason not in (REASON_PERMANENT, REASON_UNKNOWN_HANDLER, REASON_MAX_ATTEMPTS):
        return entry_reason  # malformed, trimmed: about the entry, not the handler
    how = failure.reason or REASON_ERROR
    if entry_reason == REASON_MAX_ATTEMPTS:
        return f"{REASON_MAX_ATTEMPTS} (last run: {how})"
    return f"{how} (not retried: the entry was dead-lettered for another handler)"


def entry_reason(reason: str, failures: list[Failure]) -> tuple[str, Failure | None]:
    """The entry-level reason and the failure whose error it shows: one of the handlers it is about.

    When the reason is about only some of the failed handlers (one answered 400, another
    timed out), it names them: "permanent failure (forward:b)".
    """
    deciding = ([f for f in failures if f.permanent and (f.reason or REASON_PERMANENT) == reason]
                or [f for f in failures if f.permanent] or failures)
    named = list(dict.fromkeys(f.handler for f in deciding if f.handler))
    partial = named and len(deciding) < len(failures)
    return (f"{reason} ({', '.join(named)})" if partial else reason), (deciding[0] if deciding else None)


def dead_fields(
    entry_id: str, fields: Fields, *, reason: str, failures: list[Failure], attempts: int, now_ms: int,
    redact: Callable[[str], str] | None = None,
) -> dict[Any, Any]:
    """The fields of the dead-letter entry for one stream entry.

    `reason` is the entry's (REASON_*); the entry-level reason names the handlers it is about,
    and the entry-level error is one of theirs, so the two always agree. Every error text and
    traceback goes through `redact` (default: credential-shaped tokens), the last guard before
    upstream text is stored.
    """
    clean = redact or (lambda t: redact_secrets(t, None))
    out: dict[Any, Any] = {
        k: v for k, v in fields.items() if not text(k).startswith(DLQ_PREFIX)
    }
    out[F_REASON], first = entry_reason(reason, failures)
    out[F_ERROR] = clean(first.error) if first else reason
    out[F_TRACEBACK] = clean(first.traceback) if first else ""
    out[F_ERRORS] = orjson.dumps(
        [{"handler": f.handler, "reason": handler_reason(f, reason), "error": clean(f.error),
          "traceback": clean(f.traceback)} for f in failures]
    )
    out[F_ATTEMPTS] = str(attempts)
    out[F_FAILED_HANDLERS] = HANDLER_SEPARATOR.join(f.handler for f in failures)
    out[F_ENTRY_ID] = entry_id
    out[F_FAILED_MS] = str(now_ms)
    return out


async def dead_letter(
    redis: aioredis.Redis, keys: Keys, pool: str, entry_id: str, fields: Fields, *,
    reason: str, failures: list[Failure], attempts: int, now_ms: int,
    redact: Callable[[str], str] | None = None,
) -> str:
    """Write the entry to the pool's dead-letter stream; the caller acks only after this returns."""
    new_id = await redis.xadd(
        keys.dead(pool),
        dead_fields(entry_id, fields, reason=reason, failures=failures, attempts=attempts, now_ms=now_ms,
                    redact=redact),
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
