"""SMTP_URL parsing: a password with URL delimiters never leaks; percent-encoded ones authenticate."""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from structlog.testing import capture_logs

from bus.errors import ConfigError, PermanentFailure
from tests.conftest import make_settings
from tests.customer import smtp_inbox as inbox_module
from tests.customer.helpers import make_context
from tests.customer.smtp_inbox import USER, Inbox, smtp_inbox
from workers.customer.mail.render import order_confirmation as render_confirmation
from workers.customer.mail.transport import SmtpConfig, transport_for
from workers.customer.store.rows import Order

pytestmark = pytest.mark.anyio

RAW_PASSWORDS = ["s3cr#et-pa55", "s3cr/et-pa55", "s3cr?et-pa55", "s3cr%23et-pa55",
                 "pa55#w0rd/w1th?x9z@thr33", "2525#et-pa55"]


def fragments(password: str) -> list[str]:
    """Every piece of the password between URL delimiters that is long enough to recognise."""
    return [p for p in re.split(r"[#/?@%:]", password) if len(p) >= 3] + [password]


def assert_no_leak(password: str, *texts: str) -> None:
    for text in texts:
        for fragment in fragments(password):
            assert fragment not in text, f"{fragment!r} leaked into {text!r}"


@pytest.mark.parametrize("password", RAW_PASSWORDS)
def test_unencoded_delimiters_in_the_password_raise_a_config_error_without_any_of_it(
        password: str) -> None:
    url = f"smtp://{USER}:{password}@127.0.0.1:2525"
    if password == "s3cr%23et-pa55":
        # A literal % followed by hex digits is taken as percent-encoding: it decodes, no error.
        assert SmtpConfig.from_url(url).password is not None
        return
    with pytest.raises(ConfigError) as raised:
        SmtpConfig.from_url(url)
    err = raised.value
    assert isinstance(err, PermanentFailure)  # retrying cannot fix configuration
    assert err.__cause__ is None and err.__context__ is None
    text = "".join(traceback.format_exception(err))
    assert_no_leak(password, str(err), repr(err), text)
    assert "percent-encode" in str(err)


@pytest.mark.parametrize("password", RAW_PASSWORDS)
async def test_a_bad_smtp_url_fails_when_the_transport_is_built_and_logs_none_of_it(
        prefix: str, password: str) -> None:
    if "%23" in password and "#" not in password:
        pytest.skip("parses as a percent-encoded password")
    ctx = make_context(make_settings(prefix, SMTP_URL=f"smtp://{USER}:{password}@mail.test:25"))
    with capture_logs() as logs, pytest.raises(PermanentFailure) as raised:
        await transport_for(ctx)
    assert_no_leak(password, repr(logs), "".join(traceback.format_exception(raised.value)))


@pytest.fixture
def inbox_with_password(request: pytest.FixtureRequest,
                        monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Inbox, str, str]]:
    password: str = request.param
    monkeypatch.setattr(inbox_module, "PASSWORD", password)
    with smtp_inbox() as (server, plain_url):
        port = plain_url.rsplit(":", 1)[1]
        yield server, password, f"smtp://{USER}:{quote(password, safe='')}@127.0.0.1:{port}"


@pytest.mark.parametrize("inbox_with_password", RAW_PASSWORDS, indirect=True)
async def test_percent_encoded_passwords_authenticate(
        prefix: str, inbox_with_password: tuple[Inbox, str, str]) -> None:
    server, password, url = inbox_with_password
    ctx = make_context(make_settings(prefix, SMTP_URL=url))
    transport = await transport_for(ctx)
    order = Order(checkout_session_id="cs_test_pw", payment_intent_id=None, customer_id=None,
                  customer_email="jenny.rosen@example.com", customer_name="Jenny Rosen",
                  amount_subtotal=100, amount_total=100, amount_shipping=0, currency="usd",
                  payment_status="paid", status="paid", shipping=None, metadata={},
                  livemode=False, last_event_id="evt_pw", last_event_created=1)
    await transport.send(render_confirmation(order, sender="orders@shop.test",
                                             message_id="<pw@test>"))
    assert server.logins == [USER] and len(server.messages) == 1
    assert_no_leak(password, repr(transport))
