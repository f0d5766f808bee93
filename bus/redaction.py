"""One redaction function for every text that comes from outside: upstream error bodies, library messages.

An upstream (PostgREST, an SMTP server, a forward destination) may echo what it
was sent, headers included, into its error text. That text reaches log lines,
exception messages and dead letters, so it goes through `redact_secrets` first.
What is stripped:

* every configured secret: the webhook secrets, and the value of every
  environment variable named STRIPE_WEBHOOK_SECRET, SUPABASE_SERVICE_ROLE_KEY,
  STRIPE_API_KEY or ending in _SECRET, _KEY, _TOKEN or _PASSWORD, plus the
  names a caller adds (a destination's `secret_env`);
* the password of any environment variable whose value is a URL with one
  (SMTP_URL, REDIS_URL, DATABASE_URL ...);
* whatever looks like a credential whether configured or not: bearer tokens,
  JWTs (Supabase keys are JWTs), and `whsec_`, `sk_live_`, `sk_test_`, `rk_` keys.

A value shorter than MIN_SECRET_CHARS is not matched by itself (it would
blank out every "1" in a message); such a "secret" protects nothing anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

from bus.settings import Settings

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 6
SECRET_NAME_SUFFIXES = ("_SECRET", "_KEY", "_TOKEN", "_PASSWORD")
NAMED_SECRETS = frozenset({"STRIPE_WEBHOOK_SECRET", "SUPABASE_SERVICE_ROLE_KEY", "STRIPE_API_KEY",
                           "SMTP_PASSWORD"})
CREDENTIAL_PATTERNS = (
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]+",
    r"\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*",
    r"\b(?:whsec|sk_live|sk_test|rk_live|rk_test|rk)_[A-Za-z0-9_]+",
)
_PATTERNS_ONLY = re.compile("|".join(CREDENTIAL_PATTERNS))
# Compiled per (Settings object, extra names). Settings are built once per process, so this
# stays tiny; the Settings object is kept alongside so its id cannot be reused meanwhile.
_CACHE_LIMIT = 64
_cache: dict[tuple[int, tuple[str, ...]], tuple[Settings, re.Pattern[str]]] = {}


def _is_secret_name(name: str) -> bool:
    upper = name.upper()
    return upper in NAMED_SECRETS or upper.endswith(SECRET_NAME_SUFFIXES)


def _url_password(value: str) -> str | None:
    if "://" not in value:
        return None
    try:
        return urlsplit(value.strip()).password
    except ValueError:
        return None


def secret_values(settings: Settings, extra_names: Iterable[str] = ()) -> set[str]:
    """Every configured secret value, in the forms an upstream may echo it (as is, URL-quoted)."""
    found: set[str] = {s.reveal() for s in settings.webhook_secrets}
    extra = {n.upper() for n in extra_names}
    for name, value in settings.env.items():
        if _is_secret_name(name) or name.upper() in extra:
            found.update(part.strip() for part in value.split(",") if "," in value)
            found.add(value.strip())
        password = _url_password(value)
        if password:
            found.update((password, unquote(password)))
    out: set[str] = set()
    for value in found:
        if len(value) >= MIN_SECRET_CHARS:
            out.update((value, quote(value, safe="")))
    return out


def _pattern(settings: Settings, extra_names: tuple[str, ...]) -> re.Pattern[str]:
    key = (id(settings), extra_names)
    hit = _cache.get(key)
    if hit is not None and hit[0] is settings:
        return hit[1]
    # Longest first, so a secret that contains another is removed whole.
    values = sorted(secret_values(settings, extra_names), key=len, reverse=True)
    pattern = re.compile("|".join([*(re.escape(v) for v in values), *CREDENTIAL_PATTERNS]))
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    _cache[key] = (settings, pattern)
    return pattern


def redact_secrets(text: str, settings: Settings | None, extra_names: Iterable[str] = ()) -> str:
    """`text` with every configured secret and credential-shaped token replaced by [redacted].

    With `settings` None only the credential patterns apply (for code that has no settings).
    """
    if not text:
        return text
    pattern = _PATTERNS_ONLY if settings is None else _pattern(settings, tuple(sorted(extra_names)))
    return pattern.sub(REDACTED, text)
