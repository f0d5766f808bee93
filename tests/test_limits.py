"""The edge's limits, over real sockets, against a real `fanout ingress` process.

Each test starts the ingress as `fanout ingress` starts it in production (uvicorn with
ingress/limits.py's protocol) on a free loopback port, with short timeouts from the
environment, and talks raw HTTP/1.1 to it.
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from bus.signing import stripe_signature
from fanout.samples import sample_event
from ingress.limits import EdgeLimits, connection_cap
from tests.conftest import REPO, TEST_REDIS_URL, TEST_SECRET

ServeIngress = Callable[..., int]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def serve_ingress(prefix: str, tmp_path: Path) -> Iterator[ServeIngress]:
    """Start `fanout ingress` with extra environment (and an fd limit); stopped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(fd_limit: int | None = None, **env: str) -> int:
        port = _free_port()
        environ = {**os.environ, "REDIS_URL": TEST_REDIS_URL, "STRIPE_WEBHOOK_SECRET": TEST_SECRET,
                   "FANOUT_PREFIX": prefix, "ROUTING_FILE": str(REPO / "routing.yaml"),
                   "LOG_LEVEL": "warning", **env}

        def limit_fds() -> None:
            if fd_limit is not None:  # soft and hard: the ingress cannot raise it back
                resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

        with (tmp_path / f"ingress-{port}.log").open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "fanout.cli", "ingress", "--port", str(port)],
                                    cwd=tmp_path, env=environ, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=limit_fds)
        started.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
                return port
            except httpx.HTTPError:
                assert proc.poll() is None, (tmp_path / f"ingress-{port}.log").read_text()
                time.sleep(0.05)
        raise AssertionError("the ingress did not start")

    try:
        yield start
    finally:
        for proc in started:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _connect(port: int, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails the test)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _signed_request(port: int) -> bytes:
    body = orjson.dumps(sample_event("charge.refunded"))
    return (f"POST /webhooks/stripe HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nstripe-signature: {stripe_signature(body, TEST_SECRET)}\r\n"
            "\r\n").encode() + body


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_a_header_over_the_limit_gets_431_and_the_connection_is_closed(
    serve_ingress: ServeIngress,
) -> None:
    port = serve_ingress(MAX_HEADER_BYTES="4096")
    with _connect(port) as sock:
        sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\nx-padding: ")
        # Far more than the limit, as a stream: the server must answer long before the end.
        try:
            for _ in range(256):
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server mid-stream, as it should be
        answer = _read_until_closed(sock)
    assert _status(answer) == 431
    assert b'"error":"headers_too_large"' in answer


def test_headers_just_under_the_limit_are_served(serve_ingress: ServeIngress) -> None:
    port = serve_ingress(MAX_HEADER_BYTES="4096")
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-padding: " + b"a" * 3900 + b"\r\n\r\n")
        assert _status(sock.recv(65536)) == 200


def test_half_a_request_line_is_closed_after_the_read_timeout(serve_ingress: ServeIngress) -> None:
    port = serve_ingress(REQUEST_READ_TIMEOUT_S="0.5", KEEP_ALIVE_TIMEOUT_S="30")
    with _connect(port) as sock:
        sock.sendall(b"POST /webhooks/str")
        started = time.monotonic()
        answer = _read_until_closed(sock)
        waited = time.monotonic() - started
    assert _status(answer) == 408
    assert 0.4 < waited < 3.0


def test_a_stalled_body_is_closed_after_the_read_timeout(serve_ingress: ServeIngress) -> None:
    port = serve_ingress(REQUEST_READ_TIMEOUT_S="0.5", KEEP_ALIVE_TIMEOUT_S="30")
    with _connect(port) as sock:
        sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        started = time.monotonic()
        _read_until_closed(sock)
        assert time.monotonic() - started < 3.0


def test_a_connection_that_never_sends_is_closed_after_the_read_timeout(
    serve_ingress: ServeIngress,
) -> None:
    port = serve_ingress(REQUEST_READ_TIMEOUT_S="0.5", KEEP_ALIVE_TIMEOUT_S="30")
    with _connect(port) as sock:
        started = time.monotonic()
        assert _read_until_closed(sock) == b""  # nothing was asked: nothing is answered
        assert 0.4 < time.monotonic() - started < 3.0


def test_a_kept_alive_connection_is_closed_after_the_keep_alive_timeout(
    serve_ingress: ServeIngress,
) -> None:
    port = serve_ingress(KEEP_ALIVE_TIMEOUT_S="0.5", REQUEST_READ_TIMEOUT_S="30")
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):
            answer += sock.recv(65536)
        assert _status(answer) == 200
        started = time.monotonic()
        assert _read_until_closed(sock) == b""
        assert 0.4 < time.monotonic() - started < 3.0


