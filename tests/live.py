"""Run an ASGI app under a real uvicorn server on a free loopback port, in a thread; wait for a
server started as a subprocess to answer /healthz."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: Any, **config: Any) -> Iterator[str]:
    """Yield the base URL while `app` is served; stop the server afterwards."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_for_health(process: subprocess.Popen[Any], port: int, *, timeout_s: float,
                    output: Callable[[], object]) -> httpx.Response:
    """The first answer of http://127.0.0.1:port/healthz; fails (with `output()`) if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, output()
        assert time.monotonic() < deadline, f"nothing answered /healthz on port {port} within {timeout_s} s"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
        except httpx.HTTPError:
            time.sleep(0.1)
