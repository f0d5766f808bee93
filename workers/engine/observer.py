"""A hook for metrics: the engine and the async executor report here; the default does nothing.

`entries_in_flight` and `read_batch` come from the engine, for both executors.
`handler_finished` comes from the async executor, once per handler call. An
`executor: rq` pool does not report it: its handlers run in RQ worker
processes, which have no observer (RQ's own job registries count them).
"""

from __future__ import annotations

from typing import Protocol

# handler_finished's outcome, per handler call:
OK = "ok"            # it succeeded
FAILED = "failed"    # it raised or timed out; the entry will be retried
RETRY = "retry"      # it raised RetryLater; the entry will be retried
DEAD = "dead"        # its failure dead-lettered the entry
TAKEN_OVER = "taken_over"  # its failure would have dead-lettered the entry, but another consumer owns it now
STALE = "stale"      # not run: the stale guard skipped its entry (a newer event of its object completed)


class Observer(Protocol):
    def handler_finished(self, pool: str, handler: str, outcome: str, duration_s: float) -> None: ...
    def entries_in_flight(self, pool: str, count: int) -> None: ...
    def read_batch(self, pool: str, size: int) -> None: ...


class NoObserver:
    """The default: metrics cost one method call each."""

    def handler_finished(self, pool: str, handler: str, outcome: str, duration_s: float) -> None:
        pass

    def entries_in_flight(self, pool: str, count: int) -> None:
        pass

    def read_batch(self, pool: str, size: int) -> None:
        pass
