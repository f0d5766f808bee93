"""Delivering a message: SMTP when SMTP_URL is set, else .eml files in a local outbox folder.

SMTP runs on smtplib in a worker thread (asyncio.to_thread), so the event loop
never blocks.

SMTP_URL's user name and password are percent-decoded: a password with
characters that delimit a URL (`#`, `/`, `?`, `@`, `:`, `%`) must be
percent-encoded in SMTP_URL (`urllib.parse.quote(password, safe="")`). A URL
that does not parse raises SmtpUrlError, which never quotes any part of it. A rejected recipient is permanent (PermanentFailure); every
other SMTP or network failure is transient (RetryLater).

Once the server has accepted the message (DATA answered 2xx), the send has
succeeded: QUIT is best effort, and an error there (the total deadline
passing, a dropped connection) is logged at debug and ignored. Reporting it
as a failure would retry the send and deliver the email twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

import structlog

from bus.errors import ConfigError, PermanentFailure, RetryLater
from bus.settings import Secret, Settings
from workers.context import Context

DEFAULT_MAIL_DIR = "var/mail"
DEFAULT_FROM = "stripe-fanout <orders@localhost>"
SMTP_TIMEOUT_S = 20.0  # one socket step (connect, one reply) at most
# The whole exchange (connect, TLS, login, MAIL/RCPT/DATA) at most: well below the customer
# pool's timeout_s (30 s), so a send finishes, or fails, before the pool gives up on the
# handler. Override with SMTP_TOTAL_TIMEOUT_S; keep it below the pool's timeout_s.
SMTP_TOTAL_TIMEOUT_S = 15.0
RESOURCE_NAME = "mail_transport"
log = structlog.get_logger("fanout.mail")
DEFAULT_PORTS = {"smtp": 25, "smtps": 465, "starttls": 587}

Mode = Literal["smtp", "smtps", "starttls"]
URL_SHAPE = ("SMTP_URL must look like smtp[s]://user:pass@host:port or smtp+starttls://...; "
             "percent-encode special characters (# / ? @ : %) in the user name and password")


class SmtpUrlError(ConfigError, PermanentFailure):
    """SMTP_URL is unusable; retrying cannot help. The message never quotes the URL."""


class Transport(Protocol):
    name: str

    async def send(self, message: EmailMessage) -> None:
        """Deliver or raise PermanentFailure (never deliverable) / RetryLater (try again)."""
        ...


@dataclass(frozen=True)
class SmtpConfig:
    """A parsed SMTP_URL: smtp://, smtps:// (TLS) or smtp+starttls://, user:pass@host:port."""

    host: str
    port: int
    mode: Mode
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> SmtpConfig:
        """Parse SMTP_URL; SmtpUrlError (no part of the URL in it, no chained cause) if it is bad."""
        config: SmtpConfig | None = None
        # Raised below, outside the suppressed block, so the parse error is not even __context__.
        with contextlib.suppress(ValueError, TypeError, UnicodeError):
            config = cls._parse(url)
        if config is None:
            # Never echo the URL or the parser's message: both may carry the password.
            raise SmtpUrlError(URL_SHAPE) from None
        return config

    @classmethod
    def _parse(cls, url: str) -> SmtpConfig | None:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        modes: dict[str, Mode] = {"smtp": "smtp", "smtps": "smtps", "smtp+starttls": "starttls"}
        # A path, query or fragment means an unencoded '/', '?' or '#' cut the userinfo short.
        if (scheme not in modes or not parts.hostname or parts.path not in ("", "/")
                or parts.query or parts.fragment or "#" in url or "?" in url):
            return None
        mode = modes[scheme]
        return cls(
            host=parts.hostname,
            port=parts.port or DEFAULT_PORTS[mode],
            mode=mode,
            username=unquote(parts.username, errors="strict") if parts.username else None,
            password=(Secret(unquote(parts.password, errors="strict"))
                      if parts.password else None),
        )


class _DeadlineSMTP(smtplib.SMTP):
    """smtplib.SMTP whose every socket step gets only the time left before `deadline`."""

    deadline = float("inf")  # time.monotonic() value; set before connect()
    step_s = SMTP_TIMEOUT_S

    def _arm(self) -> None:
        left = min(self.deadline - time.monotonic(), self.step_s)
        if left <= 0:
            raise TimeoutError("SMTP exchange exceeded its total timeout")
        self.timeout = left  # used by connect()
        if self.sock is not None:
            self.sock.settimeout(left)

    def connect(self, host: str = "localhost", port: int = 0,
                source_address: Any = None) -> tuple[int, bytes]:
        self._arm()
        return super().connect(host, port, source_address)

    def send(self, s: Any) -> None:
        self._arm()
        super().send(s)

    def getreply(self) -> tuple[int, bytes]:
        self._arm()
        return super().getreply()


