"""structlog set-up, called only from entry points. JSON when not on a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from bus.redaction import redact_secrets
from bus.settings import Settings

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


# Libraries that log query or request parameters (SQL arguments, so customers' emails and names;
# request headers, so keys) at DEBUG: never below INFO, whatever LOG_LEVEL says.
PARAMETER_LOGGERS = ("aiosqlite", "asyncpg", "httpcore", "hpack", "h2", "h11", "urllib3",
                     "postgrest", "supabase", "gotrue", "supabase_auth", "realtime", "storage3",
                     "aiosmtplib", "mail.log")


class RedactSecrets:
    """structlog processor: every string value (and a formatted traceback) goes through redact_secrets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            if isinstance(value, str):
                event_dict[key] = redact_secrets(value, self.settings)
        return event_dict


class _RedactRecords(logging.Filter):
    """The same guard for the stdlib loggers of libraries (uvicorn, httpx, rq ...)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_secrets(message, self.settings)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_secrets(record.exc_text, self.settings)
        return True


class _CurrentStderr:
    """Writes to whatever sys.stderr is at write time (tests and daemons swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _CurrentStderrBytes(_CurrentStderr):
    def write(self, data: bytes) -> int:  # type: ignore[override]
        return sys.stderr.buffer.write(data)


def configure_logging(level: str = "info", *, json: bool | None = None, cache: bool = False,
                      settings: Settings | None = None) -> None:
    """Route structlog (and the stdlib loggers of uvicorn and friends) to stderr.

    With `settings` (the CLI's workers and tools, which meet upstream text), every configured
    secret and credential-shaped token is stripped from every line (bus/redaction.py). Without
    (the ingress, which quotes no upstream), its lines are as before: the hot path pays nothing.

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
            *([RedactSecrets(settings)] if settings is not None else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, _RedactRecords)]:
            handler.removeFilter(old)
        if settings is not None:
            handler.addFilter(_RedactRecords(settings))
    for name in PARAMETER_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))
    # httpx logs every request at INFO; that is our own traffic, not news.
    logging.getLogger("httpx").setLevel(max(numeric, logging.WARNING))
