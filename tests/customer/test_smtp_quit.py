"""Once the SMTP server has accepted the message, the send is done: QUIT is best effort."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from tests.customer.smtp_inbox import Inbox, smtp_inbox
from workers.customer.mail import transport as transport_module
from workers.customer.mail.transport import SmtpConfig, SmtpTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, str]]:
    with smtp_inbox() as served:
        yield served


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Shop <orders@shop.test>"
    msg["To"] = "jenny.rosen@example.com"
    msg["Subject"] = "Your order"
    msg.set_content("Thanks!")
    return msg


async def test_total_deadline_passing_after_the_message_was_accepted_still_reports_sent(
        inbox: tuple[Inbox, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's case: DATA answered 250 just before the total deadline, so QUIT's socket
    step finds no time left. The server has the message; reporting a failure would retry the
    send and deliver a duplicate email."""
    server, url = inbox
    accepted = transport_module._DeadlineSMTP.send_message

    def accept_then_run_out_of_time(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = accepted(self, *args, **kwargs)
        self.deadline = time.monotonic() - 1.0  # the total deadline has passed before QUIT
        return result

    monkeypatch.setattr(transport_module._DeadlineSMTP, "send_message",
                        accept_then_run_out_of_time)
    transport = SmtpTransport(SmtpConfig.from_url(url), total_timeout_s=5.0)

    await transport.send(message())  # no RetryLater: the message was accepted

    assert len(server.messages) == 1


async def test_a_failing_quit_after_acceptance_is_ignored(
        inbox: tuple[Inbox, str], monkeypatch: pytest.MonkeyPatch) -> None:
    server, url = inbox

    docmd = transport_module._DeadlineSMTP.docmd

    def quit_fails(self: Any, cmd: str, args: str = "") -> Any:
        if cmd.lower() == "quit":
            raise ConnectionResetError("connection reset before QUIT's reply")
        return docmd(self, cmd, args)

    monkeypatch.setattr(transport_module._DeadlineSMTP, "docmd", quit_fails)
    transport = SmtpTransport(SmtpConfig.from_url(url), total_timeout_s=5.0)

    await transport.send(message())

    assert len(server.messages) == 1
