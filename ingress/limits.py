"""The HTTP edge's limits: header size, read and idle timeouts, and a connection cap.

uvicorn has none of the first three for its httptools protocol (its keep-alive timer
starts only after a first response, and httptools buffers a header of any size), so
`EdgeProtocol` adds them to uvicorn's own protocol class, which keeps its speed:

- the header block of a request must end within `max_header_bytes` of the request's
  start, counted as bytes arrive (before httptools buffers them), or the answer is 431;
- `request_read_timeout_s` to send a whole request (headers and body), counted from the
  connection's accept for its first request (uvicorn has no such timer: a connection that
  never sends a byte was held forever), and from the first byte for the next ones;
- between requests, uvicorn's own keep-alive timeout (`keep_alive_timeout_s`);
- past `max_connections`, a new connection closes the one that has been idle longest
  (no request being handled), as nginx reuses keep-alive connections; only when every
  connection is handling a request is the new one refused, with a 503.

The cap is also kept below the process's file-descriptor limit (see `connection_cap`),
so idle sockets can never take the descriptors that Redis and real requests need.

Each close is counted in fanout_ingress_edge_closed_total{reason} (ingress/metrics.py),
through the function the app puts in its lifespan state.
"""

from __future__ import annotations

import asyncio
import functools
import resource
from dataclasses import dataclass
from typing import Any, cast

import orjson
import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from bus import defaults
from bus.settings import Settings
from ingress.metrics import (
    CLOSE_AT_CAPACITY,
    CLOSE_HEADERS_TOO_LARGE,
    CLOSE_IDLE_AT_CAP,
    CLOSE_REQUEST_TIMEOUT,
    CLOSE_TIMEOUT_NO_ANSWER,
    EDGE_CLOSED_STATE,
)

log = structlog.get_logger("fanout.ingress")


def _closing_answer(status: bytes, code: str, detail: str, *extra: bytes) -> bytes:
    """A complete response written straight to the socket, which is then closed."""
    body = orjson.dumps({"error": code, "detail": detail})
    head = [b"HTTP/1.1 " + status, b"content-type: application/json", *extra, b"connection: close",
            b"content-length: " + str(len(body)).encode()]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


HEADERS_TOO_LARGE = _closing_answer(b"431 Request Header Fields Too Large", "headers_too_large",
                                    "the request's headers are over the size limit")
REQUEST_TIMEOUT = _closing_answer(b"408 Request Timeout", "request_timeout",
                                  "the request was not sent in time")
AT_CAPACITY = _closing_answer(b"503 Service Unavailable", "at_capacity",
                              "every connection is busy; retry later", b"retry-after: 1")


@dataclass(frozen=True)
class EdgeLimits:
    max_header_bytes: int = defaults.MAX_HEADER_BYTES
    request_read_timeout_s: float = defaults.REQUEST_READ_TIMEOUT_S
    keep_alive_timeout_s: float = defaults.KEEP_ALIVE_TIMEOUT_S
    max_connections: int = defaults.MAX_CONNECTIONS

    @classmethod
    def from_settings(cls, settings: Settings, fd_limit: int) -> EdgeLimits:
        return cls(settings.max_header_bytes, settings.request_read_timeout_s,
                   settings.keep_alive_timeout_s, connection_cap(settings.max_connections, fd_limit))


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # Linux refuses an unlimited soft limit (fs.nr_open caps it)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # not allowed here: keep what we have
            pass
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(configured: int, fd_limit: int) -> int:
    """`configured`, lowered to leave a reserve of the fd limit for everything that is not a client."""
    reserve = max(defaults.FD_RESERVE_MIN, int(fd_limit * defaults.FD_RESERVE_FRACTION))
    return max(1, min(configured, fd_limit - reserve))


