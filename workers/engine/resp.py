"""Commands written as RESP by the engine itself, for its hottest calls on a single Redis.

redis-py encodes every argument of every command on its own, at ~1-2 us each. That
is noise for most commands, but not for the two the consumer sends per batch of
entries, whose size grows with the partitions: the XREADGROUP naming every stream
(reader.py: packed once, sent as is) and the flush's ack script (ack_script.py). Here
they are sent as prepared bytes on a connection of the client's own pool, and the
replies read by its parser. (ingress/wire.py does the same for publishes; the ingress
and the workers do not import each other.)
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError


def bulk(value: str | bytes | int) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def command(*parts: str | bytes | int) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(bulk(part) for part in parts)


class Packed:
    """Collects `eval(...)` calls as RESP commands (what workers/newest.py queue_writes queues)."""

    def __init__(self) -> None:
        self.commands: list[bytes] = []

    def eval(self, *parts: str | bytes | int) -> None:
        self.commands.append(command("EVAL", *parts))


async def exchange(redis: aioredis.Redis, commands: list[bytes]) -> list[Any]:
    """Send packed `commands` as one write on one connection of a single Redis; one reply each.

    An error reply is returned in its command's place. A connection left half-read (an error,
    a timeout, a cancellation) is closed, never handed back to the pool mid-reply.
    """
    pool = redis.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.send_packed_command(b"".join(commands))
        results: list[Any] = []
        for _ in commands:
            try:
                results.append(await connection.read_response())
            except ResponseError as err:
                results.append(err)
        return results
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)


def stream_entries(reply: Any) -> list[tuple[Any, list[tuple[Any, Any]]]]:
    """An XREAD/XREADGROUP reply, RESP2 (a list) or RESP3 (a map), as redis-py's parser returns it."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    return [(stream, [(entry_id, None if flat is None else dict(zip(flat[::2], flat[1::2], strict=True)))
                      for entry_id, flat in entries]) for stream, entries in pairs]
