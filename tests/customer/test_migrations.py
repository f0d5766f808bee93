"""supabase/migrations apply cleanly with psql to the local PostgreSQL (twice: they are re-runnable)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from tests.customer.conftest import MIGRATIONS, TEST_DATABASE_URL


def psql(*args: str, search_path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if search_path:
        env["PGOPTIONS"] = f"-c search_path={search_path}"
    return subprocess.run(["psql", TEST_DATABASE_URL, "-v", "ON_ERROR_STOP=1", "-q", *args],
                          capture_output=True, text=True, env=env, timeout=30, check=False)


@pytest.mark.postgres
def test_migrations_apply_cleanly_with_psql_and_create_the_four_tables() -> None:
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    if psql("-c", "select 1").returncode != 0:
        pytest.skip(f"no PostgreSQL at {TEST_DATABASE_URL}")
    schema = f"fanout_mig_{uuid.uuid4().hex[:10]}"
    assert psql("-c", f"create schema {schema}").returncode == 0
    try:
        for _ in range(2):
            for path in MIGRATIONS:
                done = psql("-f", str(path), search_path=schema)
                assert done.returncode == 0, done.stderr
        tables = psql("-At", "-c", "select table_name from information_schema.tables "
                      f"where table_schema = '{schema}' order by 1")
        assert tables.stdout.split() == ["customer_events", "customers", "email_outbox", "orders"]
    finally:
        psql("-c", f"drop schema if exists {schema} cascade")
