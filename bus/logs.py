"""structlog set-up, called only from entry points. JSON when not on a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

# Keys whose values must never be written, whatever a caller passes by mistake.
REDACTED_KEYS = frozenset(
    {"body", "raw_body", "payload", "secret", "secrets", "signature", "stripe_signature",
     "authorization", "password", "service_role_key", "api_key"}
)


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of any secret-looking key; defence in depth, not the main guard."""
    for key in REDACTED_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


class _CurrentStderr:
    """Writes to whatever sys.stderr is at write time (tests and daemons swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _CurrentStderrBytes(_CurrentStderr):
    def write(self, data: bytes) -> int:  # type: ignore[override]
        return sys.stderr.buffer.write(data)


def configure_logging(level: str = "info", *, json: bool | None = None, cache: bool = False) -> None:
    """Route structlog (and the stdlib loggers of uvicorn and friends) to stderr.

    `cache` freezes each logger's configuration on first use: faster, and right
    for long-running servers, but a later reconfiguration (tests) cannot reach it.
    """
    if json is None:
        json = not sys.stderr.isatty()
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    # orjson renders a line several times faster than the stdlib; it matters at one line per event.
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps) if json
        else structlog.dev.ConsoleRenderer()
    )
    factory: Any = (
        structlog.BytesLoggerFactory(file=_CurrentStderrBytes())  # type: ignore[arg-type]
        if json else structlog.PrintLoggerFactory(file=_CurrentStderr())  # type: ignore[arg-type]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    # httpx logs every request at INFO; that is our own traffic, not news.
    logging.getLogger("httpx").setLevel(max(numeric, logging.WARNING))
