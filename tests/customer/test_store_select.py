"""Which store a worker process uses, and that the service-role key never shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bus.errors import ConfigError
from bus.settings import Secret
from tests.conftest import make_settings
from tests.customer.conftest import DoubleServer
from tests.customer.helpers import make_context
from workers.customer.store.select import describe, open_store, store_for
from workers.customer.store.sqlite_store import ORDERS_QUERY, SqliteStore
from workers.customer.store.supabase_store import SupabaseStore

pytestmark = pytest.mark.anyio
SERVICE_KEY = "sb-service-role-key-that-must-not-leak"


async def test_without_supabase_url_the_store_is_sqlite_at_fanout_sqlite_path(
        prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "db" / "orders.sqlite3"
    store = await open_store(make_settings(prefix, FANOUT_SQLITE_PATH=str(path)))
    try:
        assert isinstance(store, SqliteStore) and store.path == path
        assert path.exists()
    finally:
        await store.aclose()


async def test_supabase_url_without_service_role_key_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError):
        await open_store(make_settings(prefix, SUPABASE_URL="http://127.0.0.1:9"))


async def test_with_supabase_url_the_store_is_supabase_and_built_once_per_process(
        prefix: str, postgrest_double: DoubleServer) -> None:
    settings = make_settings(prefix, SUPABASE_URL=postgrest_double.url,
                             SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY)
    ctx = make_context(settings)
    with capture_logs() as logs:
        first = await store_for(ctx)
        second = await store_for(make_context(settings, resources=ctx.resources))
        await first.get_customer("cus_nobody")
    try:
        assert first is second and isinstance(first, SupabaseStore)
        assert SERVICE_KEY not in repr(first) and SERVICE_KEY not in repr(settings)
        assert SERVICE_KEY not in repr(logs)
        assert repr(settings.secret("SUPABASE_SERVICE_ROLE_KEY")) == repr(Secret("x"))
    finally:
        await ctx.resources.aclose()


def test_run_banner_names_the_sqlite_file_and_mail_dir_but_never_the_smtp_password(
        prefix: str) -> None:
    embedded = dict(describe(make_settings(prefix)))
    assert embedded == {"orders are stored in": "SQLite file var/fanout.sqlite3 (table orders)",
                        "  look at them with": f"sqlite3 var/fanout.sqlite3 '{ORDERS_QUERY}'",
                        "emails go to": ".eml files in var/mail/"}
    spaced = dict(describe(make_settings(prefix, FANOUT_SQLITE_PATH="my data/o.db")))
    assert spaced["  look at them with"].startswith("sqlite3 'my data/o.db' 'select ")
    hosted = describe(make_settings(prefix, SUPABASE_URL="https://p.supabase.co",
                                    SMTP_URL="smtp://u:hunter2@mail.test"))
    assert "hunter2" not in repr(hosted) and "Supabase at https://p.supabase.co" in repr(hosted)


@pytest.mark.parametrize("key", [None, "", "   "])
async def test_supabase_url_without_service_role_key_fails_handlers_permanently_naming_it(
        prefix: str, key: str | None) -> None:
    from bus.errors import PermanentFailure
    from tests.customer.helpers import checkout_ids, make_event
    from workers.customer.handlers import orders

    env = {"SUPABASE_URL": "http://127.0.0.1:9"}
    if key is not None:
        env["SUPABASE_SERVICE_ROLE_KEY"] = key
    ctx = make_context(make_settings(prefix, **env))
    event = make_event("checkout.session.completed", ids=checkout_ids())
    with pytest.raises(PermanentFailure) as raised:  # dead-lettered at once, not retried
        await orders.create_from_checkout(event, ctx)
    assert isinstance(raised.value, ConfigError)
    assert "SUPABASE_SERVICE_ROLE_KEY" in str(raised.value)


def test_check_configuration_accepts_good_settings_and_names_the_missing_key(
        prefix: str, tmp_path: Path) -> None:
    from bus.errors import PermanentFailure
    from workers.customer.store.select import check_configuration

    check_configuration(make_settings(prefix, FANOUT_SQLITE_PATH=str(tmp_path / "x.sqlite3")))
    check_configuration(make_settings(prefix, SUPABASE_URL="http://127.0.0.1:9",
                                      SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY,
                                      SMTP_URL="smtp://u:p%23w@127.0.0.1:25"))
    with pytest.raises(ConfigError) as raised:
        check_configuration(make_settings(prefix, SUPABASE_URL="http://127.0.0.1:9"))
    assert isinstance(raised.value, PermanentFailure)
    assert "SUPABASE_SERVICE_ROLE_KEY" in str(raised.value)


def test_check_configuration_rejects_a_bad_smtp_url_without_quoting_it(prefix: str) -> None:
    from workers.customer.store.select import check_configuration

    with pytest.raises(ConfigError) as raised:
        check_configuration(make_settings(prefix, SMTP_URL="smtp://u:hunter#42@127.0.0.1:25"))
    assert "hunter" not in str(raised.value) and "SMTP_URL" in str(raised.value)
