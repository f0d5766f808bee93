"""Dedupe and fan-out as one Redis script, so a crash can never leave half a publish.

KEYS: the event's dedupe key, the ingress counters hash, then one stream per routed pool.
ARGV: retention_s, the number of shared field pairs, those pairs, then per stream the
consumer group name and the handler list for that pool.

A stream that does not exist yet is created together with its consumer group at
id 0, so a pool whose workers have never run still receives every event.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bus.envelope import F_HANDLERS, RoutingFields, entry_fields
from bus.errors import StoreUnavailable
from bus.keys import Keys
from bus.routing import RouteMatch

PUBLISH_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('HINCRBY', KEYS[2], 'duplicates', 1)
  return 0
end
local m = tonumber(ARGV[2])
local fields = {}
for i = 3, 2 + 2 * m do fields[#fields + 1] = ARGV[i] end
local base = 2 + 2 * m
local n = #KEYS - 2
for i = 1, n do
  local stream = KEYS[2 + i]
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, ARGV[base + 2 * i - 1], '0', 'MKSTREAM')
  end
  redis.call('XADD', stream, '*', 'handlers', ARGV[base + 2 * i], unpack(fields))
end
redis.call('HINCRBY', KEYS[2], 'published', 1)
if n == 0 then redis.call('HINCRBY', KEYS[2], 'unrouted', 1) end
return 1
"""


@dataclass(frozen=True)
class PublishResult:
    duplicate: bool
    pools: tuple[str, ...]


class Publisher:
    """Publishes verified events; the only writer on the ingress's hot path."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, retention_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self._retention_s = retention_s
        self._script = redis.register_script(PUBLISH_LUA)

    async def publish(
        self, event: RoutingFields, match: RouteMatch, table_version: str, received_ms: int, body: bytes
    ) -> PublishResult:
        """Store the event once in every routed pool's stream; raise StoreUnavailable if Redis fails."""
        shared = entry_fields(event, (), table_version, received_ms, body)
        del shared[F_HANDLERS]  # per pool, written by the script
        keys = [self._keys.seen(event.id), self._keys.ingress_stats]
        args: list[str | bytes | int] = [self._retention_s, len(shared)]
        for name, value in shared.items():
            args += (name, value)
        for pool, handlers in match.targets:
            keys.append(self._keys.stream(pool))
            args += (self._keys.group(pool), ",".join(handlers))
        try:
            stored = await self._script(keys=keys, args=args)
        except RedisError as err:
            raise StoreUnavailable(f"publish failed: {type(err).__name__}") from err
        if stored == 0:
            return PublishResult(duplicate=True, pools=())
        return PublishResult(duplicate=False, pools=match.pools)
