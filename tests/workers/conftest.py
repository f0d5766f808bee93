"""Fixtures shared by the tests of workers/: a forward receiver, and a sync client for RQ tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import TEST_REDIS_URL
from tests.rq_support import delete_rq_keys
from tests.workers.forward.test_forward import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A forward destination on a local port (tests/workers/forward/test_forward.py), stopped after the test."""
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def sync_client(prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """A client on the test database; the RQ keys of this test are deleted afterwards.

    The job function reads the RQ worker's environment, as `rq worker` would: point it at the test.
    """
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    monkeypatch.setenv("FANOUT_PREFIX", prefix)
    monkeypatch.setenv("LOG_LEVEL", "warning")
    client = redis.Redis.from_url(TEST_REDIS_URL)
    yield client
    client.close()
    delete_rq_keys(prefix)
