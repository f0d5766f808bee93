"""One base exception, and only the kinds a caller treats differently."""

from __future__ import annotations


class FanoutError(Exception):
    """Base class for every error stripe-fanout raises on purpose."""


class ConfigError(FanoutError):
    """Settings or routing.yaml are invalid; the message says where and why."""


class StoreUnavailable(FanoutError):
    """Redis did not answer; the event was not stored and the sender must retry."""


class RetryLater(FanoutError):
    """A handler asks to be run again later (for example: the order does not exist yet)."""

    def __init__(self, reason: str = "retry requested", *, defer_s: float | None = None) -> None:
        super().__init__(reason)
        self.defer_s = defer_s

    # A run that ended in RetryLater is one attempt of max_attempts; see Paused.
    counts_as_attempt = True


class PermanentFailure(FanoutError):
    """A handler says retrying cannot help: dead-letter the entry at once."""


class Paused(RetryLater):
    """Run again after `defer_s`, and do not count this run as an attempt.

    For a handler that did not try at all: its destination's circuit breaker is
    open, or its concurrency or rate limit is reached. The entry waits, as many
    times as needed, without coming closer to max_attempts.
    """

    counts_as_attempt = False
