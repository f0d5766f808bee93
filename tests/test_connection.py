"""bus.connection's helpers for people: where a URL points and whether Redis answers, never the password."""

from __future__ import annotations

import pytest

from bus import connection
from bus.connection import reachability, redact_url, redis_location

from .conftest import TEST_REDIS_URL

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("url", "where", "redacted"), [
    ("redis://:hunter2@10.0.0.5:6380/2", "10.0.0.5:6380", "redis://:****@10.0.0.5:6380/2"),
    ("rediss://app:hunter2@cache.example.com/0", "cache.example.com:6379", "rediss://app:****@cache.example.com/0"),
    ("redis://127.0.0.1", "127.0.0.1:6379", "redis://127.0.0.1"),
    ("unix:///run/redis.sock", "/run/redis.sock", "unix:///run/redis.sock"),
    ("localhost:6379", "(not a redis:// URL)", "localhost:6379"),
])
def test_where_a_url_points_and_its_redacted_form_never_show_the_password(url: str, where: str,
                                                                          redacted: str) -> None:
    assert redis_location(url) == where
    assert redact_url(url) == redacted


async def test_reachability_says_why_redis_does_not_answer() -> None:
    assert (await reachability(TEST_REDIS_URL)).ok
    refused = await reachability("redis://:hunter2@127.0.0.1:1/0")
    assert (refused.ok, refused.where, refused.error) == (False, "127.0.0.1:1", "ConnectionError: Connection refused")


async def test_a_database_number_on_a_cluster_is_a_reason_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "is_cluster_url", lambda url: True)
    found = await reachability("redis://127.0.0.1:6379/13")
    assert not found.ok and found.error is not None
    assert found.error.startswith("ConfigError: REDIS_URL names database 13, but a Redis Cluster only has database 0")
