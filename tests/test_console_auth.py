"""Console security: loopback unless a token is set; with one, every request carries it; CSRF on POSTs."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bus.settings import Secret
from fanout.console.auth import Guard, safe_next
from tests.console_support import Seeded, console_client, seed
from tests.support import worker_env

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
TOKEN = "a-long-random-console-token-for-tests"


@pytest.fixture
async def seeded(prefix: str, tmp_path: Path) -> Seeded:
    return await seed(prefix, tmp_path)


def with_token(seeded: Seeded) -> Seeded:
    return replace(seeded, settings=replace(seeded.settings, console_token=Secret(TOKEN)))


async def test_with_a_token_a_request_without_it_is_refused(seeded: Seeded) -> None:
    async with console_client(with_token(seeded).settings) as (_, client):
        page = await client.get("/", headers={"accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/"
        api = await client.get(f"/events/{seeded.dead}")
        assert api.status_code == 401 and api.headers["www-authenticate"] == "Bearer"
        assert (await client.get("/", headers={"authorization": "Bearer wrong"})).status_code == 401
        bearer = await client.get(f"/events/{seeded.dead}", headers={"authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200 and seeded.dead in bearer.text
        # The login form and its stylesheet need no token.
        assert (await client.get("/login")).status_code == 200
        assert (await client.get("/static/style.css")).status_code == 200


async def test_the_login_form_sets_an_httponly_strict_cookie_that_is_not_the_token(seeded: Seeded) -> None:
    async with console_client(with_token(seeded).settings) as (_, client):
        login = (await client.get("/login?next=/routes")).text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', login)
        assert csrf is not None
        wrong = await client.post("/login", data={"csrf": csrf.group(1), "token": "guess", "next": "/routes"})
        assert wrong.status_code == 401 and "not the console" in wrong.text
        answer = await client.post("/login", data={"csrf": csrf.group(1), "token": TOKEN, "next": "/routes"},
                                   follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/routes"
        cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("fanout_console_session="))
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        assert (await client.get("/", headers={"accept": "text/html"})).status_code == 200
        # Logged in, a POST still needs its CSRF token.
        assert (await client.post("/logout")).status_code == 403


def test_guard_checks_sessions_and_csrf_tokens_by_their_mac() -> None:
    guard = Guard(Secret(TOKEN))
    session = guard.new_session()
    assert guard.session_ok(session)
    assert not guard.session_ok(session[:-1] + ("0" if session[-1] != "0" else "1"))
    assert not guard.session_ok(TOKEN)
    assert guard.csrf_ok("browser-id-1234567", guard.csrf_token("browser-id-1234567"))
    assert not guard.csrf_ok("browser-id-1234567", guard.csrf_token("another-browser-id"))
    assert not guard.csrf_ok("browser-id-1234567", None)
    assert safe_next("/dlq/alpha?type=x") == "/dlq/alpha?type=x"
    assert safe_next("//evil.example") == safe_next("https://evil.example") == "/"


def test_the_console_refuses_to_bind_beyond_loopback_without_a_token(prefix: str, tmp_path: Path) -> None:
    env = worker_env(prefix, tmp_path / "routing.yaml")
    env.pop("FANOUT_CONSOLE_TOKEN", None)
    done = subprocess.run([sys.executable, "-m", "fanout.cli", "console", "--host", "0.0.0.0", "--port", "1"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "set FANOUT_CONSOLE_TOKEN" in done.stderr
