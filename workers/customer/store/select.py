"""Pick the store once per worker process: Supabase when SUPABASE_URL is set, else SQLite."""

from __future__ import annotations

import shlex

from bus.errors import ConfigError, PermanentFailure
from bus.settings import Secret, Settings
from workers.context import Context
from workers.customer.store.base import Store
from workers.customer.store.sqlite_store import DEFAULT_PATH, ORDERS_QUERY, SqliteStore

RESOURCE_NAME = "customer_store"


class StoreConfigError(ConfigError, PermanentFailure):
    """The store's settings are unusable: retrying cannot help. Names variables, never values."""


def _service_role_key(settings: Settings) -> Secret:
    key = settings.secret("SUPABASE_SERVICE_ROLE_KEY")
    if key is None or not key.reveal().strip():
        raise StoreConfigError("SUPABASE_URL is set but SUPABASE_SERVICE_ROLE_KEY is not "
                               "(set it to the project's service-role key)")
    return key


def check_configuration(settings: Settings) -> None:
    """Raise ConfigError (also a PermanentFailure) if the customer pool cannot run as configured.

    For a worker to call at start: SUPABASE_URL needs SUPABASE_SERVICE_ROLE_KEY,
    and SMTP_URL must parse. Messages name the variable, never its value.
    """
    if settings.env.get("SUPABASE_URL", "").strip():
        _service_role_key(settings)
    from workers.customer.mail.transport import transport_from_settings

    transport_from_settings(settings)  # SMTP_URL: SmtpUrlError, which quotes none of it


async def open_store(settings: Settings) -> Store:
    """The configured store, opened: SupabaseStore or the embedded SqliteStore."""
    url = settings.env.get("SUPABASE_URL", "").strip()
    if url:
        key = _service_role_key(settings)
        from workers.customer.store.supabase_store import SupabaseStore

        return await SupabaseStore.open(url, key, settings)
    return await SqliteStore.open(settings.env.get("FANOUT_SQLITE_PATH") or DEFAULT_PATH)


async def _close(store: Store) -> None:
    await store.aclose()


async def store_for(ctx: Context) -> Store:
    """The process-wide store, built on first use and closed with ctx.resources."""

    async def factory() -> Store:
        store = await open_store(ctx.settings)
        ctx.log.info("customer store opened", store=store.name)
        return store

    return await ctx.resources.get(RESOURCE_NAME, factory, _close)


def describe(settings: Settings) -> list[tuple[str, str]]:
    """Where the customer pool writes, for `fanout run`'s banner: (label, place) pairs."""
    from workers.customer.mail.transport import DEFAULT_MAIL_DIR

    url = settings.env.get("SUPABASE_URL", "").strip()
    sqlite_path = settings.env.get("FANOUT_SQLITE_PATH") or DEFAULT_PATH
    places = [("orders are stored in", f"Supabase at {url}")] if url else [
        ("orders are stored in", f"SQLite file {sqlite_path} (table orders)"),
        ("  look at them with", f"sqlite3 {shlex.quote(sqlite_path)} {shlex.quote(ORDERS_QUERY)}"),
    ]
    mail_dir = settings.env.get("FANOUT_MAIL_DIR") or DEFAULT_MAIL_DIR
    # SMTP_URL may carry a password: say only that it is used.
    mail = "SMTP (SMTP_URL)" if settings.env.get("SMTP_URL") else f".eml files in {mail_dir}/"
    return [*places, ("emails go to", mail)]
