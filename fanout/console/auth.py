"""Who may use the console, and the CSRF check of every POST.

Without FANOUT_CONSOLE_TOKEN the console only listens on loopback (fanout/console/cli.py
refuses anything else), and anyone who can reach it may use it. With a token, every
request must carry it: as `Authorization: Bearer <token>`, or as the session cookie the
login form sets (HttpOnly, SameSite=Strict; its value is a random id signed with a key
derived from the token, never the token itself).

Every POST carries a CSRF token: an HMAC of a random per-browser id kept in a cookie of
its own, checked with hmac.compare_digest. A request authenticated by its bearer header
needs none: a browser never attaches that header by itself, so it cannot be forged
across sites.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from urllib.parse import quote

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bus.settings import Secret

SESSION_COOKIE = "fanout_console_session"
CSRF_COOKIE = "fanout_console_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
# Reachable without the token: the login form and the files it needs.
PUBLIC_PATHS = ("/login", "/static/")
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
     b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


class Guard:
    """The keys and checks; the token, when there is one, stays inside."""

    def __init__(self, token: Secret | None) -> None:
        self.token = token
        # Derived from the token, sessions and forms survive a restart; without one, they need not.
        material = token.reveal().encode() if token else secrets.token_bytes(32)
        self._csrf_key = hmac.new(material, b"fanout console csrf", hashlib.sha256).digest()
        self._session_key = hmac.new(material, b"fanout console session", hashlib.sha256).digest()

    @property
    def required(self) -> bool:
        return self.token is not None

    def token_matches(self, submitted: str) -> bool:
        if self.token is None:
            return False
        return hmac.compare_digest(submitted.encode(), self.token.reveal().encode())

    def bearer_ok(self, header: str | None) -> bool:
        if not header or not header.lower().startswith("bearer "):
            return False
        return self.token_matches(header[7:].strip())

    def new_session(self) -> str:
        sid = secrets.token_urlsafe(18)
        return f"{sid}.{_mac(self._session_key, sid)}"

    def session_ok(self, value: str | None) -> bool:
        if not value or "." not in value:
            return False
        sid, _, mac = value.rpartition(".")
        return hmac.compare_digest(mac.encode(), _mac(self._session_key, sid).encode())

    def csrf_token(self, csrf_id: str) -> str:
        return _mac(self._csrf_key, csrf_id)

    def csrf_ok(self, csrf_id: str, submitted: str | None) -> bool:
        if not csrf_id or not submitted:
            return False
        return hmac.compare_digest(submitted.encode(), self.csrf_token(csrf_id).encode())


def cookie_header(name: str, value: str, *, secure: bool, max_age_s: int | None = None) -> bytes:
    cookie = f"{name}={value}; Path=/; HttpOnly; SameSite=Strict"
    if secure:
        cookie += "; Secure"
    if max_age_s is not None:
        cookie += f"; Max-Age={max_age_s}"
    return cookie.encode()


class AuthMiddleware:
    """Refuses requests without the token (when one is set); gives each browser its CSRF id."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        cookies = _cookies(headers.get("cookie"))
        state = scope.setdefault("state", {})
        secure = scope.get("scheme") == "https"
        new_cookies: list[bytes] = []
        csrf_id = cookies.get(CSRF_COOKIE, "")
        if len(csrf_id) < 16:
            csrf_id = secrets.token_urlsafe(18)
            new_cookies.append(cookie_header(CSRF_COOKIE, csrf_id, secure=secure))
        state["csrf_id"] = csrf_id
        state["csrf_token"] = self.guard.csrf_token(csrf_id)
        state["auth"] = "open"
        if self.guard.required:
            if self.guard.bearer_ok(headers.get("authorization")):
                state["auth"] = "bearer"
            elif self.guard.session_ok(cookies.get(SESSION_COOKIE)):
                state["auth"] = "session"
            elif not scope["path"].startswith(PUBLIC_PATHS):
                await self._refuse(scope, headers)(scope, receive, send)
                return
            else:
                state["auth"] = "anonymous"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"set-cookie", c) for c in new_cookies] + SECURITY_HEADERS
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refuse(self, scope: Scope, headers: Headers) -> Response:
        wants_page = scope["method"] == "GET" and "text/html" in headers.get("accept", "")
        if wants_page:
            target = scope["path"] + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
            response: Response = RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        else:
            response = PlainTextResponse("the console needs its token (Authorization: Bearer, or log in)",
                                         status_code=401, headers={"www-authenticate": "Bearer"})
        for name, value in SECURITY_HEADERS:
            response.headers[name.decode()] = value.decode()
        return response


def _cookies(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header is treated as none at all
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


async def require_csrf(request: Request, guard: Guard) -> None:
    """Raise 403 unless this POST carries the CSRF token of its browser (or a bearer token)."""
    if request.state.auth == "bearer":
        return
    submitted = request.headers.get(CSRF_HEADER)
    if submitted is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        submitted = value if isinstance(value, str) else None
    if not guard.csrf_ok(request.state.csrf_id, submitted):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")


Endpoint = Callable[[Request], Awaitable[Response]]


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of this site only (never `//host` or a URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
