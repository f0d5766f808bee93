"""One event's story for the console: every pool's copy, in every partition's stream and dead letters.

A lookup by event id or object id scans, newest first and inside Redis (so bodies
are not copied to the console), each stream and dead-letter stream of every pool
and partition, a bounded number of entries each; a scan cut short is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from bus import defaults
from bus.envelope import F_ID, F_OBJECT_ID, HANDLER_SEPARATOR, Event
from bus.keys import Keys
from workers.engine.failures import F_ENTRY_ID, F_FAILED_HANDLERS
from workers.ops.deadletter import dead_entry
from workers.stream_ops import text

SCAN_PAGE = 500

# Finds, server-side, the entries of one page whose event id or object id is ARGV[3], so a
# lookup never copies the bodies of a whole stream to the console. Newest first.
# Returns {entries looked at, the last id looked at, matching ids}.
FIND_LUA = f"""
local rows = redis.call('XREVRANGE', KEYS[1], ARGV[1], '-', 'COUNT', ARGV[2])
local found = {{}}
for _, row in ipairs(rows) do
  local f = row[2]
  for j = 1, #f, 2 do
    if (f[j] == '{F_ID}' or f[j] == '{F_OBJECT_ID}') and f[j + 1] == ARGV[3] then
      found[#found + 1] = row[1]
      break
    end
  end
end
local last = ''
if #rows > 0 then last = rows[#rows][1] end
return {{#rows, last, found}}
"""


@dataclass(frozen=True)
class HandlerState:
    name: str
    state: str  # "done", "pending", "failed"
    note: str = ""
    error: str = ""


@dataclass(frozen=True)
class Copy:
    """One pool's copy of an event: a stream entry, or a dead letter."""

    pool: str
    partition: str
    where: str  # "stream" or "dead letters"
    entry_id: str
    event: Event
    handlers: list[HandlerState]
    attempts: int | None = None
    state: str = ""
    reason: str = ""
    traceback: str = ""
    failed_ms: int | None = None
    # When the ingress (or a replay) stored the stream entry: its id's time (0 when unknown).
    stored_ms: int = 0


@dataclass
class Lookup:
    query: str
    copies: list[Copy] = field(default_factory=list)
    # Streams whose scan stopped at the limit before their oldest entry.
    cut: list[str] = field(default_factory=list)
    scanned: int = 0

    @property
    def event_ids(self) -> list[str]:
        return list(dict.fromkeys(c.event.id for c in self.copies))

    def received_ms(self, event_id: str) -> int:
        """When the event was first stored: the oldest of its copies' stream entry times (0 if unknown)."""
        return min((c.stored_ms for c in self.copies if c.event.id == event_id and c.stored_ms), default=0)

    def body_of(self, event_id: str) -> str:
        """The raw body of the event, pretty-printed (every copy holds the same bytes)."""
        for copy in self.copies:
            if copy.event.id == event_id:
                try:
                    return orjson.dumps(orjson.loads(copy.event.body), option=orjson.OPT_INDENT_2).decode()
                except orjson.JSONDecodeError:
                    return copy.event.body.decode(errors="replace")
        return ""


async def find(redis: aioredis.Redis, keys: Keys, pools: list[str], query: str,
               scan_limit: int = defaults.CONSOLE_SCAN_LIMIT) -> Lookup:
    """Every copy of the events whose id or object id is `query`, newest first, in every pool and partition.

    Each stream and dead-letter stream is scanned newest first, at most `scan_limit`
    entries each; a scan cut short is named in `cut`.
    """
    found = Lookup(query)
    for pool in pools:
        for p, stream in enumerate(keys.streams(pool)):
            dead = keys.dead(pool, p)
            stream_ids = await _scan(redis, stream, query, scan_limit, found)
            dead_ids = await _scan(redis, dead, query, scan_limit, found)
            if stream_ids:
                found.copies += await _stream_copies(redis, keys, pool, p, stream_ids)
            for dead_id in dead_ids:
                rows: Any = await redis.xrange(dead, min=dead_id, max=dead_id)
                if rows:
                    found.copies.append(_dead_copy(pool, str(p), dead_id, rows[0][1]))
    return found


async def _scan(redis: aioredis.Redis, stream: str, query: str, limit: int, found: Lookup) -> list[str]:
    """Ids of the entries of `stream` matching `query`, newest first, looking at `limit` entries at most."""
    ids: list[str] = []
    start, looked = "+", 0
    while True:
        page = min(SCAN_PAGE, limit - looked)
        if page <= 0:
            if await redis.xrevrange(stream, max=start, count=1):
                found.cut.append(stream)
            break
        count, last, matches = await redis.eval(FIND_LUA, 1, stream, start, page, query)
        looked += int(count)
        ids += [text(m) for m in matches]
        if int(count) < page:
            break
        start = "(" + text(last)
    found.scanned += looked
    return ids


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _names(value: Any) -> set[str]:
    return {h for h in text(value).split(HANDLER_SEPARATOR) if h}


async def _stream_copies(redis: aioredis.Redis, keys: Keys, pool: str, p: int, ids: list[str]) -> list[Copy]:
    stream, dead, group, partition = keys.stream(pool, p), keys.dead(pool, p), keys.group(pool), str(p)
    groups: Any = await redis.xinfo_groups(stream)
    ours = next((g for g in groups if text(g["name"]) == group), None)
    last_delivered = _id_key(text(ours["last-delivered-id"])) if ours else (0, 0)
    copies = []
    for entry_id in ids:
        rows: Any = await redis.xrange(stream, min=entry_id, max=entry_id)
        if not rows:
            continue
        event = Event.from_entry(rows[0][1])
        pending: Any = await redis.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
        if pending:
            done = {text(h) for h in await redis.smembers(keys.ledger(pool, event.id, p))}
            attempts = int(pending[0]["times_delivered"])
            idle_s = int(pending[0]["time_since_delivered"]) / 1000
            note = f"attempt {attempts}, {idle_s:.0f} s since it started"
            handlers = [HandlerState(h, "done") if h in done else HandlerState(h, "pending", note)
                        for h in event.handlers]
            copies.append(Copy(pool, partition, "stream", entry_id, event, handlers, attempts, "pending",
                               stored_ms=_id_key(entry_id)[0]))
        elif _id_key(entry_id) > last_delivered:
            handlers = [HandlerState(h, "pending", "not read by the pool yet") for h in event.handlers]
            copies.append(Copy(pool, partition, "stream", entry_id, event, handlers, 0, "waiting",
                               stored_ms=_id_key(entry_id)[0]))
        else:
            failed = await _dead_handlers(redis, dead, entry_id)
            handlers = [HandlerState(h, "failed", "dead-lettered") if h in failed else HandlerState(h, "done")
                        for h in event.handlers]
            copies.append(Copy(pool, partition, "stream", entry_id, event, handlers, None,
                               "dead-lettered" if failed else "done", stored_ms=_id_key(entry_id)[0]))
    return copies


async def _dead_handlers(redis: aioredis.Redis, dead: str, entry_id: str) -> set[str]:
    """The handlers that failed for a stream entry that went to the dead letters (empty if none)."""
    start = "+"
    # Dead letters are few and recent ones matter: look at the newest pages only.
    for _ in range(4):
        rows: Any = await redis.xrevrange(dead, max=start, count=SCAN_PAGE)
        for _dead_id, fields in rows:
            if text(fields.get(F_ENTRY_ID.encode())) == entry_id:
                return _names(fields.get(F_FAILED_HANDLERS.encode()))
        if len(rows) < SCAN_PAGE:
            break
        start = "(" + text(rows[-1][0])
    return set()


def _dead_copy(pool: str, partition: str, dead_id: str, fields: Any) -> Copy:
    event = Event.from_entry(fields)
    letter = dead_entry(dead_id, fields)
    errors = {f.handler: f.error for f in letter.failures}
    handlers = [HandlerState(h, "failed", error=errors.get(h, "")) if h in letter.handlers
                else HandlerState(h, "done") for h in event.handlers]
    return Copy(pool, partition, "dead letters", dead_id, event, handlers, attempts=letter.attempts,
                state="dead letter", reason=letter.reason, traceback=letter.traceback,
                failed_ms=letter.failed_ms, stored_ms=_id_key(letter.entry_id)[0] if letter.entry_id else 0)
