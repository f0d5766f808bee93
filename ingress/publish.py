"""Dedupe and fan-out as one Redis script, so a crash can never leave half a publish.

KEYS: the event's dedupe key, the ingress counters hash, then one stream per routed pool.
ARGV: retention_s, the values of envelope.SHARED_FIELDS in order, then per stream the
consumer group name and the handler list for that pool.

A stream that does not exist yet is created together with its consumer group at
id 0, so a pool whose workers have never run still receives every event.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from bus.envelope import F_HANDLERS, HANDLER_SEPARATOR, SHARED_FIELDS, RoutingFields, shared_values
from bus.errors import StoreUnavailable
from bus.keys import Keys
from bus.routing import RouteMatch

_SHARED = len(SHARED_FIELDS)
# The field names are written into the script, so each call sends only the values.
_FIELD_LIST = ", ".join(f"'{name}', ARGV[{i + 2}]" for i, name in enumerate(SHARED_FIELDS))

PUBLISH_LUA = f"""
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'duplicates', 1)
  return 0
end
local base = {_SHARED + 1}
local n = #KEYS - 2
-- Check every target before writing anything: Redis does not undo a script
-- that fails halfway, and a half publish must never be marked as seen.
local missing = {{}}
for i = 1, n do
  local kind = redis.call('TYPE', KEYS[2 + i])['ok']
  if kind == 'none' then
    missing[i] = true
  elseif kind ~= 'stream' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[2 + i] .. ' is a ' .. kind .. ', not a stream')
  end
end
for i = 1, n do
  local stream = KEYS[2 + i]
  if missing[i] then
    redis.call('XGROUP', 'CREATE', stream, ARGV[base + 2 * i - 1], '0', 'MKSTREAM')
  end
  redis.call('XADD', stream, '*', '{F_HANDLERS}', ARGV[base + 2 * i], {_FIELD_LIST})
end
-- Marked seen last, so nothing before this line can leave an event deduped but unpublished.
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
redis.call('HINCRBY', KEYS[2], 'published', 1)
if n == 0 then redis.call('HINCRBY', KEYS[2], 'unrouted', 1) end
return 1
"""


@dataclass(frozen=True)
class PublishResult:
    duplicate: bool
    pools: tuple[str, ...]


# One publish: its EVALSHA command already in RESP, and the caller's future.
Call = tuple[bytes, "asyncio.Future[int]"]
Targets = tuple[tuple[str, tuple[str, ...]], ...]


class Publisher:
    """Publishes verified events; the only writer on the ingress's hot path.

    Every publish requested during one event-loop tick goes to Redis in one
    pipeline: one connection checkout, one write and one read for the whole
    batch instead of per request. Each script call stays atomic on its own.
    """

    def __init__(self, redis: aioredis.Redis, keys: Keys, retention_s: int, budget_s: float) -> None:
        self._redis = redis
        self._keys = keys
        self._retention_s = retention_s
        self._budget_s = budget_s
        self._sha = hashlib.sha1(PUBLISH_LUA.encode()).hexdigest()
        self._pending: list[Call] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._stats_and_retention = (_bulk(keys.ingress_stats), _bulk(retention_s))
        # The parts of a command fixed by its route, packed once per distinct route.
        self._route_parts: dict[Targets, tuple[bytes, bytes, bytes]] = {}

    async def publish(
        self, event: RoutingFields, match: RouteMatch, table_version: str, body: bytes
    ) -> PublishResult:
        """Store the event once in every routed pool's stream; raise StoreUnavailable if Redis fails."""
        head, streams, per_pool = self._route_parts.get(match.targets) or self._pack_route(match.targets)
        stats, retention = self._stats_and_retention
        command = b"".join((
            head, _bulk(self._keys.seen(event.id)), stats, streams, retention,
            *map(_bulk, shared_values(event, table_version, body)), per_pool,
        ))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush_soon)
        self._pending.append((command, future))
        stored = await future
        if stored == 0:
            return PublishResult(duplicate=True, pools=())
        return PublishResult(duplicate=False, pools=match.pools)

    def _pack_route(self, targets: Targets) -> tuple[bytes, bytes, bytes]:
        """EVALSHA, the key count and the per-pool keys and arguments of one route, in RESP."""
        n_keys = 2 + len(targets)
        n_args = 1 + len(SHARED_FIELDS) + 2 * len(targets)
        head = b"*%d\r\n" % (3 + n_keys + n_args) + _bulk("EVALSHA") + _bulk(self._sha) + _bulk(n_keys)
        streams = b"".join(_bulk(self._keys.stream(pool)) for pool, _ in targets)
        per_pool = b"".join(
            _bulk(self._keys.group(pool)) + _bulk(HANDLER_SEPARATOR.join(handlers))
            for pool, handlers in targets
        )
        if len(self._route_parts) < 1024:  # routes are few; the bound is only a guard
            self._route_parts[targets] = (head, streams, per_pool)
        return head, streams, per_pool

    def _flush_soon(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[Call]) -> None:
        results: list[Any] = []
        try:
            async with asyncio.timeout(self._budget_s):
                results = await self._run(batch)
                unloaded = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if unloaded:
                    # Redis restarted or its script cache was flushed: load it, then re-run only
                    # the calls that did not run (the others may have stored their event already).
                    await self._redis.script_load(PUBLISH_LUA)
                    retried = await self._run([batch[i] for i in unloaded])
                    for i, result in zip(unloaded, retried, strict=True):
                        results[i] = result
        except (RedisError, OSError, TimeoutError) as err:
            results = [err] * len(batch)
        finally:
            # Whatever happened (even cancellation at shutdown), every caller gets an answer.
            for i, (_, future) in enumerate(batch):
                if future.done():  # the caller went away already
                    continue
                result = results[i] if i < len(results) else RedisError("publish interrupted")
                if isinstance(result, Exception):
                    failure = StoreUnavailable(f"publish failed: {type(result).__name__}")
                    failure.__cause__ = result
                    future.set_exception(failure)
                else:
                    future.set_result(int(result))

    async def _run(self, batch: list[Call]) -> list[Any]:
        """Send the batch as one write on one connection and read one reply per call.

        This is redis-py's pipeline minus its generic argument encoding, which
        measured as the largest single cost of a publish (see bench/bench_ingress.py).
        """
        packed = b"".join(command for command, _ in batch)
        pool = self._redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(packed, check_health=False)
            results: list[Any] = []
            for _ in batch:
                try:
                    results.append(await connection.read_response())
                except ResponseError as err:  # an error reply for one call; the rest still follow
                    results.append(err)
        except BaseException:
            # A half-read connection must not go back to the pool in use.
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
        return results


def _bulk(value: str | bytes | int) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)
