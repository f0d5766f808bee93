"""Fixtures for the customer pool: both stores, the PostgREST test double, a loopback SMTP server.

The `store` fixture is parametrized: every test that takes it runs once on
the embedded SqliteStore and once on SupabaseStore, whose supabase-py client
talks HTTP to the PostgREST test double (tests/postgrest_double.py) backed by
the real PostgreSQL in a schema private to this test session.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bus.settings import Secret, Settings
from tests.conftest import REPO, make_settings
from tests.customer.helpers import customer_pool_env, make_context
from tests.postgrest_double import PostgrestDouble, apply_migrations, drop_schema, serve
from workers.context import Context
from workers.customer.store.base import Store
from workers.customer.store.select import RESOURCE_NAME
from workers.customer.store.sqlite_store import SqliteStore
from workers.customer.store.supabase_store import SupabaseStore
from workers.resources import Resources

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
MIGRATIONS = sorted((REPO / "supabase" / "migrations").glob("*.sql"))
TEST_SERVICE_KEY = "test-service-role-key"


async def _postgres_answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@dataclass
class DoubleServer:
    url: str
    double: PostgrestDouble
    dsn: str
    schema: str


@pytest.fixture(scope="session")
def postgrest_double() -> Iterator[DoubleServer]:
    """The PostgREST test double on a fresh schema with the migrations applied; dropped after."""
    if not asyncio.run(_postgres_answers(TEST_DATABASE_URL)):
        pytest.skip(f"no PostgreSQL at {TEST_DATABASE_URL}")
    schema = f"fanout_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(apply_migrations(TEST_DATABASE_URL, schema,
                                 [p.read_text() for p in MIGRATIONS]))
    try:
        double = PostgrestDouble(TEST_DATABASE_URL, schema)
        with serve(double) as url:
            yield DoubleServer(url, double, TEST_DATABASE_URL, schema)
    finally:
        asyncio.run(drop_schema(TEST_DATABASE_URL, schema))


@pytest.fixture(params=["sqlite", "supabase"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def store_env(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment that makes open_store() pick this test's store."""
    if store_kind == "supabase":
        server: DoubleServer = request.getfixturevalue("postgrest_double")
        return customer_pool_env(supabase_url=server.url, sqlite_path=None,
                                 mail_dir=str(tmp_path / "mail"))
    return customer_pool_env(supabase_url=None, sqlite_path=str(tmp_path / "fanout.sqlite3"),
                             mail_dir=str(tmp_path / "mail"))


@pytest.fixture
async def store(store_kind: str, store_env: dict[str, str]) -> AsyncIterator[Store]:
    opened: Store
    if store_kind == "supabase":
        opened = await SupabaseStore.open(store_env["SUPABASE_URL"], Secret(TEST_SERVICE_KEY))
    else:
        opened = await SqliteStore.open(store_env["FANOUT_SQLITE_PATH"])
    yield opened
    await opened.aclose()


@pytest.fixture
def pool_settings(prefix: str, store_env: dict[str, str]) -> Settings:
    return make_settings(prefix, **store_env)


@dataclass
class ContextFactory:
    """Builds handler contexts that share one Resources (one store, one mail transport)."""

    settings: Settings
    store: Store
    resources: Resources = field(default_factory=Resources)

    async def __call__(self, handler: str = "test", attempt: int = 1, **_: Any) -> Context:
        async def existing() -> Store:
            return self.store

        await self.resources.get(RESOURCE_NAME, existing)
        return make_context(self.settings, handler=handler, attempt=attempt,
                            resources=self.resources)


@pytest.fixture
async def make_ctx(pool_settings: Settings, store: Store) -> AsyncIterator[ContextFactory]:
    factory = ContextFactory(pool_settings, store)
    yield factory
    # The store fixture closes the store; only drop the cached references here.
    factory.resources._items.clear()


@pytest.fixture
def mail_dir(store_env: dict[str, str]) -> Path:
    return Path(store_env["FANOUT_MAIL_DIR"])
