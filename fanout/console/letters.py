"""Dead letters for the console: newest first, filtered; which ones a replay by filter takes.

Replaying (one letter, or those a filter matches) is workers.ops.replay.replay_dead_entries,
as `fanout dlq replay [--reroute]` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from bus import defaults
from bus.keys import Keys
from workers.ops.deadletter import DeadEntry, dead_entry
from workers.stream_ops import text

PAGE = 500


@dataclass(frozen=True)
class Filter:
    """Which dead letters a page shows: event type (`customer.*` for a prefix), error text, time."""

    event_type: str = ""
    text: str = ""
    since_ms: int | None = None
    until_ms: int | None = None
    # Only letters at or before this id: a replay by filter touches what its preview counted.
    upto: str = ""

    @classmethod
    def from_query(cls, query: Any) -> Filter:
        return cls(event_type=(query.get("type") or "").strip(), text=(query.get("q") or "").strip(),
                   since_ms=_time_ms(query.get("since")), until_ms=_time_ms(query.get("until")),
                   upto=(query.get("upto") or "").strip())

    def params(self) -> dict[str, str]:
        """The filter as query parameters (the time ones as typed in a datetime-local input)."""
        out = {"type": self.event_type, "q": self.text, "since": _time_text(self.since_ms),
               "until": _time_text(self.until_ms)}
        return {k: v for k, v in out.items() if v}

    def matches(self, letter: DeadEntry) -> bool:
        if self.event_type:
            if self.event_type.endswith("*"):
                if not letter.event_type.startswith(self.event_type[:-1]):
                    return False
            elif letter.event_type != self.event_type:
                return False
        if self.text:
            errors = "\n".join(f"{f.reason}\n{f.error}" for f in letter.failures)
            haystack = f"{letter.reason}\n{letter.error}\n{errors}\n{letter.traceback}".lower()
            if self.text.lower() not in haystack:
                return False
        if self.since_ms is not None and letter.failed_ms < self.since_ms:
            return False
        return self.until_ms is None or letter.failed_ms <= self.until_ms


def _time_ms(raw: str | None) -> int | None:
    """A datetime-local value (or any ISO 8601 time), read as UTC when it has no zone."""
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _time_text(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M")


@dataclass
class Letters:
    shown: list[DeadEntry] = field(default_factory=list)
    matching: int = 0
    scanned: int = 0
    cut: bool = False
    newest_id: str = ""


async def letters(redis: aioredis.Redis, keys: Keys, pool: str, wanted: Filter, *,
                  show: int = defaults.CONSOLE_DLQ_PAGE,
                  scan_limit: int = defaults.CONSOLE_DLQ_SCAN_LIMIT) -> Letters:
    """The pool's dead letters matching `wanted`, newest first: `show` of them, and how many match.

    At most `scan_limit` letters are looked at; `cut` says the scan stopped before the oldest.
    """
    out = Letters()
    dead_key = keys.dead(pool)
    start = wanted.upto or "+"
    while out.scanned < scan_limit:
        rows: Any = await redis.xrevrange(dead_key, max=start, count=min(PAGE, scan_limit - out.scanned))
        if not rows:
            break
        for dead_id, fields in rows:
            letter = dead_entry(dead_id, fields)
            out.newest_id = out.newest_id or letter.id
            if wanted.matches(letter):
                out.matching += 1
                if len(out.shown) < show:
                    out.shown.append(letter)
        out.scanned += len(rows)
        start = "(" + text(rows[-1][0])
    else:
        out.cut = bool(await redis.xrevrange(dead_key, max=start, count=1))
    return out


async def matching_ids(redis: aioredis.Redis, keys: Keys, pool: str, wanted: Filter) -> list[str]:
    """Every id a replay by filter replays (bounded as the preview is)."""
    found = await letters(redis, keys, pool, wanted, show=defaults.CONSOLE_DLQ_SCAN_LIMIT)
    return [letter.id for letter in found.shown]
