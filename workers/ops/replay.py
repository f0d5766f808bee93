"""Put events back in a pool's stream: dead letters (`dlq replay`) and stream entries (`replay`).

Every copy is marked with `replay_of` (the id of the entry the ingress wrote), so a
later `replay --since` replays originals only: each event in a window runs once.

With a routing table (`--reroute`), a copy runs the handlers the table names *now*
for the event's type and the pool, instead of the list stored in the entry (a typo
fixed in routing.yaml then applies to what it dead-lettered). Handlers already done
for the event stay done (workers/ops/replay_done.py says how that is known), unless
`all_handlers` asks for every one. An entry whose type the table no longer routes to
the pool is reported and left where it is, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from bus.envelope import (
    F_DONE,
    F_HANDLERS,
    F_ID,
    F_REPLAY_OF,
    F_TYPE,
    F_VERSION,
    HANDLER_SEPARATOR,
)
from bus.keys import Keys
from bus.partitions import Partition
from bus.routing import RoutingTable
from workers.engine.failures import DLQ_PREFIX, F_ENTRY_ID, F_FAILED_HANDLERS
from workers.ops.pool_partitions import pool_partitions
from workers.ops.replay_done import (
    dead_letter_done,
    dead_letters_by_event,
    handler_names,
    ledger_done,
)
from workers.stream_ops import Fields, ensure_groups, text


@dataclass(frozen=True)
class Skipped:
    """An entry that was not put back, and why."""

    id: str
    event_id: str
    event_type: str


@dataclass
class ReplayResult:
    # Ids of the copies added to the stream.
    added: list[str] = field(default_factory=list)
    # Dead-letter ids that were not found, or held nothing to replay (dlq replay only).
    missing: list[str] = field(default_factory=list)
    # With --reroute: entries whose type the table no longer routes to the pool (left in place).
    unrouted: list[Skipped] = field(default_factory=list)
    # With --reroute: entries whose every current handler is done already (nothing to run;
    # a dead letter of this kind is removed, since nothing it holds is left undone).
    nothing_to_run: list[Skipped] = field(default_factory=list)
    # replay only: entries in the range that were themselves copies, or a second entry
    # of an event already replayed in this run.
    skipped_copies: int = 0
    # replay only: dead letters of the replayed events, removed once their copy was added
    # (the copy runs what they hold; left, a `dlq replay` would run it a second time).
    dead_letters_replaced: list[str] = field(default_factory=list)



def current_handlers(table: RoutingTable, pool: str, event_type: str) -> tuple[str, ...] | None:
    """The handlers `table` sends an event of `event_type` to in `pool`; None when it sends none there."""
    for target_pool, handlers in table.match(event_type).targets:
        if target_pool == pool:
            return handlers
    return None


async def _rerouted(
    redis: aioredis.Redis, keys: Partition, pool: str, table: RoutingTable, fields: dict[Any, Any],
    done: set[str],
) -> tuple[str, ...] | None:
    """The handlers a rerouted copy runs (current ones not done); None when the pool is no longer routed."""
    current = current_handlers(table, pool, text(fields.get(F_TYPE.encode())))
    if current is None:
        return None
    done.update(await ledger_done(redis, keys, pool, text(fields.get(F_ID.encode()))))
    return tuple(h for h in current if h not in done)


def _skipped(entry_id: Any, fields: Fields) -> Skipped:
    return Skipped(text(entry_id), text(fields.get(F_ID.encode())), text(fields.get(F_TYPE.encode())))


def _mark(copy: dict[Any, Any], original_id: str, done: set[str]) -> None:
    copy[F_REPLAY_OF.encode()] = original_id
    if done:
        copy[F_DONE.encode()] = HANDLER_SEPARATOR.join(sorted(done))
    else:
        copy.pop(F_DONE.encode(), None)


async def replay_dead_entries(
    redis: aioredis.Redis, keys: Keys, pool: str, ids: list[str] | None = None, *,
    table: RoutingTable | None = None,
) -> ReplayResult:
    """Put dead entries (all when `ids` is None) back in the pool's stream with a fresh attempt count.

    Without `table`, only the handlers that had not succeeded run again. With it,
    the table's current handlers for the entry's type run, less those done. The
    copy is added before the dead entry is deleted, so a crash in between leaves
    a duplicate, never a loss. Each partition's dead letters go back to its own stream.
    """
    result = ReplayResult()
    found: set[str] = set()
    for part in await pool_partitions(redis, keys, pool):
        await _replay_dead_of(redis, part, pool, ids, table, result, found)
    result.missing.extend(dead_id for dead_id in ids or [] if dead_id not in found)
    return result


async def _replay_dead_of(redis: aioredis.Redis, keys: Partition, pool: str, ids: list[str] | None,
                          table: RoutingTable | None, result: ReplayResult, found: set[str]) -> None:
    """replay_dead_entries for one partition; `found` collects the ids of `ids` it holds."""
    dead_key = keys.dead(pool)
    rows: Any
    if ids is None:
        rows = await redis.xrange(dead_key)
    else:
        rows = []
        for dead_id in ids:
            if dead_id not in found and (hit := await redis.xrange(dead_key, min=dead_id, max=dead_id)):
                rows.extend(hit)
                found.add(dead_id)
    if rows:
        await ensure_groups(redis, [keys.stream(pool)], keys.group(pool))
    for dead_id, fields in rows:
        copy: dict[Any, Any] = {k: v for k, v in fields.items() if not text(k).startswith(DLQ_PREFIX)}
        if F_ID.encode() not in copy:
            result.missing.append(text(dead_id))  # nothing left to replay (the entry was trimmed)
            continue
        stored = handler_names(copy.get(F_HANDLERS.encode()))
        done = dead_letter_done(fields)
        if table is None:
            handlers = tuple(handler_names(fields.get(F_FAILED_HANDLERS.encode())) or stored)
        else:
            rerouted = await _rerouted(redis, keys, pool, table, copy, done)
            if rerouted is None:
                result.unrouted.append(_skipped(dead_id, fields))
                continue
            if not rerouted:
                result.nothing_to_run.append(_skipped(dead_id, fields))
                await redis.xdel(dead_key, dead_id)
                continue
            handlers = rerouted
            copy[F_VERSION.encode()] = table.version
        copy[F_HANDLERS.encode()] = HANDLER_SEPARATOR.join(handlers)
        original = text(copy.get(F_REPLAY_OF.encode())) or text(fields.get(F_ENTRY_ID.encode()))
        _mark(copy, original, done)
        result.added.append(text(await redis.xadd(keys.stream(pool), copy)))
        await redis.xdel(dead_key, dead_id)


async def replay_stream(
    redis: aioredis.Redis, keys: Keys, pool: str, *, since: datetime | None = None,
    event_id: str | None = None, table: RoutingTable | None = None, page_size: int = 1000,
    all_handlers: bool = False,
) -> ReplayResult:
    """Publish again, with a fresh attempt count, events still in the pool's stream; each once.

    `since` selects the events the ingress stored at or after that time (copies made
    by earlier replays are skipped); `event_id` selects one Stripe event, its original
    entry or, when that was trimmed, its oldest copy (the stream is scanned, so this
    is linear in its length).

    A copy runs the entry's handlers (with `table`: the table's current ones) less those
    known done: marked on the entry, in the completion ledger, or succeeded according to
    a dead letter of the event. With `all_handlers`, every one runs. The event's dead
    letters are removed once its copy is added (a crash in between leaves both, never neither).
    """
    if (since is None) == (event_id is None):
        raise ValueError("give exactly one of since or event_id")
    result = ReplayResult()
    for part in await pool_partitions(redis, keys, pool):  # an event's entries are all in one partition
        await ensure_groups(redis, [part.stream(pool)], part.group(pool))
        chosen = await _chosen_entries(redis, part, pool, since, event_id, page_size, result)
        await _replay_chosen(redis, part, pool, chosen, table, all_handlers, result)
    return result


async def _chosen_entries(redis: aioredis.Redis, keys: Partition, pool: str, since: datetime | None,
                          event_id: str | None, page_size: int, result: ReplayResult) -> list[tuple[str, Fields]]:
    """The entries of one partition's stream that replay_stream copies (counting copies it skips)."""
    stream = keys.stream(pool)
    start = f"{int(since.timestamp() * 1000)}-0" if since is not None else "-"
    # Stop at the current end, so the copies we add are not read back and copied again.
    last: Any = await redis.xrevrange(stream, count=1)
    if not last:
        return []
    end = text(last[0][0])
    chosen: list[tuple[str, Fields]] = []
    replayed: set[str] = set()
    first_copy: tuple[str, Fields] | None = None
    while True:
        page: Any = await redis.xrange(stream, min=start, max=end, count=page_size)
        for raw_id, fields in page:
            entry_event = text(fields.get(F_ID.encode()))
            if event_id is not None and entry_event != event_id:
                continue
            is_copy = bool(fields.get(F_REPLAY_OF.encode()))
            # Entries replayed before copies were marked are caught by the event id.
            if is_copy or entry_event in replayed:
                result.skipped_copies += 1
                if first_copy is None:
                    first_copy = (text(raw_id), fields)
                continue
            replayed.add(entry_event)
            chosen.append((text(raw_id), fields))
        if len(page) < page_size:
            break
        start = "(" + text(page[-1][0])
    if event_id is not None and not chosen and first_copy is not None:
        chosen.append(first_copy)
        result.skipped_copies -= 1
    return chosen


