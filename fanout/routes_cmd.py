"""`fanout routes check|explain|diff`: a routing file validated, asked about, or tried on recorded traffic."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from bus.errors import ConfigError
from bus.routing import RoutingTable, load_routing
from fanout.run import settings_or_exit


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


def add_parser(sub: Any) -> None:
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
