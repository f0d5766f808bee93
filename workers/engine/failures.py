"""A handler's failed run, and the dead-letter entry made from an entry's failures.

A dead-letter entry holds the original stream fields unchanged plus ``dlq_*``
fields: why, the error and traceback of each failed handler, the attempt count,
the handlers that had not succeeded, and the original entry id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from bus.envelope import HANDLER_SEPARATOR
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
