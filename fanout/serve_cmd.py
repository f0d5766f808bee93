"""`fanout ingress`, `fanout run` and `fanout worker`: the commands that serve until stopped."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bus import defaults
from bus.errors import ConfigError
from fanout import preflight
from fanout.arguments import listen_options, port_number, positive_int
from fanout.run import serve_ingress, settings_or_exit


def cmd_ingress(args: argparse.Namespace) -> int:
    settings = settings_or_exit()
    if not settings.webhook_secrets:
        print(
            "fanout: STRIPE_WEBHOOK_SECRET is not set. Set it to the endpoint's signing secret "
            "(whsec_...; several may be given, comma-separated). `fanout run` uses a development "
            "secret instead.",
            file=sys.stderr,
        )
        return 2
    code = preflight.before_ingress(settings, args.host, args.port)
    if code is not None:
        return code
    serve_ingress(settings, args.host, args.port, args.workers)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fanout.run import run_everything

    return run_everything(args.host, args.port, args.console_port)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_or_exit()
    from fanout.partitions_cmd import partitions_agree

    preflight.require_redis(settings, "worker")
    if not partitions_agree(settings, "worker"):
        return 2
    metrics_port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    if args.processes > 1:
        from workers.supervision.supervisor import Supervisor

        return Supervisor(args.pool, args.processes, burst=args.burst, concurrency=args.concurrency,
                          metrics_host=args.metrics_host, metrics_port=metrics_port).run()
    from workers.supervision.runner import serve

    try:
        with preflight.redis_errors_exit("worker", settings.redis_url):  # Redis gone since the check
            return serve(settings, args.pool, burst=args.burst, concurrency=args.concurrency,
                         metrics_host=args.metrics_host, metrics_port=metrics_port)
    except ConfigError as err:
        print(f"fanout worker: {err}", file=sys.stderr)
        return 2


def add_ingress_parsers(sub: Any) -> None:
    """`ingress` and `run`."""
    p = sub.add_parser("ingress", help="serve POST /webhooks/stripe (production)")
    listen_options(p)
    p.add_argument("--workers", type=positive_int, default=1, help="server processes (default 1)")
    p.set_defaults(func=cmd_ingress)

    p = sub.add_parser("run", help="everything in one process tree, on embedded defaults")
    listen_options(p)
    p.add_argument("--console-port", type=port_number, default=defaults.CONSOLE_PORT,
                   help=f"the console's port (default {defaults.CONSOLE_PORT}; a free one if taken)")
    p.set_defaults(func=cmd_run)


def add_worker_parser(sub: Any) -> None:
    p = sub.add_parser("worker", help="run a pool's consumer (one per process; scale with --processes)")
    p.add_argument("pool", metavar="POOL", help="a pool declared in routing.yaml")
    p.add_argument("--concurrency", type=positive_int, help="entries in flight at once (default: the pool's)")
    p.add_argument("--processes", type=positive_int, default=1,
                   help="consumer processes under this one (default 1)")
    p.add_argument("--burst", action="store_true",
                   help="exit 0 once nothing is new or pending (pending = done or dead-lettered)")
    p.add_argument("--metrics-port", type=port_number, metavar="PORT",
                   help="serve Prometheus metrics on PORT (default $FANOUT_METRICS_PORT, else off; "
                        "with --processes N, PORT to PORT+N-1)")
    p.add_argument("--metrics-host", default=defaults.METRICS_HOST,
                   help=f"address the metrics listen on (default {defaults.METRICS_HOST})")
    p.set_defaults(func=cmd_worker)
