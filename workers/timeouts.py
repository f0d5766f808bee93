"""Handler time limits that share one loop timer per consumer.

`asyncio.timeout()` arms a loop timer for every handler call and cancels it after:
about 7 us per call on uvloop, a sixth of what a no-op entry costs the consumer
(bench/bench_workers.py). Here the calls in flight share one timer, armed for the
earliest deadline among them. Every call of a pool has the same timeout_s, so a new
call's deadline is never the earliest and arms nothing; the timer fires about once
per timeout_s, cancels the calls whose deadline has passed, and is armed again for
the earliest of the rest (a scan of at most `concurrency` calls). A call costs a
set insert and a removal.

Expiry means what it means for asyncio.timeout: the task running the call is
cancelled, and the CancelledError that leaves the `with` block becomes
TimeoutError, unless the task was also cancelled by someone else (the consumer's
shutdown, which must go on): then it stays a CancelledError. A `with` block, not
`async with`: entering and leaving await nothing.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

CLOCK_SLACK_S = 0.001


class HandlerTimeouts:
    """The deadlines of one event loop's handler calls: `with timeouts.limit(timeout_s): await call`."""

    def __init__(self) -> None:
        self._live: set[Limit] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def limit(self, timeout_s: float) -> Limit:
        return Limit(self, timeout_s)

    def in_flight(self) -> int:
        return len(self._live)

    def _started(self, limit: Limit) -> None:
        self._live.add(limit)
        if limit.when < self._timer_at:
            self._arm(limit.when)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        # uvloop's timers have millisecond resolution and may fire a little early: a deadline
        # within a millisecond counts as passed, so the timer is never re-armed for "now".
        now = asyncio.get_running_loop().time() + CLOCK_SLACK_S
        earliest = math.inf
        for limit in list(self._live):
            if limit.when <= now:
                self._live.discard(limit)
                limit.expire()
            elif limit.when < earliest:
                earliest = limit.when
        if earliest < math.inf:
            self._arm(earliest)


class Limit:
    """One handler call's deadline, as a context manager."""

    __slots__ = ("_cancelling", "_owner", "_task", "_timeout_s", "expired", "when")

    def __init__(self, owner: HandlerTimeouts, timeout_s: float) -> None:
        self._owner = owner
        self._timeout_s = timeout_s
        self.when = math.inf
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self.expired = False

    def __enter__(self) -> Limit:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a handler time limit needs a running task")
        self._task = task
        self._cancelling = task.cancelling()
        self.when = asyncio.get_running_loop().time() + self._timeout_s
        self._owner._started(self)
        return self

    def expire(self) -> None:
        self.expired = True
        if self._task is not None:
            self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._owner._live.discard(self)
        # As asyncio.Timeout.__aexit__: our cancel request is withdrawn; only if no other
        # request remains is the cancellation ours to turn into a TimeoutError.
        if (self.expired and self._task is not None and self._task.uncancel() <= self._cancelling
                and exc_type is asyncio.CancelledError):
            raise TimeoutError from exc