async def _replay_chosen(redis: aioredis.Redis, keys: Partition, pool: str, chosen: list[tuple[str, Fields]],
                         table: RoutingTable | None, all_handlers: bool, result: ReplayResult) -> None:
    """Copy each chosen entry of one partition to its stream, for the handlers not done."""
    letters = await dead_letters_by_event(redis, keys, pool, {text(f.get(F_ID.encode())) for _, f in chosen})
    for entry_id, fields in chosen:
        copy = dict(fields)
        dead = letters.get(text(fields.get(F_ID.encode())), [])
        done: set[str] = set()
        if not all_handlers:
            done.update(handler_names(copy.get(F_DONE.encode())))
            for _, dead_fields in dead:
                done.update(dead_letter_done(dead_fields))
            done.update(await ledger_done(redis, keys, pool, text(fields.get(F_ID.encode()))))
        stored = handler_names(fields.get(F_HANDLERS.encode()))
        if all_handlers:  # a copy's list leaves out what was done before it: its `done` names those
            stored += [h for h in sorted(handler_names(fields.get(F_DONE.encode()))) if h not in stored]
        routed: tuple[str, ...] | None = tuple(stored)
        if table is not None:
            routed = current_handlers(table, pool, text(fields.get(F_TYPE.encode())))
            if routed is None:
                result.unrouted.append(_skipped(entry_id, fields))
                continue
            copy[F_VERSION.encode()] = table.version
        handlers = tuple(h for h in routed or () if h not in done)
        dead_ids = [dead_id for dead_id, _ in dead]
        if not handlers:
            result.nothing_to_run.append(_skipped(entry_id, fields))
        else:
            copy[F_HANDLERS.encode()] = HANDLER_SEPARATOR.join(handlers)
            _mark(copy, text(copy.get(F_REPLAY_OF.encode())) or entry_id, done)
            result.added.append(text(await redis.xadd(keys.stream(pool), copy)))
        if dead_ids:  # after the copy: a crash in between leaves a duplicate, never a loss
            await redis.xdel(keys.dead(pool), *dead_ids)
            result.dead_letters_replaced.extend(dead_ids)


async def replay_entries(
    redis: aioredis.Redis, keys: Keys, pool: str, *, since: datetime | None = None,
    event_id: str | None = None, page_size: int = 1000,
) -> list[str]:
    """`replay_stream` without a routing table: the new stream ids."""
    result = await replay_stream(redis, keys, pool, since=since, event_id=event_id, page_size=page_size)
    return result.added
