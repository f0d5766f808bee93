"""Serving: `fanout ingress` (uvicorn) and `fanout run` (the ingress, every pool, stand-ins).

`fanout run` is the zero-configuration way to see the whole flow: it picks a
Redis (configured, local, or in-process), a development signing secret, starts
one `fanout worker` child per pool (and an `rq worker` per RQ pool), restarts
children that die, and stops everything in order on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from bus import defaults
from bus.connection import redact_url
from bus.errors import ConfigError
from bus.routing import RoutingTable, load_routing
from bus.settings import Settings

if TYPE_CHECKING:
    from fanout.standin import StandInServer


def settings_or_exit() -> Settings:
    """Settings from the environment; exit 2 with the reason when they are invalid."""
    try:
        return Settings.from_env()
    except ConfigError as err:
        print(f"fanout: {err}", file=sys.stderr)
        raise SystemExit(2) from err


def serve_ingress(settings: Settings, host: str, port: int, workers: int) -> None:
    """Serve the ingress with uvicorn's httptools protocol, guarded by the edge's limits."""
    import uvicorn

    from ingress.limits import ConnectionGuard, EdgeLimits, raise_fd_limit

    # Idle sockets must never take the descriptors real requests and Redis need: use all we may
    # have, and keep the connection cap below it (each --workers child inherits the limit).
    limits = EdgeLimits.from_settings(settings, raise_fd_limit())
    uvicorn.run(
        "ingress.asgi:from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=ConnectionGuard(limits).protocol_factory(),
        access_log=False,
        # We never use the client address; parsing X-Forwarded-For cost ~4% per request.
        proxy_headers=False,
        log_level="warning",
    )


def cannot_listen(host: str, port: int) -> str | None:
    """Why the ingress could not listen on host:port (as uvicorn binds: SO_REUSEADDR), or None."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as err:
        return str(err)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            return err.strerror or str(err)
    return None


def routing_is_valid(settings: Settings) -> bool:
    """Load the routing file once to report its errors and warnings before serving."""
    try:
        table = load_routing(settings.routing_file, settings.max_routing_file_bytes)
    except ConfigError as err:
        print(f"fanout: routing file is invalid:\n{err}", file=sys.stderr)
        return False
    for warning in table.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return True


class StopRequested(BaseException):
    """SIGTERM or SIGINT reached `fanout run`: stop the ingress, then the pools, then exit 0."""


def _request_stop(signum: int, _: FrameType | None) -> None:
    raise StopRequested(signum)


def run_banner(settings: Settings, table: RoutingTable, url: str, where: str,
                stand_ins: StandInServer | None, using_dev_secret: bool,
                operating: Sequence[str] = ()) -> str:
    from workers.customer.store.select import describe

    rq_pools = [pool for pool, config in table.pools.items() if config.executor == "rq"]
    on_rq = f"; an `rq worker` for {', '.join(rq_pools)}" if rq_pools else ""
    lines = ["stripe-fanout is running.", f"  events are stored in: {where}",
             f"  key prefix:           {settings.key_prefix} (FANOUT_PREFIX; every Redis key starts with "
             f"{{{settings.key_prefix}}})",
             f"  pools:                {', '.join(table.pools)} (one `fanout worker` process each{on_rq})"]
    lines += [f"  {label + ':':<22}{place}" for label, place in describe(settings)]
    for destination in table.destinations.values():
        stand_in = stand_ins.stand_ins.get(destination.name) if stand_ins else None
        label = f"  {destination.name + ':':<22}"
        if stand_in is None:
            lines.append(f"{label}forward: posts to the URL in {destination.url_env}")
            continue
        # Never the secret: it only reaches the pools through their environment.
        lines += [
            f"{label}a local STAND-IN, not your backend ({destination.url_env} is unset):",
            f"  {'':<22}it verifies each forwarded event with stripe.Webhook.construct_event",
            f"  {'':<22}and logs it to {stand_in.log_path}   (tail -f {stand_in.log_path})",
        ]
    lines += list(operating)  # the console and metrics addresses
    lines += [
        f"  point Stripe at:      {url}",
        f"    e.g.  stripe listen --forward-to {url.removeprefix('http://')}",
        "          and set STRIPE_WEBHOOK_SECRET to the whsec_... secret it prints",
        "  signing secret:       " + ("the development secret (STRIPE_WEBHOOK_SECRET is unset)"
                                     if using_dev_secret else "from STRIPE_WEBHOOK_SECRET"),
        "  try it, in another terminal:",
        f"    .venv/bin/fanout send checkout.session.completed --url {url}",
    ]
    return "\n".join(lines) + "\n"


