"""Local stand-ins for `forward:` destinations whose URL is not configured, for `fanout run`.

Without one, every event routed to `forward:admin_backend` would be
dead-lettered on a fresh machine ("ADMIN_BACKEND_URL is not set"). A stand-in
plays the existing webhook endpoint behind the router: it verifies each
delivery with `stripe.Webhook.construct_event` and the destination's secret,
exactly as that endpoint's own code would, answers 200 (or 400 when the
signature does not verify), and appends one JSON line per delivery
(`id`, `type`, `verified`) to `var/<destination>.jsonl`.

It is for trying stripe-fanout out. A destination whose URL is set gets no
stand-in. The secret is generated per run (unless the destination's
secret variable is set) and only ever handed to child processes' environments.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import stripe
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bus.routing import Destination
from bus.settings import Secret

LOG_DIR = "var"
HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
# Stripe's SDK default; forward: signs each delivery as it sends it.
TOLERANCE_S = 300


@dataclass(frozen=True)
class StandIn:
    """One destination's stand-in: where it listens and where it writes what it received."""

    destination: Destination
    url: str
    log_path: Path
    secret: Secret = field(repr=False)

    def environ(self) -> dict[str, str]:
        """The variables that point `forward:<destination>` at this stand-in."""
        return {self.destination.url_env: self.url, self.destination.secret_env: self.secret.reveal()}


def log_path_for(name: str, log_dir: Path) -> Path:
    """`admin_backend` -> var/admin-backend.jsonl."""
    return log_dir / f"{name.replace('_', '-')}.jsonl"


def _record(body: bytes, verified: bool, error: str | None = None) -> dict[str, Any]:
    """The line written for one delivery; an unverified body is read only for its id and type."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        event = None
    if not isinstance(event, dict):
        event = {}
    line: dict[str, Any] = {"id": event.get("id"), "type": event.get("type"), "verified": verified}
    if error:
        line["error"] = error
    return line


def create_app(stand_ins: Mapping[str, StandIn]) -> Starlette:
    """POST /<destination name>: verify as the real endpoint would, record, answer."""

    async def receive(request: Request) -> JSONResponse:
        stand_in = stand_ins.get(request.path_params["name"])
        if stand_in is None:
            return JSONResponse({"error": "unknown destination"}, status_code=404)
        body = await request.body()
        header = request.headers.get("stripe-signature", "")
        line: dict[str, Any]
        answer: dict[str, Any]
        try:
            event = stripe.Webhook.construct_event(body, header, stand_in.secret.reveal(),
                                                   tolerance=TOLERANCE_S)
        except (ValueError, stripe.SignatureVerificationError) as err:
            line = _record(body, verified=False, error=type(err).__name__)
            status, answer = 400, {"error": "signature verification failed"}
        else:
            line = {"id": event.id, "type": event.type, "verified": True}
            status, answer = 200, {"received": True}
        # One short append per delivery, from the one event-loop thread: lines never interleave.
        with stand_in.log_path.open("ab") as out:
            out.write(orjson.dumps(line) + b"\n")
        return JSONResponse(answer, status_code=status)

    return Starlette(routes=[Route("/{name}", receive, methods=["POST"])])


@dataclass
class StandInServer:
    """The stand-ins of one `fanout run`, served by uvicorn on a loopback port in a thread."""

    stand_ins: dict[str, StandIn]
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    def environ(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for stand_in in self.stand_ins.values():
            env.update(stand_in.environ())
        return env

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=START_TIMEOUT_S)


def start(destinations: Iterable[Destination], env: Mapping[str, str],
          log_dir: Path = Path(LOG_DIR)) -> StandInServer | None:
    """Serve a stand-in for every destination whose URL variable is unset; None when none is."""
    missing = [d for d in destinations if not env.get(d.url_env)]
    if not missing:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    sock = socket.socket()
    sock.bind((HOST, 0))
    port = int(sock.getsockname()[1])
    stand_ins = {
        d.name: StandIn(
            destination=d, url=f"http://{HOST}:{port}/{d.name}", log_path=log_path_for(d.name, log_dir),
            secret=Secret(env.get(d.secret_env) or f"whsec_standin_{secrets.token_hex(24)}"),
        )
        for d in missing
    }
    config = uvicorn.Config(create_app(stand_ins), log_config=None, access_log=False,
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    # Not the main thread, so uvicorn leaves signal handling to `fanout run`.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="stand-in",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the stand-in backend did not start")
        time.sleep(0.01)
    return StandInServer(stand_ins, server, thread)
