"""localstripe (PyPI), a stateful fake of Stripe's API, run as a subprocess on a free loopback port.

What it serves that `fanout reconcile` uses, read from its source (1.15.10): objects
created through its API (customers, products, plans, payment intents, ...) record
events, and `GET /v1/events` lists them with `created[gt|gte|lt|lte]`, `limit`,
`starting_after` and `has_more`, oldest first (Stripe lists newest first). It has no
`types[]` filter (it answers 400 "Unexpected types"), and never answers 429: those are
covered by tests/stripe_events_double.py. Any `sk_...` key is accepted.

It saves its store to /tmp/localstripe.pickle after every change; that is turned off
here, so parallel test runs share nothing and each server starts empty.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from .live import free_port

API_KEY = "sk_test_localstripe_fanout"

_START = (
    "import localstripe.resources as r; r.Store.dump_to_disk = lambda self: None; "
    "from localstripe.server import start; start()"
)


@contextmanager
def localstripe(log_path: Path) -> Iterator[str]:
    """Yield the base URL of a fresh localstripe; it is stopped afterwards, also on failure."""
    port = free_port()
    with log_path.open("ab") as log:
        server = subprocess.Popen([sys.executable, "-c", _START, "--port", str(port), "--from-scratch"],
                                  stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/v1/events", auth=(API_KEY, ""), timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"localstripe did not start; see {log_path}")
            time.sleep(0.05)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def create(base: str, kind: str, **fields: Any) -> dict[str, Any]:
    """POST /v1/<kind> (customers, products, ...): the object, whose event localstripe records."""
    response = httpx.post(f"{base}/v1/{kind}", data=fields, auth=(API_KEY, ""), timeout=5)
    response.raise_for_status()
    created: dict[str, Any] = response.json()
    return created


def flush(base: str) -> None:
    httpx.delete(f"{base}/_config/data", auth=(API_KEY, ""), timeout=5).raise_for_status()
