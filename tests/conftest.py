"""Shared fixtures.

Integration tests use the real Redis at TEST_REDIS_URL (default database 13 of
the local server) under a key prefix unique to the test, and delete only the
keys of that prefix afterwards: several test runs can share one server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
import structlog

from bus.keys import Keys
from bus.settings import Settings, parse_secrets

from .redis_cluster import LocalCluster

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
TEST_SECRET = "whsec_test_secret_for_the_suite"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """CLI entry points configure structlog globally; undo it so tests stay independent."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis_url() -> str:
    return TEST_REDIS_URL


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix owned by this test; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        keys = list(client.scan_iter(match=Keys(name).pattern(), count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
async def aredis() -> AsyncIterator[aioredis.Redis]:
    """An async client on the test database; closed afterwards."""
    client = aioredis.Redis.from_url(TEST_REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def sredis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    yield client
    client.close()


def make_settings(prefix: str, *, routing_file: Path | None = None, secrets: str = TEST_SECRET,
                  redis_url: str = TEST_REDIS_URL, **env: str) -> Settings:
    environ = {
        "REDIS_URL": redis_url,
        "STRIPE_WEBHOOK_SECRET": secrets,
        "FANOUT_PREFIX": prefix,
        "ROUTING_FILE": str(routing_file or REPO / "routing.yaml"),
        **env,
    }
    settings = Settings.from_env(environ)
    assert settings.webhook_secrets == parse_secrets(secrets)
    return settings


@pytest.fixture
def settings(prefix: str) -> Settings:
    return make_settings(prefix)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A real local Redis Cluster (3 masters, 3 replicas) for the whole session; killed afterwards."""
    try:
        cluster = LocalCluster.start()
    except RuntimeError as err:
        if "are needed" in str(err):
            pytest.skip(str(err))
        raise
    with cluster:
        yield cluster