def test_idle_connections_beyond_the_cap_do_not_stop_a_real_request(
    serve_ingress: ServeIngress,
) -> None:
    # 256 descriptors in all: before the guard, 300 idle sockets took every one of them
    # and the real request below was never accepted.
    fd_limit = 256
    port = serve_ingress(fd_limit=fd_limit, KEEP_ALIVE_TIMEOUT_S="60", REQUEST_READ_TIMEOUT_S="60")
    idle = []
    try:
        for _ in range(300):
            idle.append(_connect(port))
        time.sleep(0.3)  # let the server accept them all
        with _connect(port, timeout_s=3.0) as sock:
            sock.sendall(_signed_request(port))
            answer = sock.recv(65536)
        assert _status(answer) == 200, answer
        # The cap closed the longest-idle ones to make room; the newest are still open.
        time.sleep(0.2)
        assert _closed(idle) >= 300 - connection_cap(EdgeLimits().max_connections, fd_limit)
    finally:
        for sock in idle:
            sock.close()


def _closed(socks: list[socket.socket]) -> int:
    """How many of these sockets the server has closed (at EOF now)."""
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        ready = [key.fileobj for key, _ in selector.select(timeout=0.5)]
    closed = 0
    for sock in ready:
        assert isinstance(sock, socket.socket)
        try:
            closed += sock.recv(1) == b""
        except OSError:  # reset
            closed += 1
    return closed


# --- the guard's closes in /metrics (fanout_ingress_edge_closed_total{reason}) ------------------


def _edge_closed(port: int) -> dict[str, float]:
    """fanout_ingress_edge_closed_total by reason, as the ingress's /metrics shows it now."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    prefix = 'fanout_ingress_edge_closed_total{reason="'
    return {line[len(prefix):].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


def _moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {reason: after[reason] - before.get(reason, 0.0) for reason in after if after[reason] != before.get(reason)}


def test_each_close_reason_is_exported_at_zero_from_the_start(serve_ingress: ServeIngress) -> None:
    port = serve_ingress()
    assert _edge_closed(port) == {"headers_too_large": 0.0, "request_timeout": 0.0, "timeout_no_answer": 0.0,
                                  "at_capacity": 0.0, "idle_closed_at_cap": 0.0}


def test_a_431_is_counted_as_headers_too_large(serve_ingress: ServeIngress) -> None:
    port = serve_ingress(MAX_HEADER_BYTES="4096")
    before = _edge_closed(port)
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-padding: " + b"a" * 8192)
        assert _status(_read_until_closed(sock)) == 431
    assert _moved(before, _edge_closed(port)) == {"headers_too_large": 1.0}


def test_read_timeouts_are_counted_408_apart_from_closes_with_nothing_to_answer(
    serve_ingress: ServeIngress,
) -> None:
    port = serve_ingress(REQUEST_READ_TIMEOUT_S="0.5", KEEP_ALIVE_TIMEOUT_S="30")
    before = _edge_closed(port)
    with _connect(port) as sock:
        sock.sendall(b"POST /webhooks/str")
        assert _status(_read_until_closed(sock)) == 408
    assert _moved(before, _edge_closed(port)) == {"request_timeout": 1.0}
    before = _edge_closed(port)
    with _connect(port) as silent, _connect(port) as stalled:
        stalled.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        assert _read_until_closed(silent) == b""
        _read_until_closed(stalled)
    assert _moved(before, _edge_closed(port)) == {"timeout_no_answer": 2.0}


def test_the_connection_cap_counts_idle_connections_closed_and_new_ones_refused(
    serve_ingress: ServeIngress,
) -> None:
    port = serve_ingress(MAX_CONNECTIONS="2", KEEP_ALIVE_TIMEOUT_S="60", REQUEST_READ_TIMEOUT_S="60")
    before = _edge_closed(port)
    # Two idle connections, then the scrape's own: the one idle the longest is closed for it.
    with _connect(port) as first, _connect(port):
        time.sleep(0.3)  # let the server accept them both
        after = _edge_closed(port)
        assert _read_until_closed(first) == b""
    assert _moved(before, after) == {"idle_closed_at_cap": 1.0}
    # Two connections each with a request in progress (a body still to come): a third is refused.
    busy = b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"
    with _connect(port) as one, _connect(port) as two:
        one.sendall(busy)
        two.sendall(busy)
        time.sleep(0.3)
        with _connect(port) as third:
            assert _status(_read_until_closed(third)) == 503
    time.sleep(0.3)  # the two busy connections are gone before the scrape
    assert _moved(after, _edge_closed(port)) == {"at_capacity": 1.0}
