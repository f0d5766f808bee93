"""The recovery commands' printing: `dlq replay`, `replay`, `reconcile`, `routes diff`.

The work is done by library modules (workers/ops/replay.py, ingress/reconcile.py,
bus/routing_diff.py); this module loads what they need, calls them and prints.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from bus.errors import ConfigError
from bus.keys import Keys
from bus.routing import RoutingTable, load_routing
from bus.settings import Settings
from fanout.preflight import with_redis
from workers.ops.replay import ReplayResult, Skipped

if TYPE_CHECKING:
    from bus.stripe_events import EventQuery
    from ingress.reconcile import ReconcileSummary


def parse_time(command: str, option: str, value: str) -> datetime | None:
    """An ISO 8601 time with a zone; None after printing why not."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        print(f"fanout {command}: {option} {value!r} is not an ISO 8601 time", file=sys.stderr)
        return None
    if parsed.tzinfo is None:
        print(f"fanout {command}: {option} needs a time zone (for example 2026-01-31T12:00:00Z)",
              file=sys.stderr)
        return None
    return parsed


def current_table(command: str, settings: Settings) -> RoutingTable | None:
    """The routing table of ROUTING_FILE; None after printing why it does not load."""
    try:
        return load_routing(settings.routing_file, settings.max_routing_file_bytes)
    except ConfigError as err:
        print(f"fanout {command}: {err}", file=sys.stderr)
        return None


def _print_skipped(result: ReplayResult, pool: str, source: str, unrouted_fate: str) -> None:
    def line(entry: Skipped) -> str:
        return f"{entry.id}  {entry.event_id}  {entry.event_type}"

    for entry in result.unrouted:
        print(f"not routed to {pool} by {source} ({unrouted_fate}): {line(entry)}", file=sys.stderr)
    for entry in result.nothing_to_run:
        print(f"nothing left to run (every handler {source} names for it is done): {line(entry)}")


# --- dlq replay / replay ---------------------------------------------------------------------------


def dlq_replay(settings: Settings, pool: str, ids: list[str] | None, *, reroute: bool) -> int:
    from workers.ops.replay import replay_dead_entries

    table = current_table("dlq replay", settings) if reroute else None
    if reroute and table is None:
        return 1
    result = with_redis(settings, lambda r: replay_dead_entries(
        r, Keys(settings.key_prefix, settings.partitions), pool, ids, table=table), "dlq replay", pool=pool)
    print(f"{pool}: {_plural(len(result.added), 'entry', 'entries')} put back in the stream")
    _print_skipped(result, pool, str(settings.routing_file), "left in the dead-letter stream")
    for dead_id in result.missing:
        print(f"not found (or nothing to replay): {dead_id}", file=sys.stderr)
    return 1 if result.missing or result.unrouted else 0


def replay(settings: Settings, pool: str, *, since: datetime | None, event_id: str | None,
           reroute: bool, all_handlers: bool = False) -> int:
    from workers.ops.replay import replay_stream

    table = current_table("replay", settings) if reroute else None
    if reroute and table is None:
        return 1
    result = with_redis(settings, lambda r: replay_stream(
        r, Keys(settings.key_prefix, settings.partitions), pool, since=since, event_id=event_id, table=table,
        all_handlers=all_handlers), "replay", pool=pool)
    copies = (f" ({_plural(result.skipped_copies, 'copy', 'copies')} from earlier replays skipped)"
              if result.skipped_copies else "")
    print(f"{pool}: {_plural(len(result.added), 'entry', 'entries')} published again{copies}")
    if result.dead_letters_replaced:
        print(f"{pool}: {_plural(len(result.dead_letters_replaced), 'dead letter', 'dead letters')} "
              "of these events removed from the dead-letter stream (the copies run what they held)")
    _print_skipped(result, pool, str(settings.routing_file) if reroute else "the stored list", "not published")
    if result.unrouted:
        return 1
    return 0 if result.added or result.nothing_to_run or since is not None else 1


# --- reconcile -------------------------------------------------------------------------------------

# Stripe accepts up to 20 exact names in `types[]`.
MAX_TYPES = 20


def parse_types(raw: str | None) -> tuple[str, ...] | str:
    """`--types a,b` as a tuple; a message (str) when it is not a list of exact event types."""
    if not raw:
        return ()
    types = tuple(dict.fromkeys(t.strip() for t in raw.split(",") if t.strip()))
    if any("*" in t for t in types):
        return "--types takes exact event types (Stripe's Events API has no wildcards in types[])"
    if len(types) > MAX_TYPES:
        return f"--types takes at most {MAX_TYPES} event types (Stripe's limit), got {len(types)}"
    return types


