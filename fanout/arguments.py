"""What the `fanout` parser shares: its texts for users, argument types, common options."""

from __future__ import annotations

import argparse

from bus import defaults

# What `fanout --help` says first: for the person running it, not for this module's readers.
DESCRIPTION = """\
stripe-fanout: point Stripe at one URL. The ingress verifies each webhook once, stores it in
Redis Streams and fans it out to worker pools; routing.yaml says which pool runs which handlers.

start here:  fanout run                        everything on this machine, embedded defaults
             fanout send checkout.session.completed   (in another terminal)
production:  fanout ingress, plus `fanout worker POOL` for each pool of routing.yaml
"""

EPILOG = ("environment: REDIS_URL, STRIPE_WEBHOOK_SECRET, ROUTING_FILE, FANOUT_PREFIX, LOG_LEVEL "
          "(see the README). `fanout COMMAND --help` describes each command.")


def positive_int(raw: str) -> int:
    """An argparse type: a whole number of at least 1 (0 workers, processes or slots do nothing)."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def port_number(raw: str) -> int:
    value = positive_int(raw)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {value}")
    return value


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"stripe-fanout {version('stripe-fanout')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "stripe-fanout (not installed)"


def listen_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=defaults.HOST,
                   help=f"address to listen on (default {defaults.HOST}; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=port_number, default=defaults.PORT,
                   help=f"port to listen on (default {defaults.PORT})")
