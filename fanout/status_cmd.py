"""`fanout status`: per pool length, pending, lag, consumers and counters, once or redrawn (--watch)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from bus.errors import ConfigError
from bus.routing import load_routing
from fanout import preflight
from fanout.run import settings_or_exit


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


def add_parser(sub: Any) -> None:
    p = sub.add_parser("status", help="per pool: length, pending, lag, consumers, counters")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--watch", action="store_true", help="refresh in place every second until Ctrl-C")
    p.set_defaults(func=cmd_status)
