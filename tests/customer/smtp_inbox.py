"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives, for email tests."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

USER, PASSWORD = "mailer", "s3cret-smtp-pa55"


@dataclass
class Inbox:
    """aiosmtpd handler: accepts mail, optionally rejecting recipients or deferring DATA."""

    messages: list[Envelope] = field(default_factory=list)
    rejected: set[str] = field(default_factory=set)
    defer_data_times: int = 0
    defer_rcpt_times: int = 0  # answer RCPT with 450 (greylisting) this many times
    data_delay_s: float = 0.0  # a slow server: wait this long before accepting DATA
    logins: list[str] = field(default_factory=list)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address in self.rejected:
            return "550 5.1.1 mailbox unavailable"
        if self.defer_rcpt_times > 0:
            self.defer_rcpt_times -= 1
            return "450 4.2.0 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.defer_data_times > 0:
            self.defer_data_times -= 1
            return "451 4.3.0 try again later"
        if self.data_delay_s:
            await asyncio.sleep(self.data_delay_s)
        self.messages.append(envelope)
        return "250 Message accepted"


def _authenticator(inbox: Inbox) -> Any:
    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
              auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == USER
              and auth_data.password.decode() == PASSWORD)
        if ok:
            inbox.logins.append(USER)
        return AuthResult(success=ok)

    return check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def smtp_inbox() -> Iterator[tuple[Inbox, str]]:
    """Yield (inbox, SMTP_URL with credentials) for a server on 127.0.0.1."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port,
                            authenticator=_authenticator(inbox), auth_require_tls=False)
    controller.start()
    try:
        yield inbox, f"smtp://{USER}:{PASSWORD}@127.0.0.1:{port}"
    finally:
        controller.stop()
