"""What the console reads: the pools at a glance, and one event's story across pools and handlers.

Everything comes from Redis (the figures of `fanout status`, the streams, the
pending lists, the completion ledgers, the dead letters), so the console can run
anywhere that reaches Redis and shows what every process did. Pages get plain
dataclasses; nothing here renders.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bus import defaults
from bus.envelope import Event
from bus.keys import Keys
from bus.routing import RoutingTable
from workers.deadletter import (
    F_ATTEMPTS,
    F_ENTRY_ID,
    F_ERRORS,
    F_FAILED_HANDLERS,
    F_FAILED_MS,
    F_REASON,
)
from workers.metrics import pool_partitions
from workers.status import COUNTERS, collect_status
from workers.streams import text

# A live consumer reads at least every BLOCK_MS; one silent this long is presumably gone.
LIVE_CONSUMER_IDLE_MS = 10_000
SCAN_PAGE = 500
INGRESS_COUNTERS = ("published", "duplicates", "unrouted")

# Finds, server-side, the entries of one page whose event id or object id is ARGV[3], so a
# lookup never copies the bodies of a whole stream to the console. Newest first.
# Returns {entries looked at, the last id looked at, matching ids}.
FIND_LUA = """
local rows = redis.call('XREVRANGE', KEYS[1], ARGV[1], '-', 'COUNT', ARGV[2])
local found = {}
for _, row in ipairs(rows) do
  local f = row[2]
  for j = 1, #f, 2 do
    if (f[j] == 'id' or f[j] == 'object_id') and f[j + 1] == ARGV[3] then
      found[#found + 1] = row[1]
      break
    end
  end
end
local last = ''
if #rows > 0 then last = rows[#rows][1] end
return {#rows, last, found}
"""


def redis_place(url: str) -> str:
    """Where Redis is, for a page: host, port and database, never the user name or password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


# --- the overview ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolRow:
    pool: str
    partition: str
    executor: str
    stream_length: int
    pending: int
    lag: int | None
    dead_letters: int
    oldest_pending_s: float | None
    consumers: int
    live_consumers: int
    counters: dict[str, int]
    # Per minute over the sampled window (None until two samples exist).
    rates: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Overview:
    pools: list[PoolRow]
    ingress: dict[str, int]
    ingress_rates: dict[str, float | None]
    status: dict[str, Any]  # the `fanout status --json` document the rows were built from
    window_s: float


async def counters(redis: aioredis.Redis, keys: Keys, pools: list[str]) -> dict[str, int]:
    """Every counter the rates are computed from, flat: "ingress.published", "pool.customer.processed"..."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.ingress_stats)
    for pool in pools:
        pipe.hgetall(keys.pool_stats(pool))
    replies: list[Any] = await pipe.execute()
    # A counter not written yet is 0, so that its rate reads 0 rather than unknown.
    out = {f"ingress.{name}": 0 for name in INGRESS_COUNTERS}
    out.update({f"ingress.{text(k)}": int(v) for k, v in replies[0].items()})
    for pool, reply in zip(pools, replies[1:], strict=True):
        out.update({f"pool.{pool}.{name}": 0 for name in COUNTERS})
        out.update({f"pool.{pool}.{text(k)}": int(v) for k, v in reply.items()})
    return out


async def overview(redis: aioredis.Redis, keys: Keys, table: RoutingTable,
                   rates: dict[str, float | None], window_s: float) -> Overview:
    from workers.rq.queue import queue_name

    pools = list(table.pools)
    rq_queues = {p: queue_name(keys.prefix, p) for p, c in table.pools.items() if c.executor == "rq"}
    status = await collect_status(redis, keys, pools, int(time.time() * 1000), rq_queues)
    ingress: Any = await redis.hgetall(keys.ingress_stats)
    rows = []
    for pool in pools:
        figures = status["pools"][pool]
        for partition, stream, dead in pool_partitions(keys, pool):
            rows.append(PoolRow(
                pool=pool, partition=partition, executor=table.pools[pool].executor,
                stream_length=figures["stream_length"], pending=figures["pending"], lag=figures["lag"],
                dead_letters=int(await redis.xlen(dead)), oldest_pending_s=figures["oldest_pending_s"],
                consumers=figures["consumers"],
                live_consumers=await live_consumers(redis, stream, keys.group(pool)),
                counters={name: figures[name] for name in ("processed", "failed", "retried", "dead")},
                rates={name: rates.get(f"pool.{pool}.{name}") for name in ("processed", "failed", "dead")},
            ))
    return Overview(
        pools=rows,
        ingress={name: int(ingress.get(name.encode(), 0)) for name in ("published", "duplicates", "unrouted")},
        ingress_rates={name: rates.get(f"ingress.{name}") for name in ("published", "unrouted")},
        status=status, window_s=window_s,
    )


async def live_consumers(redis: aioredis.Redis, stream: str, group: str) -> int:
    try:
        rows: Any = await redis.xinfo_consumers(stream, group)
    except ResponseError:  # no stream or group yet
        return 0
    return sum(1 for row in rows if int(row["idle"]) < LIVE_CONSUMER_IDLE_MS)


# --- one event ------------------------------------------------------------------------------------


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
    """Every copy of the events whose id or object id is `query`, newest first, in every pool.

    Each stream and dead-letter stream is scanned newest first, at most `scan_limit`
    entries each; a scan cut short is named in `cut`.
    """
    found = Lookup(query)
    for pool in pools:
        for partition, stream, dead in pool_partitions(keys, pool):
            stream_ids = await _scan(redis, stream, query, scan_limit, found)
            dead_ids = await _scan(redis, dead, query, scan_limit, found)
            if stream_ids:
                found.copies += await _stream_copies(redis, keys, pool, partition, stream, stream_ids, dead)
            for dead_id in dead_ids:
                rows: Any = await redis.xrange(dead, min=dead_id, max=dead_id)
                if rows:
                    found.copies.append(_dead_copy(pool, partition, dead_id, rows[0][1]))
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


async def _stream_copies(redis: aioredis.Redis, keys: Keys, pool: str, partition: str, stream: str,
                         ids: list[str], dead: str) -> list[Copy]:
    group = keys.group(pool)
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
            done = {text(h) for h in await redis.smembers(keys.ledger(pool, event.id))}
            attempts = int(pending[0]["times_delivered"])
            idle_s = int(pending[0]["time_since_delivered"]) / 1000
            note = f"attempt {attempts}, {idle_s:.0f} s since it started"
            handlers = [HandlerState(h, "done") if h in done else HandlerState(h, "pending", note)
                        for h in event.handlers]
            copies.append(Copy(pool, partition, "stream", entry_id, event, handlers, attempts, "pending"))
        elif _id_key(entry_id) > last_delivered:
            handlers = [HandlerState(h, "pending", "not read by the pool yet") for h in event.handlers]
            copies.append(Copy(pool, partition, "stream", entry_id, event, handlers, 0, "waiting"))
        else:
            failed = await _dead_handlers(redis, dead, entry_id)
            handlers = [HandlerState(h, "failed", "dead-lettered") if h in failed else HandlerState(h, "done")
                        for h in event.handlers]
            copies.append(Copy(pool, partition, "stream", entry_id, event, handlers, None,
                               "dead-lettered" if failed else "done"))
    return copies


async def _dead_handlers(redis: aioredis.Redis, dead: str, entry_id: str) -> set[str]:
    """The handlers that failed for a stream entry that went to the dead letters (empty if none)."""
    start = "+"
    # Dead letters are few and recent ones matter: look at the newest pages only.
    for _ in range(4):
        rows: Any = await redis.xrevrange(dead, max=start, count=SCAN_PAGE)
        for _dead_id, fields in rows:
            if text(fields.get(F_ENTRY_ID.encode())) == entry_id:
                return {h for h in text(fields.get(F_FAILED_HANDLERS.encode())).split(",") if h}
        if len(rows) < SCAN_PAGE:
            break
        start = "(" + text(rows[-1][0])
    return set()


def _dead_copy(pool: str, partition: str, dead_id: str, fields: Any) -> Copy:
    event = Event.from_entry(fields)
    errors: list[dict[str, str]] = []
    raw = fields.get(F_ERRORS.encode())
    if raw:
        try:
            errors = orjson.loads(raw)
        except orjson.JSONDecodeError:
            errors = []
    by_handler = {e.get("handler", ""): e for e in errors}
    failed = {h for h in text(fields.get(F_FAILED_HANDLERS.encode())).split(",") if h}
    handlers = [HandlerState(h, "failed", error=by_handler.get(h, {}).get("error", "")) if h in failed
                else HandlerState(h, "done") for h in event.handlers]
    first = errors[0] if errors else {}
    return Copy(pool, partition, "dead letters", dead_id, event, handlers,
                attempts=int(text(fields.get(F_ATTEMPTS.encode())) or 0), state="dead letter",
                reason=text(fields.get(F_REASON.encode())), traceback=first.get("traceback", ""),
                failed_ms=int(text(fields.get(F_FAILED_MS.encode())) or 0))
