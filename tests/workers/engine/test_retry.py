"""Backoff: exponential from the pool's base, capped, jittered within the upper half, stable per entry."""

from __future__ import annotations

from bus.routing import PoolConfig
from workers.engine.retry import backoff_s, peer_claim_idle_ms, pool_backoff_ms


def test_backoff_doubles_per_attempt_within_jitter_bounds() -> None:
    for attempts in range(1, 8):
        ceiling = 1.0 * 2 ** (attempts - 1)
        value = backoff_s(attempts, 1.0, 1000.0, key="1-0")
        assert ceiling / 2 <= value <= ceiling


def test_backoff_is_capped_by_the_pool_maximum() -> None:
    assert all(backoff_s(n, 1.0, 30.0, key=str(n)) <= 30.0 for n in range(1, 200))


def test_backoff_starts_near_one_second_by_default() -> None:
    pool = PoolConfig(name="p")
    assert 500 <= pool_backoff_ms(pool, 1, "1-0") <= 1000


def test_backoff_jitter_is_stable_for_an_entry_and_differs_between_entries() -> None:
    assert backoff_s(3, 1.0, 60.0, key="5-0") == backoff_s(3, 1.0, 60.0, key="5-0")
    assert len({backoff_s(3, 1.0, 60.0, key=f"{i}-0") for i in range(20)}) > 10


def test_a_peers_entry_is_claimed_only_after_the_timeout_and_margin() -> None:
    pool = PoolConfig(name="p", timeout_s=30.0)
    assert peer_claim_idle_ms(pool, 1, "1-0", margin_s=2.0) >= 32_000 + pool_backoff_ms(pool, 1, "1-0") - 1
