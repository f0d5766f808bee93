"""What a command checks before it acts, and the one line it prints when a check fails.

Redis that does not answer, a pool name with a typo, a webhook secret that is not
Stripe's: each is a single clear line on stderr (never a traceback), naming what
and where, never a password or a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import sys
from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bus.connection import Reachability, error_summary, reachability, redis_location
from bus.errors import ConfigError
from bus.keys import Keys
from bus.routing import load_routing
from bus.settings import Secret, Settings

# The exit status of a command that could not reach Redis (2 stays "bad input or configuration").
REDIS_UNREACHABLE_EXIT = 1
# Stripe's signing secrets are "whsec_" and 32 or more characters; a shorter one is a paste error.
SECRET_PREFIX = "whsec_"
SECRET_MIN_CHARS = 24

T = TypeVar("T")


def redis_line(command: str, where: str, error: str) -> str:
    return f"fanout {command}: Redis at {where} does not answer ({error}); check REDIS_URL"


def require_redis(settings: Settings, command: str) -> None:
    """Exit 1 with one line unless Redis answers a PING."""
    found = asyncio.run(reachability(settings.redis_url))
    if not found.ok:
        print(redis_line(command, found.where, found.error or "?"), file=sys.stderr)
        raise SystemExit(REDIS_UNREACHABLE_EXIT)


def check_redis(settings: Settings) -> Reachability:
    return check_redis_url(settings.redis_url)


def check_redis_url(url: str) -> Reachability:
    return asyncio.run(reachability(url))


@contextlib.contextmanager
def redis_errors_exit(command: str, url: str) -> Iterator[None]:
    """A Redis error inside the block ends the command with one line and exit 1."""
    try:
        yield
    except (RedisError, OSError) as err:
        print(redis_line(command, redis_location(url), error_summary(err)), file=sys.stderr)
        raise SystemExit(REDIS_UNREACHABLE_EXIT) from None


def with_redis(settings: Settings, action: Callable[[Any], Awaitable[T]], command: str,
               pool: str | None = None) -> T:
    """Run one async operation of `fanout COMMAND` with a Redis client that is closed afterwards.

    A Redis that does not answer ends the command with one line (exit 1); with `pool`, a
    pool that neither routing.yaml nor Redis knows ends it with exit 2, before anything is written.
    """
    from bus.connection import async_redis

    async def run() -> T:
        client = async_redis(settings.redis_url)
        try:
            if pool is not None:
                why = await unknown_pool(client, Keys(settings.key_prefix, settings.partitions), pool,
                                         declared_pools(settings))
                if why is not None:
                    print(f"fanout {command}: {why}", file=sys.stderr)
                    raise SystemExit(2)
            return await action(client)
        finally:
            await client.aclose()

    require_redis(settings, command)  # also catches a URL that does not parse
    with redis_errors_exit(command, settings.redis_url):
        return asyncio.run(run())


def ingress_redis_notice(found: Reachability) -> str:
    """What `fanout ingress` says when Redis does not answer at start (it serves anyway)."""
    return (f"fanout ingress: Redis at {found.where} does not answer ({found.error}); check REDIS_URL.\n"
            "  Serving anyway: until Redis answers, every webhook is answered 503 store_unavailable "
            "(Stripe retries it) and /readyz reports not ready.")


def before_ingress(settings: Settings, host: str, port: int) -> int | None:
    """`fanout ingress`'s checks before it serves: the exit status that stops it, or None to serve.

    A Redis that does not answer does not stop it (see the README: Stripe retries the 503s); one
    that answers is asked whether FANOUT_PARTITIONS agrees with the recorded layout.
    """
    from fanout.partitions_cmd import partitions_agree
    from fanout.run import cannot_listen, routing_is_valid

    for warning in secret_warnings(settings.webhook_secrets):
        print(warning, file=sys.stderr)
    if not routing_is_valid(settings):
        return 1
    why = cannot_listen(host, port)
    if why is not None:
        print(f"fanout ingress: cannot listen on {host}:{port} ({why}); is another server "
              f"using port {port}? Choose another with --port.", file=sys.stderr)
        return 2
    found = check_redis(settings)
    if not found.ok:
        print(ingress_redis_notice(found), file=sys.stderr, flush=True)
    elif not partitions_agree(settings, "ingress"):
        return 2
    return None


def declared_pools(settings: Settings) -> list[str]:
    """The pools routing.yaml declares (none when it does not load: Redis alone then decides)."""
    try:
        return list(load_routing(settings.routing_file, settings.max_routing_file_bytes).pools)
    except ConfigError:
        return []


async def unknown_pool(redis: aioredis.Redis, keys: Keys, pool: str, declared: Collection[str]) -> str | None:
    """Why `pool` is not a pool to act on, or None.

    A pool is known when routing.yaml declares it, or when Redis still holds its stream or
    dead letters, in any partition (a pool removed from the file can still be listed and replayed).
    """
    if pool in declared:
        return None
    for p in range(keys.partitions):  # one EXISTS per partition: its two keys share a cluster slot
        if await redis.exists(keys.stream(pool, p), keys.dead(pool, p)):
            return None
    close = difflib.get_close_matches(pool, list(declared), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown pool {pool!r}{hint} (pools: {', '.join(sorted(declared)) or 'none'})"


def secret_warnings(secrets: Collection[Secret]) -> list[str]:
    """Warnings for webhook secrets that cannot be Stripe's; the secrets themselves are never shown."""
    out = []
    several = len(secrets) > 1
    for number, secret in enumerate(secrets, 1):
        value = secret.reveal()
        which = f"secret {number} of STRIPE_WEBHOOK_SECRET" if several else "STRIPE_WEBHOOK_SECRET"
        if not value.startswith(SECRET_PREFIX):
            problem = f"does not start with {SECRET_PREFIX!r}"
        elif len(value) < SECRET_MIN_CHARS:
            problem = f"is only {len(value)} characters long"
        else:
            continue
        out.append(f"warning: {which} {problem}: it does not look like a Stripe signing secret, so "
                   "events Stripe signs will be refused (400 bad_signature). Copy the endpoint's "
                   "secret (whsec_...) from the dashboard or from `stripe listen`.")
    return out
