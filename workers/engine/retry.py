"""Retry backoff: exponential, capped, with jitter that is stable for one (entry, attempt).

The jitter comes from a hash of the entry id and the attempt number rather than
from a random draw, so every consumer that looks at a pending entry agrees on
when it becomes due, and a reclaim pass that runs twice does not claim early.
"""

from __future__ import annotations

import zlib

from bus.routing import PoolConfig


def backoff_s(attempts_done: int, base_s: float, max_s: float, *, key: str = "") -> float:
    """Seconds to wait after `attempts_done` runs: half the capped exponential, plus jitter up to half."""
    if attempts_done <= 0:
        return 0.0
    ceiling = min(max_s, base_s * 2.0 ** min(attempts_done - 1, 62))
    jitter = (zlib.crc32(f"{key}:{attempts_done}".encode()) & 0xFFFF) / 0xFFFF
    return ceiling / 2.0 + ceiling / 2.0 * jitter


def pool_backoff_ms(pool: PoolConfig, attempts_done: int, entry_id: str) -> int:
    """The idle time, in ms, after which a failed entry of `pool` is due for its next run."""
    return int(1000 * backoff_s(attempts_done, pool.backoff_base_s, pool.backoff_max_s, key=entry_id))


def peer_claim_idle_ms(pool: PoolConfig, attempts_done: int, entry_id: str, margin_s: float) -> int:
    """The idle time after which a peer's pending entry is taken over: its owner is presumed gone.

    A live owner either acks within `timeout_s` or retries the entry itself once its
    backoff is over, which resets the idle time; only a dead owner lets it grow past this.
    """
    return int(1000 * (pool.timeout_s + margin_s)) + pool_backoff_ms(pool, attempts_done, entry_id)
