"""The `fanout` command. It parses arguments, configures logging and calls into modules."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from bus import defaults
from bus.errors import ConfigError
from bus.logs import configure_logging
from bus.routing import RoutingTable, load_routing
from bus.settings import Settings
from fanout import preflight
from fanout.arguments import DESCRIPTION, EPILOG, listen_options, port_number, positive_int, version
from fanout.console.cli import add_console_parser
from fanout.run import serve_ingress, settings_or_exit

Command = Callable[[argparse.Namespace], int]

# Commands that serve until stopped; their loggers are cached for speed.
LONG_RUNNING_COMMANDS = frozenset({"ingress", "run", "worker", "console"})
# Commands that import handler modules named in routing.yaml (`billing.reports:render`): they
# find them in the current directory, as `python -m fanout.cli` (and so `fanout run`'s pools) does.
IMPORTS_HANDLERS = frozenset({"run", "worker", "routes"})


# --- ingress / run ---------------------------------------------------------------------------------


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


# --- workers ---------------------------------------------------------------------------------------


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


def cmd_status(args: argparse.Namespace) -> int:
    from bus.keys import Keys
    from workers.ops.status import collect_status, render_text
    from workers.rq.queue import queue_name

    settings = settings_or_exit()
    try:
        table = load_routing(settings.routing_file, settings.max_routing_file_bytes)
    except ConfigError as err:
        print(f"fanout status: {err}", file=sys.stderr)
        return 1
    pools = list(table.pools)
    rq_queues = {p: queue_name(settings.key_prefix, p) for p, c in table.pools.items() if c.executor == "rq"}
    ordered = [p for p, c in table.pools.items() if c.ordering == "object"]
    keys = Keys(settings.key_prefix, settings.partitions)

    def render() -> str:
        status = preflight.with_redis(
            settings, lambda r: collect_status(r, keys, pools, int(time.time() * 1000), rq_queues,
                                               destinations=list(table.destinations), ordered=ordered), "status")
        return orjson.dumps(status).decode() if args.json else render_text(status)

    if args.watch:
        from fanout.console.cli import watch

        return watch(render)
    print(render())
    return 0


# `fanout dlq list` shows the last lines of each traceback (`--json` has it whole).
DLQ_TRACEBACK_LINES = 6


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from bus.keys import Keys
    from workers.ops.deadletter import list_dead

    settings = settings_or_exit()
    dead = preflight.with_redis(settings, lambda r: list_dead(r, Keys(settings.key_prefix, settings.partitions), args.pool),
                                "dlq list", pool=args.pool)
    if args.json:
        print(orjson.dumps([d.as_dict() for d in dead]).decode())
        return 0
    if not dead:
        print(f"{args.pool}: the dead-letter stream is empty")
    for d in dead:
        print(f"{d.id}  {d.event_id}  {d.event_type}  attempts={d.attempts}  "
              f"handlers={','.join(d.handlers) or '-'}  routing={d.routing_version or '-'}  "
              f"{d.reason}: {d.error}")
        if len(d.failures) > 1:  # each failed handler, how it failed and its error (one: the line above)
            for f in d.failures:
                print(f"  - {f.handler or '-'}: {f.reason or '-'}: {f.error}")
        for line in d.traceback.rstrip("\n").splitlines()[-DLQ_TRACEBACK_LINES:]:
            print(f"    {line}")
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from fanout.recovery import dlq_replay

    if args.all == bool(args.ids):
        print("fanout dlq replay: give --all or one or more ENTRY_IDs (not both)", file=sys.stderr)
        return 2
    settings = settings_or_exit()
    ids = None if args.all else list(args.ids)
    return dlq_replay(settings, args.pool, ids, reroute=args.reroute)


def cmd_replay(args: argparse.Namespace) -> int:
    from fanout.recovery import parse_time, replay

    settings = settings_or_exit()
    since = None
    if args.since:
        since = parse_time("replay", "--since", args.since)
        if since is None:
            return 2
    return replay(settings, args.pool, since=since, event_id=args.event, reroute=args.reroute,
                  all_handlers=args.all_handlers)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from fanout.recovery import parse_time, parse_types, reconcile

    settings = settings_or_exit()
    since = parse_time("reconcile", "--since", args.since)
    until = parse_time("reconcile", "--until", args.until) if args.until else None
    types = parse_types(args.types)
    if isinstance(types, str):
        print(f"fanout reconcile: {types}", file=sys.stderr)
        return 2
    if since is None or (args.until and until is None):
        return 2
    return reconcile(settings, since=since, until=until, types=types, dry_run=args.dry_run,
                     as_json=args.json)


# --- routes ----------------------------------------------------------------------------------------


def _routing_file(args: argparse.Namespace) -> tuple[Path, RoutingTable | None]:
    """The routing file the command names (or the configured one), loaded; None after printing why not."""
    positional = getattr(args, "file_arg", None)
    if args.file and positional and args.file != positional:
        print(f"fanout routes: two routing files given ({positional} and --file {args.file}); give one",
              file=sys.stderr)
        raise SystemExit(2)
    given = args.file or positional
    settings = settings_or_exit()
    path = Path(given) if given else settings.routing_file
    try:
        return path, load_routing(path, settings.max_routing_file_bytes)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return path, None


def cmd_routes_check(args: argparse.Namespace) -> int:
    path, table = _routing_file(args)
    if table is None:
        return 1
    for warning in table.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    # Import every handler, as `fanout worker` will: modules are found from here too (main()
    # put the current directory on sys.path).
    from workers.importer import unresolved

    problems = unresolved(table)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(f"{path}: ok (version {table.version}; {len(table.pools)} pools, {len(table.routes)} routes)")
    return 0


def cmd_routes_explain(args: argparse.Namespace) -> int:
    path, table = _routing_file(args)
    if table is None:
        return 1
    match = table.match(args.event_type)
    if args.json:
        print(orjson.dumps({
            "event_type": args.event_type,
            "route": match.route.pattern if match.route else None,
            "kind": match.route.kind if match.route else None,
            "line": match.route.line if match.route else None,
            "pools": {pool: list(handlers) for pool, handlers in match.targets},
        }).decode())
        return 0
    if match.route is None:
        print(f"{args.event_type}: no route matches; it is answered 200 and counted as unrouted")
        return 0
    route = match.route
    print(f"{args.event_type}: {route.kind} route {route.pattern!r} ({path}:{route.line})")
    for pool, handlers in route.targets:
        print(f"  {pool}: {', '.join(handlers)}")
    return 0


def cmd_routes_diff(args: argparse.Namespace) -> int:
    from fanout.recovery import parse_time, routes_diff

    settings = settings_or_exit()
    since = parse_time("routes diff", "--since", args.since) if args.since else None
    if args.since and since is None:
        return 2
    return routes_diff(settings, args.file, args.new_file, since=since, as_json=args.json)


# --- send ------------------------------------------------------------------------------------------


def cmd_send(args: argparse.Namespace) -> int:
    from fanout.send import send_file, send_sample

    secret = args.secret or os.environ.get("STRIPE_WEBHOOK_SECRET", "").split(",")[0].strip()
    secret = secret or defaults.DEV_WEBHOOK_SECRET
    if args.file:
        if args.event_type or args.id or args.object:
            print("fanout send: --file sends the file as is; give no EVENT_TYPE, --id or --object with it",
                  file=sys.stderr)
            return 2
        return send_file(Path(args.file), url=args.url, secret=secret)
    if not args.event_type:
        print("fanout send: give an EVENT_TYPE (e.g. checkout.session.completed) or --file PAYLOAD.json",
              file=sys.stderr)
        return 2
    return send_sample(args.event_type, url=args.url, secret=secret, event_id=args.id, objects=args.object)


# --- parser ----------------------------------------------------------------------------------------

REROUTE_HELP = ("run the handlers $ROUTING_FILE names now for each event's type and this pool, "
                "instead of the stored list (handlers already done stay done)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fanout", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingress", help="serve POST /webhooks/stripe (production)")
    listen_options(p)
    p.add_argument("--workers", type=positive_int, default=1, help="server processes (default 1)")
    p.set_defaults(func=cmd_ingress)

    p = sub.add_parser("run", help="everything in one process tree, on embedded defaults")
    listen_options(p)
    p.add_argument("--console-port", type=port_number, default=defaults.CONSOLE_PORT,
                   help=f"the console's port (default {defaults.CONSOLE_PORT}; a free one if taken)")
    p.set_defaults(func=cmd_run)

    routes = sub.add_parser("routes", help="check, explain or diff routing.yaml")
    routes_sub = routes.add_subparsers(dest="routes_command", required=True, metavar="ACTION")
    p = routes_sub.add_parser("check", help="validate a routing file (exit 1 with the errors)")
    # The positional FILE predates --file; both stay accepted.
    p.add_argument("file_arg", nargs="?", metavar="FILE", help="same as --file")
    p.add_argument("--file", help="the routing file (default: $ROUTING_FILE or routing.yaml)")
    p.set_defaults(func=cmd_routes_check)
    p = routes_sub.add_parser("explain", help="which pools and handlers run for an event type")
    p.add_argument("event_type", metavar="EVENT_TYPE", help="a Stripe event type, e.g. invoice.paid")
    p.add_argument("--file", help="the routing file (default: $ROUTING_FILE or routing.yaml)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_routes_explain)
    p = routes_sub.add_parser("diff", help="what a new routing file would change for the traffic the "
                                           "streams hold (writes nothing)")
    p.add_argument("new_file", metavar="NEW_ROUTING_FILE", help="the routing file you mean to deploy")
    p.add_argument("--since", help="only traffic stored at or after this ISO 8601 time, with zone "
                                   "(default: all the streams hold)")
    p.add_argument("--file", help="the table in use (default: $ROUTING_FILE or routing.yaml)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_routes_diff)

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

    p = sub.add_parser("status", help="per pool: length, pending, lag, consumers, counters")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--watch", action="store_true", help="refresh in place every second until Ctrl-C")
    p.set_defaults(func=cmd_status)

    add_console_parser(sub)

    dlq = sub.add_parser("dlq", help="list or replay a pool's dead-letter stream")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    p = dlq_sub.add_parser("list", help="dead-lettered entries, oldest first")
    p.add_argument("pool", metavar="POOL", help="a pool declared in routing.yaml")
    p.add_argument("--json", action="store_true", help="print a JSON list, with whole tracebacks")
    p.set_defaults(func=cmd_dlq_list)
    p = dlq_sub.add_parser("replay", help="put entries back in the stream with a fresh attempt count")
    p.add_argument("pool", metavar="POOL", help="a pool declared in routing.yaml")
    p.add_argument("ids", nargs="*", metavar="ENTRY_ID", help="dead-letter ids, as `dlq list` shows them")
    p.add_argument("--all", action="store_true", help="every dead-lettered entry of the pool")
    p.add_argument("--reroute", action="store_true", help=REROUTE_HELP)
    p.set_defaults(func=cmd_dlq_replay)

    p = sub.add_parser("replay", help="run again events still held in a pool's stream")
    p.add_argument("pool", metavar="POOL", help="a pool declared in routing.yaml")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--since", help="ISO 8601 time with zone, e.g. 2026-01-31T12:00:00Z")
    which.add_argument("--event", help="one Stripe event id (evt_...)")
    p.add_argument("--reroute", action="store_true", help=REROUTE_HELP)
    p.add_argument("--all-handlers", action="store_true",
                   help="run every handler again, also those that already succeeded for the event "
                        "(default: only those that failed or never ran)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("reconcile", help="publish events Stripe's Events API lists that were never received")
    p.add_argument("--since", required=True, help="events created at or after this ISO 8601 time, with zone")
    p.add_argument("--until", help="and at or before this one (default: now)")
    p.add_argument("--types", help="only these exact event types, comma-separated (up to 20)")
    p.add_argument("--dry-run", action="store_true", help="write nothing; list what would be published")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("send", help="sign and POST a realistic sample event (or a payload from a file)")
    p.add_argument("event_type", nargs="?", metavar="EVENT_TYPE",
                   help="the sample to send, e.g. checkout.session.completed (not with --file)")
    p.add_argument("--file", help="send this JSON payload instead, signed as is (its id must start with evt_)")
    p.add_argument("--url", default=f"http://{defaults.HOST}:{defaults.PORT}{defaults.WEBHOOK_PATH}",
                   help="the ingress's webhook URL (default %(default)s)")
    p.add_argument("--secret", help="default: first of $STRIPE_WEBHOOK_SECRET, else the dev secret")
    p.add_argument("--id", help="event id to use (send it twice to see deduplication)")
    p.add_argument("--object", action="append", default=[], metavar="KIND=ID",
                   help="pin an object's id so several sends describe the same object, "
                        "e.g. customer=cus_123 (repeatable)")
    p.set_defaults(func=cmd_send)
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
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