def run_everything(host: str, port: int, console_port: int = defaults.CONSOLE_PORT) -> int:
    """`fanout run`: the ingress in this process, each pool as a child, stand-ins for unset destinations."""
    from fanout import embedded, standin
    from fanout.console.cli import Operating
    from workers.supervision.supervisor import (
        CONFIG_ERROR_EXIT,
        Children,
        rq_worker_command,
        worker_command,
    )

    # Before anything starts: a port already taken would otherwise stop everything it started.
    why = cannot_listen(host, port)
    if why is not None:
        print(f"fanout run: cannot listen on {host}:{port} ({why}); is another server using "
              f"port {port}? Choose another with --port.", file=sys.stderr)
        return 2
    # Until the pools are stopped, a signal must unwind to the cleanup below, whatever is running:
    # uvicorn re-raises the signal it caught once it has shut down, and the default action
    # would end this process with the pools still running.
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    store: embedded.EmbeddedRedis | None = None
    stand_ins: StandInServer | None = None
    pools: Children | None = None
    supervisor: threading.Thread | None = None
    operating: Operating | None = None
    # The pools' processes are restarted as `fanout worker --processes N` restarts its own; one that
    # exits with a configuration error stops everything (SIGINT: the ingress shuts down as on Ctrl-C).
    stopped, config_error = threading.Event(), threading.Event()
    try:
        store = embedded.resolve(os.environ.get("REDIS_URL"))
        if not store.in_process:
            # A configured Redis that does not answer would have every pool exit and restart in a loop.
            from fanout.preflight import check_redis_url, redis_line

            found = check_redis_url(store.url)
            if not found.ok:
                print(redis_line("run", found.where, found.error or "?"), file=sys.stderr)
                return 1
        os.environ["REDIS_URL"] = store.url
        using_dev_secret = not os.environ.get("STRIPE_WEBHOOK_SECRET")
        if using_dev_secret:
            os.environ["STRIPE_WEBHOOK_SECRET"] = defaults.DEV_WEBHOOK_SECRET
        settings = settings_or_exit()
        from fanout.preflight import secret_warnings

        for warning in secret_warnings(settings.webhook_secrets):
            print(warning, file=sys.stderr)
        if not routing_is_valid(settings):
            return 1
        table = load_routing(settings.routing_file, settings.max_routing_file_bytes)
        stand_ins = standin.start(table.destinations.values(), os.environ)
        if stand_ins is not None:
            os.environ.update(stand_ins.environ())  # for the pools started below
        url = f"http://{host}:{port}{defaults.WEBHOOK_PATH}"
        where = "in-process Redis (nothing is kept)" if store.in_process else redact_url(store.url)
        operating = Operating(settings, host, console_port, list(table.pools))
        print(run_banner(settings, table, url, where, stand_ins, using_dev_secret, operating.lines), flush=True)
        operating.console.start()
        rq_pools = [pool for pool, config in table.pools.items() if config.executor == "rq"]
        pools = Children([worker_command(pool) + operating.worker_args(pool) for pool in table.pools]
                         + [rq_worker_command(settings.key_prefix, pool) for pool in rq_pools])
        pools.start()

        def supervise(children: Children) -> None:
            if children.keep_running(stopped, "run") == CONFIG_ERROR_EXIT:
                config_error.set()
                os.kill(os.getpid(), signal.SIGINT)

        supervisor = threading.Thread(target=supervise, args=(pools,), name="pools", daemon=True)
        supervisor.start()
        serve_ingress(settings, host, port, 1)
    except StopRequested:
        pass
    finally:
        # Cleanup is bounded (the pools' grace period, then SIGKILL); a second signal waits for it.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        stopped.set()
        if operating is not None:
            operating.console.stop()
        if supervisor is not None:
            supervisor.join()
        if pools is not None:
            pools.stop()
        if stand_ins is not None:
            stand_ins.stop()
        if store is not None:
            store.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if config_error.is_set():
        print("fanout run: a pool's worker exited with a configuration error (see its message above); "
              "restarting it cannot fix that, so everything was stopped", file=sys.stderr)
        return CONFIG_ERROR_EXIT
    return 0
