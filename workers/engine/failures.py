"""A handler's failed run, and the dead-letter entry made from an entry's failures.

A dead-letter entry holds the original stream fields unchanged plus ``dlq_*``
fields: why, the error, traceback and reason of each failed handler, the attempt
count, the handlers that had not succeeded, and the original entry id. The
entry's reason and error are about the same handlers, and every error text and
traceback is redacted (bus/redaction.py) before it is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from bus.envelope import HANDLER_SEPARATOR
from bus.redaction import redact_secrets
from workers.stream_ops import Fields, text

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
    # The handler raised RetryLater (with or without defer_s), rather than an error.
    retry_later: bool = False
    # False when the handler raised Paused: the run is not one of max_attempts.
    counts_as_attempt: bool = True


def paused_run(failures: list[Failure]) -> bool:
    """Every failure of the run is Paused: the handlers did not try, so the run is not an attempt."""
    return bool(failures) and all(not f.counts_as_attempt for f in failures)


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


def credential_patterns_only(value: str) -> str:
    """The redaction of code that has no settings: credential-shaped tokens only."""
    return redact_secrets(value, None)


def dead_fields(
    entry_id: str, fields: Fields, *, reason: str, failures: list[Failure], attempts: int, now_ms: int,
    redact: Callable[[str], str] = credential_patterns_only,
) -> dict[Any, Any]:
    """The fields of the dead-letter entry for one stream entry.

    `reason` is the entry's (REASON_*); the entry-level reason names the handlers it is about,
    and the entry-level error is one of theirs, so the two always agree. Every error text and
    traceback goes through `redact`, the last guard before upstream text is stored.
    """
    out: dict[Any, Any] = {
        k: v for k, v in fields.items() if not text(k).startswith(DLQ_PREFIX)
    }
    out[F_REASON], first = entry_reason(reason, failures)
    out[F_ERROR] = redact(first.error) if first else reason
    out[F_TRACEBACK] = redact(first.traceback) if first else ""
    out[F_ERRORS] = orjson.dumps(
        [{"handler": f.handler, "reason": handler_reason(f, reason), "error": redact(f.error),
          "traceback": redact(f.traceback)} for f in failures]
    )
    out[F_ATTEMPTS] = str(attempts)
    out[F_FAILED_HANDLERS] = HANDLER_SEPARATOR.join(f.handler for f in failures)
    out[F_ENTRY_ID] = entry_id
    out[F_FAILED_MS] = str(now_ms)
    return out
