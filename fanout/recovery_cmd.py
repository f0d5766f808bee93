"""`fanout dlq list|replay`, `fanout replay` and `fanout reconcile`: their arguments.

What they print, beyond `dlq list`, is fanout/recovery.py's.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from fanout import preflight
from fanout.run import settings_or_exit

# `fanout dlq list` shows the last lines of each traceback (`--json` has it whole).
DLQ_TRACEBACK_LINES = 6

REROUTE_HELP = ("run the handlers $ROUTING_FILE names now for each event's type and this pool, "
                "instead of the stored list (handlers already done stay done)")


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


def add_dlq_parser(sub: Any) -> None:
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


def add_replay_parser(sub: Any) -> None:
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


def add_reconcile_parser(sub: Any) -> None:
    p = sub.add_parser("reconcile", help="publish events Stripe's Events API lists that were never received")
    p.add_argument("--since", required=True, help="events created at or after this ISO 8601 time, with zone")
    p.add_argument("--until", help="and at or before this one (default: now)")
    p.add_argument("--types", help="only these exact event types, comma-separated (up to 20)")
    p.add_argument("--dry-run", action="store_true", help="write nothing; list what would be published")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_reconcile)
