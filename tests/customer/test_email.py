"""email.order_confirmation: once per event, over real SMTP on loopback or to the file outbox."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bus.envelope import Event
from bus.errors import ConfigError, PermanentFailure, RetryLater
from bus.settings import Settings
from tests.conftest import make_settings
from tests.customer.conftest import ContextFactory
from tests.customer.helpers import checkout_ids, make_event
from tests.customer.smtp_inbox import PASSWORD, Inbox, free_port, smtp_inbox
from workers.customer.handlers import email as email_handler
from workers.customer.handlers import orders
from workers.customer.mail import outbox
from workers.customer.mail.transport import SmtpConfig, SmtpTransport
from workers.customer.store.base import Store
from workers.customer.store.rows import OutboxRow

pytestmark = pytest.mark.anyio
SENDER = "Shop <orders@shop.test>"


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, str]]:
    with smtp_inbox() as served:
        yield served


def smtp_ctx(prefix: str, store_env: dict[str, str], store: Store, smtp_url: str) -> ContextFactory:
    settings: Settings = make_settings(prefix, **store_env, SMTP_URL=smtp_url, SMTP_FROM=SENDER)
    return ContextFactory(settings, store)


def eml_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.eml")) if directory.exists() else []


def parsed(inbox: Inbox, index: int = 0) -> EmailMessage:
    content = inbox.messages[index].content
    assert isinstance(content, bytes)
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def placed_order(ctx_factory: ContextFactory, **changes: object) -> tuple[dict[str, str], Event]:
    ids = checkout_ids()
    event = make_event("checkout.session.completed", ids=ids, **changes)
    await orders.create_from_checkout(event, await ctx_factory())
    return ids, event


async def test_confirmation_is_sent_once_over_smtp_with_headers_recipient_and_both_bodies(
        store: Store, store_env: dict[str, str], prefix: str, inbox: tuple[Inbox, str]) -> None:
    server, url = inbox
    factory = smtp_ctx(prefix, store_env, store, url)
    ids, event = await placed_order(factory)

    with capture_logs() as logs:
        await email_handler.order_confirmation(event, await factory())
        await email_handler.order_confirmation(event, await factory())

    assert len(server.messages) == 1
    assert server.logins == ["mailer"]
    envelope = server.messages[0]
    assert envelope.rcpt_tos == ["jenny.rosen@example.com"]
    assert envelope.mail_from == "orders@shop.test"
    message = parsed(server)
    assert message["From"] == SENDER
    assert message["To"] == "Jenny Rosen <jenny.rosen@example.com>"
    assert message["Subject"] == f"Your order {ids['session'][-8:].upper()} is confirmed"
    assert message["Message-ID"] == f"<{event.id}.order_confirmation@stripe-fanout>"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None
    text, markup = plain.get_content(), html.get_content()
    assert "Total:    49.99 USD" in text and "1 Market St" in text and ids["session"] in text
    assert "<td>Total</td><td>49.99 USD</td>" in markup and "Kansas City" in markup
    row = await store.outbox_get(event.id, "order_confirmation")
    assert row is not None and row.status == "sent" and row.attempts == 1 and row.sent_at
    assert PASSWORD not in repr(logs)


async def test_rejected_recipient_is_permanent_and_a_replay_after_the_fix_sends_it(
        store: Store, store_env: dict[str, str], prefix: str, inbox: tuple[Inbox, str]) -> None:
    server, url = inbox
    server.rejected.add("jenny.rosen@example.com")
    factory = smtp_ctx(prefix, store_env, store, url)
    _, event = await placed_order(factory)

    with pytest.raises(PermanentFailure):
        await email_handler.order_confirmation(event, await factory())
    assert server.messages == []
    row = await store.outbox_get(event.id, "order_confirmation")
    assert row is not None and row.status == "failed" and "550" in (row.last_error or "")

    # The entry was dead-lettered; `dlq replay` (or a redelivery) after the mailbox is fixed
    # re-claims the failed row and sends: only "sent" means done.
    server.rejected.clear()
    await email_handler.order_confirmation(event, await factory())
    await email_handler.order_confirmation(event, await factory())

    assert len(server.messages) == 1
    row = await store.outbox_get(event.id, "order_confirmation")
    assert row is not None and row.status == "sent" and row.attempts == 2


async def test_greylisted_recipient_450_is_retried_then_sent_once(
        store: Store, store_env: dict[str, str], prefix: str, inbox: tuple[Inbox, str]) -> None:
    server, url = inbox
    server.defer_rcpt_times = 1
    factory = smtp_ctx(prefix, store_env, store, url)
    _, event = await placed_order(factory)

    with pytest.raises(RetryLater) as raised:
        await email_handler.order_confirmation(event, await factory())
    assert not isinstance(raised.value, PermanentFailure)
    row = await store.outbox_get(event.id, "order_confirmation")
    assert row is not None and row.status == "pending" and "450" in (row.last_error or "")

    await email_handler.order_confirmation(event, await factory())
    assert len(server.messages) == 1
    row = await store.outbox_get(event.id, "order_confirmation")
    assert row is not None and row.status == "sent" and row.attempts == 2


async def test_smtp_transient_failure_retries_then_sends_once(
        store: Store, store_env: dict[str, str], prefix: str, inbox: tuple[Inbox, str]) -> None:
    server, url = inbox
    server.defer_data_times = 1
    factory = smtp_ctx(prefix, store_env, store, url)
    _, event = await placed_order(factory)

    with pytest.raises(RetryLater):
        await email_handler.order_confirmation(event, await factory())
    row = await store.outbox_get(event.id, "order_confirmation")
    assert row is not None and row.status == "pending" and "451" in (row.last_error or "")

    await email_handler.order_confirmation(event, await factory())
    assert len(server.messages) == 1
    row = await store.outbox_get(event.id, "order_confirmation")
    assert row is not None and row.status == "sent" and row.attempts == 2


async def test_unreachable_smtp_server_is_retried(
        store: Store, store_env: dict[str, str], prefix: str) -> None:
    factory = smtp_ctx(prefix, store_env, store, f"smtp://127.0.0.1:{free_port()}")
    _, event = await placed_order(factory)
    with pytest.raises(RetryLater):
        await email_handler.order_confirmation(event, await factory())


async def test_without_smtp_url_the_confirmation_is_written_once_to_the_mail_dir(
        store: Store, make_ctx: ContextFactory, mail_dir: Path) -> None:
    _, event = await placed_order(make_ctx)
    await email_handler.order_confirmation(event, await make_ctx())
    await email_handler.order_confirmation(event, await make_ctx())

    files = eml_files(mail_dir)
    assert len(files) == 1
    # <millis>-<event id>.<template>.eml: the Message-ID's local part, not its domain glued on.
    assert re.fullmatch(rf"[0-9]+-{re.escape(event.id)}\.order_confirmation\.eml", files[0].name), files[0].name
    message = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert message["To"] == "Jenny Rosen <jenny.rosen@example.com>"


async def test_confirmation_on_a_fresh_store_is_built_from_the_event_and_sent(
        store: Store, make_ctx: ContextFactory, mail_dir: Path) -> None:
    # The pool runs the entry's handlers concurrently: the order row may not exist yet.
    ids = checkout_ids()
    event = make_event("checkout.session.completed", ids=ids)
    await email_handler.order_confirmation(event, await make_ctx())

    assert await store.find_order(checkout_session_id=ids["session"]) is None
    files = eml_files(mail_dir)
    assert len(files) == 1
    message = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["To"] == "Jenny Rosen <jenny.rosen@example.com>"
    plain = message.get_body(("plain",))
    assert plain is not None
    text = plain.get_content()
    assert "Total:    49.99 USD" in text and ids["session"] in text and "4.99" in text


async def test_only_one_of_two_concurrent_claims_wins(store: Store) -> None:
    item = OutboxRow(event_id=f"evt_{checkout_ids()['session']}", template="t",
                     recipient="a@example.com")
    results = await asyncio.gather(outbox.claim(store, item), outbox.claim(store, item))
    assert sorted(isinstance(r, outbox.Claim) for r in results) == [False, True]


async def test_a_claim_left_by_a_dead_worker_is_taken_over_after_its_lease(store: Store) -> None:
    item = OutboxRow(event_id=f"evt_{checkout_ids()['session']}", template="t",
                     recipient="a@example.com")
    first = await outbox.claim(store, item)
    assert isinstance(first, outbox.Claim)
    assert await outbox.claim(store, item) == "busy"

    later = datetime.now(UTC) + timedelta(seconds=outbox.CLAIM_LEASE_S + 1)
    second = await outbox.claim(store, item, now=later)
    assert isinstance(second, outbox.Claim) and second.attempts == 2
    assert not await outbox.mark_sent(store, first)  # the dead worker's claim is void
    assert await outbox.mark_sent(store, second)


def test_smtp_password_stays_out_of_repr_and_config_errors() -> None:
    transport = SmtpTransport(SmtpConfig.from_url(f"smtps://mailer:{PASSWORD}@mail.test"))
    assert PASSWORD not in repr(transport)
    assert transport.config.port == 465 and transport.config.mode == "smtps"
    assert SmtpConfig.from_url("smtp+starttls://u:p@h").port == 587
    with pytest.raises(ConfigError) as raised:
        SmtpConfig.from_url(f"http://mailer:{PASSWORD}@mail.test")
    assert PASSWORD not in str(raised.value)


async def test_a_pool_timeout_during_smtp_waits_for_the_send_and_records_it_sent(
        store: Store, store_env: dict[str, str], prefix: str, inbox: tuple[Inbox, str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from workers.handlers import Resolved, call_handler

    server, url = inbox
    server.data_delay_s = 1.0  # the server is slower than the handler's timeout
    factory = smtp_ctx(prefix, store_env, store, url)
    _, event = await placed_order(factory)
    ctx = await factory()
    handler = Resolved("email.order_confirmation", email_handler.order_confirmation, True)

    with ThreadPoolExecutor(1) as pool:
        failure = await call_handler(handler, handler.name, event, lambda _: ctx, 0.3,
                                     lambda: pool)
    assert failure is not None and "TimeoutError" in failure.error  # the pool retries it

    # The send that was in flight finished and was recorded: a later delivery sends nothing.
    assert len(server.messages) == 1
    row = await store.outbox_get(event.id, "order_confirmation")
    assert row is not None and row.status == "sent"
    server.data_delay_s = 0.0
    await email_handler.order_confirmation(event, await factory())
    assert len(server.messages) == 1


async def test_the_whole_smtp_exchange_is_capped_by_a_total_timeout(
        inbox: tuple[Inbox, str]) -> None:
    from workers.customer.mail.render import order_confirmation as render
    from workers.customer.mail.transport import SMTP_TOTAL_TIMEOUT_S
    from workers.customer.store.rows import Order

    assert SMTP_TOTAL_TIMEOUT_S <= 15  # well below the customer pool's timeout_s (30)
    server, url = inbox
    server.data_delay_s = 3.0
    transport = SmtpTransport(SmtpConfig.from_url(url), total_timeout_s=0.5)
    order = Order(checkout_session_id="cs_test_slow", payment_status="paid", status="paid",
                  last_event_id="evt_slow", last_event_created=1,
                  customer_email="jenny.rosen@example.com")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RetryLater):
        await transport.send(render(order, sender=SENDER, message_id="<slow@test>"))
    assert loop.time() - started < 2.0