def reconcile(settings: Settings, *, since: datetime, until: datetime | None, types: tuple[str, ...],
              dry_run: bool, as_json: bool) -> int:
    import httpx

    from bus import defaults
    from bus.errors import StoreUnavailable
    from bus.stripe_events import EventPages, EventQuery, StripeApiError
    from bus.stripe_http import RateLimiter
    from ingress.reconcile import reconcile as run_reconcile

    api_key = settings.secret("STRIPE_API_KEY")
    if api_key is None:
        print("fanout reconcile: STRIPE_API_KEY is not set. Set it to a secret key (sk_...) or a "
              "restricted key with read access to events.", file=sys.stderr)
        return 2
    table = current_table("reconcile", settings)
    if table is None:
        return 1
    oldest_deduped = time.time() - settings.seen_retention_s
    if since.timestamp() < oldest_deduped:
        print(f"fanout reconcile: warning: the ingress remembers event ids for SEEN_RETENTION_S="
              f"{settings.seen_retention_s} s; events created before "
              f"{datetime.fromtimestamp(oldest_deduped, since.tzinfo).isoformat()} that were delivered "
              "already are no longer known as seen and will run again", file=sys.stderr)
    query = EventQuery(created_gte=int(since.timestamp()),
                       created_lte=int(until.timestamp()) if until else None, types=types)
    base_url = settings.env.get("STRIPE_API_BASE") or defaults.STRIPE_API_BASE

    async def run(redis: Any) -> tuple[ReconcileSummary, int]:
        async with httpx.AsyncClient(timeout=defaults.STRIPE_EVENTS_TIMEOUT_S) as client:
            pages = EventPages(client, api_key, base_url=base_url,
                               limiter=RateLimiter(defaults.STRIPE_API_RATE_PER_S))
            keys = Keys(settings.key_prefix, settings.partitions)
            summary = await run_reconcile(redis, keys, table, pages.pages(query),
                                          seen_retention_s=settings.seen_retention_s,
                                          seen_buckets=settings.seen_buckets, dry_run=dry_run)
            return summary, pages.requests

    try:
        summary, requests = with_redis(settings, run, "reconcile")
    except StripeApiError as err:
        print(f"fanout reconcile: {err}", file=sys.stderr)
        return 1
    except StoreUnavailable as err:
        print(f"fanout reconcile: {err}; what was published is skipped when you run it again",
              file=sys.stderr)
        return 1
    if as_json:
        print(orjson.dumps({**summary.as_dict(), "requests": requests}).decode())
    else:
        _print_reconcile(summary, query, requests)
    for event_id, error in summary.invalid:
        print(f"not a routable Stripe event, skipped: {event_id}: {error}", file=sys.stderr)
    return 1 if summary.invalid else 0


def _print_reconcile(summary: ReconcileSummary, query: EventQuery, requests: int) -> None:
    start = datetime.fromtimestamp(query.created_gte, UTC).isoformat()
    until = query.created_lte
    end = datetime.fromtimestamp(until, UTC).isoformat() if until is not None else "now"
    kinds = ", ".join(query.types) if query.types else "every type"
    print(f"events created {start} to {end}, {kinds} ({_plural(requests, 'request')})"
          + (": dry run, nothing written" if summary.dry_run else ""))
    rows = [("listed", summary.listed), ("already seen", summary.already_seen),
            ("would publish" if summary.dry_run else "published", summary.published),
            *((f"  {pool}", n) for pool, n in sorted(summary.per_pool.items())),
            ("unrouted", summary.unrouted)]
    for label, value in rows:
        print(f"{label:<15}{value}")
    if summary.dry_run:
        for planned in summary.events:
            print(f"  {planned.event_id}  {planned.event_type}  -> {', '.join(planned.pools)}")


# --- routes diff -----------------------------------------------------------------------------------


def routes_diff(settings: Settings, old_path: str | None, new_path: str, *, since: datetime | None,
                as_json: bool) -> int:
    from pathlib import Path

    from bus.routing_diff import routing_diff

    old_file = Path(old_path) if old_path else settings.routing_file
    tables = []
    for path in (old_file, Path(new_path)):
        try:
            tables.append(load_routing(path))
        except ConfigError as err:
            print(f"fanout routes diff: {err}", file=sys.stderr)
            return 1
    old, new = tables
    since_ms = int(since.timestamp() * 1000) if since else None
    diff = with_redis(settings, lambda r: routing_diff(r, Keys(settings.key_prefix, settings.partitions), old, new, since_ms),
                      "routes diff")
    if as_json:
        print(orjson.dumps(diff.as_dict()).decode())
        return 0
    window = f"since {since.isoformat()}" if since else "all they hold"
    print(f"{old_file} (version {old.version}) -> {new_path} (version {new.version}): "
          f"{diff.events} events of {len(diff.types)} types in the streams ({window})")
    rows = [("event type", "events", "pool", "change")]
    for t in diff.changed:
        for i, c in enumerate(t.changes):
            rows.append((t.event_type if i == 0 else "", str(t.events) if i == 0 else "", c.pool,
                         _change_text(c.change, c.handlers_added, c.handlers_removed)))
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip())
    unchanged = [t for t in diff.types if not t.changes]
    print(f"{diff.affected_events} of {diff.events} events would run differently; "
          f"{_plural(len(unchanged), 'type')} unchanged ({sum(t.events for t in unchanged)} events)")
    return 0


def _change_text(change: str, added: tuple[str, ...], removed: tuple[str, ...]) -> str:
    if change == "added":
        return "pool added: " + ", ".join(added)
    if change == "removed":
        return "pool removed: " + ", ".join(removed)
    return " ".join([*(f"+{h}" for h in added), *(f"-{h}" for h in removed)])


def _plural(n: int, noun: str, nouns: str | None = None) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {nouns or noun + 's'}"
