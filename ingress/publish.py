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
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('HINCRBY', KEYS[2], 'duplicates', 1)
  return 0
end
local base = {_SHARED + 1}
local n = #KEYS - 2
for i = 1, n do
  local stream = KEYS[2 + i]
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, ARGV[base + 2 * i - 1], '0', 'MKSTREAM')
  end
  redis.call('XADD', stream, '*', '{F_HANDLERS}', ARGV[base + 2 * i], {_FIELD_LIST})
end
redis.call('HINCRBY', KEYS[2], 'published', 1)
if n == 0 then redis.call('HINCRBY', KEYS[2], 'unrouted', 1) end
return 1
"""


@dataclass(frozen=True)
class PublishResult:
    duplicate: bool
    pools: tuple[str, ...]


Call = tuple[list[str], list[str | bytes | int], "asyncio.Future[int]"]


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

    async def publish(
        self, event: RoutingFields, match: RouteMatch, table_version: str, received_ms: int, body: bytes
    ) -> PublishResult:
        """Store the event once in every routed pool's stream; raise StoreUnavailable if Redis fails."""
        keys = [self._keys.seen(event.id), self._keys.ingress_stats]
        args: list[str | bytes | int] = [self._retention_s]
        args += shared_values(event, table_version, received_ms, body)
        for pool, handlers in match.targets:
            keys.append(self._keys.stream(pool))
            args += (self._keys.group(pool), HANDLER_SEPARATOR.join(handlers))
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush_soon)
        self._pending.append((keys, args, future))
        stored = await future
        if stored == 0:
            return PublishResult(duplicate=True, pools=())
        return PublishResult(duplicate=False, pools=match.pools)

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
                if any(isinstance(r, NoScriptError) for r in results):
                    # Redis restarted or its script cache was flushed: load once and retry.
                    await self._redis.script_load(PUBLISH_LUA)
                    results = await self._run(batch)
        except (RedisError, OSError, TimeoutError) as err:
            results = [err] * len(batch)
        finally:
            # Whatever happened (even cancellation at shutdown), every caller gets an answer.
            for i, (_, _, future) in enumerate(batch):
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
        packed = b"".join(_evalsha(self._sha, keys, args) for keys, args, _ in batch)
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


def _evalsha(sha: str, keys: list[str], args: list[str | bytes | int]) -> bytes:
    """One EVALSHA command in RESP."""
    parts = [b"*%d\r\n" % (3 + len(keys) + len(args)), _bulk("EVALSHA"), _bulk(sha), _bulk(len(keys))]
    parts += map(_bulk, keys)
    parts += map(_bulk, args)
    return b"".join(parts)
