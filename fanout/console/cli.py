"""`fanout console`, the console thread `fanout run` starts, and `fanout status --watch`."""

from __future__ import annotations

import argparse
import ipaddress
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bus import defaults
from bus.settings import Settings
from fanout.arguments import port_number

# ANSI: cursor home, then clear the screen, so each refresh overwrites the last in place.
CLEAR = "\x1b[H\x1b[2J"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refusal(settings: Settings, host: str) -> str | None:
    """Why the console must not start on `host` with these settings, or None."""
    if is_loopback(host) or settings.console_token:
        return None
    return (f"fanout console: binding {host} makes the console reachable from other machines; "
            "set FANOUT_CONSOLE_TOKEN to a long random string first (every request must then carry it), "
            "or bind 127.0.0.1")


def _uvicorn_config(settings: Settings, host: str, port: int, app: Any = None) -> Any:
    import uvicorn

    from fanout.console.app import create_app

    return uvicorn.Config(app or create_app(settings), host=host, port=port, log_level="warning",
                          access_log=False, proxy_headers=False)


def cmd_console(args: argparse.Namespace) -> int:
    import uvicorn

    from fanout.run import routing_is_valid, settings_or_exit

    settings = settings_or_exit()
    why = refusal(settings, args.host)
    if why is not None:
        print(why, file=sys.stderr)
        return 2
    if not routing_is_valid(settings):
        return 1
    print(f"console: http://{args.host}:{args.port}/" + ("" if settings.console_token else
          "   (no FANOUT_CONSOLE_TOKEN: open to anyone on this machine)"), flush=True)
    uvicorn.Server(_uvicorn_config(settings, args.host, args.port)).run()
    return 0


def add_console_parser(sub: Any, func: Callable[[argparse.Namespace], int] = cmd_console) -> None:
    p = sub.add_parser("console", help="the operator's console in a browser (pools, events, dead letters)")
    p.add_argument("--host", default=defaults.CONSOLE_HOST,
                   help=f"default {defaults.CONSOLE_HOST}; any other address needs FANOUT_CONSOLE_TOKEN")
    p.add_argument("--port", type=port_number, default=defaults.CONSOLE_PORT,
                   help=f"port to listen on (default {defaults.CONSOLE_PORT})")
    p.set_defaults(func=func)


class ConsoleThread:
    """The console served in a thread of `fanout run` (its own event loop), until `stop()`."""

    def __init__(self, settings: Settings, host: str, port: int, app: Any = None) -> None:
        import uvicorn

        self.url = f"http://{host}:{port}/"
        self._server = uvicorn.Server(_uvicorn_config(settings, host, port, app))
        self._thread = threading.Thread(target=self._server.run, name="console", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.ident is None:  # never started
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)


def watch(render: Callable[[], str], interval_s: float = 1.0) -> int:
    """Print `render()` in place every `interval_s` until Ctrl-C; exit status 0."""
    try:
        while True:
            frame = render()
            sys.stdout.write(CLEAR + frame + "\n")
            sys.stdout.flush()
            time.sleep(interval_s)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 0


# --- what `fanout run` adds: the console in a thread, a metrics port per pool -----------------------


def free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Operating:
    """The console thread and the pools' metrics ports of one `fanout run`, and its banner lines."""

    def __init__(self, settings: Settings, host: str, console_port: int, pools: list[str]) -> None:
        from fanout.run import cannot_listen

        # Beyond loopback only with a token, as `fanout console` itself requires.
        self.host = host if refusal(settings, host) is None else defaults.CONSOLE_HOST
        note = ""
        if cannot_listen(self.host, console_port) is not None:
            taken, console_port = console_port, free_port(self.host)
            note = f"   (port {taken} is taken)"
        self.console = ConsoleThread(settings, self.host, console_port)
        self.metrics_ports = {pool: free_port(self.host) for pool in pools}
        self.lines = [f"  {'console:':<22}{self.console.url}{note}"]
        self.lines += [f"  {'metrics:':<22}" + ", ".join(
            f"{pool} http://{self.host}:{port}/metrics" for pool, port in self.metrics_ports.items())]

    def worker_args(self, pool: str) -> list[str]:
        """What `fanout worker POOL` gets so that it serves its metrics where the banner says."""
        return ["--metrics-port", str(self.metrics_ports[pool]), "--metrics-host", self.host]
