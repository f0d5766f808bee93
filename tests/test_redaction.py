"""Secrets and personal data never reach logs or dead letters, whatever an upstream echoes back."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from bus.keys import Keys
from bus.redaction import REDACTED, redact_secrets
from bus.settings import Settings
from tests.conftest import REPO, make_settings
from tests.postgrest_double import EchoingPostgrest, serve
from tests.support import load, publish, start_worker, write_routing
from workers.ops.deadletter import list_dead
from workers.supervision.runner import run_pool

SERVICE_KEY = "service-role-key-that-must-never-leak-4f2a"
SETTINGS = Settings.from_env({
    "STRIPE_WEBHOOK_SECRET": "whsec_one_rotating,whsec_two_rotating",
    "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
    "STRIPE_API_KEY": "plainapikeyvalue9",
    "PARTNER_TOKEN": "partner-token-value",
    "DB_PASSWORD": "hunter2hunter2",
    "SMTP_URL": "smtp://mailer:p%40ss-w0rd!@mail.example:587",
    "BACKEND_SIGNING": "destination-signing-value",  # a destination's secret_env, by no suffix rule
    "SUPABASE_URL": "https://project.supabase.co",
})


@pytest.mark.parametrize("secret", [
    "whsec_one_rotating", "whsec_two_rotating", SERVICE_KEY, "plainapikeyvalue9", "partner-token-value",
    "hunter2hunter2", "p@ss-w0rd!", "p%40ss-w0rd!",
])
def test_every_configured_secret_is_stripped(secret: str) -> None:
    text = f"upstream said: got {secret} in your request"
    assert redact_secrets(text, SETTINGS) == f"upstream said: got {REDACTED} in your request"


def test_a_destination_secret_is_stripped_when_its_variable_is_named() -> None:
    text = "bad signature with destination-signing-value"
    assert "destination-signing-value" in redact_secrets(text, SETTINGS)
    assert redact_secrets(text, SETTINGS, ["BACKEND_SIGNING"]) == f"bad signature with {REDACTED}"


@pytest.mark.parametrize("token", [
    "Bearer abc.def-ghi_jkl", "bearer xyz123", "whsec_unconfigured123", "sk_live_51Habc", "sk_test_51Habc",
    "rk_live_51Habc", "rk_test_abc", "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZSJ9.c2lnbmF0dXJl",
])
def test_credential_shaped_tokens_are_stripped_even_unconfigured(token: str) -> None:
    for settings in (SETTINGS, None):
        out = redact_secrets(f"header: {token} end", settings)
        assert token.split()[-1] not in out and REDACTED in out and out.endswith(" end")


def test_what_is_not_secret_stays_readable() -> None:
    text = "23505: duplicate key value violates unique constraint at https://project.supabase.co"
    assert redact_secrets(text, SETTINGS) == text


def test_the_log_pipeline_strips_secrets_from_structlog_and_stdlib_lines_on_real_stderr(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import logging, structlog
        from bus.logs import configure_logging
        from bus.settings import Settings
        configure_logging("debug", json=True, settings=Settings.from_env())
        structlog.get_logger("fanout.test").error("upstream.failed", error="echo: apikey={SERVICE_KEY}")
        logging.getLogger("somelib").warning("token %s", "{SERVICE_KEY}")
        logging.getLogger("aiosqlite").debug("executing INSERT ... ('jane@example.com',)")
        logging.getLogger("httpcore.http11").debug("send_request_headers apikey={SERVICE_KEY}")
        structlog.get_logger("fanout.test").info("still.logging")
    """)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert SERVICE_KEY not in done.stderr and "jane@example.com" not in done.stderr
    assert "upstream.failed" in done.stderr and "somelib WARNING token [redacted]" in done.stderr
    assert "still.logging" in done.stderr  # debug is on for our own lines


CUSTOMER_ROUTING = """
pools:
  customer: {concurrency: 4, max_attempts: 2, timeout_s: 5, backoff_base_s: 0.02, backoff_max_s: 0.05}
routes:
  customer.created: {customer: [profiles.upsert]}
"""


@pytest.mark.anyio
async def test_a_postgrest_error_that_echoes_the_service_key_reaches_neither_logs_nor_dead_letters(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, CUSTOMER_ROUTING)
    upstream = EchoingPostgrest()
    with serve(upstream) as url:
        settings = make_settings(prefix, routing_file=routing, SUPABASE_URL=url,
                                 SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY)
        await publish(aredis, keys, load(routing), "customer.created", "evt_echo", id="cus_echo",
                      object="customer", email="jane@example.com")
        with capture_logs() as logs:
            await run_pool(settings, "customer", redis=aredis, burst=True)
    assert upstream.requests, "the store never called the upstream"
    [dead] = await list_dead(aredis, keys, "customer")
    raw = await aredis.xrange(keys.dead("customer"))
    stored = repr(raw)
    assert "PGRST100" in dead.error and "bad request" in dead.error  # the upstream's message survives
    assert SERVICE_KEY not in stored
    assert SERVICE_KEY not in repr(logs)
    assert any("PGRST100" in repr(line) for line in logs)


@pytest.mark.anyio
async def test_at_log_level_debug_the_sqlite_store_logs_no_customer_email_or_name(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, CUSTOMER_ROUTING)
    db = tmp_path / "fanout.sqlite3"
    await publish(aredis, keys, load(routing), "customer.created", "evt_pii", id="cus_pii", object="customer",
                  email="jane.private@example.com", name="Jane Privatename")
    log = tmp_path / "worker.log"
    proc = start_worker(prefix, routing, log, "customer", "--burst", LOG_LEVEL="debug",
                        FANOUT_SQLITE_PATH=str(db), FANOUT_MAIL_DIR=str(tmp_path / "mail"))
    try:
        assert proc.wait(timeout=45) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    with sqlite3.connect(db) as conn:  # it did write them
        assert conn.execute("select email, name from customers").fetchall() == [
            ("jane.private@example.com", "Jane Privatename")]
    assert " DEBUG " in output  # debug lines were written (redis-py's, for one)
    assert "jane.private@example.com" not in output and "Privatename" not in output


@pytest.mark.anyio
async def test_an_smtp_reply_that_echoes_the_password_reaches_neither_the_error_nor_its_traceback() -> None:
    import traceback
    from email.message import EmailMessage

    from bus.errors import PermanentFailure
    from tests.customer.smtp_inbox import PASSWORD, smtp_inbox
    from workers.customer.mail.transport import SmtpConfig, SmtpTransport

    with smtp_inbox() as (inbox, url):
        async def echo_rcpt(*_: object) -> str:  # a server that quotes the session back
            return f"550 5.1.1 unknown user (session authenticated with {PASSWORD})"

        inbox.handle_RCPT = echo_rcpt  # type: ignore[method-assign,assignment]
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "shop@shop.test", "jane@example.com", "hi"
        message.set_content("hello")
        with pytest.raises(PermanentFailure) as info:
            await SmtpTransport(SmtpConfig.from_url(url)).send(message)
    shown = "".join(traceback.format_exception(info.value))  # what a dead letter keeps
    assert "550" in str(info.value)
    assert PASSWORD not in shown
