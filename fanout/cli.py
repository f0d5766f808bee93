"""The `fanout` command. It parses arguments, configures logging and calls into modules.

Each command group lives in a module of its own, which adds its parser and runs it:
fanout/serve_cmd.py (ingress, run, worker), routes_cmd.py, status_cmd.py, console/cli.py,
recovery_cmd.py (dlq, replay, reconcile), send_cmd.py and partitions_cmd.py.
`python -m fanout.cli` is the same command (tests, benches and `fanout run`'s pools use it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from bus import defaults
from bus.errors import ConfigError
from bus.logs import configure_logging
from bus.settings import Settings
from fanout import recovery_cmd, routes_cmd, send_cmd, serve_cmd, status_cmd
from fanout.arguments import DESCRIPTION, EPILOG, version
from fanout.console.cli import add_console_parser

Command = Callable[[argparse.Namespace], int]

# Commands that serve until stopped; their loggers are cached for speed.
LONG_RUNNING_COMMANDS = frozenset({"ingress", "run", "worker", "console"})
# Commands that import handler modules named in routing.yaml (`billing.reports:render`): they
# find them in the current directory, as `python -m fanout.cli` (and so `fanout run`'s pools) does.
IMPORTS_HANDLERS = frozenset({"run", "worker", "routes"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fanout", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The order here is the order `fanout --help` lists the commands in.
    serve_cmd.add_ingress_parsers(sub)
    routes_cmd.add_parser(sub)
    serve_cmd.add_worker_parser(sub)
    status_cmd.add_parser(sub)
    add_console_parser(sub)
    recovery_cmd.add_dlq_parser(sub)
    recovery_cmd.add_replay_parser(sub)
    recovery_cmd.add_reconcile_parser(sub)
    send_cmd.add_parser(sub)
    from fanout.partitions_cmd import add_parser as add_partitions_parser

    add_partitions_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in IMPORTS_HANDLERS and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    long_running = args.command in LONG_RUNNING_COMMANDS
    try:  # the secrets to strip from every log line; a bad setting is reported by the command itself
        log_settings: Settings | None = Settings.from_env()
    except ConfigError:
        log_settings = None
    configure_logging(os.environ.get("LOG_LEVEL", defaults.LOG_LEVEL), cache=long_running,
                      settings=log_settings)
    command: Command = args.func
    return command(args)


if __name__ == "__main__":
    raise SystemExit(main())
