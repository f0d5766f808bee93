"""Whether Redis keeps what we acknowledge: stripe-fanout answers 2xx once Redis holds the event.

"Held in Redis" is only as durable as the server's settings: without the
append-only file a crash loses what arrived since the last snapshot, and an
evicting maxmemory policy may drop stream entries under memory pressure.
We cannot fix the server's settings, but we can say so loudly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError


@dataclass(frozen=True)
class Durability:
    aof: bool | None
    maxmemory_policy: str | None
    warnings: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        return {"aof": self.aof, "maxmemory_policy": self.maxmemory_policy, "warnings": list(self.warnings)}


async def check_durability(redis: aioredis.Redis) -> Durability:
    """Read the persistence settings; managed Redis may forbid CONFIG, which leaves them unknown."""
    aof: bool | None
    try:
        info = await redis.info("persistence")
        aof = bool(int(info.get("aof_enabled", 0)))
    except RedisError:
        aof = None
    policy: str | None
    try:
        policy = (await redis.config_get("maxmemory-policy")).get("maxmemory-policy")
    except RedisError:
        policy = None
    warnings = []
    if aof is False:
        warnings.append("appendonly is off: a Redis crash loses events acknowledged since the last snapshot")
    if policy is not None and policy != "noeviction":
        warnings.append(f"maxmemory-policy is {policy}: Redis may evict stored events; use noeviction")
    return Durability(aof, policy, tuple(warnings))
