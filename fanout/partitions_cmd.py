"""`fanout partitions [resize N]`, and the partition-count check a serving command makes at start."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson
from redis.exceptions import RedisClusterException, RedisError

from bus.connection import sync_redis
from bus.partitions import (
    Layout,
    PartitionMismatch,
    claim_layout_sync,
    read_layout,
    streams_to_read,
)
from bus.resize import drop_drained, resize
from bus.settings import Settings
from fanout.arguments import positive_int
from fanout.preflight import with_redis
from fanout.run import settings_or_exit


def partitions_agree(settings: Settings, command: str) -> bool:
    """Record or check FANOUT_PARTITIONS against Redis; False (after saying why) on a mismatch.

    An unreachable Redis is not a mismatch: the process starts (and answers 503 until Redis
    is back), with a warning that the count was not checked.
    """
    try:
        client = sync_redis(settings.redis_url)
        try:
            claim_layout_sync(client, settings.key_prefix, settings.partitions)
        finally:
            client.close()
    except PartitionMismatch as err:
        print(f"fanout {command}: {err}", file=sys.stderr)
        return False
    except (RedisError, RedisClusterException, OSError) as err:
        print(f"warning: fanout {command}: could not check FANOUT_PARTITIONS against Redis "
              f"({type(err).__name__}); starting anyway", file=sys.stderr)
    return True


def _describe(layout: Layout, prefix: str, pools: list[str]) -> dict[str, Any]:
    return {"partitions": layout.partitions, "draining": list(layout.draining),
            "streams": {pool: streams_to_read(layout, prefix, pool) for pool in pools}}


def cmd_partitions(args: argparse.Namespace) -> int:
    from bus.routing import load_routing

    settings = settings_or_exit()
    pools = sorted(load_routing(settings.routing_file, settings.max_routing_file_bytes).pools)

    async def run(client: Any) -> dict[str, Any]:
        if args.action == "resize":
            report = await resize(client, settings.key_prefix, args.count, assume_current=settings.partitions)
            out = _describe(report.after, settings.key_prefix, pools)
            out["copied_dedupe_records"] = report.copied
            out["before"] = report.before.partitions
            return out
        layout = await drop_drained(client, settings.key_prefix) if args.action == "prune" else \
            await read_layout(client, settings.key_prefix)
        return _describe(layout or Layout(settings.partitions), settings.key_prefix, pools) | {
            "recorded": layout is not None}

    out = with_redis(settings, run, "partitions")
    if args.json:
        print(orjson.dumps(out).decode())
        return 0
    if args.action == "resize":
        print(f"partitions: {out['before']} -> {out['partitions']}; {out['copied_dedupe_records']} dedupe records "
              f"copied. Now start every ingress and worker with FANOUT_PARTITIONS={out['partitions']}.")
    else:
        print(f"partitions: {out['partitions']}" + ("" if out.get("recorded", True) else " (not recorded yet)"))
    if out["draining"]:
        print(f"draining (old layouts still read until consumed): {', '.join(map(str, out['draining']))}")
    for pool, streams in out["streams"].items():
        print(f"{pool}: reads {len(streams)} streams: {streams[0]} ... {streams[-1]}" if len(streams) > 2
              else f"{pool}: reads {', '.join(streams)}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("partitions", help="show the partition layout, or change the partition count")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=cmd_partitions, action="show", json=False)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    r = actions.add_parser("resize", help="change the partition count (stop the ingresses first; loses nothing)")
    r.add_argument("count", metavar="N", type=positive_int, help="the new partition count (1 or more)")
    r.add_argument("--json", action="store_true", help="print one JSON document")
    q = actions.add_parser("prune", help="forget old layouts whose streams are fully consumed")
    q.add_argument("--json", action="store_true", help="print one JSON document")
