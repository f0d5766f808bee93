"""The lease on one stream of an ordered pool: at most one consumer reads and starts its entries.

A lease is a Redis key in the stream's slot (`{tag}:lease:<pool>`) holding the holder's
token, set with SET NX PX and renewed (PEXPIRE only while it still holds our token) every
LEASE_RENEW_S. Fencing, without trusting clocks across machines:

* reads are fenced in Redis: an ordered consumer reads with a script that runs XREADGROUP
  only while the lease key holds its token, so no entry is ever delivered to a consumer
  that does not hold the lease;
* starts are fenced locally: the holder notes `valid_until = (monotonic time just before it
  sent the SET or PEXPIRE) + ttl`, which is never later than when Redis lets the key expire.
  It starts an entry only while `valid_until - now > timeout_s + START_SLACK_S`, so every run
  it starts has ended (handlers are cut at timeout_s) before the key can expire;
* a new holder gets the key only once it has expired in Redis, so after the old holder's
  last run; it then adopts every pending entry of the stream (workers/engine/ordering.py)
  before it reads or starts any.

The TTL is timeout_s + LEASE_SLACK_S, so a dead holder's streams are taken over within
timeout_s + LEASE_SLACK_S + LEASE_RENEW_S. A sync handler that ignores its timeout keeps its
thread: an ordered pool should use async handlers (or sync ones that honour timeouts).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from bus.resize import boundary_key

# Renew (or try to take) leases this often.
LEASE_RENEW_S = 1.0
# The lease outlives the pool's timeout_s by this much: renewals have that long to get through.
LEASE_SLACK_S = 4.0
# The longest a start may take from the lease check to the handler call (a Redis round trip or
# two: the completion ledger, the stale guard).
START_SLACK_S = 1.0

RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: lease, stream, boundary. ARGV: token, group, consumer, count, the boundary known passed ("").
# Nothing (false) without the lease; with an unpassed boundary, no entry beyond it (workers/engine/barrier.py).
READ_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local count = ARGV[4]
local boundary = redis.call('GET', KEYS[3])
if boundary and boundary ~= ARGV[5] then
  local last = '0-0'
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
    for i = 1, #group, 2 do
      if group[i] == 'name' and group[i + 1] ~= ARGV[2] then break end
      if group[i] == 'last-delivered-id' then last = group[i + 1] end
    end
  end
  count = #redis.call('XRANGE', KEYS[2], '(' .. last, boundary, 'COUNT', count)
  if count == 0 then return {} end
end
return redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', count, 'STREAMS', KEYS[2], '>')
"""


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    """[k, v, k, v, ...] as a dict, as redis-py pairs XREADGROUP's fields (a third cheaper than slicing)."""
    items = iter(flat)
    return dict(zip(items, items, strict=False))


def lease_key(stream: str, pool: str) -> str:
    """The lease of `stream`, in its slot."""
    return f"{stream[:stream.index('}') + 1]}:lease:{pool}"


class StreamLease:
    def __init__(self, redis: aioredis.Redis, stream: str, pool: str, consumer: str, ttl_s: float,
                 clock: Any = time.monotonic) -> None:
        self.redis = redis
        self.stream = stream
        self.key = lease_key(stream, pool)
        self.boundary = boundary_key(stream)
        self.token = f"{consumer}:{uuid.uuid4().hex[:8]}"
        self.ttl_ms = int(ttl_s * 1000)
        self.clock = clock
        self.valid_until = 0.0
        self.held = False

    async def keep(self) -> bool:
        """Renew the lease, or take it if free; whether we hold it now."""
        sent = self.clock()
        if self.held:
            ok = bool(await self.redis.eval(RENEW_SCRIPT, 1, self.key, self.token, self.ttl_ms))
        else:
            ok = bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))
        self.held = ok
        self.valid_until = sent + self.ttl_ms / 1000 if ok else 0.0
        return ok

    def may_start(self, timeout_s: float) -> bool:
        """Whether a run started now ends (timeout_s) before the lease could expire in Redis."""
        return self.held and self.valid_until - self.clock() > timeout_s + START_SLACK_S

    async def read(self, group: str, consumer: str, count: int, passed: str = "") -> Any:
        """XREADGROUP of new entries, only while Redis says we hold the lease; [] otherwise. Not beyond
        the stream's resize boundary unless it is `passed` (workers/engine/barrier.py)."""
        reply: Any = await self.redis.eval(READ_SCRIPT, 3, self.key, self.stream, self.boundary, self.token, group,
                                           consumer, count, passed)
        if not reply:
            return []
        # The script returns the stream key with its entries: [[stream, [[id, [k, v, ...]], ...]]]
        return [(stream, [(entry_id, _pairs(flat)) for entry_id, flat in rows]) for stream, rows in reply]

    async def release(self) -> None:
        """Give the lease up (stopping), so a peer takes it at once."""
        if self.held:
            self.held = False
            self.valid_until = 0.0
            await self.redis.eval(RELEASE_SCRIPT, 1, self.key, self.token)