class ConnectionGuard:
    """What the connections of one server process share: the limits, and the idle ones, oldest first."""

    def __init__(self, limits: EdgeLimits) -> None:
        self.limits = limits
        # Insertion-ordered: the first key is the connection idle the longest.
        self.idle: dict[EdgeProtocol, None] = {}
        self.evicted = 0
        self.refused = 0

    def __getstate__(self) -> dict[str, Any]:
        # uvicorn's --workers pickles the config for each child: each starts with no connections.
        return {"limits": self.limits}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["limits"])  # type: ignore[misc]

    def make_room(self) -> bool:
        """Close the connection idle the longest; False when every connection has a request in progress."""
        oldest = next(iter(self.idle), None)
        if oldest is None:
            return False
        del self.idle[oldest]
        oldest.count_close(CLOSE_IDLE_AT_CAP)
        oldest.transport.close()
        self.evicted += 1
        if self.evicted in (1, 10) or self.evicted % 1000 == 0:
            log.warning("edge.at_connection_cap", cap=self.limits.max_connections,
                        idle_closed_so_far=self.evicted)
        return True

    def protocol_factory(self) -> type[asyncio.Protocol]:
        """What to pass uvicorn as `http=`: our protocol, bound to this guard (picklable, for --workers)."""
        return cast("type[asyncio.Protocol]", functools.partial(EdgeProtocol, guard=self))


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of the module docstring."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, guard: ConnectionGuard) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guard = guard
        self.timeout_keep_alive = guard.limits.keep_alive_timeout_s  # type: ignore[assignment]
        # Between requests, and until a request's header block ends: count what arrives.
        self._awaiting_headers = True
        self._header_budget = guard.limits.max_header_bytes
        self._read_deadline: asyncio.TimerHandle | None = None
        self._request_begun = False  # a byte of the current request has arrived
        self._begun_at = 0.0  # when it did (loop time), unless timed from the accept

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.guard.limits.max_connections and not self.guard.make_room():
            self.guard.refused += 1
            self.count_close(CLOSE_AT_CAPACITY)
            transport.write(AT_CAPACITY)
            transport.close()
            return
        self.guard.idle[self] = None
        # A new connection has the read timeout for its first request, counted from now: one that
        # never sends a byte is a request that never completes.
        self._read_deadline = self.loop.call_later(
            self.guard.limits.request_read_timeout_s, self._read_timed_out
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.idle.pop(self, None)
        self._cancel_read_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._feed(data)
        # A request still incomplete when this chunk is parsed gets its deadline now: most
        # arrive whole in one chunk, and then no timer is armed for them at all.
        if self._request_begun and self._read_deadline is None and not self.transport.is_closing():
            self._read_deadline = self.loop.call_at(
                self._begun_at + self.guard.limits.request_read_timeout_s, self._read_timed_out
            )

    def _feed(self, data: bytes) -> None:
        # Count header bytes before httptools buffers them. Chunk granularity: bytes of a
        # pipelined request that share a chunk with the previous request go uncounted, which
        # lets at most one extra limit through, never an unbounded header.
        while self._awaiting_headers and len(data) > self._header_budget:
            allowed, data = data[: self._header_budget], data[self._header_budget :]
            self._header_budget = 0
            if allowed:
                super().data_received(allowed)
            if self.transport.is_closing():
                return
            if self._awaiting_headers:  # the header block did not end within the limit
                self._refuse_headers()
                return
        if self._awaiting_headers:
            self._header_budget -= len(data)
        if data:
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        if self._read_deadline is None:  # not a first request, timed from the accept
            self._begun_at = self.loop.time()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self.guard.idle.pop(self, None)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel_read_deadline()
        self._request_begun = False
        self._awaiting_headers = True
        self._header_budget = self.guard.limits.max_header_bytes

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # uvicorn armed its idle timer: nothing in progress
            self.guard.idle[self] = None

    def count_close(self, reason: str) -> None:
        """Count a close in the app's metrics (absent before its lifespan started, or without one)."""
        count = self.app_state.get(EDGE_CLOSED_STATE)
        if count is not None:
            count(reason)

    def _cancel_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _refuse_headers(self) -> None:
        log.warning("edge.headers_too_large", limit_bytes=self.guard.limits.max_header_bytes)
        self.count_close(CLOSE_HEADERS_TOO_LARGE)
        self.transport.write(HEADERS_TOO_LARGE)
        self.transport.close()

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self._awaiting_headers and self._request_begun:  # part of a request, unseen by the app
            self.count_close(CLOSE_REQUEST_TIMEOUT)
            self.transport.write(REQUEST_TIMEOUT)
        else:  # no byte yet; or mid-body, where the app is told the client disconnected (receive() says so)
            self.count_close(CLOSE_TIMEOUT_NO_ANSWER)
        self.transport.close()