class _DeadlineSMTPSSL(_DeadlineSMTP, smtplib.SMTP_SSL):
    pass


def _quit_quietly(smtp: smtplib.SMTP) -> None:
    """QUIT and close, best effort: no error here (a passed deadline, a dropped connection)
    changes the outcome of the exchange, so it is logged at debug and ignored."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError) as err:
        log.debug("smtp quit failed; ignored", error=type(err).__name__)
    finally:
        smtp.close()


class SmtpTransport:
    name = "smtp"

    def __init__(self, config: SmtpConfig, timeout_s: float = SMTP_TIMEOUT_S,
                 total_timeout_s: float = SMTP_TOTAL_TIMEOUT_S) -> None:
        self.config = config
        self.timeout_s = timeout_s
        self.total_timeout_s = total_timeout_s

    def __repr__(self) -> str:
        return f"SmtpTransport({self.config!r})"

    def _send_blocking(self, message: EmailMessage) -> None:
        cfg = self.config
        smtp: _DeadlineSMTP
        if cfg.mode == "smtps":
            smtp = _DeadlineSMTPSSL(context=ssl.create_default_context())
        else:
            smtp = _DeadlineSMTP()
        smtp.deadline = time.monotonic() + self.total_timeout_s
        smtp.step_s = self.timeout_s
        smtp.connect(cfg.host, cfg.port)
        try:
            if cfg.mode == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if cfg.username and cfg.password:
                smtp.login(cfg.username, cfg.password.reveal())
            smtp.send_message(message)
        except BaseException:
            _quit_quietly(smtp)  # the send's own error is the one reported
            raise
        # The server has accepted the message: the send is done, whatever QUIT does next.
        _quit_quietly(smtp)

    async def send(self, message: EmailMessage) -> None:
        # Not chained (`from None`): smtplib's exception text is the server's reply, which may echo
        # what it was sent (credentials included). Only codes and type names travel on.
        try:
            await asyncio.to_thread(self._send_blocking, message)
        except smtplib.SMTPRecipientsRefused as err:
            codes = sorted({code for code, _ in err.recipients.values()})
            # smtplib raises this for 4xx (greylisting, mailbox busy) as well as 5xx.
            if codes and all(500 <= code < 600 for code in codes):
                raise PermanentFailure(f"SMTP server rejected the recipient (codes {codes})") from None
            raise RetryLater(f"SMTP server deferred the recipient (codes {codes})") from None
        except smtplib.SMTPResponseException as err:
            raise RetryLater(f"SMTP error {err.smtp_code}") from None
        except (smtplib.SMTPException, OSError) as err:
            raise RetryLater(f"SMTP unavailable: {type(err).__name__}") from None


class FileTransport:
    """Writes each message as an .eml file: the local outbox of `make run`."""

    name = "file"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _write(self, message: EmailMessage) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        ident = re.sub(r"[^A-Za-z0-9_.-]", "", str(message.get("Message-ID", ""))) or "message"
        path = self.directory / f"{int(time.time() * 1000)}-{ident}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(message.as_bytes())
        os.replace(tmp, path)  # readers never see half a message
        return path

    async def send(self, message: EmailMessage) -> None:
        await asyncio.to_thread(self._write, message)


def transport_from_settings(settings: Settings) -> Transport:
    url = settings.secret("SMTP_URL")
    if url:
        total = settings.env.get("SMTP_TOTAL_TIMEOUT_S", "").strip()
        try:
            total_s = float(total) if total else SMTP_TOTAL_TIMEOUT_S
        except ValueError:
            raise ConfigError("SMTP_TOTAL_TIMEOUT_S must be a number of seconds") from None
        return SmtpTransport(SmtpConfig.from_url(url.reveal()), total_timeout_s=total_s)
    return FileTransport(settings.env.get("FANOUT_MAIL_DIR") or DEFAULT_MAIL_DIR)


def sender(settings: Settings) -> str:
    return settings.env.get("SMTP_FROM") or DEFAULT_FROM


async def transport_for(ctx: Context) -> Transport:
    """The process-wide transport, chosen once from SMTP_URL / FANOUT_MAIL_DIR."""

    async def factory() -> Transport:
        transport = transport_from_settings(ctx.settings)
        ctx.log.info("mail transport ready", transport=transport.name)
        return transport

    return await ctx.resources.get(RESOURCE_NAME, factory)
