"""Entries this consumer has read but not started yet: the overshoot of a read, and a small read-ahead.

A read may return more entries than there are free slots (COUNT applies per stream; the
concurrency may have been lowered), and an unordered pool also reads up to READ_AHEAD
entries beyond its free slots while its stream has work, so that a slot that frees
starts its next entry at once, in the same loop pass, instead of after an XREADGROUP
round trip (measured: the 20 ms I/O-bound bench spent about a tenth of its time in that gap).

Such an entry is already delivered, so it sits in this consumer's pending list and its
idle time runs; a peer claims it once idle for timeout_s, the backoff and the claim margin
(workers/engine/reclaim.py). Started within half the claim margin of its read, it ends
(its handler calls are bounded by timeout_s) before any peer may claim it. One held longer
is therefore never started from here: it is dropped, and this consumer's own reclaimer,
which no longer sees it as busy, claims it like any other due entry; if a peer claimed it
first, XCLAIM's idle check keeps it from running twice.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from workers.engine.executor import Entry

READ_AHEAD = 16


class Backlog:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._held: deque[tuple[Entry, float]] = deque()
        self._clock = clock
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._held)

    def __bool__(self) -> bool:
        return bool(self._held)

    def append(self, entry: Entry) -> None:
        self._held.append((entry, self._clock()))

    def take(self, max_hold_s: float) -> Entry | None:
        """The oldest entry still safe to start here; None when there is none."""
        now = self._clock()
        while self._held:
            entry, held_at = self._held.popleft()
            if now - held_at < max_hold_s:
                return entry
            self.dropped += 1  # left to a reclaim pass (see the module docstring)
        return None

    def holds(self, stream: str, entry_id: str) -> bool:
        return any(e.stream == stream and e.entry_id == entry_id for e, _ in self._held)


def read_ahead(concurrency: int, held: int) -> int:
    """How many entries to read beyond the free slots: up to READ_AHEAD, a quarter of the concurrency."""
    return max(0, min(READ_AHEAD, concurrency // 4) - held)
