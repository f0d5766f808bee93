"""A forward destination's circuit breaker and rate limit, kept in Redis so every worker process sees them.

The breaker is one small hash per destination (`Keys.breaker`):

* `window_ms`, `failures`, `successes`: the answers counted in the current
  window (`breaker_window_s`). A failure is a 5xx, 408, 429, timeout or
  connection error; a 4xx or 3xx says the event or the configuration is wrong,
  not that the destination is down, and does not count.
* `open_until_ms`: set when a window holds `breaker_failures` failures that are
  at least half of its answers. Until then every forward to it is Paused (the
  entry waits, without spending an attempt).
* `probe_until_ms`: once open_until has passed (half-open), one forward, the
  probe, is let through and holds this lease (its timeout plus a margin), so
  the other workers keep waiting. Its success deletes the hash (closed); its
  failure opens the breaker again for `breaker_open_s`. A probe whose worker
  died is replaced when the lease ends.

Timestamps come from the Redis server's clock (TIME), so processes agree.
A successful forward writes nothing while the hash does not exist, so a
healthy destination costs one script call per forward: `admit`.

The rate limit (`rate_per_s`) is a GCRA: one key holds the time the next
request may be sent; requests are spaced evenly, without a burst.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis

from bus.keys import Keys
from bus.routing import Destination

Verdict = Literal["closed", "probe", "open", "probing", "rate"]
# The probe's lease is its request timeout plus this.
PROBE_MARGIN_S = 2.0

_NOW_MS = """
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
-- Lua formats a large number as 1.7e+15 when passed to redis.call: write whole digits.
local function n(x) return string.format('%.0f', x) end
"""

# KEYS: breaker hash, rate key. ARGV: probe lease ms, rate interval µs (0: unlimited).
# Returns {verdict, wait ms, 1 if the breaker hash exists}.
ADMIT_SCRIPT = _NOW_MS + """
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until_ms') or '0')
local dirty = redis.call('EXISTS', KEYS[1])
local probe = false
if open_until > 0 then
  if now < open_until then return {'open', open_until - now, dirty} end
  local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until_ms') or '0')
  if now < probe_until then return {'probing', probe_until - now, dirty} end
  probe = true
end
local interval = tonumber(ARGV[2])
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat < now_us then tat = now_us end
  if tat > now_us then return {'rate', math.ceil((tat - now_us) / 1000), dirty} end
  redis.call('SET', KEYS[2], n(tat + interval), 'PX', n(math.ceil(interval / 1000) + 1000))
end
if probe then
  redis.call('HSET', KEYS[1], 'probe_until_ms', n(now + tonumber(ARGV[1])))
  return {'probe', 0, dirty}
end
return {'closed', 0, dirty}
"""

# KEYS: breaker hash. ARGV: 'ok' | 'fail', 1 if this forward was the probe, failures to open,
# window ms, open ms. Returns 1 when this failure opened (or reopened) the breaker, else 0.
RECORD_SCRIPT = _NOW_MS + """
local was_probe = ARGV[2] == '1'
local threshold, window, open_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if ARGV[1] == 'ok' then
  if was_probe then redis.call('DEL', KEYS[1]) return 0 end
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
end
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until_ms') or '0')
if open_until > 0 then
  if was_probe and ARGV[1] == 'fail' then
    redis.call('HSET', KEYS[1], 'open_until_ms', n(now + open_ms), 'probe_until_ms', 0)
    redis.call('HINCRBY', KEYS[1], 'trips', 1)
    redis.call('PEXPIRE', KEYS[1], n(open_ms + window + 60000))
    return 1
  end
  return 0  -- an answer to a request sent before the breaker opened: it is open already
end
local start = tonumber(redis.call('HGET', KEYS[1], 'window_ms') or '0')
if now - start > window then
  redis.call('HSET', KEYS[1], 'window_ms', n(now), 'failures', 0, 'successes', 0)
end
if ARGV[1] == 'ok' then
  redis.call('HINCRBY', KEYS[1], 'successes', 1)
  return 0
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local successes = tonumber(redis.call('HGET', KEYS[1], 'successes') or '0')
redis.call('HSET', KEYS[1], 'last_failure_ms', n(now))
redis.call('PEXPIRE', KEYS[1], n(window + open_ms + 60000))
if failures >= threshold and failures >= successes then
  redis.call('HSET', KEYS[1], 'open_until_ms', n(now + open_ms), 'probe_until_ms', 0)
  redis.call('HINCRBY', KEYS[1], 'trips', 1)
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    wait_ms: int
    # The breaker hash exists: a success must be recorded (it counts in the window or closes it).
    tracked: bool

    @property
    def allowed(self) -> bool:
        return self.verdict in ("closed", "probe")


class Breakers:
    """The breaker and rate-limit scripts of one deployment (key prefix)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._admit: Any = redis.register_script(ADMIT_SCRIPT)
        self._record: Any = redis.register_script(RECORD_SCRIPT)

    async def admit(self, destination: Destination) -> Admission:
        """May a forward to `destination` be sent now? Takes the rate token (and the probe) if so."""
        interval_us = 0 if not destination.rate_per_s else max(1, math.ceil(1_000_000 / destination.rate_per_s))
        lease_ms = int((destination.timeout_s + PROBE_MARGIN_S) * 1000)
        reply = await self._admit(keys=[self.keys.breaker(destination.name),
                                        self.keys.destination_rate(destination.name)],
                                  args=[lease_ms, interval_us])
        verdict = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        return Admission(verdict, int(reply[1]), bool(int(reply[2])))  # type: ignore[arg-type]

    async def record(self, destination: Destination, admission: Admission, *, ok: bool) -> bool:
        """Count a forward's outcome; True when this failure opened (or reopened) the breaker."""
        probe = admission.verdict == "probe"
        if ok and not probe and not admission.tracked:
            return False  # a healthy destination: nothing to count
        reply = await self._record(
            keys=[self.keys.breaker(destination.name)],
            args=["ok" if ok else "fail", "1" if probe else "0", destination.breaker_failures,
                  int(destination.breaker_window_s * 1000), int(destination.breaker_open_s * 1000)])
        return bool(int(reply))


async def breaker_states(redis: aioredis.Redis, keys: Keys, destinations: list[str]) -> dict[str, dict[str, Any]]:
    """Each destination's breaker as `fanout status` shows it (one HGETALL each, and TIME)."""
    seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    out: dict[str, dict[str, Any]] = {}
    for name in destinations:
        raw: Any = await redis.hgetall(keys.breaker(name))
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        open_until = int(fields.get("open_until_ms", 0) or 0)
        if open_until > now_ms:
            state = "open"
        elif open_until:
            state = "half-open"
        else:
            state = "closed"
        out[name] = {"state": state, "failures": int(fields.get("failures", 0) or 0),
                     "open_for_s": round(max(0, open_until - now_ms) / 1000, 1) if state == "open" else 0.0,
                     "trips": int(fields.get("trips", 0) or 0)}
    return out
