"""Rates over the last minutes, from counters sampled into a small ring in the console process.

The counters live in Redis and only grow, so a rate is the difference between
now and the oldest sample still in the window. A console that just started has
no history: its rates appear after the first sample interval.
"""

from __future__ import annotations

from collections import deque


class RateRing:
    def __init__(self, window_s: float, interval_s: float) -> None:
        self.window_s = window_s
        self.interval_s = interval_s
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=int(window_s / interval_s) + 2)

    def add(self, now_s: float, values: dict[str, int]) -> None:
        self._samples.append((now_s, dict(values)))

    def per_minute(self, now_s: float, current: dict[str, int]) -> dict[str, float | None]:
        """Each counter's rate per minute between the oldest sample in the window and `current`."""
        oldest = next(((t, v) for t, v in self._samples if now_s - t <= self.window_s), None)
        if oldest is None or now_s - oldest[0] < 1.0:
            return dict.fromkeys(current)
        elapsed_s = now_s - oldest[0]
        # A counter that went down was reset (a flushed Redis): no rate rather than a negative one.
        return {name: (value - oldest[1].get(name, 0)) * 60 / elapsed_s
                if value >= oldest[1].get(name, 0) else None
                for name, value in current.items()}

    def span_s(self, now_s: float) -> float:
        """How many seconds the rates shown cover."""
        oldest = next((t for t, _ in self._samples if now_s - t <= self.window_s), None)
        return 0.0 if oldest is None else now_s - oldest
